"""The read-only DB layer and DbFacts against real MariaDB databases made from real neutron/nova_api
table definitions (tests/fixtures/db)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pymysql
import pytest

from stackmap.discovery.db.access import DbUnavailable, MysqlReader, ReadOnlyViolation
from stackmap.discovery.db.facts import AGENTS, AGGREGATES, TUNNEL_ENDPOINTS, DbFacts
from stackmap.model import MysqlSection
from stackmap.secrets import SecretBox
from tests.integration.db_fixtures import (
    OpenStackDbs,
    closed_port,
    dhcp_agent,
    l3_agent,
    linuxbridge_agent,
    metadata_agent,
    openstack_dbs,
    ovs_agent,
)

__all__ = ["openstack_dbs"]  # the fixture, imported for pytest

SECRET = "Sup3r-s3cret-pw"


def facts_for(dbs: OpenStackDbs, tmp_path: Path, **overrides: Any) -> DbFacts:
    attempts = overrides.pop("attempts", 2)
    section = MysqlSection.model_validate(dbs.mysql_section(**overrides))
    return DbFacts(MysqlReader(section, SecretBox(tmp_path / "key"), attempts=attempts, retry_wait_max_s=0.2,
                               connect_timeout_s=2), section)


class CountingReader(MysqlReader):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queries: list[str] = []

    def query(self, sql: str, args: tuple[Any, ...] | None = None) -> list[dict[str, Any]]:
        self.queries.append(sql)
        return super().query(sql, args)


# --------------------------------------------------------------------------------------------------
# reading


def test_agents_are_read_by_host_with_their_parsed_configurations(openstack_dbs: OpenStackDbs,
                                                                  tmp_path: Path) -> None:
    dbs = openstack_dbs
    ctl_ovs, dhcp, l3, meta = (ovs_agent("ctl-1", "10.0.0.2", bridge_mappings={"physnet1": "br-ex"}),
                               dhcp_agent("ctl-1"), l3_agent("ctl-1"), metadata_agent("ctl-1"))
    cmp_ovs = ovs_agent("cmp-1.example.org", "10.0.0.11", bridge_mappings={})
    lxb = linuxbridge_agent("cmp-2", "10.0.0.12")
    for agent in (ctl_ovs, dhcp, l3, meta, cmp_ovs):
        dbs.add_agent(agent)
    dbs.add_agent(lxb, heartbeat_age_s=600)  # stopped reporting ten minutes ago
    dbs.execute(f"UPDATE `{dbs.neutron}`.agents SET admin_state_up = 0 WHERE id = %s", (l3["id"],))

    section = MysqlSection.model_validate(dbs.mysql_section())
    reader = CountingReader(section, SecretBox(tmp_path / "key"))
    facts = DbFacts(reader, section)
    try:
        controller = facts.agents("ctl-1")
        assert [a.binary for a in controller] == ["neutron-dhcp-agent", "neutron-l3-agent", "neutron-metadata-agent",
                                                 "neutron-openvswitch-agent"]
        by_binary = {a.binary: a for a in controller}
        ovs = by_binary["neutron-openvswitch-agent"]
        assert (ovs.id, ovs.agent_type, ovs.host, ovs.topic) == (ctl_ovs["id"], "Open vSwitch agent", "ctl-1", "N/A")
        assert ovs.alive and ovs.admin_state_up
        assert ovs.tunneling_ip == "10.0.0.2" and ovs.tunnel_types == ["vxlan"]
        assert ovs.bridge_mappings == {"physnet1": "br-ex"}
        assert ovs.configurations["integration_bridge"] == "br-int" and ovs.configurations_error is None
        assert by_binary["neutron-l3-agent"].admin_state_up is False and by_binary["neutron-l3-agent"].alive
        assert by_binary["neutron-dhcp-agent"].availability_zone == "nova"
        assert by_binary["neutron-dhcp-agent"].configurations["dhcp_driver"].endswith("Dnsmasq")
        # neutron's host is a FQDN, nova's the short name: matched by short name
        assert [a.id for a in facts.agents("cmp-1")] == [cmp_ovs["id"]]
        stopped = facts.agents("cmp-2")[0]
        assert stopped.alive is False and stopped.interface_mappings == {"physnet1": "eth1"}
        assert facts.agent_config("cmp-2", "linux bridge agent") == stopped.configurations
        assert facts.agent_config("ctl-1", "Open vSwitch agent")["tunneling_ip"] == "10.0.0.2"  # type: ignore[index]
        assert facts.agent_config("cmp-2", "Open vSwitch agent") is None
        assert facts.agents("no-such-host") == []
        assert len(facts.agents()) == 6
        # one query for the agents table, however many hosts asked
        assert sum("agents" in q for q in reader.queries) == 1
        assert facts.failures == []
    finally:
        facts.close()


def test_tunnel_endpoints_of_every_type(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    dbs = openstack_dbs
    dbs.add_endpoint("vxlan", "cmp-1", "10.0.0.11")
    dbs.add_endpoint("vxlan", "cmp-2", "10.0.0.12")
    dbs.add_endpoint("gre", "cmp-1", "10.0.1.11")
    dbs.add_endpoint("geneve", "cmp-3", "10.0.2.13")
    facts = facts_for(dbs, tmp_path)
    try:
        cmp1 = facts.tunnel_endpoints("cmp-1")
        assert [(e.tunnel_type, e.ip_address, e.udp_port, e.host) for e in cmp1] == [
            ("gre", "10.0.1.11", None, "cmp-1"), ("vxlan", "10.0.0.11", 4789, "cmp-1")]
        assert [(e.tunnel_type, e.ip_address) for e in facts.tunnel_endpoints("cmp-3")] == [("geneve", "10.0.2.13")]
        assert facts.tunnel_endpoints("cmp-9") == []
        assert not facts.failed(TUNNEL_ENDPOINTS)
    finally:
        facts.close()


def test_a_missing_endpoint_table_only_drops_that_type(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    dbs = openstack_dbs
    dbs.add_endpoint("vxlan", "cmp-1", "10.0.0.11")
    dbs.execute(f"DROP TABLE `{dbs.neutron}`.ml2_geneve_endpoints")  # as on releases before geneve
    facts = facts_for(dbs, tmp_path)
    try:
        assert [e.ip_address for e in facts.tunnel_endpoints("cmp-1")] == ["10.0.0.11"]
        assert facts.failures == []
    finally:
        facts.close()


def test_aggregates_with_hosts_and_metadata(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    dbs = openstack_dbs
    ssd = dbs.add_aggregate(7, "ssd-hosts", ["cmp-2", "cmp-1"], {"ssd": "true", "availability_zone": "fast"})
    dbs.add_aggregate(9, "empty", [], {})
    facts = facts_for(dbs, tmp_path)
    try:
        aggs = {a.id: a for a in facts.aggregates()}
        assert set(aggs) == {7, 9}
        assert (aggs[7].uuid, aggs[7].name, aggs[7].hosts) == (ssd, "ssd-hosts", ("cmp-1", "cmp-2"))
        assert aggs[7].metadata == {"availability_zone": "fast", "ssd": "true"}
        assert aggs[7].availability_zone == "fast" and aggs[7].created_at
        assert aggs[9].hosts == () and aggs[9].metadata == {} and aggs[9].availability_zone is None
    finally:
        facts.close()


def test_malformed_configurations_spoil_only_that_row(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    dbs = openstack_dbs
    broken = ovs_agent("cmp-1", "10.0.0.11")
    broken["configurations"] = '{"tunneling_ip": "10.0.0.11", "bridge_mappings": {'  # truncated JSON
    listed = dhcp_agent("cmp-1")
    listed["configurations"] = '["not", "an", "object"]'
    good = metadata_agent("cmp-1")
    for agent in (broken, listed, good):
        dbs.add_agent(agent)
    facts = facts_for(dbs, tmp_path)
    try:
        agents = {a.binary: a for a in facts.agents("cmp-1")}
        assert agents["neutron-openvswitch-agent"].configurations == {}
        assert "not valid JSON" in (agents["neutron-openvswitch-agent"].configurations_error or "")
        assert agents["neutron-openvswitch-agent"].tunneling_ip is None
        assert "not a JSON object" in (agents["neutron-dhcp-agent"].configurations_error or "")
        assert agents["neutron-metadata-agent"].configurations["nova_metadata_port"] == 8775
        assert facts.agent_config("cmp-1", "Open vSwitch agent") is None
        assert facts.failures == []
    finally:
        facts.close()


# --------------------------------------------------------------------------------------------------
# read-only


def test_writes_are_refused_by_the_layer_and_by_the_session(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    dbs = openstack_dbs
    dbs.add_agent(ovs_agent("cmp-1", "10.0.0.11"))
    section = MysqlSection.model_validate(dbs.mysql_section())
    reader = MysqlReader(section, SecretBox(tmp_path / "key"))
    try:
        for statement in (f"DELETE FROM `{dbs.neutron}`.agents",
                          f"UPDATE `{dbs.neutron}`.agents SET admin_state_up = 0",
                          f"  insert into `{dbs.neutron}`.ml2_gre_endpoints (ip_address) values ('10.9.9.9')",
                          f"DROP DATABASE `{dbs.neutron}`",
                          f"SELECT * FROM `{dbs.neutron}`.agents INTO OUTFILE '/tmp/smt-{dbs.neutron}.txt'",
                          f"SELECT 1; DELETE FROM `{dbs.neutron}`.agents"):
            with pytest.raises(ReadOnlyViolation, match="not a plain SELECT"):
                reader.query(statement)
        assert reader.query("SELECT @@tx_read_only AS ro") == [{"ro": 1}]
        # past the layer's guard, the server itself refuses: the session is READ ONLY
        reader.query("SELECT 1")
        conn = reader._conn
        assert conn is not None
        with conn.cursor() as cur, pytest.raises(pymysql.err.Error, match="READ ONLY"):
            cur.execute(f"DELETE FROM `{dbs.neutron}`.agents")
    finally:
        reader.close()
    with dbs.admin.cursor() as cur:
        cur.execute(f"SELECT COUNT(*) FROM `{dbs.neutron}`.agents")
        assert cur.fetchone() == (1,)
        cur.execute(f"SELECT COUNT(*) FROM `{dbs.neutron}`.ml2_gre_endpoints")
        assert cur.fetchone() == (0,)


# --------------------------------------------------------------------------------------------------
# failures


def test_wrong_password_is_a_clear_error_without_the_password(openstack_dbs: OpenStackDbs, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    facts = facts_for(openstack_dbs, tmp_path, pwd=SECRET)
    try:
        assert facts.agents("cmp-1") == []
        assert facts.tunnel_endpoints("cmp-1") == []
        assert facts.failed(AGENTS) and facts.failed(TUNNEL_ENDPOINTS) and not facts.failed(AGGREGATES)
        messages = [f.message for f in facts.failures]
        assert all("access denied" in m and "user root" in m for m in messages), messages
        assert not any(SECRET in m for m in messages)
        assert SECRET not in capsys.readouterr().err
    finally:
        facts.close()


def test_unreachable_server_fails_fast_after_retries(tmp_path: Path, openstack_dbs: OpenStackDbs) -> None:
    port = closed_port()
    facts = facts_for(openstack_dbs, tmp_path, host="127.0.0.1", port=str(port), pwd=SECRET, attempts=3)
    try:
        started = time.monotonic()
        assert facts.agents("cmp-1") == []
        first = time.monotonic() - started
        assert facts.aggregates() == []
        later = time.monotonic() - started - first
        assert facts.failed(AGENTS) and facts.failed(AGGREGATES)
        message = facts.failures[0].message
        assert f"127.0.0.1:{port}" in message and "cannot connect" in message and SECRET not in message
        assert later < 0.1  # the server is known to be down: no second round of retries
    finally:
        facts.close()


def test_unreachable_raises_for_direct_readers(tmp_path: Path) -> None:
    section = MysqlSection(name="mysql", host="127.0.0.1", port=str(closed_port()), user="stackmap")
    reader = MysqlReader(section, SecretBox(tmp_path / "key"), attempts=1)
    with pytest.raises(DbUnavailable, match="cannot connect"):
        reader.query("SELECT 1")


def test_the_mysql_sections_timeout_and_attempts_bound_a_silent_server(tmp_path: Path) -> None:
    """A server that takes the connection and never greets (a hung mysqld): the section's own read
    timeout (which bounds the greeting too) and attempts decide how long a scan waits for it, not the
    60 s x 3 defaults."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel completes the TCP handshake; nobody ever speaks MySQL
    try:
        section = MysqlSection(name="mysql", host="127.0.0.1", port=str(silent.getsockname()[1]), user="stackmap",
                               connect_timeout_s=0.5, read_timeout_s=0.5, attempts=2)
        reader = MysqlReader(section, SecretBox(tmp_path / "key"), retry_wait_max_s=0.1)
        began = time.monotonic()
        with pytest.raises(DbUnavailable, match="cannot connect"):
            reader.query("SELECT 1")
        waited = time.monotonic() - began
        assert 0.9 <= waited < 3.0  # two attempts of 0.5 s (and a short wait between them)
    finally:
        silent.close()


