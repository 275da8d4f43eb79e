"""The event path (handlers/apply.py: relink through a StoreLookup, rebuild touched cliques) with
host-layer objects as the changed holders, on a real SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from handlers.apply import Change, MapUpdater
from stackmap.discovery.links import MemoryLookup, find_links, load_link_finders
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.store_calls import count_results, record_calls
from tests.unit.host_layer import ENV, Doc, cloud, hobj, obj, port, sid

OH, LH = "ovs-1", "lxb-1"
TAP, QBR, OVS = sid(OH, "tapp1-aa"), sid(OH, "qbrp1-aa"), sid(OH, "OVS")


@pytest.fixture
def updater(tmp_path: Path) -> Iterator[MapUpdater]:
    """A map as a full scan leaves it (objects, links, cliques), and the updater events drive."""
    store = open_store(f"sqlite:///{tmp_path}/x.db")
    box = SecretBox(tmp_path / "secret.key")
    add_environment(store, box, EnvironmentConfig.model_validate({
        "name": ENV, "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
        "configuration": [{"name": "OpenStack", "host": "127.0.0.1", "user": "admin", "pwd": "secret"}]}))
    docs = cloud()
    store.upsert_objects(ENV, docs)
    store.upsert_links(ENV, find_links(ENV, docs, MemoryLookup(docs), load_link_finders()))
    up = MapUpdater(store, box, ENV)
    up.reclique(Change(focal_changed={d["id"] for d in docs}))  # every focal object's clique, as a scan
    yield up
    store.close()


def link_states(store: Store) -> dict[tuple[str, str, str], str]:
    return {(lk["link_type"], lk["source_id"], lk["target_id"]): lk["state"] for lk in store.find_links(ENV)}


def nodes_of(store: Store, focal: str) -> set[str]:
    return set(store.find_cliques(ENV, focal_point=focal)[0]["nodes"])


def apply(up: MapUpdater, docs: list[Doc]) -> Change:
    """What a handler does with refreshed objects: store them, relink them, rebuild what they touch."""
    up.store.upsert_objects(ENV, docs)
    change = Change(upserted=docs)
    up.relink(change)
    up.reclique(change)
    return change


def test_a_vnic_moved_to_another_bridge_is_relinked(updater: MapUpdater) -> None:
    store = updater.store
    assert OVS in nodes_of(store, "vm1")
    vnic = store.get_object(ENV, TAP)
    assert vnic is not None
    new_bridge = hobj("vconnector", OH, "qbrnew", parent=f"{OH}-vconnectors", parent_type="vconnectors_folder",
                      connector_type="bridge", interfaces_names=["tapp1-aa"], state="up")
    change = apply(updater, [new_bridge, dict(vnic, master="qbrnew")])
    states = link_states(store)
    assert ("vnic-vconnector", TAP, QBR) not in states
    assert ("vnic-vconnector", TAP, sid(OH, "qbrnew")) in states
    assert ("instance-vnic", "vm1", TAP) in states  # still held, still found
    assert ("vconnector-vedge", QBR, OVS) in states  # held by the old bridge, which did not change
    assert change.links_deleted == 1
    # the instance's clique was rebuilt: the new bridge leads nowhere further
    nodes = nodes_of(store, "vm1")
    assert sid(OH, "qbrnew") in nodes and QBR not in nodes and OVS not in nodes


def test_a_host_refresh_carries_link_state_and_removals(updater: MapUpdater) -> None:
    store = updater.store
    host_docs = [d for d in store.find_objects(ENV) if d.get("host") == OH and d["type"] not in ("host", "instance")]
    for doc in host_docs:
        if doc["id"] == sid(OH, "eth1"):
            doc["state"] = "down"
    apply(updater, host_docs)
    states = link_states(store)
    assert states[("vedge-host_pnic", OVS, sid(OH, "eth1"))] == "down"
    assert states[("host_pnic-network", sid(OH, "eth1"), "vlan-net")] == "down"
    assert states[("vedge-host_pnic", OVS, sid(OH, "eth2"))] == "up"

    assert sid(OH, "eth2") in nodes_of(store, "vm1")
    updater.remove(sid(OH, "eth2"))
    assert not [k for k in link_states(store) if sid(OH, "eth2") in k]
    assert sid(OH, "eth2") not in nodes_of(store, "vm1")


def test_a_port_bound_to_a_host_links_its_tunnel_pnic_to_the_network(updater: MapUpdater,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    store = updater.store
    assert ("host_pnic-network", sid(LH, "eth0"), "net-b") not in link_states(store)
    calls = record_calls(monkeypatch, store, "find_objects")
    updater.store.upsert_objects(ENV, [port("pb", "net-b", LH, "compute:nova", "vm2")])
    updater.relink(Change(upserted=[port("pb", "net-b", LH, "compute:nova", "vm2")]))
    monkeypatch.undo()
    states = link_states(store)
    assert states[("host_pnic-network", sid(LH, "eth0"), "net-b")] == "up"
    assert ("port-network", "pb", "net-b") in states
    assert ("host_pnic-network", sid(OH, "eth0"), "net-b") not in states
    assert len(calls) <= 12  # the port's finders, each batched: not one query per object of the host


def test_a_port_update_reads_its_host_not_the_whole_map(updater: MapUpdater, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relinking a port reads what its links need: not every port and network of the environment
    (which the tunnel pNIC's full computation reads), nor every host's pNICs and oteps, or each
    port update would cost as much as the cloud is large."""
    store = updater.store
    others = [obj("network", f"net-{n}", network=[f"net-{n}"], status="ACTIVE", **{
        "provider:network_type": "vxlan", "provider:physical_network": None, "provider:segmentation_id": 2000 + n})
        for n in range(100)]
    others += [port(f"px{n}", f"net-{n % 100}", OH, "compute:nova", "vm1") for n in range(300)]
    for n in range(60):  # other hosts' pNICs and tunnel endpoints: read through the store's host index
        others += [obj("host_pnic", f"x{n}-eth{k}", host=f"x{n}", local_name=f"eth{k}",
                       ip_addresses=[f"10.9.{n}.{k}/24"]) for k in range(4)]
        others.append(obj("otep", f"x{n}-otep", host=f"x{n}", ip_address=f"10.9.{n}.0"))
    store.upsert_objects(ENV, others)
    read = count_results(monkeypatch, store, "find_objects")
    pb = port("pb", "net-b", LH, "compute:nova", "vm2")
    store.upsert_objects(ENV, [pb])
    updater.relink(Change(upserted=[pb]))
    monkeypatch.undo()
    states = link_states(store)
    assert states[("host_pnic-network", sid(LH, "eth0"), "net-b")] == "up"  # what the port brings
    assert ("host_pnic-network", sid(LH, "eth0"), "net-a") in states  # what was there stays
    assert sum(read) < 30, read  # the map holds more than 400 ports and networks, and 300 other pNICs and oteps


