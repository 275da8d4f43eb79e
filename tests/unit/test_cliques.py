"""Clique types, their selection, and the walk, in memory and through a real SQLite store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.cliques import (
    MemoryGraph,
    StoreGraph,
    build_cliques,
    constraints_by_focal_type,
    load_clique_constraints,
    load_clique_types,
    priority_score,
    seed_defaults,
    select_clique_types,
)
from stackmap.discovery.links import StoreLookup, find_links, load_link_finders
from stackmap.errors import ConfigError
from stackmap.model import Clique
from stackmap.store import Store, open_store
from tests.store_calls import record_calls
from tests.unit.test_links import ENV, all_links, cloud

Doc = dict[str, Any]

ENV_DOC: Doc = {
    "name": ENV, "environment_type": "OpenStack", "distribution": "Mirantis", "distribution_version": "9.0",
    "mechanism_drivers": ["OVS", "SRIOV"], "type_drivers": "vxlan,vlan",
}


def ctype(id_: str, focal: str = "instance", **fields: Any) -> Doc:
    return {"id": id_, "focal_point_type": focal, "link_types": fields.pop("link_types", ["host-instance"]), **fields}


def defaults() -> tuple[dict[str, Doc], dict[str, list[str]]]:
    return (select_clique_types(ENV_DOC, load_clique_types()),
            constraints_by_focal_type(load_clique_constraints()))


def cliques_of(focal_ids: list[str], docs: list[Doc] | None = None, chosen: dict[str, Doc] | None = None,
               constraints: dict[str, list[str]] | None = None) -> dict[str, Doc]:
    docs = cloud() if docs is None else docs
    default_chosen, default_constraints = defaults()
    focal = [d for d in docs if d["id"] in focal_ids]
    result = build_cliques(ENV, focal, default_chosen if chosen is None else chosen,
                           default_constraints if constraints is None else constraints,
                           MemoryGraph(all_links(docs)))
    return {c["focal_point"]: c for c in result}


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    yield store
    store.close()


# --------------------------------------------------------------------------------------------------
# configuration and seeding


def test_shipped_clique_types_and_constraints() -> None:
    chosen, constraints = defaults()
    host_layer = {"vservice", "vnic", "vconnector", "vedge", "otep", "host_pnic"}
    assert set(chosen) == {"instance", "network", "router", "host", "load_balancer"} | host_layer
    assert chosen["instance"]["id"] == "ovs-vxlan-instance"  # ENV_DOC is an OVS cloud with VXLAN
    # without a mechanism driver that has host-layer types, the generic types remain
    chosen = select_clique_types({**ENV_DOC, "mechanism_drivers": ["SRIOV"]}, load_clique_types())
    assert set(chosen) == {"instance", "network", "router", "host", "load_balancer"}
    assert chosen["instance"]["id"] == "any-instance"
    assert chosen["instance"]["link_types"] == [
        "host-instance", "instance-port", "floatingip-port", "port-network", "network-subnet", "router-network",
        "volume-instance",
    ]
    assert constraints == {"instance": ["network"], "network": ["network"], "vservice": ["network"],
                           "vnic": ["network"]}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("not json", "invalid JSON"),
        ({"id": "x"}, "expected a list"),
        ([{"id": "x", "focal_point_type": "instance", "link_types": []}], "link_types"),
        ([{"id": "x", "focal_point_type": "instance", "link_types": ["hostinstance"]}], "source_type-target_type"),
        ([{"id": "x", "focal_point_type": "instance", "link_types": ["a-b"], "colour": "red"}], "colour"),
        ([ctype("x"), ctype("x")], "given twice"),
    ],
)
def test_bad_clique_types_name_file_and_problem(tmp_path: Path, content: Any, problem: str) -> None:
    path = tmp_path / "clique_types.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError) as err:
        load_clique_types(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_bad_clique_constraint_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "clique_constraints.json"
    path.write_text(json.dumps([{"id": "instance", "focal_point_type": "instance"}]))
    with pytest.raises(ConfigError, match="constraints"):
        load_clique_constraints(path)


def test_seed_defaults_keeps_operator_edits(store: Store) -> None:
    edited = ctype("any-instance", link_types=["host-instance"], name="mine")
    store.upsert_clique_type(edited)
    store.upsert_clique_constraint({"id": "network", "focal_point_type": "network", "constraints": []})

    assert seed_defaults(store) == {"clique_types": len(load_clique_types()) - 1,
                                    "clique_constraints": len(load_clique_constraints()) - 1}
    assert store.get_clique_type("any-instance")["link_types"] == ["host-instance"]
    assert store.get_clique_type("any-instance")["name"] == "mine"
    assert store.get_clique_type("any-router")["link_types"] == ["router-network", "network-subnet"]
    assert {c["id"]: c["constraints"] for c in store.list_clique_constraints()} == {
        "instance": ["network"], "network": [], "vservice": ["network"], "vnic": ["network"]}
    assert seed_defaults(store) == {"clique_types": 0, "clique_constraints": 0}
    # what the scanner will do: select from the store's types
    not_ovs = {**ENV_DOC, "mechanism_drivers": ["SRIOV"]}  # OVS clouds get the OVS types
    assert select_clique_types(not_ovs, store.list_clique_types(ENV))["instance"]["name"] == "mine"


# --------------------------------------------------------------------------------------------------
# choosing a clique type


def test_scoring_prefers_environment_name_then_distribution_then_any() -> None:
    candidates = [
        ctype("fallback"),
        ctype("by-distribution", distribution="mirantis"),
        ctype("wrong-distribution", distribution="RDO"),
        ctype("other-env", environment="staging"),
        ctype("by-name", environment=ENV),
    ]
    assert select_clique_types(ENV_DOC, candidates)["instance"]["id"] == "by-name"
    assert select_clique_types(ENV_DOC, candidates[:4])["instance"]["id"] == "by-distribution"
    assert select_clique_types(ENV_DOC, [candidates[0], candidates[2], candidates[3]])["instance"]["id"] == "fallback"
    assert select_clique_types(ENV_DOC, [candidates[2], candidates[3]]) == {}


def test_scoring_adds_features_and_disqualifies_mismatches() -> None:
    assert priority_score(ENV_DOC, ctype("a", environment="ANY")) == 1
    assert priority_score(ENV_DOC, ctype("a", environment="ANY", distribution="Mirantis",
                                         distribution_version="9.0", mechanism_drivers=["OVS"],
                                         type_drivers="vlan")) == 32 + 16 + 8 + 4
    # any of the environment's mechanism drivers counts, not only the first
    assert priority_score(ENV_DOC, ctype("a", mechanism_drivers="SRIOV")) == 8
    assert priority_score(ENV_DOC, ctype("a", mechanism_drivers=["VPP"])) == 0
    assert priority_score(ENV_DOC, ctype("a", distribution="Mirantis", distribution_version="8.0")) == 0
    assert priority_score(ENV_DOC, ctype("a", type_drivers="gre")) == 0
    assert priority_score(ENV_DOC, ctype("a", environment_type="Kubernetes")) == 0
    assert priority_score(ENV_DOC, ctype("a", environment_type="OpenStack", distribution="Mirantis")) == 32


def test_selection_is_per_focal_type_and_ties_break_by_id() -> None:
    candidates = [ctype("b-any"), ctype("a-any"), ctype("net", focal="network", link_types=["network-subnet"])]
    chosen = select_clique_types(ENV_DOC, candidates)
    assert chosen["instance"]["id"] == "a-any"
    assert chosen["network"]["id"] == "net"
    assert select_clique_types(ENV_DOC, list(reversed(candidates)))["instance"]["id"] == "a-any"


# --------------------------------------------------------------------------------------------------
# the walk


def test_instance_clique_follows_the_default_type() -> None:
    clique = cliques_of(["vm1"])["vm1"]
    assert clique["nodes"][0] == "vm1"
    assert set(clique["nodes"]) == {"vm1", "compute-1", "p1", "fip1", "net-a", "sub-a", "r1", "vol1"}
    assert clique["clique_type"] == "ovs-vxlan-instance"
    assert clique["focal_point_type"] == "instance"
    assert clique["constraints"] == {"network": ["net-a"]}
    assert clique["links"] == [lk["id"] for lk in clique["links_detailed"]]
    assert set(clique["links"]) == {
        "host-instance|compute-1|vm1", "instance-port|vm1|p1", "floatingip-port|fip1|p1",
        "port-network|p1|net-a", "network-subnet|net-a|sub-a", "router-network|r1|net-a",
        "volume-instance|vol1|vm1",
    }
    assert Clique.model_validate(clique).to_doc() == clique


def test_step_after_an_empty_step_still_runs() -> None:
    # vm2 has no floating IP and no volume: the steps after those still run
    clique = cliques_of(["vm2"])["vm2"]
    assert {"net-a", "net-b", "sub-a", "sub-b", "r1"} <= set(clique["nodes"])
    # and a type whose first step finds nothing still reaches the host
    chosen = {"instance": ctype("t", link_types=["volume-instance", "floatingip-port", "host-instance"])}
    assert cliques_of(["vm2"], chosen=chosen)["vm2"]["nodes"] == ["vm2", "compute-2"]


def test_constraint_cuts_a_link_to_another_network() -> None:
    # a router's other networks are one hop further: without the constraint they are reached
    chosen = {"instance": ctype("t", link_types=["instance-port", "port-network", "router-network", "router-network"])}
    free = cliques_of(["vm1"], chosen=chosen, constraints={})["vm1"]
    assert {"net-b", "ext"} <= set(free["nodes"])
    assert free["constraints"] == {}
    held = cliques_of(["vm1"], chosen=chosen)["vm1"]
    assert set(held["nodes"]) == {"vm1", "p1", "net-a", "r1"}
    assert "router-network|r1|net-b" not in held["links"]
    # p-lost's instance-port link names a network vm1 is not on: cut too
    assert "instance-port|vm1|p-lost" in free["links"]
    assert "instance-port|vm1|p-lost" not in held["links"]


def test_constraint_value_from_a_stale_focal_object_cuts_its_port() -> None:
    docs = cloud()
    next(d for d in docs if d["id"] == "vm2")["network"] = ["net-a"]
    clique = cliques_of(["vm2"], docs=docs)["vm2"]
    assert "p2b" not in clique["nodes"] and "net-b" not in clique["nodes"]
    assert "host-instance|compute-2|vm2" in clique["links"]  # links without the attribute pass


def test_network_cliques_accept_string_and_list_network_fields() -> None:
    cliques = cliques_of(["net-a", "net-b"])
    assert cliques["net-a"]["constraints"] == {"network": "net-a"}
    assert set(cliques["net-a"]["nodes"]) == {
        "net-a", "sub-a", "p1", "p2a", "rp-a", "p-vip", "p-dhcp", "vm1", "vm2", "compute-1", "compute-2", "r1"}
    assert cliques["net-b"]["constraints"] == {"network": ["net-b"]}
    assert set(cliques["net-b"]["nodes"]) == {"net-b", "sub-b", "p2b", "rp-b", "vm2", "compute-2", "r1"}


def test_router_host_and_load_balancer_cliques() -> None:
    cliques = cliques_of(["r1", "compute-2", "lb1"])
    assert set(cliques["r1"]["nodes"]) == {"r1", "net-a", "net-b", "ext", "sub-a", "sub-b", "sub-ext"}
    assert set(cliques["compute-2"]["nodes"]) == {"compute-2", "vm2", "p2a", "p2b", "net-a", "net-b"}
    assert set(cliques["lb1"]["nodes"]) == {"lb1", "p-vip", "p1", "p2a", "net-a", "sub-a", "vm1", "vm2"}


def test_objects_without_a_clique_type_get_none() -> None:
    assert cliques_of(["sub-a", "p1", "vol1"]) == {}


def test_implicit_links_are_skipped_unless_the_type_asks_for_them() -> None:
    docs = cloud()
    links = [*all_links(docs), {"environment": ENV, "link_type": "instance-network", "source_id": "vm1",
                                "target_id": "net-a", "source_type": "instance", "target_type": "network",
                                "id": "instance-network|vm1|net-a", "implicit": True, "attributes": {}}]
    focal = [d for d in docs if d["id"] == "vm1"]
    plain = {"instance": ctype("t", link_types=["instance-network"])}
    implicit = {"instance": ctype("t", link_types=["instance-network"], use_implicit_links=True)}
    assert build_cliques(ENV, focal, plain, {}, MemoryGraph(links))[0]["nodes"] == ["vm1"]
    assert build_cliques(ENV, focal, implicit, {}, MemoryGraph(links))[0]["nodes"] == ["vm1", "net-a"]


def test_store_and_memory_graphs_give_identical_cliques(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = cloud()
    links = all_links(docs)
    store.upsert_objects(ENV, docs)
    store.upsert_links(ENV, links)
    chosen, constraints = defaults()
    focal = [d for d in store.find_objects(ENV) if d["type"] in chosen]

    calls = record_calls(monkeypatch, store, "find_links")
    from_store = build_cliques(ENV, focal, chosen, constraints, StoreGraph(store, ENV))
    from_memory = build_cliques(ENV, focal, chosen, constraints, MemoryGraph(links))
    assert len(from_store) == len(focal) == 10  # 2 hosts, 3 networks, 1 router, 3 instances, 1 LB
    assert from_store == from_memory
    # the whole frontier per query: at most two queries per step, never one per node
    steps = sum(len(chosen[f["type"]]["link_types"]) for f in focal)
    assert len(calls) <= 2 * steps
    assert all(len(c["link_types"]) == 1 for c in calls)



def test_scan_pipeline_through_sqlite(sqlite: Store) -> None:
    """Objects in the store -> links from a StoreLookup -> cliques from a StoreGraph -> stored cliques."""
    sqlite.upsert_objects(ENV, cloud())
    links = find_links(ENV, sqlite.find_objects(ENV), StoreLookup(sqlite, ENV), load_link_finders())
    assert sqlite.upsert_links(ENV, links) == len(links)
    assert seed_defaults(sqlite)["clique_types"] == len(load_clique_types())
    chosen = select_clique_types(ENV_DOC, sqlite.list_clique_types(ENV))
    constraints = constraints_by_focal_type(sqlite.list_clique_constraints())
    focal = [d for d in sqlite.find_objects(ENV) if d["type"] in chosen]
    sqlite.replace_cliques(ENV, build_cliques(ENV, focal, chosen, constraints, StoreGraph(sqlite, ENV)))

    stored = sqlite.find_cliques(ENV, focal_point="vm1")[0]
    assert set(stored["nodes"]) == {"vm1", "compute-1", "p1", "fip1", "net-a", "sub-a", "r1", "vol1"}
    assert {c["focal_point"] for c in sqlite.find_cliques(ENV, containing=["p2b"])} == {"vm2", "net-b", "compute-2"}


def test_a_shared_host_does_not_pull_in_its_other_instances() -> None:
    """Steps follow links from the collected nodes of the step's own end types only: the host is
    reached from each instance, but the host's other instances are not (no host-instance forward)."""
    docs: list[Doc] = [{"environment": ENV, "type": "host", "id": "h", "name": "h"}]
    links: list[Doc] = []
    for i in range(2000):
        docs.append({"environment": ENV, "type": "instance", "id": f"vm{i}", "name": f"vm{i}", "network": []})
        links.append({"environment": ENV, "link_type": "host-instance", "source_id": "h", "target_id": f"vm{i}",
                      "source_type": "host", "target_type": "instance", "id": f"host-instance|h|vm{i}",
                      "attributes": {}})
    chosen = {"instance": ctype("t", link_types=["host-instance", "volume-instance"])}
    cliques = build_cliques(ENV, docs[1:], chosen, {}, MemoryGraph(links))
    assert len(cliques) == 2000
    assert all(c["nodes"] == [c["focal_point"], "h"] for c in cliques)


