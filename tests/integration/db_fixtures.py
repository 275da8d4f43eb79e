"""Throwaway OpenStack databases on the real local MariaDB (root, empty password, 127.0.0.1:3306).

Imported by the DB fetcher test modules. Each test gets its own ``smt_<tag>_neutron`` and
``smt_<tag>_nova_api`` databases, created from the table definitions captured from a real Zed
deployment (``tests/fixtures/db``), filled through a separate *writable* admin connection (never
through the read-only layer under test) and dropped afterwards.

The rows are shaped like those real agents write: ``configurations`` as the Zed OVS, Linux bridge,
DHCP, L3 and metadata agents report them, heartbeats set relative to the server's own clock.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pymysql
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "db"
HOST = os.environ.get("STACKMAP_TEST_MYSQL_HOST", "127.0.0.1")
PORT = int(os.environ.get("STACKMAP_TEST_MYSQL_PORT", "3306"))


def _server_up() -> bool:
    try:
        with socket.create_connection((HOST, PORT), timeout=2):
            return True
    except OSError:
        return False


def admin_connection(database: str | None = None) -> pymysql.connections.Connection[Any]:
    return pymysql.connect(host=HOST, port=PORT, user="root", password="", database=database, autocommit=True,
                           charset="utf8mb4")


def statements(sql_file: Path) -> list[str]:
    return [s.strip() for s in sql_file.read_text().split(";\n") if s.strip()]


@dataclass
class OpenStackDbs:
    """The throwaway databases of one test and a writable connection to fill them."""

    neutron: str
    nova_api: str
    admin: pymysql.connections.Connection[Any]

    def execute(self, sql: str, args: Any = None) -> int:
        with self.admin.cursor() as cur:
            return int(cur.execute(sql, args))

    def mysql_section(self, **overrides: Any) -> dict[str, Any]:
        section = {"name": "mysql", "host": HOST, "port": str(PORT), "user": "root", "pwd": "",
                   "neutron_db": self.neutron, "nova_db": "nova", "nova_api_db": self.nova_api}
        section.update(overrides)
        return section

    # -- neutron ----------------------------------------------------------------------------------
    def add_agent(self, agent: dict[str, Any], heartbeat_age_s: int = 5) -> None:
        row = dict(agent)
        row["configurations"] = row["configurations"] if isinstance(row["configurations"], str) else \
            json.dumps(row["configurations"])
        columns = list(row)
        names = ", ".join(f"`{c}`" for c in columns)
        values = ", ".join(["%s"] * len(columns))
        self.execute(
            f"INSERT INTO `{self.neutron}`.agents ({names}, created_at, started_at, heartbeat_timestamp) "
            f"VALUES ({values}, UTC_TIMESTAMP() - INTERVAL 3 DAY, UTC_TIMESTAMP() - INTERVAL 1 DAY, "
            "UTC_TIMESTAMP() - INTERVAL %s SECOND)", [*row.values(), heartbeat_age_s])

    def heartbeat(self, agent_id: str, age_s: int = 0) -> None:
        self.execute(f"UPDATE `{self.neutron}`.agents SET heartbeat_timestamp = UTC_TIMESTAMP() - INTERVAL %s SECOND "
                     "WHERE id = %s", (age_s, agent_id))

    def add_endpoint(self, tunnel_type: str, host: str, ip: str) -> None:
        if tunnel_type == "vxlan":
            self.execute(f"INSERT INTO `{self.neutron}`.ml2_vxlan_endpoints (ip_address, udp_port, host) "
                         "VALUES (%s, 4789, %s)", (ip, host))
        else:
            self.execute(f"INSERT INTO `{self.neutron}`.ml2_{tunnel_type}_endpoints (ip_address, host) "
                         "VALUES (%s, %s)", (ip, host))

    # -- nova_api ---------------------------------------------------------------------------------
    def add_aggregate(self, agg_id: int, name: str, hosts: list[str], metadata: dict[str, str]) -> str:
        agg_uuid = str(uuid.uuid4())
        self.execute(f"INSERT INTO `{self.nova_api}`.aggregates (id, uuid, name, created_at) "
                     "VALUES (%s, %s, %s, UTC_TIMESTAMP())", (agg_id, agg_uuid, name))
        for host in hosts:
            self.execute(f"INSERT INTO `{self.nova_api}`.aggregate_hosts (host, aggregate_id, created_at) "
                         "VALUES (%s, %s, UTC_TIMESTAMP())", (host, agg_id))
        for key, value in metadata.items():
            self.execute(f"INSERT INTO `{self.nova_api}`.aggregate_metadata (aggregate_id, `key`, `value`, created_at) "
                         "VALUES (%s, %s, %s, UTC_TIMESTAMP())", (agg_id, key, value))
        return agg_uuid


@pytest.fixture
def openstack_dbs() -> Iterator[OpenStackDbs]:
    if not _server_up():
        pytest.fail(f"MariaDB is not listening on {HOST}:{PORT} (the DB fetcher tests need it: "
                    "apt-get install mariadb-server, root with an empty password over TCP)")
    tag = uuid.uuid4().hex[:10]
    dbs = OpenStackDbs(neutron=f"smt_{tag}_neutron", nova_api=f"smt_{tag}_nova_api", admin=admin_connection())
    try:
        for name, fixture in ((dbs.neutron, "neutron.sql"), (dbs.nova_api, "nova_api.sql")):
            dbs.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
            dbs.execute(f"USE `{name}`")
            for statement in statements(FIXTURES / fixture):
                dbs.execute(statement)
        yield dbs
    finally:
        for name in (dbs.neutron, dbs.nova_api):
            dbs.execute(f"DROP DATABASE IF EXISTS `{name}`")
        dbs.admin.close()


def closed_port() -> int:
    """A local TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- agent rows as Zed's agents report themselves -------------------------------------------------

