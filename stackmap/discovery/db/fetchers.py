"""DB fetchers: inventory documents from what only OpenStack's databases say.

They read the scan's ``DbFacts`` (``ctx.db``), never the database directly, so each table is read
once per scan whatever the number of hosts. Without a mysql section (``ctx.db`` is None) they return
nothing; when a fact set could not be read they report themselves failed, so the scan deletes none of
their objects.
"""

from __future__ import annotations

from typing import ClassVar

from stackmap.discovery.api.fetchers import Doc, FetchContext, Fetcher
from stackmap.discovery.db.facts import AGENTS, AGGREGATES
from stackmap.discovery.db.records import Aggregate, NetworkAgent
from stackmap.model import stable_id


class _DbFetcher(Fetcher):
    facts: ClassVar[str]

    def failed(self, ctx: FetchContext) -> bool:
        return ctx.db is not None and ctx.db.failed(self.facts)


def agent_doc(agent: NetworkAgent, object_id: str, parent_id: str) -> Doc:
    """A network agent as the map keeps it: without heartbeat times or counters, which change
    without the agent changing, so an unchanged cloud rescans without writes."""
    doc: Doc = {
        "id": object_id, "name": agent.binary, "parent_id": parent_id, "agent_id": agent.id,
        "binary": agent.binary, "agent_type": agent.agent_type, "host": agent.host, "topic": agent.topic,
        "alive": agent.alive, "admin_state_up": agent.admin_state_up,
        "availability_zone": agent.availability_zone, "description": agent.description,
        "created_at": agent.created_at, "started_at": agent.started_at, "resources_synced": agent.resources_synced,
        "configurations": agent.stable_configurations(),
    }
    if agent.configurations_error is not None:
        doc["configurations_error"] = agent.configurations_error
    return doc


class DbHostNetworkAgents(_DbFetcher):
    """Neutron agents under each host's network agents folder.

    Id: ``stable_id(host id, binary)``. Not the agent's uuid (Calipso used ``<binary>-<uuid>``): neutron
    gives an agent a new uuid when its row is deleted and re-registered, which would make a new map
    object for the same daemon, and the uuid is what the OVS vedge is identified by. A host that
    runs two agents of one binary (different agent types) gets the uuid appended for the second.
    """

    name = "DbHostNetworkAgents"
    object_type = "network_agent"
    facts = AGENTS

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        if ctx.db is None:
            return []
        out = []
        for folder in parents:
            host_id = folder.get("parent_id")
            if not host_id:
                continue
            used: set[str] = set()
            for agent in ctx.db.agents(host_id):
                if not agent.binary:
                    continue
                oid = stable_id(host_id, agent.binary)
                if oid in used:
                    oid = stable_id(host_id, agent.binary, agent.id)
                used.add(oid)
                out.append(agent_doc(agent, oid, folder["id"]))
        return out


def aggregate_doc(agg: Aggregate, region: str, parent_id: str) -> Doc:
    """The same document ApiAggregates makes from nova's API, so either source can fill the folder."""
    return {"id": stable_id("aggregate", region, str(agg.id)), "aggregate_id": agg.id, "name": agg.name,
            "uuid": agg.uuid, "availability_zone": agg.availability_zone, "created_at": agg.created_at,
            "hosts": list(agg.hosts), "metadata": dict(agg.metadata), "deleted": False, "deleted_at": None,
            "parent_id": parent_id, "region": region}


class DbAggregates(_DbFetcher):
    """Host aggregates from the nova_api database: an alternative to ApiAggregates (same documents,
    so ApiAggregateHosts works under either) for clouds whose API policy hides aggregates from the
    scanning user. Select it in a custom scanners file; the databases are one region's, which the
    mysql section names when the environment has several."""

    name = "DbAggregates"
    object_type = "aggregate"
    facts = AGGREGATES

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        if ctx.db is None:
            return []
        folders = {p["parent_id"]: p for p in parents if p.get("parent_id")}  # region -> aggregates folder
        region = ctx.db.region
        if region is None:
            if len(folders) > 1:
                ctx.db.note_failure(AGGREGATES, "the environment has several regions: say in the mysql section's "
                                    "'region' whose databases it names")
                return []
            region = next(iter(folders), None)
        folder = folders.get(region or "")
        if folder is None or region is None:
            return []
        return [aggregate_doc(agg, region, folder["id"]) for agg in ctx.db.aggregates()]
