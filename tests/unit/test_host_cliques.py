"""Host-layer cliques: the shipped OVS and Linux-bridge clique types walked over real links in a real store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stackmap.discovery.cliques import (
    MemoryGraph,
    StoreGraph,
    build_cliques,
    constraints_by_focal_type,
    load_clique_constraints,
    load_clique_types,
    seed_defaults,
    select_clique_types,
)
from stackmap.discovery.links import MemoryLookup, StoreLookup, find_links, load_link_finders
from stackmap.model import Clique
from stackmap.store import Store, open_store
from tests.store_calls import record_calls
from tests.unit.host_layer import ENV, Doc, cloud, lxb_host, networks, ovs_host, sid

OVS_ENV: Doc = {"name": ENV, "environment_type": "OpenStack", "mechanism_drivers": ["OVS"],
               "type_drivers": "vxlan,vlan"}
OVS_VLAN_ENV: Doc = {**OVS_ENV, "type_drivers": "vlan"}
LXB_ENV: Doc = {**OVS_ENV, "mechanism_drivers": ["LXB"], "type_drivers": "vxlan"}
LXB_VLAN_ENV: Doc = {**LXB_ENV, "type_drivers": "vlan,flat"}

OH, LH = "ovs-1", "lxb-1"
TAP, QBR, OVS, OTEP, ETH0 = (sid(OH, "tapp1-aa"), sid(OH, "qbrp1-aa"), sid(OH, "OVS"), sid(OH, "otep", "vxlan"),
                             sid(OH, "eth0"))
PATH_TYPES = ["vnic", "vconnector", "vedge", "otep", "host_pnic", "network"]


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[Store]:
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    yield store
    store.close()


def scan_into(store: Store, docs: list[Doc], env_doc: Doc) -> None:
    """What a scan does after the inventory: links from the store, cliques from the store's links."""
    store.upsert_objects(ENV, docs)
    links = find_links(ENV, store.find_objects(ENV), StoreLookup(store, ENV), load_link_finders())
    store.upsert_links(ENV, links)
    seed_defaults(store)
    chosen = select_clique_types(env_doc, store.list_clique_types(ENV))
    constraints = constraints_by_focal_type(store.list_clique_constraints())
    focal = [d for d in store.find_objects(ENV) if d["type"] in chosen]
    store.replace_cliques(ENV, build_cliques(ENV, focal, chosen, constraints, StoreGraph(store, ENV)))


def clique_of(store: Store, focal: str) -> Doc:
    found = store.find_cliques(ENV, focal_point=focal)
    assert len(found) == 1, f"no clique for {focal}"
    return found[0]


def path(clique: Doc, start: str, types: list[str]) -> list[str]:
    """A path through the clique's links from ``start`` whose nodes have ``types`` in order."""
    kinds = {}
    neighbours: dict[str, set[str]] = {}
    for link in clique["links_detailed"]:
        kinds[link["source_id"]], kinds[link["target_id"]] = link["source_type"], link["target_type"]
        neighbours.setdefault(link["source_id"], set()).add(link["target_id"])
        neighbours.setdefault(link["target_id"], set()).add(link["source_id"])

    def walk(node: str, rest: list[str]) -> list[str] | None:
        if not rest:
            return [node]
        for nxt in sorted(neighbours.get(node, ())):
            if kinds.get(nxt) == rest[0] and (tail := walk(nxt, rest[1:])) is not None:
                return [node, *tail]
        return None

    found = walk(start, types[1:])
    assert found is not None, f"no {' -> '.join(types)} path from {start} in {clique['nodes']}"
    return found


# --------------------------------------------------------------------------------------------------
# the done-when: an instance-like vNIC's clique walks vNIC -> bridge -> vEdge -> OTEP -> pNIC -> network


def test_ovs_vxlan_instance_vnic_clique_walks_to_the_network(sqlite: Store) -> None:
    scan_into(sqlite, cloud(), OVS_ENV)
    clique = clique_of(sqlite, TAP)
    assert clique["clique_type"] == "ovs-vxlan-vnic"
    assert path(clique, TAP, PATH_TYPES) == [TAP, QBR, OVS, OTEP, ETH0, "net-a"]
    assert {"vm1", TAP, QBR, OVS, OTEP, ETH0, "net-a"} <= set(clique["nodes"])
    assert Clique.model_validate(clique).to_doc() == clique
    # an instance vNIC names no network of its own, so its clique is not cut by one; given one, it is
    assert {"vlan-net", "ext"} <= set(clique["nodes"])
    docs = cloud()
    next(d for d in docs if d["id"] == TAP)["network"] = "net-a"
    scan_into(sqlite, docs, OVS_ENV)
    assert not {"vlan-net", "ext"} & set(clique_of(sqlite, TAP)["nodes"])