def _agent(binary: str, agent_type: str, topic: str, host: str, configurations: Any, *,
           availability_zone: str | None = None, admin_state_up: bool = True) -> dict[str, Any]:
    return {"id": str(uuid.uuid4()), "agent_type": agent_type, "binary": binary, "topic": topic, "host": host,
            "admin_state_up": int(admin_state_up), "configurations": configurations,
            "availability_zone": availability_zone, "load": 0, "resources_synced": None,
            "resource_versions": json.dumps({"Network": "1.1", "Port": "1.7", "Subnet": "1.1", "SecurityGroup": "1.5",
                                             "SecurityGroupRule": "1.3", "Trunk": "1.1", "SubPort": "1.0"})}


def ovs_agent(host: str, tunneling_ip: str, *, bridge_mappings: dict[str, str] | None = None,
              devices: int = 3) -> dict[str, Any]:
    return _agent("neutron-openvswitch-agent", "Open vSwitch agent", "N/A", host, {
        "arp_responder_enabled": False, "baremetal_smartnic": False,
        "bridge_mappings": bridge_mappings if bridge_mappings is not None else {"physnet1": "br-ex"},
        "datapath_type": "system", "devices": devices, "enable_distributed_routing": False, "extensions": [],
        "in_distributed_mode": False, "integration_bridge": "br-int", "l2_population": False,
        "log_agent_heartbeats": False,
        "ovs_capabilities": {"datapath_types": ["netdev", "system"],
                             "iface_types": ["geneve", "gre", "internal", "patch", "system", "tap", "vxlan"]},
        "ovs_hybrid_plug": False, "resource_provider_bandwidths": {}, "resource_provider_hypervisors": {},
        "resource_provider_inventory_defaults": {"allocation_ratio": 1.0, "min_unit": 1, "step_size": 1,
                                                 "reserved": 0},
        "tunnel_types": ["vxlan"], "tunneling_ip": tunneling_ip, "vhostuser_socket_dir": "/var/run/openvswitch",
    })


def linuxbridge_agent(host: str, tunneling_ip: str) -> dict[str, Any]:
    return _agent("neutron-linuxbridge-agent", "Linux bridge agent", "N/A", host, {
        "bridge_mappings": {}, "devices": 2, "extensions": [], "interface_mappings": {"physnet1": "eth1"},
        "l2_population": True, "tunnel_types": ["vxlan"], "tunneling_ip": tunneling_ip,
    })


def dhcp_agent(host: str, networks: int = 2) -> dict[str, Any]:
    return _agent("neutron-dhcp-agent", "DHCP agent", "dhcp_agent", host, {
        "dhcp_driver": "neutron.agent.linux.dhcp.Dnsmasq", "dhcp_lease_duration": 86400,
        "log_agent_heartbeats": False, "networks": networks, "notifies_port_ready": True, "ports": 2 * networks,
        "subnets": networks,
    }, availability_zone="nova")


def l3_agent(host: str) -> dict[str, Any]:
    return _agent("neutron-l3-agent", "L3 agent", "l3_agent", host, {
        "agent_mode": "legacy", "ex_gw_ports": 1, "extensions": [], "floating_ips": 1,
        "handle_internal_only_routers": True, "interface_driver": "openvswitch", "interfaces": 2,
        "log_agent_heartbeats": False, "routers": 1,
    }, availability_zone="nova")


def metadata_agent(host: str) -> dict[str, Any]:
    return _agent("neutron-metadata-agent", "Metadata agent", "N/A", host, {
        "log_agent_heartbeats": False, "metadata_proxy_socket": "/var/lib/neutron/metadata_proxy",
        "nova_metadata_host": "controller", "nova_metadata_port": 8775,
    })
