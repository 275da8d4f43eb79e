"""The rows the DB fetchers read, as typed records built from one table row each.

Parsing lives here, apart from the queries, so a bad row (an agent's ``configurations`` that is not
a JSON object) spoils only that row's field, with the reason kept beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# How long after its last heartbeat neutron still calls an agent alive (neutron's agent_down_time default).
AGENT_DOWN_TIME_S = 75
# configurations keys that count things (ports, devices, routers...): they change with every tenant
# action, so the map does not store them (a rescan would rewrite the agent for nothing)
AGENT_COUNTERS = frozenset({"devices", "networks", "ports", "subnets", "routers", "ex_gw_ports", "floating_ips",
                            "interfaces"})
TUNNEL_TYPES = ("vxlan", "gre", "geneve")


def timestamp(value: Any) -> str | None:
    """A DB datetime (naive, UTC by neutron's and nova's convention) as neutron's API prints it."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    return None if value is None else str(value)


def nova_timestamp(value: Any) -> str | None:
    """A DB datetime as nova's API prints it (``2026-11-23T20:08:45.000000``)."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%S.%f")
    return None if value is None else str(value)


def parse_configurations(raw: Any) -> tuple[dict[str, Any], str | None]:
    """An agent's JSON ``configurations`` and, when it cannot be used, why."""
    if raw is None or raw == "":
        return {}, None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return {}, f"not valid JSON: {exc}"
    if not isinstance(value, dict):
        return {}, f"not a JSON object but {type(value).__name__}"
    return value, None


@dataclass(frozen=True)
class NetworkAgent:
    """One row of ``neutron.agents``."""

    id: str
    host: str
    binary: str
    agent_type: str
    topic: str | None
    admin_state_up: bool
    alive: bool
    availability_zone: str | None
    description: str | None
    created_at: str | None
    started_at: str | None
    resources_synced: bool | None
    configurations: dict[str, Any] = field(default_factory=dict)
    configurations_error: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], down_time_s: int = AGENT_DOWN_TIME_S) -> NetworkAgent:
        config, error = parse_configurations(row.get("configurations"))
        age = row.get("heartbeat_age_s")
        synced = row.get("resources_synced")
        return cls(
            id=str(row["id"]), host=str(row.get("host") or ""), binary=str(row.get("binary") or ""),
            agent_type=str(row.get("agent_type") or ""), topic=row.get("topic"),
            admin_state_up=bool(row.get("admin_state_up")),
            alive=age is not None and int(age) <= down_time_s,
            availability_zone=row.get("availability_zone"), description=row.get("description"),
            created_at=timestamp(row.get("created_at")), started_at=timestamp(row.get("started_at")),
            resources_synced=None if synced is None else bool(synced),
            configurations=config, configurations_error=error,
        )

    # what the vedge/vconnector/OTEP fetchers want from an L2 agent's report
    @property
    def bridge_mappings(self) -> dict[str, str]:
        value = self.configurations.get("bridge_mappings")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def interface_mappings(self) -> dict[str, str]:
        value = self.configurations.get("interface_mappings")
        return dict(value) if isinstance(value, dict) else {}

    @property
    def tunnel_types(self) -> list[str]:
        value = self.configurations.get("tunnel_types")
        return [str(t) for t in value] if isinstance(value, list) else []

    @property
    def tunneling_ip(self) -> str | None:
        """The local tunnel endpoint address (OVS reports ``tunneling_ip``; some agents ``local_ip``)."""
        value = self.configurations.get("tunneling_ip") or self.configurations.get("local_ip")
        return str(value) if value else None

    def stable_configurations(self) -> dict[str, Any]:
        return {k: v for k, v in self.configurations.items() if k not in AGENT_COUNTERS}


@dataclass(frozen=True)
class TunnelEndpoint:
    """One row of ``neutron.ml2_<type>_endpoints``: the address ML2 tells other hosts to tunnel to."""

    host: str | None
    ip_address: str
    tunnel_type: str
    udp_port: int | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any], tunnel_type: str) -> TunnelEndpoint:
        port = row.get("udp_port")
        return cls(host=row.get("host"), ip_address=str(row["ip_address"]), tunnel_type=tunnel_type,
                   udp_port=None if port is None else int(port))


@dataclass(frozen=True)
class Aggregate:
    """A ``nova_api.aggregates`` row with its hosts and metadata."""

    id: int
    uuid: str | None
    name: str | None
    created_at: str | None
    hosts: tuple[str, ...] = ()
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def availability_zone(self) -> str | None:
        return self.metadata.get("availability_zone")