def test_ovs_vxlan_instance_clique_has_the_api_and_the_host_path(sqlite: Store) -> None:
    scan_into(sqlite, cloud(), OVS_ENV)
    clique = clique_of(sqlite, "vm1")
    assert clique["clique_type"] == "ovs-vxlan-instance"
    assert clique["constraints"] == {"network": ["net-a"]}
    assert path(clique, "vm1", ["instance", *PATH_TYPES]) == ["vm1", TAP, QBR, OVS, OTEP, ETH0, "net-a"]
    assert {OH, "p1", "net-a", "sub-a"} <= set(clique["nodes"])
    nodes = set(clique["nodes"])
    # directed steps: nothing of the other host, of the DHCP namespace, or of other networks
    assert not {n for n in nodes if n.startswith(LH)}
    assert sid(OH, "qdhcp-net-a", "tapd-1") not in nodes and sid(OH, "qdhcp-net-a") not in nodes
    assert not nodes & {"ext", "vlan-net", "net-b", "p2", "vm2"}
    # the OVS bridge's other pNICs are reached, but the constraint cuts their networks
    assert "host_pnic-network|" + sid(OH, "eth1") + "|vlan-net" not in clique["links"]


def test_ovs_vservice_clique(sqlite: Store) -> None:
    scan_into(sqlite, cloud(), OVS_ENV)
    service = sid(OH, "qdhcp-net-a")
    clique = clique_of(sqlite, service)
    assert clique["clique_type"] == "ovs-vxlan-vservice"
    assert path(clique, service, ["vservice", "vnic", "vedge", "otep", "host_pnic", "network"])[-1] == "net-a"
    assert TAP not in clique["nodes"] and QBR not in clique["nodes"]


def test_ovs_network_clique_reaches_every_host_carrying_it(sqlite: Store) -> None:
    scan_into(sqlite, cloud(), OVS_ENV)
    nodes = set(clique_of(sqlite, "net-a")["nodes"])
    assert {"sub-a", "p1", "vm1", ETH0, sid(LH, "eth0"), OTEP, OVS, TAP, QBR, sid(OH, "qdhcp-net-a", "tapd-1"),
            sid(OH, "qdhcp-net-a")} <= nodes
    assert sid(OH, "eth1") not in nodes and "vlan-net" not in nodes


def test_every_host_layer_object_gets_a_clique(sqlite: Store) -> None:
    scan_into(sqlite, cloud(), OVS_ENV)
    by_focal = {c["focal_point"]: c for c in sqlite.find_cliques(ENV)}
    for doc in sqlite.find_objects(ENV):
        if doc["type"] in ("vnic", "vservice", "vconnector", "vedge", "otep", "host_pnic", "network", "instance"):
            assert doc["id"] in by_focal, doc["id"]
    assert {ETH0, "net-a"} <= set(by_focal[OTEP]["nodes"])
    assert {OVS, OTEP, "net-a"} <= set(by_focal[ETH0]["nodes"])
    assert {TAP, "vm1", OTEP, ETH0} <= set(by_focal[OVS]["nodes"])


def test_ovs_vlan_instance_clique_goes_through_the_physnet_bridge(sqlite: Store) -> None:
    h = "ovs-v"
    docs = [*networks(), *ovs_host(h, "10.3.0.1", vm="vmv", vm_port="pv")]
    for doc in docs:
        if doc["id"] == "pv":
            doc["network_id"] = "vlan-net"
        if doc["id"] == "vmv":
            doc["network"] = ["vlan-net"]
    scan_into(sqlite, docs, OVS_VLAN_ENV)
    clique = clique_of(sqlite, "vmv")
    assert clique["clique_type"] == "ovs-vlan-instance"
    assert path(clique, "vmv", ["instance", "vnic", "vconnector", "vedge", "host_pnic", "network"]) == [
        "vmv", sid(h, "tappv-aa"), sid(h, "qbrpv-aa"), sid(h, "OVS"), sid(h, "eth1"), "vlan-net"]
    assert not [n for n in clique["nodes"] if "otep" in n]


def test_linux_bridge_vxlan_and_vlan_cliques(sqlite: Store) -> None:
    scan_into(sqlite, cloud(), LXB_ENV)
    vxlan = clique_of(sqlite, "vm2")
    assert vxlan["clique_type"] == "lxb-vxlan-instance"
    assert path(vxlan, "vm2", ["instance", "vnic", "vconnector", "otep", "host_pnic", "network"]) == [
        "vm2", sid(LH, "tapp2-bb"), sid(LH, "brqnet-a"), sid(LH, "otep", "vxlan-1001"), sid(LH, "eth0"), "net-a"]
    assert not {n for n in vxlan["nodes"] if n.startswith(OH)}
    vlan = clique_of(sqlite, "vm3")
    assert path(vlan, "vm3", ["instance", "vnic", "vconnector", "host_pnic", "network"]) == [
        "vm3", sid(LH, "tapp3-cc"), sid(LH, "brqvlan-net"), sid(LH, "eth1"), "vlan-net"]
    assert "net-a" not in vlan["nodes"]


