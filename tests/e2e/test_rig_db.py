"""The DB fetchers against the real rig's neutron and nova_api databases (real schemas, rows written
by real neutron-server and nova-api): what they read must equal what the APIs say."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.db.facts import DbFacts
from stackmap.discovery.scan import Scanner, ScanOptions
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.e2e import topology

pytestmark = pytest.mark.e2e

RIG_HOST = "rig-compute-1"
# the rig shares the machine's MariaDB; root reads every OpenStack database over TCP
MYSQL = {"name": "mysql", "host": "127.0.0.1", "port": "3306", "user": "root", "pwd": ""}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def conn() -> Any:
    return topology.connect()


@pytest.fixture
def aggregate(conn: Any) -> Iterator[Any]:
    """A real aggregate made through nova's API, so nova-api writes the nova_api rows."""
    agg = conn.compute.create_aggregate(name=f"smdb-{uuid.uuid4().hex[:6]}", availability_zone="smdb-az")
    try:
        conn.compute.add_host_to_aggregate(agg, RIG_HOST)
        conn.compute.set_aggregate_metadata(agg, {"ssd": "true", "pinned": "false"})
        yield conn.compute.get_aggregate(agg.id)
    finally:
        conn.compute.remove_host_from_aggregate(agg, RIG_HOST)
        conn.compute.delete_aggregate(agg)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Store, SecretBox]]:
    store = open_store(f"sqlite:///{tmp_path / 'e2e.db'}")
    box = SecretBox(tmp_path / "key")
    add_environment(store, box, EnvironmentConfig.model_validate(topology.rig_environment(MYSQL)))
    yield store, box
    store.close()


def facts(tmp_path: Path) -> DbFacts:
    found = DbFacts.for_environment(EnvironmentConfig.model_validate(
        {"name": "rig", "configuration": [{"name": "OpenStack", "auth_url": "http://x", "user": "u", "pwd": "p"},
                                          MYSQL]}), SecretBox(tmp_path / "key"))
    assert found is not None
    return found


def test_agents_equal_the_network_api(conn: Any, tmp_path: Path) -> None:
    db = facts(tmp_path)
    try:
        from_db = {(a.id, a.host, a.binary, a.agent_type, a.admin_state_up, a.alive) for a in db.agents()}
        assert db.failures == []
    finally:
        db.close()
    from_api = {(a.id, a.host, a.binary, a.agent_type, a.is_admin_state_up, a.is_alive) for a in conn.network.agents()}
    assert from_db == from_api  # the rig runs no agents: both empty there, equal anywhere


def test_aggregates_equal_the_compute_api(aggregate: Any, tmp_path: Path) -> None:
    db = facts(tmp_path)
    try:
        mine = next(a for a in db.aggregates() if a.id == aggregate.id)
        assert db.failures == []
    finally:
        db.close()
    assert (mine.name, mine.uuid, list(mine.hosts)) == (aggregate.name, aggregate.uuid, [RIG_HOST])
    assert mine.metadata == aggregate.metadata == {"availability_zone": "smdb-az", "ssd": "true", "pinned": "false"}
    assert mine.availability_zone == aggregate.availability_zone == "smdb-az"


def test_a_scan_with_the_mysql_section(aggregate: Any, env: tuple[Store, SecretBox], conn: Any,
                                       tmp_path: Path) -> None:
    store, box = env
    summary = Scanner(store, box, "rig", ScanOptions(inventory_only=True)).run()
    assert summary.status == "completed", summary.errors
    folders = {o["id"] for o in store.find_objects("rig", type="network_agents_folder")}
    assert stable_id(RIG_HOST, "network_agents") in folders
    agents = {o["agent_id"] for o in store.find_objects("rig", type="network_agent")}
    assert agents == {a.id for a in conn.network.agents() if a.host in {h["id"] for h in
                                                                        store.find_objects("rig", type="host")}}
    oid = stable_id("aggregate", "RegionOne", str(aggregate.id))
    from_api = store.get_object("rig", oid)
    assert from_api is not None

    scanners = json.loads((ROOT / "config" / "scanners.json").read_text())
    for entry in scanners["scanners"]["ScanAggregatesRoot"]:
        entry["fetcher"] = "DbAggregates" if entry["fetcher"] == "ApiAggregates" else entry["fetcher"]
    custom = tmp_path / "scanners.json"
    custom.write_text(json.dumps(scanners))
    summary = Scanner(store, box, "rig", ScanOptions(inventory_only=True, scanners_file=str(custom))).run()
    assert summary.status == "completed", summary.errors
    from_db = store.get_object("rig", oid)
    assert from_db is not None
    for key in ("name", "aggregate_id", "hosts", "metadata", "availability_zone", "created_at", "parent_id",
                "region"):
        assert from_db[key] == from_api[key], key
    if "uuid" in from_api:
        assert from_db["uuid"] == from_api["uuid"]
    refs = {o["ref_id"] for o in store.find_objects("rig", type="host_ref") if o["parent_id"] == oid}
    assert refs == {RIG_HOST}
