"""One contract for every store adapter: SQLite (real file), MongoDB via mongomock, and a real
MongoDB when STACKMAP_TEST_MONGODB_URI is set. Each test states an observable promise of the port."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from stackmap.errors import DuplicateError, NotFound
from stackmap.model import Clique, Link, Message, Scan, ScheduledScan, link_id
from stackmap.store import Store

ENV = "lab"
T0 = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def obj(oid: str, otype: str, path: str, parent: str | None = None, **extra: Any) -> dict[str, Any]:
    doc = {"environment": ENV, "id": oid, "type": otype, "name": extra.pop("name", oid), "parent_id": parent,
           "id_path": path, "name_path": path, "show_in_tree": True, "last_scanned": T0}
    doc.update(extra)
    return doc


def tree() -> list[dict[str, Any]]:
    return [
        obj("r1", "region", "/lab/r1"),
        obj("h1", "host", "/lab/r1/h1", "r1"),
        obj("i1", "instance", "/lab/r1/h1/i1", "h1", network=["n1"], flavor={"vcpus": 1}),
        obj("i2", "instance", "/lab/r1/h1/i2", "h1"),
        obj("v1", "vnic", "/lab/r1/h1/i1/v1", "i1", mac_address="fa:16:3e:00:00:01"),
        obj("h10", "host", "/lab/r1/h10", "r1"),  # a sibling whose path shares h1's prefix text
        obj("i10", "instance", "/lab/r1/h10/i10", "h10"),
    ]


def link(ltype: str, src: str, dst: str, **extra: Any) -> dict[str, Any]:
    return Link(environment=ENV, link_type=ltype, source_id=src, target_id=dst, **extra).to_doc()


# -- environments ----------------------------------------------------------------------------------

def env_doc(name: str = ENV, **extra: Any) -> dict[str, Any]:
    doc = {"name": name, "type": "environment", "distribution": "Stock", "listen": False, "scanned": False,
           "configuration": [{"name": "OpenStack", "host": "h", "user": "u", "pwd": "enc:v1:xyz"}]}
    doc.update(extra)
    return doc


def test_environment_crud(store: Store) -> None:
    store.add_environment(env_doc())
    store.add_environment(env_doc("other"))
    with pytest.raises(DuplicateError):
        store.add_environment(env_doc())
    assert [e["name"] for e in store.list_environments()] == ["lab", "other"]
    assert store.get_environment(ENV)["configuration"][0]["pwd"] == "enc:v1:xyz"
    assert store.update_environment(ENV, {"scanned": True, "last_scanned": T0})
    got = store.get_environment(ENV)
    assert got["scanned"] is True and got["last_scanned"] == T0 and got["distribution"] == "Stock"
    assert not store.update_environment("nope", {"scanned": True})
    store.replace_environment(env_doc(distribution="RDO"))
    assert store.get_environment(ENV)["distribution"] == "RDO"
    assert store.get_environment(ENV)["scanned"] is False
    with pytest.raises(NotFound):
        store.replace_environment(env_doc("nope"))
    assert store.get_environment("nope") is None


def test_remove_environment_takes_its_documents(store: Store) -> None:
    store.add_environment(env_doc())
    store.add_environment(env_doc("other"))
    store.upsert_objects(ENV, tree())
    store.upsert_objects("other", [dict(obj("x", "host", "/other/x"), environment="other")])
    store.upsert_links(ENV, [link("instance-vnic", "i1", "v1")])
    store.append_messages([Message(environment=ENV, message="hello").to_doc()])
    assert store.remove_environment(ENV)
    assert not store.remove_environment(ENV)
    assert store.get_environment(ENV) is None
    assert store.count_objects(ENV) == {}
    assert store.find_links(ENV) == []
    assert store.find_messages(ENV) == []
    assert store.count_objects("other") == {"host": 1}


# -- inventory -------------------------------------------------------------------------------------

def test_upsert_and_get_round_trip(store: Store) -> None:
    assert store.upsert_objects(ENV, tree()) == 7
    got = store.get_object(ENV, "i1")
    assert got == obj("i1", "instance", "/lab/r1/h1/i1", "h1", network=["n1"], flavor={"vcpus": 1})
    assert got["last_scanned"].tzinfo is not None
    assert store.get_object(ENV, "missing") is None
    assert store.get_object("other-env", "i1") is None


def test_unchanged_upsert_writes_nothing_and_changes_are_written(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    later = [dict(d, last_scanned=T0 + timedelta(hours=1)) for d in tree()]
    assert store.upsert_objects(ENV, later) == 0  # only last_scanned differs: nothing to write
    changed = tree()
    changed[2]["name"] = "renamed"
    assert store.upsert_objects(ENV, changed) == 1
    assert store.get_object(ENV, "i1")["name"] == "renamed"


def test_writes_in_a_transaction_land_together(store: Store) -> None:
    with store.transaction():
        store.upsert_objects(ENV, tree()[:2])
        with store.transaction():  # nested: a savepoint on adapters that have them
            store.upsert_links(ENV, [link("host-instance", "h1", "i1")])
        store.append_messages([Message(environment=ENV, message="m").to_doc()])
    assert store.get_object(ENV, "h1") is not None
    assert store.find_links(ENV, source_id="h1")
    assert len(store.find_messages(environment=ENV)) == 1


def test_a_failed_transaction_undoes_its_writes_where_atomic(store: Store) -> None:
    store.upsert_objects(ENV, tree()[:1])
    with pytest.raises(RuntimeError), store.transaction() as atomic:
        store.upsert_objects(ENV, [obj("h1", "host", "/lab/r1/h1", "r1")])
        with store.transaction():
            store.upsert_links(ENV, [link("host-instance", "h1", "i1")])
        raise RuntimeError("handler broke")
    assert atomic or not store.url.startswith("sqlite")  # the embedded store is always atomic
    if atomic:
        assert store.get_object(ENV, "h1") is None
        assert store.find_links(ENV, source_id="h1") == []
    else:  # each write committed on its own
        assert store.get_object(ENV, "h1") is not None
    assert store.get_object(ENV, "r1") is not None


def test_a_failed_inner_transaction_undoes_only_its_own_writes(store: Store) -> None:
    with store.transaction() as atomic:
        store.upsert_objects(ENV, tree()[:1])
        with pytest.raises(RuntimeError), store.transaction():
            store.upsert_objects(ENV, [obj("h1", "host", "/lab/r1/h1", "r1")])
            raise RuntimeError("one event broke")
        store.upsert_objects(ENV, [obj("h10", "host", "/lab/r1/h10", "r1")])
    assert store.get_object(ENV, "r1") is not None and store.get_object(ENV, "h10") is not None
    assert (store.get_object(ENV, "h1") is None) == atomic


def test_upsert_refuses_documents_without_keys(store: Store) -> None:
    with pytest.raises(ValueError):
        store.upsert_objects(ENV, [{"type": "host"}])
    with pytest.raises(ValueError):
        store.upsert_links(ENV, [{"link_type": "a-b", "source_id": "x"}])


def test_keys_with_dots_and_dollars_round_trip(store: Store) -> None:
    doc = obj("h1", "host", "/lab/h1", config={"a.b": 1, "$weird": {"c.d": [1, {"e.f": 2}]}})
    store.upsert_objects(ENV, [doc])
    assert store.get_object(ENV, "h1")["config"] == {"a.b": 1, "$weird": {"c.d": [1, {"e.f": 2}]}}


def test_find_objects_filters(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    assert [o["id"] for o in store.find_objects(ENV, type="instance")] == ["i1", "i2", "i10"]  # by id_path
    assert [o["id"] for o in store.find_objects(ENV, parent_id="h1")] == ["i1", "i2"]
    assert [o["id"] for o in store.find_objects(ENV, ids=["i2", "v1", "zz"])] == ["v1", "i2"]
    assert [o["id"] for o in store.find_objects(ENV, under="h1")] == ["h1", "i1", "v1", "i2"]
    assert [o["id"] for o in store.find_objects(ENV, under="h1", type="instance")] == ["i1", "i2"]
    assert store.find_objects(ENV, under="nope") == []
    assert [o["id"] for o in store.find_objects(ENV, type="instance", parent_id="h10")] == ["i10"]
    assert len(store.find_objects(ENV, limit=2)) == 2
    assert store.find_objects("other-env") == []


def test_find_objects_on_hosts(store: Store) -> None:
    store.upsert_objects(ENV, [obj(f"{h}-eth{n}", "host_pnic", f"/{h}/{h}-eth{n}", host=h)
                               for h in ("h1", "h2", "h3") for n in (0, 1)]
                         + [obj("i1", "instance", "/h1/i1", host="h1"), obj("n1", "network", "/n1")])
    store.upsert_objects("other", [obj("h1-eth0", "host_pnic", "/h1/h1-eth0", host="h1")])
    assert [o["id"] for o in store.find_objects(ENV, type="host_pnic", hosts=["h1", "h3", "nope"])] == \
        ["h1-eth0", "h1-eth1", "h3-eth0", "h3-eth1"]
    assert [o["id"] for o in store.find_objects(ENV, hosts=["h1"])] == ["h1-eth0", "h1-eth1", "i1"]
    assert store.find_objects(ENV, hosts=[]) == [] and store.find_objects(ENV, type="network", hosts=["h1"]) == []


def test_object_ids_and_counts(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    assert store.object_ids(ENV) == {"r1", "h1", "i1", "i2", "v1", "h10", "i10"}
    assert store.object_ids(ENV, types=["host", "vnic"]) == {"h1", "h10", "v1"}
    assert store.count_objects(ENV) == {"host": 2, "instance": 3, "region": 1, "vnic": 1}


def test_delete_subtree_removes_descendants_links_and_cliques(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    store.upsert_links(ENV, [link("instance-vnic", "i1", "v1"), link("host-instance", "h10", "i10"),
                             link("vnic-network", "v1", "n1")])
    store.replace_cliques(ENV, [
        Clique(environment=ENV, focal_point="i1", focal_point_type="instance", clique_type="t",
               nodes=["i1", "v1"]).to_doc(),
        Clique(environment=ENV, focal_point="i10", focal_point_type="instance", clique_type="t",
               nodes=["i10", "h10"]).to_doc(),
    ])
    deleted = store.delete_subtree(ENV, "h1")
    assert sorted(deleted) == ["h1", "i1", "i2", "v1"]
    assert store.object_ids(ENV) == {"r1", "h10", "i10"}  # h10 shares the text prefix but is not under h1
    assert [lk["source_id"] for lk in store.find_links(ENV)] == ["h10"]
    assert [c["focal_point"] for c in store.find_cliques(ENV)] == ["i10"]
    assert store.delete_subtree(ENV, "h1") == []


def test_delete_objects(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    store.upsert_links(ENV, [link("instance-vnic", "i1", "v1"), link("host-instance", "h1", "i2")])
    assert store.delete_objects(ENV, ["v1", "nope"]) == 1
    assert [lk["link_type"] for lk in store.find_links(ENV)] == ["host-instance"]
    assert store.delete_objects(ENV, []) == 0


# -- links -----------------------------------------------------------------------------------------

def test_links_are_keyed_by_type_too(store: Store) -> None:
    # Calipso keyed links without link_type, so two types between one pair overwrote each other.
    assert store.upsert_links(ENV, [link("vnic-vconnector", "a", "b"), link("vnic-vedge", "a", "b")]) == 2
    assert {lk["link_type"] for lk in store.find_links(ENV, source_id="a")} == {"vnic-vconnector", "vnic-vedge"}
    assert store.upsert_links(ENV, [link("vnic-vedge", "a", "b")]) == 0
    assert store.upsert_links(ENV, [link("vnic-vedge", "a", "b", state="down")]) == 1
    assert store.find_links(ENV, link_type="vnic-vedge")[0]["state"] == "down"


def test_find_links_filters(store: Store) -> None:
    store.upsert_links(ENV, [
        link("instance-vnic", "i1", "v1", attributes={"network": "n1"}),
        link("instance-vnic", "i2", "v2"),
        link("vnic-vconnector", "v1", "c1"),
        link("vconnector-host_pnic", "c1", "p1"),
    ])
    assert [lk["target_id"] for lk in store.find_links(ENV, link_type="instance-vnic")] == ["v1", "v2"]
    assert [lk["id"] for lk in store.find_links(ENV, touching=["v1"])] == [
        "instance-vnic|i1|v1", "vnic-vconnector|v1|c1"]
    assert [lk["target_id"] for lk in store.find_links(ENV, sources=["i1", "i2"], link_types=["instance-vnic"])] \
        == ["v1", "v2"]
    assert [lk["source_id"] for lk in store.find_links(ENV, targets=["c1", "p1"])] == ["c1", "v1"]
    assert store.find_links(ENV, source_id="i1", target_id="v1")[0]["attributes"] == {"network": "n1"}
    # exact keys, not the cross product of their parts (instance-vnic|i1|v1 is in that)
    keys = [("instance-vnic", "i2", "v2"), ("vnic-vconnector", "v1", "c1"), ("instance-vnic", "i1", "c1"),
            ("instance-vnic", "x", "v1"), ("instance-vnic", "i2", "v2")]
    assert [lk["id"] for lk in store.find_links(ENV, keys=keys)] == ["instance-vnic|i2|v2", "vnic-vconnector|v1|c1"]
    assert store.find_links(ENV, keys=[("instance-vnic", "i2", "v2")], link_type="vnic-vconnector") == []
    assert store.find_links(ENV, keys=[]) == []
    assert store.link_keys(ENV, link_types=["vnic-vconnector"]) == {("vnic-vconnector", "v1", "c1")}
    assert len(store.link_keys(ENV)) == 4
    assert store.delete_links(ENV, [("instance-vnic", "i2", "v2"), ("instance-vnic", "x", "y")]) == 1
    assert len(store.link_keys(ENV)) == 3


# -- cliques ---------------------------------------------------------------------------------------

def clique(focal: str, nodes: list[str]) -> dict[str, Any]:
    return Clique(environment=ENV, focal_point=focal, focal_point_type="instance", clique_type="ovs",
                  nodes=nodes, links=[f"x|{focal}|y"], constraints={"network": ["n1"]}).to_doc()


def test_replace_cliques_whole_environment_and_by_focal_point(store: Store) -> None:
    assert store.replace_cliques(ENV, [clique("i1", ["i1", "v1", "c1"]), clique("i2", ["i2", "v2", "c1"])]) == 2
    assert [c["focal_point"] for c in store.find_cliques(ENV, containing=["c1"])] == ["i1", "i2"]
    assert [c["focal_point"] for c in store.find_cliques(ENV, containing=["v2", "zz"])] == ["i2"]
    assert store.find_cliques(ENV, focal_point="i1")[0]["constraints"] == {"network": ["n1"]}
    # replace only i1's clique; i2's stays
    store.replace_cliques(ENV, [clique("i1", ["i1", "v9"])], focal_points=["i1"])
    assert store.find_cliques(ENV, containing=["v1"]) == []
    assert [c["focal_point"] for c in store.find_cliques(ENV, containing=["v9", "v2"])] == ["i1", "i2"]
    # a focal point whose clique vanished is removed
    store.replace_cliques(ENV, [], focal_points=["i2"])
    assert [c["focal_point"] for c in store.find_cliques(ENV)] == ["i1"]
    # whole replacement
    store.replace_cliques(ENV, [clique("i3", ["i3"])])
    assert [c["focal_point"] for c in store.find_cliques(ENV)] == ["i3"]


def test_find_cliques_holding_both_ends_of_a_link(store: Store) -> None:
    store.replace_cliques(ENV, [clique("i1", ["i1", "p1", "n1"]), clique("i2", ["i2", "p2", "n1"]),
                                clique("n1", ["p1", "p2"])])  # a focal point is in its clique, listed or not
    def holding(*pairs: tuple[str, str]) -> list[str]:
        return [c["focal_point"] for c in store.find_cliques(ENV, holding=list(pairs))]
    assert holding(("p1", "n1")) == ["i1", "n1"]
    assert holding(("n1", "p2"), ("i1", "p1")) == ["i1", "i2", "n1"]
    assert holding(("p1", "p2")) == ["n1"]
    assert holding(("p1", "zz")) == [] and holding() == []
    assert [c["focal_point"] for c in store.find_cliques(ENV, focal_point="i2", holding=[("p1", "n1")])] == []


def test_a_cliques_links_detailed_are_its_links_as_stored(store: Store) -> None:
    """Calipso's links_detailed: the clique's links, as the links collection holds them once a
    changed link's copies are patched (MongoDB keeps copies; SQLite attaches the links on read)."""
    p1n1, p2n1 = link("port-network", "p1", "n1"), link("port-network", "p2", "n1")
    i1p1 = link("instance-port", "i1", "p1")
    store.upsert_links(ENV, [p1n1, p2n1, i1p1])
    store.upsert_links("other", [p1n1])
    stored = {lk["id"]: lk for lk in store.find_links(ENV)}

    def with_links(focal: str, nodes: list[str], links: list[dict[str, Any]]) -> dict[str, Any]:
        held = [stored[link_id(lk["link_type"], lk["source_id"], lk["target_id"])] for lk in links]
        return dict(clique(focal, nodes), links=[lk["id"] for lk in held], links_detailed=held)

    store.replace_cliques(ENV, [with_links("i1", ["i1", "p1", "n1"], [i1p1, p1n1]),
                                with_links("i2", ["i2", "p2", "n1"], [p2n1]),
                                with_links("n1", ["p1", "p2"], [p1n1, p2n1]),  # its focal point is not in its nodes
                                with_links("i3", ["i3", "i1", "p1", "n1"], [i1p1])])  # p1 and n1, not that link
    elsewhere = store.find_links("other")
    store.replace_cliques("other", [dict(clique("i1", ["i1", "p1", "n1"]), links=[lk["id"] for lk in elsewhere],
                                         links_detailed=elsewhere)])
    by_focal = {c["focal_point"]: c for c in store.find_cliques(ENV)}
    assert by_focal["i1"]["links_detailed"] == [stored[by_focal["i1"]["links"][0]], stored[by_focal["i1"]["links"][1]]]
    assert [lk["link_type"] for lk in by_focal["i1"]["links_detailed"]] == ["instance-port", "port-network"]
    # or only the ids of the links each clique holds, in the same order
    ids_only = store.find_cliques(ENV, link_ids_only=True)
    assert [(c["focal_point"], c["links_detailed"]) for c in ids_only] == \
        [(c["focal_point"], [lk["id"] for lk in c["links_detailed"]]) for c in by_focal.values()]
    assert ids_only[0]["links_detailed"] and all(isinstance(i, str) for c in ids_only for i in c["links_detailed"])
    assert store.find_cliques(ENV, focal_point="i1", link_ids_only=True)[0]["nodes"] == ["i1", "p1", "n1"]

    # p1 goes down: its link changes, and the cliques' copies are brought up to date
    store.upsert_links(ENV, [link("port-network", "p1", "n1", state="down")])
    down = store.find_links(ENV, keys=[("port-network", "p1", "n1")])[0]
    assert down["state"] == "down"
    store.patch_clique_links(ENV, [("port-network", "p1", "n1"), ("port-network", "zz", "n1")])
    by_focal = {c["focal_point"]: c for c in store.find_cliques(ENV)}
    assert by_focal["i1"]["links_detailed"][1] == down and by_focal["n1"]["links_detailed"][0] == down
    assert by_focal["n1"]["links_detailed"][1] == stored[link_id("port-network", "p2", "n1")]  # untouched
    assert by_focal["i1"]["nodes"] == ["i1", "p1", "n1"] and by_focal["i1"]["constraints"] == {"network": ["n1"]}
    assert by_focal["i3"]["links_detailed"] == [stored[link_id("instance-port", "i1", "p1")]]
    assert store.find_cliques("other")[0]["links_detailed"][0].get("state") != "down"  # another environment's
    assert store.patch_clique_links(ENV, []) == 0

    # a clique holding many links, all changed at once
    many = [link("port-network", f"q{n}", "big") for n in range(130)]
    store.upsert_links(ENV, many)
    held = store.find_links(ENV, targets=["big"])
    store.replace_cliques(ENV, [dict(clique("big", [f"q{n}" for n in range(130)]), links=[lk["id"] for lk in held],
                                     links_detailed=held)], focal_points=["big"])
    store.upsert_links(ENV, [dict(lk, state="down") for lk in many])
    store.patch_clique_links(ENV, iter([(lk["link_type"], lk["source_id"], lk["target_id"]) for lk in many]))
    assert store.find_cliques(ENV, focal_point="big")[0]["links_detailed"] == store.find_links(ENV, targets=["big"])
    assert {lk["state"] for lk in store.find_cliques(ENV, focal_point="big")[0]["links_detailed"]} == {"down"}