def test_linux_bridge_vlan_types_for_a_vlan_only_cloud() -> None:
    chosen = select_clique_types(LXB_VLAN_ENV, load_clique_types())
    assert chosen["instance"]["id"] == "lxb-vlan-instance"
    assert "vedge" not in chosen and "otep" not in chosen
    assert select_clique_types(OVS_VLAN_ENV, load_clique_types())["instance"]["id"] == "ovs-vlan-instance"
    # an OVS cloud with overlays gets the VXLAN types, which also walk the VLAN steps
    ovs = select_clique_types(OVS_ENV, load_clique_types())["instance"]
    assert ovs["id"] == "ovs-vxlan-instance" and "vedge-host_pnic" in ovs["link_types"]


# --------------------------------------------------------------------------------------------------
# the walk's direction


def _instance_cliques(docs: list[Doc], directed: bool) -> Doc:
    links = find_links(ENV, docs, MemoryLookup(docs), load_link_finders())
    ctype = dict(select_clique_types(OVS_ENV, load_clique_types())["instance"], directed=directed)
    focal = [d for d in docs if d["id"] == "vm-0"]
    return build_cliques(ENV, focal, {"instance": ctype}, constraints_by_focal_type(load_clique_constraints()),
                         MemoryGraph(links))[0]


def test_directed_steps_keep_other_hosts_out_of_an_instance_clique() -> None:
    docs = [*networks(), *ovs_host("ovs-0", "10.2.0.1", vm="vm-0", vm_port="p0"),
            *ovs_host("ovs-9", "10.2.0.9", vm="vm-9", vm_port="p9")]
    directed = _instance_cliques(docs, directed=True)
    assert not [n for n in directed["nodes"] if n.startswith("ovs-9")]
    # the same steps walked both ways would pull in every host on the instance's network
    undirected = _instance_cliques(docs, directed=False)
    assert sid("ovs-9", "eth0") in undirected["nodes"]


def test_directed_walk_queries_stay_bounded(sqlite: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = [*networks(), *lxb_host()]
    for n in range(5):
        docs += ovs_host(f"ovs-{n}", f"10.4.0.{n + 1}", vm=f"vm-{n}", vm_port=f"p{n}")
    scan_into(sqlite, docs, OVS_ENV)
    chosen = select_clique_types(OVS_ENV, sqlite.list_clique_types(ENV))
    focal = sqlite.find_objects(ENV, ids=["vm-0", "net-a", sid("ovs-0", "tapp0-aa")])
    calls = record_calls(monkeypatch, sqlite, "find_links")
    cliques = build_cliques(ENV, focal, chosen, constraints_by_focal_type(sqlite.list_clique_constraints()),
                            StoreGraph(sqlite, ENV))
    assert len(cliques) == 3
    steps = sum(len(chosen[f["type"]]["link_types"]) for f in focal)
    assert len(calls) <= 2 * steps
    assert all(len(c["link_types"]) == 1 for c in calls)


def test_cliques_walked_together_equal_cliques_walked_alone(sqlite: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store graph walks the cliques of one type in lockstep (a query per step for all of them);
    each clique must come out exactly as its own walk makes it, node order included."""
    docs = [*networks(), *lxb_host()]
    for n in range(6):
        docs += ovs_host(f"ovs-{n}", f"10.4.0.{n + 1}", vm=f"vm-{n}", vm_port=f"p{n}")
    scan_into(sqlite, docs, OVS_ENV)
    chosen = select_clique_types(OVS_ENV, sqlite.list_clique_types(ENV))
    constraints = constraints_by_focal_type(sqlite.list_clique_constraints())
    focal = [d for d in sqlite.find_objects(ENV) if d["type"] in chosen]
    assert len({f["type"] for f in focal}) >= 6 and len(focal) >= 30
    alone = build_cliques(ENV, focal, chosen, constraints, MemoryGraph(sqlite.find_links(ENV)))
    calls = record_calls(monkeypatch, sqlite, "find_links")
    together = build_cliques(ENV, focal, chosen, constraints, StoreGraph(sqlite, ENV))
    assert [(c["focal_point"], c["nodes"], c["links"]) for c in together] == \
        [(c["focal_point"], c["nodes"], c["links"]) for c in alone]
    assert sum(len(c["links"]) for c in together) > len(focal)  # real walks, not empty ones
    steps_per_type = sum(len(chosen[t]["link_types"]) for t in {f["type"] for f in focal})
    assert len(calls) <= 2 * steps_per_type  # per step and type, not per step and clique