def _lk(link_type: str, source: str, target: str) -> dict[str, str]:
    return {"id": f"{link_type}|{source}|{target}", "link_type": link_type, "source_id": source, "target_id": target}


def test_which_stored_cliques_a_link_change_can_alter() -> None:
    from stackmap.discovery.cliques import clique_affected

    steps = {"link_types": ["host-instance", "instance-port", "port-network", "network-subnet"]}
    held = [_lk("host-instance", "h", "i"), _lk("instance-port", "i", "p"), _lk("port-network", "p", "n"),
            _lk("network-subnet", "n", "s")]
    clique = {"focal_point": "i", "links": [lk["id"] for lk in held], "links_detailed": held}
    # another instance's new port on the same network: the network is reached only by that very step
    assert not clique_affected(clique, steps, [_lk("port-network", "p2", "n")], set())
    assert not clique_affected(clique, steps, [_lk("instance-port", "i2", "p2")], set())
    # a new subnet of the network: the network is in the walk before the network-subnet step
    assert clique_affected(clique, steps, [_lk("network-subnet", "n", "s2")], set())
    # a new port of the focal instance itself
    assert clique_affected(clique, steps, [_lk("instance-port", "i", "p3")], set())
    # a link type the clique type does not walk
    assert not clique_affected(clique, steps, [_lk("port-security_group", "p", "sg")], set())
    # a link the clique held went away (or changed)
    assert clique_affected(clique, steps, [], {"port-network|p|n"})
    assert not clique_affected(clique, steps, [], {"port-network|p2|n"})