def test_clique_types_and_constraints(store: Store) -> None:
    store.upsert_clique_type({"id": "any-instance", "environment": "ANY", "focal_point_type": "instance",
                              "link_types": ["instance-vnic"]})
    store.upsert_clique_type({"id": "lab-instance", "environment": ENV, "focal_point_type": "instance",
                              "link_types": ["instance-vnic", "vnic-vedge"]})
    store.upsert_clique_type({"id": "other-net", "environment": "other", "focal_point_type": "network",
                              "link_types": ["network-port"]})
    assert [t["id"] for t in store.list_clique_types()] == ["any-instance", "lab-instance", "other-net"]
    assert [t["id"] for t in store.list_clique_types(ENV)] == ["any-instance", "lab-instance"]
    store.upsert_clique_type({"id": "lab-instance", "environment": ENV, "focal_point_type": "instance",
                              "link_types": ["instance-vnic"]})
    assert store.get_clique_type("lab-instance")["link_types"] == ["instance-vnic"]
    assert store.remove_clique_type("lab-instance") and not store.remove_clique_type("lab-instance")
    assert store.get_clique_type("lab-instance") is None
    store.upsert_clique_constraint({"id": "instance", "focal_point_type": "instance", "constraints": ["network"]})
    store.upsert_clique_constraint({"id": "instance", "focal_point_type": "instance", "constraints": ["network", "x"]})
    assert store.list_clique_constraints() == [
        {"id": "instance", "focal_point_type": "instance", "constraints": ["network", "x"]}]


