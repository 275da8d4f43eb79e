"""Whole scans with a mysql section: the fake cloud serves the APIs over real HTTP, the real local
MariaDB holds neutron/nova_api databases made from the rig's real schemas, and a real SQLite store
keeps the map. Expected documents come from the rows the test inserted, never from a previous scan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.scan import Scanner, ScanOptions, ScanSummary
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, ScanStatus, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer
from tests.integration.db_fixtures import (
    OpenStackDbs,
    closed_port,
    dhcp_agent,
    l3_agent,
    metadata_agent,
    openstack_dbs,
    ovs_agent,
)

__all__ = ["openstack_dbs"]

pytestmark = pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")

ENV = "dbenv"
SECRET = "Wr0ng-but-s3cret"
SIZE = CloudSize(projects=2, hosts=2, instances=3, networks=2, routers=1, floating_ips=1, security_groups=0,
                 volumes=1, snapshots=0, flavors=1, images=1, aggregates=2, load_balancers=0)


@dataclass
class DbRig:
    cloud: FakeCloud
    server: FakeCloudServer
    dbs: OpenStackDbs
    store: Store
    box: SecretBox
    agents: dict[str, dict[str, Any]]  # object id -> the agent row inserted

    def configure(self, **mysql: Any) -> None:
        sections: list[dict[str, Any]] = [{"name": "OpenStack", "auth_url": self.server.auth_url,
                                           "user": self.cloud.user, "pwd": self.cloud.password, "project": "admin"}]
        if mysql.pop("enabled", True):
            sections.append(self.dbs.mysql_section(**mysql))
        add_environment(self.store, self.box, EnvironmentConfig.model_validate(
            {"name": ENV, "mechanism_drivers": ["OVS"], "type_drivers": "vxlan", "configuration": sections}),
            replace=True)

    def scan(self, options: ScanOptions | None = None) -> ScanSummary:
        return Scanner(self.store, self.box, ENV, options or ScanOptions()).run()

    def of_type(self, otype: str) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in self.store.find_objects(ENV, type=otype)}


@pytest.fixture
def rig(tmp_path: Path, openstack_dbs: OpenStackDbs) -> Iterator[DbRig]:
    cloud = FakeCloud(SIZE)
    region = cloud.region()
    controller = next(h for h in region.hosts.values() if h["zone"] == "internal")["name"]
    computes = sorted(h["name"] for h in region.hosts.values() if h["zone"] != "internal")
    rows = [ovs_agent(controller, "10.0.0.2"), dhcp_agent(controller), l3_agent(controller),
            metadata_agent(controller)]
    rows += [ovs_agent(host, f"10.0.0.{11 + i}", bridge_mappings={}) for i, host in enumerate(computes)]
    agents = {}
    for row in rows:
        openstack_dbs.add_agent(row)
        agents[stable_id(row["host"], row["binary"])] = row
    with FakeCloudServer(cloud) as server:
        store = open_store(f"sqlite:///{tmp_path}/s.db")
        r = DbRig(cloud, server, openstack_dbs, store, SecretBox(tmp_path / "key"), agents)
        r.configure()
        yield r
        store.close()


def assert_complete(summary: ScanSummary) -> None:
    assert summary.status == ScanStatus.COMPLETED.value, summary.errors
    assert summary.errors == []


def test_agents_are_mapped_under_their_hosts(rig: DbRig) -> None:
    summary = rig.scan()
    assert_complete(summary)
    stored = rig.of_type("network_agent")
    assert set(stored) == set(rig.agents)
    assert summary.objects_by_type["network_agent"] == len(rig.agents)
    hosts = rig.of_type("host")
    folders = rig.of_type("network_agents_folder")
    assert set(folders) == {stable_id(h, "network_agents") for h in hosts}  # one per host, agents or not
    for oid, doc in stored.items():
        row = rig.agents[oid]
        config = json.loads(row["configurations"]) if isinstance(row["configurations"], str) else \
            row["configurations"]
        assert doc["parent_id"] == stable_id(row["host"], "network_agents")
        assert doc["id_path"] == f"{hosts[row['host']]['id_path']}/{doc['parent_id']}/{oid}"
        assert (doc["agent_id"], doc["binary"], doc["agent_type"], doc["host"], doc["topic"], doc["name"]) == (
            row["id"], row["binary"], row["agent_type"], row["host"], row["topic"], row["binary"])
        assert doc["alive"] is True and doc["admin_state_up"] is True
        # counters (devices, ports, routers...) stay out of the map: they change with every tenant action
        assert doc["configurations"] == {k: v for k, v in config.items() if k not in (
            "devices", "networks", "ports", "subnets", "routers", "ex_gw_ports", "floating_ips", "interfaces")}
        assert "heartbeat_timestamp" not in doc and "load" not in doc


def test_rescans_follow_the_database_and_write_nothing_when_it_is_unchanged(rig: DbRig) -> None:
    assert_complete(rig.scan())
    for row in rig.agents.values():  # heartbeats move on, counters change: not changes of the map
        rig.dbs.heartbeat(row["id"], 0)
    rig.dbs.execute(f"UPDATE `{rig.dbs.neutron}`.agents SET configurations = "
                    "JSON_SET(configurations, '$.devices', 42)")
    second = rig.scan()
    assert_complete(second)
    assert (second.objects_written, second.objects_deleted) == (0, 0)

    dead_id, dead = next((oid, row) for oid, row in rig.agents.items() if row["binary"] == "neutron-l3-agent")
    rig.dbs.heartbeat(dead["id"], 3600)
    gone_id, gone = next((oid, row) for oid, row in rig.agents.items() if row["binary"] == "neutron-dhcp-agent")
    rig.dbs.execute(f"DELETE FROM `{rig.dbs.neutron}`.agents WHERE id = %s", (gone["id"],))
    third = rig.scan()
    assert_complete(third)
    stored = rig.of_type("network_agent")
    assert stored[dead_id]["alive"] is False
    assert gone_id not in stored and third.objects_deleted == 1
    assert third.objects_written == 1


@pytest.mark.parametrize("broken", ["password", "server"])
def test_unreadable_database_is_an_error_and_nothing_is_pruned(rig: DbRig, broken: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert_complete(rig.scan())
    before = rig.of_type("network_agent")
    # the cloud loses an instance and the agents table loses a row: neither may be pruned now
    server = next(s for s in rig.cloud.items("servers") if s["OS-EXT-SRV-ATTR:host"])
    rig.cloud.delete_servers({server["id"]})
    rig.dbs.execute(f"DELETE FROM `{rig.dbs.neutron}`.agents LIMIT 1")
    rig.configure(pwd=SECRET, **({"port": str(closed_port())} if broken == "server" else {}))

    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    errors = " | ".join(summary.errors)
    assert "mysql agents" in errors
    assert ("access denied" if broken == "password" else "cannot connect") in errors
    assert "nothing deleted" in errors and "network_agent" in errors
    assert summary.objects_deleted == 0
    assert rig.of_type("network_agent") == before  # kept, unchanged
    assert server["id"] in rig.of_type("instance")
    messages = rig.store.find_messages(ENV)
    assert any("mysql agents" in m["message"] for m in messages)  # the scan's record says why too
    shown = json.dumps(summary.as_dict()) + capsys.readouterr().err + json.dumps(messages, default=str)
    assert SECRET not in shown

    rig.configure()  # fixed: the next scan prunes what is really gone
    summary = rig.scan()
    assert_complete(summary)
    assert len(rig.of_type("network_agent")) == len(before) - 1
    assert server["id"] not in rig.of_type("instance")


def test_without_a_mysql_section_there_are_no_agent_folders(rig: DbRig) -> None:
    rig.configure(enabled=False)
    assert_complete(rig.scan())
    assert rig.of_type("network_agents_folder") == {} and rig.of_type("network_agent") == {}


def test_a_sync_of_network_agents_alone(rig: DbRig) -> None:
    assert_complete(rig.scan())
    gone = next(row for row in rig.agents.values() if row["binary"] == "neutron-metadata-agent")
    rig.dbs.execute(f"DELETE FROM `{rig.dbs.neutron}`.agents WHERE id = %s", (gone["id"],))
    summary = rig.scan(ScanOptions(resource_types=["network_agent"], inventory_only=True))
    assert_complete(summary)
    assert summary.objects_by_type == {"network_agent": len(rig.agents) - 1}
    assert stable_id(gone["host"], gone["binary"]) not in rig.of_type("network_agent")


def test_db_aggregates_give_the_same_documents_as_the_api(rig: DbRig, tmp_path: Path) -> None:
    assert_complete(rig.scan())
    from_api = rig.of_type("aggregate")
    for agg in rig.cloud.items("aggregates"):
        rig.dbs.add_aggregate(agg["id"], agg["name"], agg["hosts"], agg["metadata"])
    scanners = json.loads((Path(__file__).resolve().parents[2] / "config" / "scanners.json").read_text())
    for entry in scanners["scanners"]["ScanAggregatesRoot"]:
        if entry["fetcher"] == "ApiAggregates":
            entry["fetcher"] = "DbAggregates"
    custom = tmp_path / "scanners.json"
    custom.write_text(json.dumps(scanners))
    summary = rig.scan(ScanOptions(scanners_file=str(custom)))
    assert_complete(summary)
    from_db = rig.of_type("aggregate")
    assert set(from_db) == set(from_api) != set()
    fields = ("name", "aggregate_id", "hosts", "metadata", "availability_zone", "parent_id", "region", "id_path")
    for oid, doc in from_db.items():
        assert {k: doc[k] for k in fields} == {k: from_api[oid][k] for k in fields}
    refs = {(o["parent_id"], o["ref_id"]) for o in rig.store.find_objects(ENV, type="host_ref")}
    assert refs == {(stable_id("aggregate", "RegionOne", str(a["id"])), h)
                    for a in rig.cloud.items("aggregates") for h in a["hosts"]}