def test_a_port_relink_reads_its_own_links_not_its_pnics(updater: MapUpdater, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port's tunnel pNIC link is held by the port but does not touch it: it is compared with the
    stored one read by its key, not with every network link of that pNIC (one per network of the
    host's instances: hundreds on a busy host)."""
    store = updater.store
    nets = [obj("network", f"net-{n}", network=[f"net-{n}"], status="ACTIVE", **{
        "provider:network_type": "vxlan", "provider:physical_network": None, "provider:segmentation_id": 2000 + n})
        for n in range(100)]
    ports = [port(f"px{n}", f"net-{n}", OH, "compute:nova", "vm1") for n in range(100)]
    store.upsert_objects(ENV, nets + ports)
    updater.relink(Change(upserted=ports))
    eth0 = sid(OH, "eth0")
    assert len(store.find_links(ENV, source_id=eth0, link_type="host_pnic-network")) > 100
    read = count_results(monkeypatch, store, "find_links")
    moved = dict(ports[7], status="DOWN")
    store.upsert_objects(ENV, [moved])
    updater.relink(Change(upserted=[moved], restated=[moved["id"]]))
    monkeypatch.undo()
    assert link_states(store)[("port-network", "px7", "net-7")] == "down"
    assert ("host_pnic-network", eth0, "net-7") in link_states(store)
    assert sum(read) < 30, read


def test_a_link_on_a_reversed_directed_step_rebuilds_the_clique(updater: MapUpdater) -> None:
    """The vNIC clique's first step is ``vnic-instance``: a new ``instance-vnic`` link must count."""
    store = updater.store
    vnic = store.get_object(ENV, TAP)
    assert vnic is not None
    apply(updater, [dict(vnic, instance_id=None)])
    assert "vm1" not in nodes_of(store, TAP)
    change = apply(updater, [dict(vnic, instance_id="vm1")])
    assert [lk["link_type"] for lk in change.links_added] == ["instance-vnic"]
    assert "vm1" in nodes_of(store, TAP)
    assert store.find_cliques(ENV, focal_point=TAP)[0]["clique_type"] == "ovs-vxlan-vnic"