# -- scans -----------------------------------------------------------------------------------------

def scan(n: int, env: str = ENV) -> dict[str, Any]:
    return Scan(id=f"s{n}", environment=env, submit_timestamp=T0 + timedelta(seconds=n)).to_doc()


def test_scan_queue_claims_oldest_first(store: Store) -> None:
    for n in (3, 1, 2):
        store.submit_scan(scan(n))
    with pytest.raises(DuplicateError):
        store.submit_scan(scan(1))
    lease = T0 + timedelta(minutes=5)
    first = store.claim_next_scan("w1", lease, T0)
    assert first is not None and first["id"] == "s1"
    assert first["status"] == "running" and first["owner"] == "w1" and first["lease_expires"] == lease
    stored = store.get_scan("s1")
    assert stored["status"] == "running" and stored["start_timestamp"] == T0
    assert store.claim_next_scan("w2", lease, T0)["id"] == "s2"
    assert store.claim_next_scan("w2", lease, T0)["id"] == "s3"
    assert store.claim_next_scan("w2", lease, T0) is None


def test_update_scan_compare_and_set(store: Store) -> None:
    store.submit_scan(scan(1))
    store.claim_next_scan("w1", T0, T0)
    assert not store.update_scan("s1", {"status": "completed"}, expect_owner="w2")
    assert not store.update_scan("s1", {"status": "completed"}, expect_status="pending")
    assert store.update_scan("s1", {"status": "completed", "end_timestamp": T0}, expect_status="running",
                             expect_owner="w1")
    assert store.get_scan("s1")["status"] == "completed"
    assert not store.update_scan("nope", {"status": "failed"})