def test_a_select_only_user_reads_everything(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    """The grants the README names are enough (and the layer needs no more than SELECT)."""
    dbs = openstack_dbs
    dbs.add_agent(ovs_agent("cmp-1", "10.0.0.11"))
    dbs.add_endpoint("vxlan", "cmp-1", "10.0.0.11")
    dbs.add_aggregate(3, "agg", ["cmp-1"], {"ssd": "true"})
    user = f"smt_{dbs.neutron.split('_')[1]}"
    dbs.execute(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", (SECRET,))
    try:
        for table in ("agents", "ml2_vxlan_endpoints", "ml2_gre_endpoints", "ml2_geneve_endpoints"):
            dbs.execute(f"GRANT SELECT ON `{dbs.neutron}`.`{table}` TO '{user}'@'%'")
        for table in ("aggregates", "aggregate_hosts", "aggregate_metadata"):
            dbs.execute(f"GRANT SELECT ON `{dbs.nova_api}`.`{table}` TO '{user}'@'%'")
        facts = facts_for(dbs, tmp_path, user=user, pwd=SECRET)
        try:
            assert [a.binary for a in facts.agents("cmp-1")] == ["neutron-openvswitch-agent"]
            assert [e.ip_address for e in facts.tunnel_endpoints("cmp-1")] == ["10.0.0.11"]
            assert [a.hosts for a in facts.aggregates()] == [("cmp-1",)]
            assert facts.failures == []
        finally:
            facts.close()
    finally:
        dbs.execute(f"DROP USER IF EXISTS '{user}'@'%'")


def test_one_unreadable_database_fails_only_its_facts(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    openstack_dbs.add_agent(ovs_agent("cmp-1", "10.0.0.11"))
    facts = facts_for(openstack_dbs, tmp_path, nova_api_db=f"{openstack_dbs.nova_api}_missing")
    try:
        assert facts.aggregates() == []
        assert [a.host for a in facts.agents("cmp-1")] == ["cmp-1"]  # the server is fine: neutron still read
        assert facts.failed(AGGREGATES) and not facts.failed(AGENTS)
        assert f"{openstack_dbs.nova_api}_missing" in facts.failures[0].message
    finally:
        facts.close()


def test_undecryptable_password_is_a_clear_error(openstack_dbs: OpenStackDbs, tmp_path: Path) -> None:
    sealer = SecretBox(tmp_path / "old.key")
    sealer.create_key()
    section = MysqlSection.model_validate(openstack_dbs.mysql_section(pwd=sealer.seal(SECRET)))
    facts = DbFacts(MysqlReader(section, SecretBox(tmp_path / "other.key")), section)
    try:
        assert facts.agents("cmp-1") == []
        assert "cannot connect" in facts.failures[0].message and "key file" in facts.failures[0].message
        assert SECRET not in facts.failures[0].message
    finally:
        facts.close()
