"""Scan the real OpenStack rig: the map must equal what the APIs report, before and after deleting
half of a scripted topology."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.scan import Scanner, ScanOptions
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.e2e import topology

pytestmark = pytest.mark.e2e

FOLDER = {"network": "networks", "router": "routers", "floating_ip": "floating_ips",
          "security_group": "security_groups", "volume": "volumes"}


@pytest.fixture(scope="module")
def conn() -> Any:
    return topology.connect()


@pytest.fixture(scope="module")
def topo(conn: Any) -> Iterator[topology.Topology]:
    made = topology.Topology()
    try:
        topology.build(conn, made)
        yield made
    finally:
        topology.cleanup(conn, made)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Store, SecretBox]]:
    store = open_store(f"sqlite:///{tmp_path / 'e2e.db'}")
    box = SecretBox(tmp_path / "key")
    add_environment(store, box, EnvironmentConfig.model_validate(topology.rig_environment()))
    yield store, box
    store.close()


def scan(store: Store, box: SecretBox, **options: Any) -> Any:
    summary = Scanner(store, box, "rig", ScanOptions(**options)).run()
    assert summary.status == "completed", summary.errors
    return summary


def assert_map_equals_api(store: Store, truth: dict[str, dict[str, dict[str, Any]]]) -> None:
    for otype, expected in truth.items():
        mapped = {o["id"]: o for o in store.find_objects("rig", type=otype)}
        assert set(mapped) == set(expected), f"{otype}: missing {set(expected) - set(mapped)}, " \
                                             f"ghosts {set(mapped) - set(expected)}"
        for oid, facts in expected.items():
            obj = mapped[oid]
            if otype == "instance":
                assert obj["parent_id"] == stable_id(facts["host"], "instances") and obj["host"] == facts["host"]
            elif otype in ("subnet", "port"):
                assert obj["parent_id"] == stable_id(facts["network"], otype + "s")
            elif otype in FOLDER and facts["project"]:
                assert obj["parent_id"] == stable_id(facts["project"], FOLDER[otype])
            assert obj["id_path"].endswith(f"/{obj['parent_id']}/{oid}")
    expected_links = {
        "instance-port": {(p["device_id"], pid) for pid, p in truth["port"].items()
                          if p["device_owner"].startswith("compute:") and p["device_id"] in truth["instance"]},
        "port-network": {(pid, p["network"]) for pid, p in truth["port"].items()},
        "network-subnet": {(s["network"], sid) for sid, s in truth["subnet"].items()},
        "router-network": {(p["device_id"], p["network"]) for p in truth["port"].values()
                           if p["device_owner"] in ("network:router_gateway", "network:router_interface")},
        "floatingip-port": {(fid, f["port"]) for fid, f in truth["floating_ip"].items() if f["port"]},
        "host-instance": {(i["host"], iid) for iid, i in truth["instance"].items()},
    }
    if "volume" in truth:
        expected_links["volume-instance"] = {(vid, sid) for vid, v in truth["volume"].items() for sid in v["servers"]}
    for link_type, pairs in expected_links.items():
        found = {(lk["source_id"], lk["target_id"]) for lk in store.find_links("rig", link_type=link_type)}
        assert found == pairs, f"{link_type}: missing {pairs - found}, extra {found - pairs}"
    for iid in truth["instance"]:
        cliques = store.find_cliques("rig", focal_point=iid)
        assert len(cliques) == 1, f"no clique for instance {iid}"
        nodes = set(cliques[0]["nodes"])
        ports = {pid for pid, p in truth["port"].items() if p["device_id"] == iid}
        assert ports <= nodes and {truth["port"][p]["network"] for p in ports} <= nodes


def test_map_equals_api_truth_then_again_after_deleting_half(conn: Any, topo: topology.Topology,
                                                             env: tuple[Store, SecretBox]) -> None:
    store, box = env
    first = scan(store, box)
    assert first.objects_written > 0 and first.api_calls < 60
    assert_map_equals_api(store, topology.api_truth(conn))
    again = scan(store, box)
    assert (again.objects_written, again.links_written, again.cliques_written) == (0, 0, 0)
    removed = topology.delete_half(conn, topo)
    after = scan(store, box)
    assert after.objects_deleted >= sum(len(v) for v in removed.values())
    assert_map_equals_api(store, topology.api_truth(conn))
    for ids in removed.values():
        for oid in ids:
            assert store.get_object("rig", oid) is None
            assert store.find_links("rig", touching=[oid]) == []
            assert store.find_cliques("rig", focal_point=oid) == []