def test_find_scans(store: Store) -> None:
    for n in (1, 2, 3):
        store.submit_scan(scan(n))
    store.submit_scan(scan(4, "other"))
    store.claim_next_scan("w", T0, T0)
    assert [s["id"] for s in store.find_scans()] == ["s4", "s3", "s2", "s1"]
    assert [s["id"] for s in store.find_scans(ENV, status=["pending"])] == ["s3", "s2"]
    assert [s["id"] for s in store.find_scans(status=["running"])] == ["s1"]
    assert [s["id"] for s in store.find_scans(limit=1)] == ["s4"]


def test_scheduled_scans(store: Store) -> None:
    a = ScheduledScan(id="a", environment=ENV, freq="HOURLY", submit_timestamp=T0).to_doc()
    b = ScheduledScan(id="b", environment="other", interval_seconds=60, submit_timestamp=T0).to_doc()
    store.upsert_scheduled_scan(a)
    store.upsert_scheduled_scan(b)
    assert [s["id"] for s in store.list_scheduled_scans()] == ["a", "b"]
    store.upsert_scheduled_scan(dict(a, scheduled_timestamp=T0))
    assert store.list_scheduled_scans(ENV) == [dict(a, scheduled_timestamp=T0)]
    assert store.remove_scheduled_scan("a") and not store.remove_scheduled_scan("a")
    assert [s["id"] for s in store.list_scheduled_scans()] == ["b"]


