"""API fetchers: turn the collections of one scan into inventory documents under their parents.

A fetcher is called once per hierarchy level with *all* parents of that level and returns the
children of all of them (``parent_id`` set to one of the parents). It reads collections from the
scan's ResourceCache, so it never makes a call per parent. Documents keep the API's own fields,
except those whose names the inventory reserves (``type``, ``parent_id``...), which are renamed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from stackmap.discovery.api import resources as R
from stackmap.discovery.api.resources import Resource, ResourceCache
from stackmap.discovery.host.facts import FactsSource, HostFailure
from stackmap.model import stable_id

if TYPE_CHECKING:
    from stackmap.discovery.db.facts import DbFacts

Doc = dict[str, Any]
RESERVED = frozenset({"environment", "type", "parent_id", "parent_type", "id_path", "name_path", "show_in_tree",
                      "last_scanned", "object_name", "clique"})
# fields that change without the object changing (heartbeats, counters): a rescan must not rewrite for them
VOLATILE = frozenset({"updated_at", "disabled_reason", "last_seen_up", "forced_down"})


@dataclass
class FetchContext:
    environment: str
    cache: ResourceCache
    env_doc: dict[str, Any]
    hosts: FactsSource | None = None  # host-level commands (SSH); None when the environment has no CLI access
    db: DbFacts | None = None  # OpenStack's databases (read-only); None when the environment has no mysql section
    objects: dict[str, Doc] = field(default_factory=dict)  # this walk's parents and placed objects, by id
    host_failures: list[HostFailure] = field(default_factory=list)
    unread_types: dict[str, str] = field(default_factory=dict)  # type -> why nothing of it could be read
    scratch: dict[tuple[str, ...], Any] = field(default_factory=dict)  # facts one level reads for the next
    _indexes: dict[tuple[str, str], dict[str, list[Doc]]] = field(default_factory=dict)

    def report_host_failure(self, host: str, types: Iterable[str], message: str) -> None:
        """A host, or some of its facts, could not be read: keep its objects of these types (and
        what lies under them) instead of pruning them, and tell the operator."""
        self.host_failures.append(HostFailure(host, tuple(sorted(set(types))), message))

    def report_unread(self, types: Iterable[str], reason: str) -> None:
        """No host could be asked at all (no CLI access configured): keep every object of these types."""
        for otype in types:
            self.unread_types.setdefault(otype, reason)

    def subnets_by_network(self, region: str) -> dict[str, list[Doc]]:
        key = ("subnets", region)
        if key not in self._indexes:
            self._indexes[key] = index_by(self.cache.get(R.SUBNETS, region), "network_id")
        return self._indexes[key]


def clean(raw: dict[str, Any], kind: str, drop: Iterable[str] = ()) -> Doc:
    """An API item as document fields: reserved names get the kind as prefix (``type`` -> ``volume_type``)."""
    out: Doc = {}
    dropped = set(drop)
    for key, value in raw.items():
        if key in dropped or key.endswith("_links") or key == "links":
            continue
        out[f"{kind}_{key}" if key in RESERVED else key] = value
    return out


def index_by(items: Iterable[Doc], field: str) -> dict[str, list[Doc]]:
    out: dict[str, list[Doc]] = defaultdict(list)
    for item in items:
        value = item.get(field)
        if value is not None:
            out[str(value)].append(item)
    return out


class Fetcher:
    """Base: ``fetch(parents, ctx)`` returns children documents for all parents at once."""

    name: ClassVar[str] = ""
    object_type: ClassVar[str] = ""
    resources: ClassVar[tuple[Resource, ...]] = ()
    needs_hosts: ClassVar[bool] = False  # reads host facts (FetchContext.hosts), not only the APIs
    registry: ClassVar[dict[str, type[Fetcher]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            Fetcher.registry[cls.name] = cls

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        raise NotImplementedError

    def failed(self, ctx: FetchContext) -> bool:
        """Whether a collection this fetcher needs could not be read (its objects must not be pruned)."""
        return any(ctx.cache.failed(res) for res in self.resources)


def folder_id(parent_id: str, types_name: str) -> str:
    return stable_id(parent_id, types_name)


# Objects filed under a folder of the object one of their own fields names (``_NetworkScoped``,
# ``ApiSnapshots``): type -> (that field, the folder's name). Finding them by that field reads one
# folder, not every object of the type.
FILED_BY: dict[str, tuple[str, str]] = {
    "subnet": ("network_id", "subnets"),
    "port": ("network_id", "ports"),
    "snapshot": ("volume_id", "snapshots"),
}


def _by_folder(parents: list[Doc]) -> dict[str, Doc]:
    """Folders by the id of the object that owns them (a folder's parent)."""
    return {p["parent_id"]: p for p in parents if p.get("parent_id")}


# -------------------------------------------------------------------------------------------------
# regions, projects


class ApiRegions(Fetcher):
    name = "ApiRegions"
    object_type = "region"

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for parent in parents:
            for region in ctx.cache.regions:
                services = ctx.cache.client.services(region)
                out.append({"id": region, "name": region, "parent_id": parent["id"],
                            "endpoints": {svc: {"url": url} for svc, url in sorted(services.items())}})
        return out


class ApiProjects(Fetcher):
    name = "ApiProjects"
    object_type = "project"
    resources = (R.PROJECTS,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for parent in parents:
            for raw in ctx.cache.get(R.PROJECTS):
                if raw.get("is_domain"):
                    continue
                out.append(dict(clean(raw, "project"), parent_id=parent["id"]))
        return out


# -------------------------------------------------------------------------------------------------
# compute: availability zones, hosts, aggregates, instances, flavors, images


def _az_id(region: str, zone: str) -> str:
    return stable_id("az", region, zone)


class ApiAvailabilityZones(Fetcher):
    name = "ApiAvailabilityZones"
    object_type = "availability_zone"
    resources = (R.AVAILABILITY_ZONES,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for region, folder in _by_folder(parents).items():
            for raw in ctx.cache.get(R.AVAILABILITY_ZONES, region):
                zone = raw.get("zoneName")
                if not zone:
                    continue
                state = raw.get("zoneState") or {}
                out.append({"id": _az_id(region, zone), "name": zone, "parent_id": folder["id"], "region": region,
                            "available": bool(state.get("available")), "hosts": sorted(raw.get("hosts") or {})})
        return out


HOST_TYPES = {"nova-compute": "Compute", "nova-conductor": "Controller", "nova-scheduler": "Controller",
              "nova-api": "Controller", "neutron-l3-agent": "Network", "neutron-dhcp-agent": "Network"}


class ApiHosts(Fetcher):
    """Hosts from the availability zone detail, enriched with hypervisor and compute service data.

    A host listed in several zones (controller services in 'internal', nova-compute in 'nova') is
    placed once, in its non-internal zone.
    """

    name = "ApiHosts"
    object_type = "host"
    resources = (R.AVAILABILITY_ZONES, R.HYPERVISORS, R.COMPUTE_SERVICES)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        zones = {p["id"]: p for p in parents}
        placed: dict[str, Doc] = {}
        for zone in sorted(zones.values(), key=lambda z: (z["name"] == "internal", z["id"])):
            region = zone["region"]
            raw_zone = next((z for z in ctx.cache.get(R.AVAILABILITY_ZONES, region)
                             if z.get("zoneName") == zone["name"]), {})
            for host, services in sorted((raw_zone.get("hosts") or {}).items()):
                doc = placed.get(host)
                if doc is None:
                    doc = placed[host] = {"id": host, "name": host, "parent_id": zone["id"], "region": region,
                                          "zone": zone["name"], "host": host, "services": {}, "host_type": []}
                for binary, state in sorted(services.items()):
                    doc["services"][binary] = {k: v for k, v in state.items() if k not in VOLATILE}
        for region in ctx.cache.regions:
            for svc in ctx.cache.get(R.COMPUTE_SERVICES, region):
                doc = placed.get(svc.get("host", ""))
                if doc is not None:
                    entry = doc["services"].setdefault(svc.get("binary", "?"), {})
                    entry.update({"status": svc.get("status"), "state": svc.get("state")})
            for hyp in ctx.cache.get(R.HYPERVISORS, region):
                host = (hyp.get("service") or {}).get("host") or hyp.get("hypervisor_hostname")
                doc = placed.get(host or "")
                if doc is not None:
                    doc["hypervisor"] = {k: hyp.get(k) for k in (
                        "id", "hypervisor_hostname", "hypervisor_type", "hypervisor_version", "host_ip", "state",
                        "status", "vcpus", "memory_mb", "local_gb") if k in hyp}
                    if hyp.get("host_ip"):
                        doc["ip_address"] = hyp["host_ip"]
        for doc in placed.values():
            doc["host_type"] = sorted({HOST_TYPES[b] for b in doc["services"] if b in HOST_TYPES})
        return list(placed.values())


class ApiAggregates(Fetcher):
    name = "ApiAggregates"
    object_type = "aggregate"
    resources = (R.AGGREGATES,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for region, folder in _by_folder(parents).items():
            for raw in ctx.cache.get(R.AGGREGATES, region):
                doc = clean(raw, "aggregate", drop=("updated_at",))
                doc.update(id=stable_id("aggregate", region, str(raw["id"])), aggregate_id=raw["id"],
                           parent_id=folder["id"], region=region)
                out.append(doc)
        return out


class ApiAggregateHosts(Fetcher):
    name = "ApiAggregateHosts"
    object_type = "host_ref"

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        return [{"id": stable_id(agg["id"], host), "name": host, "ref_id": host, "parent_id": agg["id"]}
                for agg in parents for host in sorted(agg.get("hosts") or [])]


class ApiInstances(Fetcher):
    name = "ApiInstances"
    object_type = "instance"
    resources = (R.SERVERS, R.PORTS)
    # What an instance's document takes from its ports (``fetch``): a port change that leaves these
    # alone (its status, its binding...) leaves the instance as it was, and need not re-derive it.
    PORT_FIELDS: ClassVar[tuple[str, ...]] = ("device_id", "network_id", "mac_address", "fixed_ips")

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        folders = _by_folder(parents)  # host id -> instances folder
        out = []
        for region in ctx.cache.regions:
            ports = index_by(ctx.cache.get(R.PORTS, region), "device_id")
            for raw in ctx.cache.get(R.SERVERS, region):
                host = raw.get("OS-EXT-SRV-ATTR:host")
                folder = folders.get(host or "")
                if folder is None:
                    continue  # not scheduled to a known host (building, error): found again once it is
                doc = clean(raw, "instance", drop=("OS-EXT-SRV-ATTR:user_data",))
                mine = sorted(ports.get(raw["id"], []), key=lambda p: p["id"])
                doc.update(
                    parent_id=folder["id"], region=region, host=host, project_id=raw.get("tenant_id"),
                    local_name=raw.get("OS-EXT-SRV-ATTR:instance_name"),
                    network=sorted({p["network_id"] for p in mine}),
                    mac_address=mine[0]["mac_address"] if mine else None,
                    ip_address=next((ip["ip_address"] for p in mine for ip in p.get("fixed_ips", [])), None),
                    projects=[raw.get("tenant_id")] if raw.get("tenant_id") else [],
                )
                out.append(doc)
        return out


class ApiFlavors(Fetcher):
    name = "ApiFlavors"
    object_type = "flavor"
    resources = (R.FLAVORS,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for region, folder in _by_folder(parents).items():
            for raw in ctx.cache.get(R.FLAVORS, region):
                doc = clean(raw, "flavor")
                doc.update(id=stable_id("flavor", region, str(raw["id"])), flavor_id=raw["id"],
                           parent_id=folder["id"], region=region)
                out.append(doc)
        return out


class ApiImages(Fetcher):
    name = "ApiImages"
    object_type = "image"
    resources = (R.IMAGES,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for region, folder in _by_folder(parents).items():
            for raw in ctx.cache.get(R.IMAGES, region):
                doc = clean(raw, "image", drop=("file", "schema", "self", "direct_url"))
                doc.update(parent_id=folder["id"], region=region)
                out.append(doc)
        return out


# -------------------------------------------------------------------------------------------------
# per-project resources (regional collections placed under the global project)


def project_of(raw: dict[str, Any]) -> str | None:
    """The owning project of an API item, whatever the service calls that field."""
    return raw.get("project_id") or raw.get("tenant_id") or raw.get("os-vol-tenant-attr:tenant_id") or \
        raw.get("os-extended-snapshot-attributes:project_id") or raw.get("owner")


class _ProjectScoped(Fetcher):
    """Lists a regional collection in every region and files each item under its project's folder."""

    source: ClassVar[Resource]
    kind: ClassVar[str]
    drop: ClassVar[tuple[str, ...]] = ()

    def extra(self, raw: dict[str, Any], region: str, ctx: FetchContext) -> Doc:
        return {}

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        folders = _by_folder(parents)  # project id -> folder
        out = []
        for region, raw in ctx.cache.all_regions(self.source):
            project = project_of(raw)
            folder = folders.get(project or "")
            if folder is None:
                continue
            doc = clean(raw, self.kind, drop=self.drop)
            doc.update(parent_id=folder["id"], region=region, project_id=project)
            doc.update(self.extra(raw, region, ctx))
            out.append(doc)
        return out


class ApiNetworks(_ProjectScoped):
    name = "ApiNetworks"
    object_type = "network"
    source = R.NETWORKS
    resources = (R.NETWORKS, R.SUBNETS)
    kind = "network"

    def extra(self, raw: dict[str, Any], region: str, ctx: FetchContext) -> Doc:
        subnets = sorted(ctx.subnets_by_network(region).get(raw["id"], []), key=lambda s: s["id"])
        return {"network": [raw["id"]], "subnet_ids": [s["id"] for s in subnets],
                "cidrs": [s.get("cidr") for s in subnets],
                "subnets": {s["id"]: {"name": s.get("name"), "cidr": s.get("cidr")} for s in subnets}}


class ApiRouters(_ProjectScoped):
    name = "ApiRouters"
    object_type = "router"
    source = R.ROUTERS
    resources = (R.ROUTERS,)
    kind = "router"


class ApiFloatingIps(_ProjectScoped):
    name = "ApiFloatingIps"
    object_type = "floating_ip"
    source = R.FLOATING_IPS
    resources = (R.FLOATING_IPS,)
    kind = "floating_ip"

    def extra(self, raw: dict[str, Any], region: str, ctx: FetchContext) -> Doc:
        return {"name": raw.get("floating_ip_address") or raw["id"]}


class ApiSecurityGroups(_ProjectScoped):
    name = "ApiSecurityGroups"
    object_type = "security_group"
    source = R.SECURITY_GROUPS
    resources = (R.SECURITY_GROUPS,)
    kind = "security_group"


class ApiServerGroups(_ProjectScoped):
    name = "ApiServerGroups"
    object_type = "server_group"
    source = R.SERVER_GROUPS
    resources = (R.SERVER_GROUPS,)
    kind = "server_group"

    def extra(self, raw: dict[str, Any], region: str, ctx: FetchContext) -> Doc:
        return {"members": sorted(raw.get("members") or [])}


class ApiVolumes(_ProjectScoped):
    name = "ApiVolumes"
    object_type = "volume"
    source = R.VOLUMES
    resources = (R.VOLUMES,)
    kind = "volume"

    def extra(self, raw: dict[str, Any], region: str, ctx: FetchContext) -> Doc:
        return {"name": raw.get("name") or raw["id"],
                "attachments": [{k: a.get(k) for k in ("server_id", "device", "attachment_id", "host_name")}
                                for a in raw.get("attachments") or []]}


class ApiLoadBalancers(_ProjectScoped):
    name = "ApiLoadBalancers"
    object_type = "load_balancer"
    source = R.LOAD_BALANCERS
    resources = (R.LOAD_BALANCERS, R.LB_POOLS)
    kind = "load_balancer"

    def extra(self, raw: dict[str, Any], region: str, ctx: FetchContext) -> Doc:
        members = []
        for pool in ctx.cache.get(R.LB_POOLS, region):
            if raw["id"] in {lb.get("id") for lb in pool.get("loadbalancers") or []}:
                listed = pool.get("members") or []
                if listed and not all("address" in m for m in listed):
                    # the pools list names members by id only: one call per pool for their addresses
                    listed = ctx.cache.fetch_path("load-balancer", f"/lbaas/pools/{pool['id']}/members", "members",
                                                  region)
                for member in listed:
                    if "address" in member:
                        members.append({"id": member.get("id"), "address": member.get("address"),
                                        "subnet_id": member.get("subnet_id"), "pool_id": pool.get("id"),
                                        "protocol_port": member.get("protocol_port")})
        return {"members": sorted(members, key=lambda m: str(m.get("id")))}


class _NetworkScoped(Fetcher):
    """Subnets and ports, filed under their network's folder."""

    source: ClassVar[Resource]
    kind: ClassVar[str]

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        folders = _by_folder(parents)  # network id -> folder
        out = []
        for region, raw in ctx.cache.all_regions(self.source):
            folder = folders.get(raw.get("network_id") or "")
            if folder is None:
                continue
            doc = clean(raw, self.kind)
            doc.update(parent_id=folder["id"], region=region)
            if self.kind == "port":
                doc["name"] = raw.get("name") or raw.get("mac_address") or raw["id"]
            out.append(doc)
        return out


class ApiSubnets(_NetworkScoped):
    name = "ApiSubnets"
    object_type = "subnet"
    source = R.SUBNETS
    resources = (R.SUBNETS,)
    kind = "subnet"


class ApiPorts(_NetworkScoped):
    name = "ApiPorts"
    object_type = "port"
    source = R.PORTS
    resources = (R.PORTS,)
    kind = "port"


class ApiSnapshots(Fetcher):
    name = "ApiSnapshots"
    object_type = "snapshot"
    resources = (R.SNAPSHOTS,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        folders = _by_folder(parents)  # volume id -> folder
        out = []
        for region, raw in ctx.cache.all_regions(R.SNAPSHOTS):
            folder = folders.get(raw.get("volume_id") or "")
            if folder is not None:
                doc = clean(raw, "snapshot")
                doc.update(parent_id=folder["id"], region=region, name=raw.get("name") or raw["id"])
                out.append(doc)
        return out

