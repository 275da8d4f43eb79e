"""The OpenStack collections a scan reads, and a per-scan cache that reads each one once.

A scan asks for each collection once per region, concurrently, up front (one paged call per
resource type per region), then builds the whole hierarchy in memory: round trips grow with the
number of resource types and regions, not with the number of objects.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from stackmap.discovery.api.client import ApiError, OpenStackClient, ServiceMissing

GLOBAL = "*"


@dataclass(frozen=True)
class Resource:
    name: str
    service: str
    path: str
    key: str
    params: tuple[tuple[str, str], ...] = ()
    microversion: str | None = None
    per_region: bool = True
    optional: bool = False  # a service that clouds may not have (cinder, octavia): absent is not an error
    paged: bool = True


PROJECTS = Resource("projects", "identity", "/projects", "projects", per_region=False, paged=False)
AVAILABILITY_ZONES = Resource("availability_zones", "compute", "/os-availability-zone/detail",
                              "availabilityZoneInfo", paged=False)
HYPERVISORS = Resource("hypervisors", "compute", "/os-hypervisors/detail", "hypervisors", paged=False)
COMPUTE_SERVICES = Resource("compute_services", "compute", "/os-services", "services", paged=False)
AGGREGATES = Resource("aggregates", "compute", "/os-aggregates", "aggregates", paged=False)
SERVERS = Resource("servers", "compute", "/servers/detail", "servers", (("all_tenants", "1"),))
# project_id appears in server groups from microversion 2.13; nova pages them by offset, not by link
SERVER_GROUPS = Resource("server_groups", "compute", "/os-server-groups", "server_groups", (("all_projects", "True"),),
                         microversion="2.13", paged=False)
FLAVORS = Resource("flavors", "compute", "/flavors/detail", "flavors", (("is_public", "none"),))
IMAGES = Resource("images", "image", "/images", "images")
NETWORKS = Resource("networks", "network", "/networks", "networks")
SUBNETS = Resource("subnets", "network", "/subnets", "subnets")
PORTS = Resource("ports", "network", "/ports", "ports")
ROUTERS = Resource("routers", "network", "/routers", "routers")
FLOATING_IPS = Resource("floating_ips", "network", "/floatingips", "floatingips")
SECURITY_GROUPS = Resource("security_groups", "network", "/security-groups", "security_groups")
VOLUMES = Resource("volumes", "block-storage", "/volumes/detail", "volumes", (("all_tenants", "1"),),
                   optional=True)
SNAPSHOTS = Resource("snapshots", "block-storage", "/snapshots/detail", "snapshots", (("all_tenants", "1"),),
                     optional=True)
LOAD_BALANCERS = Resource("load_balancers", "load-balancer", "/lbaas/loadbalancers", "loadbalancers",
                          optional=True)
LB_POOLS = Resource("lb_pools", "load-balancer", "/lbaas/pools", "pools", optional=True)

# catalog type aliases: cinder registers as block-storage, volumev3 or volumev2 depending on the deployment
CATALOG_ALIASES = {"block-storage": ("block-storage", "volumev3", "volumev2", "volume"),
                   "load-balancer": ("load-balancer",), "image": ("image",), "compute": ("compute",),
                   "network": ("network",), "identity": ("identity",)}


@dataclass
class ResourceFailure:
    resource: str
    region: str
    message: str


@dataclass
class ResourceCache:
    """Collections read in this scan, by (resource name, region); failures are kept, not raised."""

    client: OpenStackClient
    regions: list[str]
    data: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    failures: list[ResourceFailure] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # optional services absent
    closed: bool = False  # targeted updates: only the seeded items exist, nothing is listed from the API
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _services: dict[str, set[str]] = field(default_factory=dict)

    def has_service(self, service: str, region: str) -> bool:
        if region not in self._services:
            self._services[region] = set(self.client.services(region))
        return any(alias in self._services[region] for alias in CATALOG_ALIASES.get(service, (service,)))

    def prefetch(self, resources: Iterable[Resource], max_workers: int = 8,
                 on_done: Callable[[Resource, str, int], None] | None = None) -> None:
        jobs = []
        for res in {r.name: r for r in resources}.values():
            for region in ([GLOBAL] if not res.per_region else self.regions):
                jobs.append((res, region))
        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(jobs) or 1))) as pool:
            for res, region, count in pool.map(lambda job: self._load(*job), jobs):
                if on_done is not None:
                    on_done(res, region, count)

    def _load(self, res: Resource, region: str) -> tuple[Resource, str, int]:
        api_region = None if region == GLOBAL else region
        if api_region is not None and not self.has_service(res.service, api_region):
            if res.optional:
                with self._lock:
                    self.skipped.append((res.name, region))
                    self.data[(res.name, region)] = []
                return res, region, 0
            with self._lock:
                self.failures.append(ResourceFailure(res.name, region,
                                                     f"no {res.service} service in the catalog of region {region}"))
            return res, region, -1
        try:
            items = self.client.list(res.service, res.path, res.key, api_region, params=dict(res.params),
                                     microversion=res.microversion, paged=res.paged)
        except ServiceMissing as exc:
            if res.optional:
                with self._lock:
                    self.skipped.append((res.name, region))
                    self.data[(res.name, region)] = []
                return res, region, 0
            with self._lock:
                self.failures.append(ResourceFailure(res.name, region, str(exc)))
            return res, region, -1
        except ApiError as exc:
            if exc.fatal:
                raise
            with self._lock:
                self.failures.append(ResourceFailure(res.name, region, str(exc)))
            return res, region, -1
        with self._lock:
            self.data[(res.name, region)] = items
        return res, region, len(items)

    def get(self, res: Resource, region: str | None = None) -> list[dict[str, Any]]:
        """The items of a collection in a region ([] when it failed: the failure is recorded)."""
        key = (res.name, GLOBAL if not res.per_region else (region or ""))
        if self.closed:
            return self.data.get(key, [])
        if key not in self.data and not any(f.resource == res.name and f.region == key[1] for f in self.failures):
            self._load(res, key[1])
        return self.data.get(key, [])

    def fetch_path(self, service: str, path: str, key: str, region: str) -> list[dict[str, Any]]:
        """A collection outside the fixed list (e.g. one pool's members): read once, then cached;
        a closed cache answers only what was seeded."""
        cache_key = (f"{service}:{path}", region)
        if cache_key in self.data or self.closed:
            return self.data.get(cache_key, [])
        try:
            items = self.client.list(service, path, key, region, paged=False)
        except ApiError as exc:
            if exc.fatal:
                raise
            with self._lock:
                self.failures.append(ResourceFailure(f"{service}:{path}", region, str(exc)))
            return []
        with self._lock:
            self.data[cache_key] = items
        return items

    def failed(self, res: Resource) -> bool:
        return any(f.resource == res.name for f in self.failures)

    def all_regions(self, res: Resource) -> list[tuple[str, dict[str, Any]]]:
        """(region, item) for every region's items."""
        if not res.per_region:
            return [(GLOBAL, item) for item in self.get(res)]
        return [(region, item) for region in self.regions for item in self.get(res, region)]