# -- messages --------------------------------------------------------------------------------------

def test_messages_append_and_query(store: Store) -> None:
    msgs = [Message(id=f"m{n}", environment=ENV if n != 3 else "other", level="error" if n == 2 else "info",
                    source_system="Sensu" if n == 4 else "stackmap", related_object="i1" if n == 1 else None,
                    message={"text": f"n{n}"}, timestamp=T0 + timedelta(seconds=n)).to_doc() for n in range(1, 5)]
    assert store.append_messages(msgs) == 4
    assert [m["id"] for m in store.find_messages(ENV)] == ["m4", "m2", "m1"]
    assert [m["id"] for m in store.find_messages()] == ["m4", "m3", "m2", "m1"]
    assert [m["id"] for m in store.find_messages(ENV, level="error")] == ["m2"]
    assert [m["id"] for m in store.find_messages(ENV, source_system="Sensu")] == ["m4"]
    assert [m["id"] for m in store.find_messages(ENV, related_object="i1")] == ["m1"]
    assert [m["id"] for m in store.find_messages(ENV, since=T0 + timedelta(seconds=2))] == ["m4", "m2"]
    assert [m["id"] for m in store.find_messages(ENV, limit=1)] == ["m4"]
    assert store.find_messages(ENV, level="error")[0]["message"] == {"text": "n2"}
    assert store.find_messages(ENV, limit=1)[0]["timestamp"] == T0 + timedelta(seconds=4)


