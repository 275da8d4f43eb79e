"""``DbFacts``: what one scan reads from OpenStack's databases, read once and shared by every fetcher.

Each fact set (agents, tunnel endpoints, aggregates) is read with one query per table the first time
a fetcher asks for it, for all hosts at once, then served from memory by host. A fact set that could
not be read is recorded in ``failures`` and reads as empty; fetchers that depend on it report
themselves failed (``failed(...)``), so the scan keeps what the store has of their objects.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from stackmap.discovery.db.access import DbError, MissingTable, MysqlReader, quote_identifier
from stackmap.discovery.db.records import (
    AGENT_DOWN_TIME_S,
    TUNNEL_TYPES,
    Aggregate,
    NetworkAgent,
    TunnelEndpoint,
    nova_timestamp,
)
from stackmap.logging import get_logger
from stackmap.model import EnvironmentConfig, MysqlSection
from stackmap.secrets import SecretBox

log = get_logger("stackmap.discovery.db")

AGENTS = "agents"
TUNNEL_ENDPOINTS = "tunnel_endpoints"
AGGREGATES = "aggregates"

T = TypeVar("T")


@dataclass(frozen=True)
class DbFailure:
    facts: str  # AGENTS, TUNNEL_ENDPOINTS or AGGREGATES
    message: str


def _short(host: str) -> str:
    return host.split(".", 1)[0]


class _ByHost(dict[str, list[T]]):
    """Records by the host name their table gives; found by the map's host id, or by its short name
    when one side is a FQDN (neutron's ``host`` option and nova's host name need not agree)."""

    def __init__(self, items: list[T], host_of: Callable[[T], str | None]) -> None:
        super().__init__()
        self.short: dict[str, list[T]] = defaultdict(list)
        for item in items:
            host = host_of(item)
            if host:
                self.setdefault(host, []).append(item)
                self.short[_short(host)].append(item)

    def of(self, host_id: str) -> list[T]:
        found = self.get(host_id)
        if found is not None:
            return list(found)
        return list(self.short.get(_short(host_id), []))


class DbFacts:
    """The database facts of one scan (construct per scan, ``close()`` at its end)."""

    def __init__(self, reader: MysqlReader, section: MysqlSection, *,
                 agent_down_time_s: int = AGENT_DOWN_TIME_S) -> None:
        self.reader = reader
        self.neutron_db = section.neutron_db
        self.nova_api_db = section.nova_api_db
        self.region = section.region
        self.agent_down_time_s = agent_down_time_s
        self.failures: list[DbFailure] = []
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def for_environment(cls, env: EnvironmentConfig, box: SecretBox, **reader_options: Any) -> DbFacts | None:
        """The facts of an environment with a mysql section; None when it has none."""
        section = env.section("mysql")
        if section is None:
            return None
        return cls(MysqlReader(section, box, **reader_options), section)

    def close(self) -> None:
        self.reader.close()

    # -- the interface fetchers use ---------------------------------------------------------------
    def failed(self, facts: str) -> bool:
        """Whether a fact set was asked for and could not be read."""
        return any(f.facts == facts for f in self.failures)

    def note_failure(self, facts: str, message: str) -> None:
        """A fetcher found its facts unusable (not unreadable): same consequences as a read failure."""
        self.failures.append(DbFailure(facts, message))
        log.warning("database facts unusable", facts=facts, error=message)

    def agents(self, host_id: str | None = None) -> list[NetworkAgent]:
        """Neutron agents of a host (all agents when ``host_id`` is None), ordered by binary."""
        by_host: _ByHost[NetworkAgent] = self._get(AGENTS, self._read_agents)
        if host_id is None:
            return sorted((a for agents in by_host.values() for a in agents), key=lambda a: (a.host, a.binary))
        return sorted(by_host.of(host_id), key=lambda a: (a.binary, a.agent_type))

    def agent_config(self, host_id: str, agent_type: str) -> dict[str, Any] | None:
        """The parsed ``configurations`` of the host's agent of that type (``"Open vSwitch agent"``,
        ``"Linux bridge agent"``...; compared case-insensitively), or None when there is no such agent
        or its configurations were unparsable."""
        wanted = agent_type.lower()
        for agent in self.agents(host_id):
            if agent.agent_type.lower() == wanted and agent.configurations_error is None:
                return dict(agent.configurations)
        return None

    def tunnel_endpoints(self, host_id: str) -> list[TunnelEndpoint]:
        """The ML2 tunnel endpoint registry's entries for a host (one per tunnel type it registered)."""
        by_host: _ByHost[TunnelEndpoint] = self._get(TUNNEL_ENDPOINTS, self._read_tunnel_endpoints)
        return sorted(by_host.of(host_id), key=lambda e: (e.tunnel_type, e.ip_address))

    def aggregates(self) -> list[Aggregate]:
        """Nova host aggregates (from the nova_api database), with hosts and metadata, by id."""
        found: list[Aggregate] = self._get(AGGREGATES, self._read_aggregates)
        return list(found)

    # -- loading ----------------------------------------------------------------------------------
    def _get(self, facts: str, read: Callable[[], Any]) -> Any:
        with self._lock:
            if facts not in self._loaded:
                try:
                    self._loaded[facts] = read()
                except DbError as exc:
                    self.failures.append(DbFailure(facts, str(exc)))
                    log.warning("database facts unavailable", facts=facts, error=str(exc))
                    self._loaded[facts] = _empty(facts)
            return self._loaded[facts]

    def _table(self, database: str, table: str) -> str:
        return f"{quote_identifier(database)}.{quote_identifier(table)}"

    def _read_agents(self) -> _ByHost[NetworkAgent]:
        # the heartbeat's age comes from the server's clock, so a skewed scanner clock cannot make agents dead
        rows = self.reader.query(
            "SELECT a.*, TIMESTAMPDIFF(SECOND, a.heartbeat_timestamp, UTC_TIMESTAMP()) AS heartbeat_age_s "
            f"FROM {self._table(self.neutron_db, 'agents')} a ORDER BY a.host, a.`binary`")
        agents = []
        for row in rows:
            agent = NetworkAgent.from_row(row, self.agent_down_time_s)
            if agent.configurations_error is not None:
                log.warning("agent configurations unparsable", agent_id=agent.id, host=agent.host,
                            binary=agent.binary, error=agent.configurations_error)
            agents.append(agent)
        return _ByHost(agents, lambda a: a.host)

    def _read_tunnel_endpoints(self) -> _ByHost[TunnelEndpoint]:
        endpoints: list[TunnelEndpoint] = []
        for kind in TUNNEL_TYPES:
            try:
                rows = self.reader.query(
                    f"SELECT * FROM {self._table(self.neutron_db, f'ml2_{kind}_endpoints')} ORDER BY ip_address")
            except MissingTable:
                log.info("no tunnel endpoint table for this type", tunnel_type=kind)  # older neutron: no geneve
                continue
            endpoints.extend(TunnelEndpoint.from_row(row, kind) for row in rows)
        return _ByHost(endpoints, lambda e: e.host)

    def _read_aggregates(self) -> list[Aggregate]:
        aggs = self.reader.query(f"SELECT * FROM {self._table(self.nova_api_db, 'aggregates')} ORDER BY id")
        hosts = self.reader.query(
            f"SELECT aggregate_id, host FROM {self._table(self.nova_api_db, 'aggregate_hosts')} ORDER BY host")
        meta = self.reader.query(
            f"SELECT aggregate_id, `key`, `value` FROM {self._table(self.nova_api_db, 'aggregate_metadata')} "
            "ORDER BY `key`")
        hosts_of: dict[int, list[str]] = defaultdict(list)
        for row in hosts:
            if row.get("host"):
                hosts_of[int(row["aggregate_id"])].append(str(row["host"]))
        meta_of: dict[int, dict[str, str]] = defaultdict(dict)
        for row in meta:
            meta_of[int(row["aggregate_id"])][str(row["key"])] = str(row["value"])
        return [Aggregate(id=int(row["id"]), uuid=row.get("uuid"), name=row.get("name"),
                          created_at=nova_timestamp(row.get("created_at")), hosts=tuple(hosts_of[int(row["id"])]),
                          metadata=meta_of[int(row["id"])]) for row in aggs]


def _empty(facts: str) -> Any:
    if facts == AGGREGATES:
        return []
    return _ByHost([], lambda _item: None)
