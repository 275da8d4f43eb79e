"""Reading OpenStack's MySQL/MariaDB databases (read-only) for facts the APIs do not expose.

Layers, source to fetcher: ``access.MysqlReader`` (PyMySQL, read-only session, SELECT only,
tenacity retries on connection errors only) -> ``facts.DbFacts`` (one query per table per scan,
records by host) -> ``fetchers`` (``DbHostNetworkAgents``, ``DbAggregates``).

A scan of an environment with a ``mysql`` section puts a ``DbFacts`` in ``FetchContext.db`` (None
otherwise). Any fetcher may use it; for the host-level fetchers (vedges, vconnectors, OTEPs):

- ``ctx.db.agents(host_id)`` -> ``list[NetworkAgent]``: the host's neutron agents (``binary``,
  ``agent_type``, ``alive``, ``admin_state_up``, parsed ``configurations`` and the shortcuts
  ``bridge_mappings``, ``interface_mappings``, ``tunnel_types``, ``tunneling_ip``).
- ``ctx.db.agent_config(host_id, agent_type)`` -> ``dict | None``: the parsed ``configurations`` of the
  host's agent of that type (e.g. ``"Open vSwitch agent"``, ``"Linux bridge agent"``), None if the host
  has none or its JSON was unparsable.
- ``ctx.db.tunnel_endpoints(host_id)`` -> ``list[TunnelEndpoint]``: ML2's endpoint registry for the host
  (``ip_address``, ``tunnel_type`` vxlan/gre/geneve, ``udp_port`` for vxlan, ``host``).
- ``ctx.db.aggregates()`` -> ``list[Aggregate]`` (nova_api: ``hosts``, ``metadata``).
- ``ctx.db.failed(AGENTS | TUNNEL_ENDPOINTS | AGGREGATES)``: whether that fact set could not be read.
  A fetcher whose objects depend on it should return True from its own ``failed(ctx)`` then, so the
  scan deletes none of them; enrichment-only use can simply go without.

Hosts are matched by the map's host id, or by short name when one side is a FQDN.
"""

from stackmap.discovery.db.facts import AGENTS, AGGREGATES, TUNNEL_ENDPOINTS, DbFacts, DbFailure
from stackmap.discovery.db.records import Aggregate, NetworkAgent, TunnelEndpoint

__all__ = ["AGENTS", "AGGREGATES", "TUNNEL_ENDPOINTS", "Aggregate", "DbFacts", "DbFailure", "NetworkAgent",
           "TunnelEndpoint"]