def test_messages_are_pruned_by_age_and_by_count_oldest_first_within_a_limit(store: Store) -> None:
    # stored newest first: their order by timestamp, which find_messages shows, is not their order of arrival
    store.append_messages([Message(id=f"m{n:02d}", environment=ENV if n % 2 else "other", message="m",
                                   timestamp=T0 + timedelta(seconds=n)).to_doc() for n in reversed(range(20))])
    assert store.prune_messages() == 0
    # everything stamped before T0+5s goes, in calls of at most 3
    cutoff = T0 + timedelta(seconds=5)
    assert store.prune_messages(older_than=cutoff, limit=3) == 3
    assert [m["id"] for m in store.find_messages(limit=100)][-1] == "m03"  # the oldest went first
    assert store.prune_messages(older_than=cutoff, limit=3) == 2
    assert store.prune_messages(older_than=cutoff, limit=3) == 0
    assert len(store.find_messages(limit=100)) == 15
    # of every environment, only the newest 10 stay; again the oldest go first
    assert store.prune_messages(keep=10, limit=4) == 4
    assert [m["id"] for m in store.find_messages(limit=100)][-1] == "m09"
    assert store.prune_messages(keep=10, limit=4) == 1
    assert [m["id"] for m in store.find_messages(limit=100)] == [f"m{n:02d}" for n in range(19, 9, -1)]
    assert store.prune_messages(keep=10, older_than=cutoff) == 0
    assert store.prune_messages(keep=0) == 10 and store.find_messages(limit=100) == []


def test_replace_cliques_refuses_two_cliques_for_one_focal_point(store: Store) -> None:
    store.replace_cliques(ENV, [clique("i1", ["i1"])])
    with pytest.raises(DuplicateError):
        store.replace_cliques(ENV, [clique("i2", ["i2"]), clique("i2", ["i2", "v2"])])
    assert [c["focal_point"] for c in store.find_cliques(ENV)] == ["i1"]  # nothing half-written


def test_update_object_and_link_fields(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    store.upsert_links(ENV, [link("instance-vnic", "i1", "v1")])
    assert store.update_object(ENV, "v1", {"status": "Critical", "status_value": 2, "status_timestamp": T0})
    got = store.get_object(ENV, "v1")
    assert (got["status"], got["status_value"], got["status_timestamp"]) == ("Critical", 2, T0)
    assert got["mac_address"] == "fa:16:3e:00:00:01" and got["id_path"] == "/lab/r1/h1/i1/v1"
    assert [o["id"] for o in store.find_objects(ENV, parent_id="i1")] == ["v1"]  # still findable as before
    assert not store.update_object(ENV, "nope", {"status": "OK"})
    assert store.update_link(ENV, ("instance-vnic", "i1", "v1"), {"status": "OK", "status_value": 0})
    stored = store.find_links(ENV, link_type="instance-vnic")[0]
    assert stored["status"] == "OK" and stored["source_id"] == "i1" and stored["id"] == "instance-vnic|i1|v1"
    assert not store.update_link(ENV, ("instance-vnic", "i1", "zz"), {"status": "OK"})


def test_update_many_objects_and_links_at_once(store: Store) -> None:
    store.upsert_objects(ENV, [*tree(), obj("p1", "port", "/lab/p1", status="ACTIVE")])
    store.upsert_links(ENV, [link("instance-vnic", "i1", "v1"), link("host-instance", "h1", "i1")])
    found = store.update_objects(ENV, {
        "v1": {"status": "Critical", "status_value": 2, "status_timestamp": T0},
        "p1": {"status": "Warning", "status_value": 1},  # the API's own status stays
        "i1": {"name": "renamed"},  # not a monitor field: the document itself changes
        "gone": {"status": "OK"},
    })
    assert found == {"v1", "p1", "i1"}
    assert store.update_objects(ENV, {}) == set()
    v1, p1, i1 = (store.get_object(ENV, oid) for oid in ("v1", "p1", "i1"))
    assert (v1["status"], v1["status_value"], v1["status_timestamp"]) == ("Critical", 2, T0)
    assert (p1["status"], p1["status_value"]) == ("ACTIVE", 1)
    assert i1["name"] == "renamed" and i1["id_path"] == "/lab/r1/h1/i1"
    assert store.get_object(ENV, "gone") is None
    keys = store.update_links(ENV, {("instance-vnic", "i1", "v1"): {"status": "OK", "status_value": 0},
                                    ("host-instance", "h1", "i1"): {"status_text": "fine", "label": "x"},
                                    ("instance-vnic", "i1", "zz"): {"status": "OK"}})
    assert keys == {("instance-vnic", "i1", "v1"), ("host-instance", "h1", "i1")}
    by_type = {doc["link_type"]: doc for doc in store.find_links(ENV)}
    assert by_type["instance-vnic"]["status"] == "OK" and by_type["instance-vnic"]["status_value"] == 0
    assert by_type["host-instance"]["status_text"] == "fine" and by_type["host-instance"]["label"] == "x"
    # monitor fields written in a batch survive a rescan like single updates do
    assert store.upsert_objects(ENV, tree()) == 1  # i1's name comes back from the scan; v1 is unchanged
    assert store.get_object(ENV, "v1")["status_value"] == 2


def test_update_scheduled_scan_is_compare_and_set(store: Store) -> None:
    store.upsert_scheduled_scan(ScheduledScan(id="a", environment=ENV, freq="HOURLY", submit_timestamp=T0,
                                              scheduled_timestamp=T0).to_doc())
    later = T0 + timedelta(hours=1)
    assert store.update_scheduled_scan("a", {"scheduled_timestamp": later}, expect={"scheduled_timestamp": T0})
    # a second manager that read the old value loses
    assert not store.update_scheduled_scan("a", {"scheduled_timestamp": later + timedelta(hours=1)},
                                           expect={"scheduled_timestamp": T0})
    assert store.list_scheduled_scans(ENV)[0]["scheduled_timestamp"] == later
    assert store.update_scheduled_scan("a", {"last_run": later})
    assert not store.update_scheduled_scan("zz", {"last_run": later})


def test_monitoring_status_survives_rescans_and_is_not_a_change(store: Store) -> None:
    store.upsert_objects(ENV, tree())
    store.upsert_links(ENV, [link("instance-vnic", "i1", "v1")])
    store.update_object(ENV, "v1", {"status": "Critical", "status_value": 2, "status_text": "down",
                                    "status_timestamp": T0})
    store.update_link(ENV, ("instance-vnic", "i1", "v1"), {"status": "OK", "status_value": 0})
    # a rescan brings the same documents without the monitor's fields: nothing to write, nothing lost
    assert store.upsert_objects(ENV, tree()) == 0
    assert store.upsert_links(ENV, [link("instance-vnic", "i1", "v1")]) == 0
    assert store.get_object(ENV, "v1")["status"] == "Critical"
    assert store.find_links(ENV)[0]["status"] == "OK"
    # a real change is written and still keeps the status
    changed = tree()
    changed[4]["mac_address"] = "fa:16:3e:00:00:99"
    assert store.upsert_objects(ENV, changed) == 1
    got = store.get_object(ENV, "v1")
    assert got["mac_address"] == "fa:16:3e:00:00:99" and got["status_value"] == 2 and got["status_timestamp"] == T0
    assert [o["status"] for o in store.find_objects(ENV, ids=["v1"])] == ["Critical"]


def test_an_api_status_stays_the_documents_own(store: Store) -> None:
    port = obj("p1", "port", "/lab/p1", status="ACTIVE")
    store.upsert_objects(ENV, [port])
    store.update_object(ENV, "p1", {"status": "Critical", "status_value": 2})
    got = store.get_object(ENV, "p1")
    assert got["status"] == "ACTIVE" and got["status_value"] == 2  # the API's status is not overwritten
    assert store.upsert_objects(ENV, [port]) == 0
    assert store.upsert_objects(ENV, [dict(port, status="DOWN")]) == 1  # an API status change is a change
    got = store.get_object(ENV, "p1")
    assert got["status"] == "DOWN" and got["status_value"] == 2


# -- host keys -------------------------------------------------------------------------------------

def host_key(host: str, key: str, environment: str = ENV) -> dict[str, Any]:
    return {"environment": environment, "host": host, "key_type": "ssh-ed25519", "key": key,
            "fingerprint": f"SHA256:{key[:8]}", "first_seen": T0}


def test_host_keys_are_pinned_on_first_use_only(store: Store) -> None:
    store.add_environment(env_doc())
    store.add_environment(env_doc("other"))
    assert store.get_host_key(ENV, "10.0.0.5") is None
    assert store.pin_host_key(host_key("10.0.0.5", "AAAAfirst")) == host_key("10.0.0.5", "AAAAfirst")
    # a later, different key does not replace the first: the caller gets the pinned one to compare
    assert store.pin_host_key(host_key("10.0.0.5", "AAAAsecond"))["key"] == "AAAAfirst"
    assert store.get_host_key(ENV, "10.0.0.5") == host_key("10.0.0.5", "AAAAfirst")
    # per environment and per host
    assert store.pin_host_key(host_key("10.0.0.5", "AAAAother", "other"))["key"] == "AAAAother"
    assert store.pin_host_key(host_key("[10.0.0.5]:2222", "AAAAport"))["key"] == "AAAAport"
    assert [(k["host"], k["key"]) for k in store.list_host_keys(ENV)] == [
        ("10.0.0.5", "AAAAfirst"), ("[10.0.0.5]:2222", "AAAAport")]
    assert store.list_host_keys("nowhere") == []
    with pytest.raises(ValueError):
        store.pin_host_key({"environment": ENV, "host": "h"})
    assert store.remove_host_key(ENV, "10.0.0.5")
    assert not store.remove_host_key(ENV, "10.0.0.5")
    assert store.get_host_key(ENV, "10.0.0.5") is None
    assert store.remove_environment("other")
    assert store.get_host_key("other", "10.0.0.5") is None
    assert store.get_host_key(ENV, "[10.0.0.5]:2222") is not None
