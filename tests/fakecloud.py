"""A fake OpenStack cloud served over real HTTP on loopback, for tests and the scan benchmark.

Unit tests may fake a remote API only at its HTTP boundary: the scan under test must run its real
client stack (keystoneauth session, openstacksdk proxies, version discovery, paging) against
something that answers like OpenStack does. This module provides both halves:

- ``FakeCloud`` generates a *consistent* cloud of a given ``CloudSize``: every port names a network
  and subnet that exist, every instance sits on a compute host, floating IPs point at instance ports
  on routed networks, volumes are attached to instances of their own project, and so on. Items are
  shaped like the real API samples in ``/work/shared/fixtures/openstack/api`` (same field names and
  value types), so fetchers read exactly what they would read from a real cloud. Tests can change
  the cloud between scans (``delete_servers``, ``rename``, ``update``...) and read back the map a
  scan must produce (``expected_objects``, ``expected_links``).
- ``FakeCloudServer`` serves it with ``http.server.ThreadingHTTPServer`` on 127.0.0.1:0: Keystone v3
  password auth with a service catalog pointing back at the server (devstack-style per-service path
  prefixes), each service's version discovery documents, and the listed collections with the real
  services' paging conventions (``limit``/``marker``; ``<key>_links`` absolute next links for
  nova/neutron/cinder/octavia; glance's relative ``next``). Faults can be injected per path: an
  error status, a slow answer, a service left out of the catalog or pointed at a dead port.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import hashlib
import ipaddress
import json
import random
import ssl
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from stackmap.discovery.api.fetchers import Fetcher
from stackmap.discovery.scanners import FolderSpec, condition_matches, load_scanners
from stackmap.model import stable_id

Item = dict[str, Any]

DEFAULT_USER = "admin"
DEFAULT_PASSWORD = "fake-cloud-pa55word"
ADMIN_PROJECT = "admin"
DOMAIN = {"id": "default", "name": "Default"}
_EPOCH = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


# --------------------------------------------------------------------------------------------------
# sizes


# what scanner conditions see of the environments the fake cloud's tests scan (OpenStack section only)
FAKE_ENVIRONMENT: dict[str, Any] = {"environment_type": "OpenStack", "distribution": "Stock",
                                    "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
                                    "configuration": [{"name": "OpenStack"}]}


@functools.lru_cache(maxsize=1)
def folder_layout() -> dict[str, list[tuple[str, str]]]:
    """Parent object type -> [(folder object type, types_name)], as ``config/scanners.json`` says.

    Folders are presentation, not cloud data: taking them from the shipped config keeps the
    expected map right when a folder is added there, while the objects themselves still come from
    the cloud. Entries whose ``environment_condition`` the fake cloud's environments do not meet
    (say, those that need a mysql or CLI section) are left out, as a scan leaves them out.
    """
    layout: dict[str, list[tuple[str, str]]] = {}
    config = load_scanners()

    def host_only(scanner: str | None) -> bool:
        # a scan without host access (this fake has none) shows no folder only host fetchers fill
        names = [e.fetcher for e in config.scanners.get(scanner or "", []) if isinstance(e.fetcher, str)]
        return bool(names) and all(Fetcher.registry[n].needs_hosts for n in names)

    for entries in config.scanners.values():
        for entry in entries:
            if not condition_matches(entry.environment_condition, FAKE_ENVIRONMENT):
                continue
            if isinstance(entry.fetcher, FolderSpec) and not host_only(entry.children_scanner):
                layout.setdefault(entry.fetcher.parent_type, []).append((entry.type, entry.fetcher.types_name))
    return layout


@dataclass(frozen=True)
class CloudSize:
    """How big a cloud to generate. Counts are per region unless said otherwise."""

    projects: int = 3  # all projects, 'admin' included (global)
    hosts: int = 4  # compute hosts; every region also has one controller host
    instances: int = 12
    unscheduled_instances: int = 0  # servers in ERROR with no host: a scan cannot place them
    networks: int = 4  # tenant networks; every region also has one external network
    subnets_per_network: int = 1
    routers: int = 2
    floating_ips: int = 4
    security_groups: int = 1  # besides each project's 'default' group
    volumes: int = 6  # every other one attached to an instance of its project
    snapshots: int = 2
    flavors: int = 4
    images: int = 3
    aggregates: int = 2
    load_balancers: int = 0
    server_groups: int = 0  # each with up to two of its project's instances as members
    second_region: bool = False
    seed: int = 7

    @property
    def regions(self) -> list[str]:
        return ["RegionOne", "RegionTwo"] if self.second_region else ["RegionOne"]

    def object_count(self) -> int:
        """How many inventory objects a complete scan of this cloud stores (folders included).

        Follows the generator below (which ports exist...) and ``config/scanners.json`` (which
        folders each object type gets), so a benchmark can size a cloud without generating it;
        ``FakeCloud.expected_objects`` gives the exact map.
        """
        routed = self._routed_networks()
        per_region = {
            "region": 1, "availability_zone": 2 + (self.hosts > 1), "host": self.hosts + 1,
            "instance": self.instances, "aggregate": self.aggregates, "host_ref": self.hosts if self.aggregates else 0,
            "flavor": self.flavors, "image": self.images, "network": self.networks + 1,
            "subnet": self.networks * self.subnets_per_network + 1,
            "port": self.instances + self.networks + self.routers + routed + self.floating_ips + self.load_balancers,
            "router": self.routers, "floating_ip": self.floating_ips,
            "security_group": self.projects + self.security_groups, "volume": self.volumes,
            "snapshot": self.snapshots if self.volumes else 0, "load_balancer": self.load_balancers,
            "server_group": self.server_groups,
        }
        counts = Counter({t: n * len(self.regions) for t, n in per_region.items()})
        counts["project"] = self.projects
        layout = folder_layout()
        folders = len(layout.get("environment", [])) + sum(n * len(layout.get(t, [])) for t, n in counts.items())
        return sum(counts.values()) + folders

    def _aggregate_hosts(self, index: int) -> list[int]:
        return [h for h in range(self.hosts) if h % max(1, self.aggregates) == index]

    def _routed_networks(self) -> int:
        tenant_projects = max(1, self.projects - 1)
        with_router = min(self.routers, tenant_projects)
        return sum(1 for n in range(self.networks) if n % tenant_projects < with_router)

    @classmethod
    def for_objects(cls, objects: int, *, second_region: bool = False, load_balancers: bool = True,
                    aggregates: bool = True) -> CloudSize:
        """A plausible cloud whose complete scan stores about ``objects`` objects.

        Proportions follow a mid-size private cloud: ~25 instances per compute host, ~40 instances
        per tenant network, a volume for every other instance, a floating IP for one in ten.
        """
        regions = 2 if second_region else 1
        per_region = max(1, objects // regions)
        instances = max(4, per_region // 3)
        for _ in range(20):  # converge on the target: the count is linear in instances
            size = cls._shaped(instances, second_region, load_balancers, aggregates)
            count = size.object_count()
            if abs(count - objects) <= max(5, objects // 500):
                break
            ratio = objects / count
            instances = max(4, int(instances * ratio))
        return size

    @classmethod
    def _shaped(cls, instances: int, second_region: bool, load_balancers: bool, aggregates: bool) -> CloudSize:
        projects = max(2, min(200, instances // 100 + 2))
        networks = max(2, instances // 40)
        return cls(
            projects=projects, hosts=max(2, instances // 25), instances=instances, networks=networks,
            subnets_per_network=2 if instances >= 200 else 1, routers=max(1, networks // 3),
            floating_ips=max(1, instances // 10), security_groups=max(1, projects // 2),
            volumes=max(1, instances // 2), snapshots=max(1, instances // 10),
            flavors=min(40, max(4, instances // 500)), images=min(200, max(3, instances // 100)),
            aggregates=max(1, instances // 1000) if aggregates else 0,
            load_balancers=max(1, instances // 200) if load_balancers else 0,
            server_groups=max(1, instances // 100),
            second_region=second_region,
        )


# --------------------------------------------------------------------------------------------------
# the cloud


@functools.lru_cache(maxsize=4096)
def _ts(offset_s: int = 0) -> str:
    return (_EPOCH + timedelta(seconds=offset_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    """A service heartbeat: changes between requests, as a real cloud's does."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


@dataclass
class Region:
    """One region's collections, each an insertion-ordered dict id -> API item."""

    name: str
    hosts: dict[str, Item] = field(default_factory=dict)  # name -> {zone, binaries, host_ip, ...}
    servers: dict[str, Item] = field(default_factory=dict)
    aggregates: dict[str, Item] = field(default_factory=dict)
    flavors: dict[str, Item] = field(default_factory=dict)
    images: dict[str, Item] = field(default_factory=dict)
    networks: dict[str, Item] = field(default_factory=dict)
    subnets: dict[str, Item] = field(default_factory=dict)
    ports: dict[str, Item] = field(default_factory=dict)
    routers: dict[str, Item] = field(default_factory=dict)
    floatingips: dict[str, Item] = field(default_factory=dict)
    security_groups: dict[str, Item] = field(default_factory=dict)
    volumes: dict[str, Item] = field(default_factory=dict)
    snapshots: dict[str, Item] = field(default_factory=dict)
    loadbalancers: dict[str, Item] = field(default_factory=dict)
    pools: dict[str, Item] = field(default_factory=dict)
    pool_members: dict[str, list[Item]] = field(default_factory=dict)  # pool id -> members in full
    server_groups: dict[str, Item] = field(default_factory=dict)  # stored at nova's newest shape

    def collection(self, name: str) -> dict[str, Item]:
        value = getattr(self, name, None)
        if not isinstance(value, dict) or name == "hosts":
            raise KeyError(f"no collection {name!r} in a fake region")
        return value


COLLECTIONS = ("servers", "aggregates", "flavors", "images", "networks", "subnets", "ports", "routers",
               "floatingips", "security_groups", "volumes", "snapshots", "loadbalancers", "pools", "server_groups")



def _change(item: Item, **fields: Any) -> None:
    """Update an item as its API would: neutron bumps ``revision_number`` on every change."""
    item.update(fields)
    if isinstance(item.get("revision_number"), int) and "revision_number" not in fields:
        item["revision_number"] += 1

class FakeCloud:
    """A generated, internally consistent OpenStack cloud that tests can inspect and change.

    All reads and writes go through one lock, so a test may change the cloud while a server thread
    is answering; ``version`` grows with every change (the server uses it to drop cached views).
    """

    def __init__(self, size: CloudSize | None = None, *, user: str = DEFAULT_USER,
                 password: str = DEFAULT_PASSWORD) -> None:
        self.size = size or CloudSize()
        self.user = user
        self.password = password
        self.user_id = uuid.UUID(int=self.size.seed, version=4).hex
        self.lock = threading.RLock()
        self.version = 0
        self._rng = random.Random(self.size.seed)
        self._counter = 0
        self.projects: dict[str, Item] = {}
        self.regions: dict[str, Region] = {}
        self._allocators: dict[str, Iterator[ipaddress.IPv4Address]] = {}  # subnet id -> free addresses
        self._views: dict[tuple[str, str], tuple[int, list[Item]]] = {}  # (view, region) -> (version, items)
        self._generate()

    # -- identifiers -----------------------------------------------------------------------------------
    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _mac(self) -> str:
        n = self._next()
        return f"fa:16:3e:{n >> 16 & 255:02x}:{n >> 8 & 255:02x}:{n & 255:02x}"

    @property
    def admin_project_id(self) -> str:
        return next(p["id"] for p in self.projects.values() if p["name"] == ADMIN_PROJECT)

    def tenant_project_ids(self) -> list[str]:
        ids = [p["id"] for p in self.projects.values() if p["name"] != ADMIN_PROJECT]
        return ids or [self.admin_project_id]

    # -- generation ------------------------------------------------------------------------------------
    def _generate(self) -> None:
        size = self.size
        for n in range(size.projects):
            name = ADMIN_PROJECT if n == 0 else f"project-{n:03d}"
            pid = uuid.UUID(int=self._rng.getrandbits(128), version=4).hex
            self.projects[pid] = {
                "id": pid, "name": name, "domain_id": DOMAIN["id"], "description": f"{name} project",
                "enabled": True, "is_domain": False, "parent_id": DOMAIN["id"], "tags": [], "options": {},
                "links": {"self": f"http://keystone.invalid/v3/projects/{pid}"},
            }
        for index, region in enumerate(size.regions):
            self.regions[region] = self._generate_region(region, index)

    def _generate_region(self, name: str, index: int) -> Region:
        size, reg = self.size, Region(name)
        tag = f"r{index + 1}"
        admin, tenants = self.admin_project_id, self.tenant_project_ids()
        # hosts: one controller in the 'internal' zone, computes spread over one or two zones
        controller = f"{tag}-controller"
        reg.hosts[controller] = {"name": controller, "zone": "internal", "host_ip": f"192.168.{index}.2",
                                 "binaries": ["nova-conductor", "nova-scheduler"], "service_ids": {}}
        computes = []
        for h in range(size.hosts):
            host = f"{tag}-compute-{h:03d}"
            computes.append(host)
            zone = "nova" if size.hosts == 1 or h % 2 == 0 else "zone-b"
            reg.hosts[host] = {"name": host, "zone": zone, "host_ip": f"192.168.{index}.{10 + h}" if h < 240
                               else f"192.{168 + h // 240}.{index}.{10 + h % 240}",
                               "binaries": ["nova-compute"], "service_ids": {}, "hypervisor_id": self._next(),
                               "vcpus": 64, "memory_mb": 262144, "local_gb": 2048}
        for info in reg.hosts.values():
            for binary in info["binaries"]:
                info["service_ids"][binary] = self._next()
        # aggregates
        for a in range(size.aggregates):
            agg_id = self._next()
            hosts = [computes[h] for h in size._aggregate_hosts(a)]
            reg.aggregates[str(agg_id)] = {
                "availability_zone": None, "created_at": _ts(a), "deleted": False, "deleted_at": None,
                "hosts": hosts, "id": agg_id, "metadata": {"ssd": "true" if a % 2 == 0 else "false"},
                "name": f"{tag}-aggregate-{a}", "updated_at": None,
            }
        # flavors and images
        for f in range(size.flavors):
            fid = str(f + 1) if index == 0 else f"{tag}-{f + 1}"
            public = not (size.flavors > 2 and f == size.flavors - 1)  # one private flavor: needs is_public=none
            reg.flavors[fid] = {
                "OS-FLV-DISABLED:disabled": False, "disk": 1 << (f % 8), "OS-FLV-EXT-DATA:ephemeral": 0,
                "os-flavor-access:is_public": public, "id": fid, "links": [], "name": f"m1.flavor-{f}",
                "ram": 512 << (f % 6), "swap": "", "vcpus": 1 << (f % 4), "rxtx_factor": 1.0,
            }
        for i in range(size.images):
            iid = self._uuid()
            reg.images[iid] = {
                "status": "active", "name": f"{tag}-image-{i}", "tags": [], "container_format": "bare",
                "created_at": _ts(i), "disk_format": "qcow2", "updated_at": _ts(i + 60), "visibility": "public",
                "self": f"/v2/images/{iid}", "min_disk": 0, "protected": False, "id": iid,
                "file": f"/v2/images/{iid}/file", "checksum": hashlib.md5(iid.encode()).hexdigest(),
                "os_hash_algo": "sha512", "os_hash_value": hashlib.sha512(iid.encode()).hexdigest(),
                "os_hidden": False, "owner": admin, "size": 13167616 + i, "min_ram": 0, "schema": "/v2/schemas/image",
                "virtual_size": None,
            }
        # security groups: a default per project, then extra ones
        default_sg: dict[str, str] = {}
        for pid in [admin, *[t for t in tenants if t != admin]]:
            default_sg[pid] = self._add_security_group(reg, pid, "default")
        for s in range(size.security_groups):
            self._add_security_group(reg, tenants[s % len(tenants)], f"{tag}-sg-{s}")
        # networks: an external one (admin), tenant ones round robin over the tenant projects
        cidrs = ipaddress.IPv4Network("10.0.0.0/8").subnets(new_prefix=20)
        ext_net = self._add_network(reg, admin, f"{tag}-public", external=True, index=0)
        ext_subnet = self._add_subnet(reg, ext_net, admin, f"{tag}-public-subnet",
                                      ipaddress.IPv4Network(f"172.{16 + index}.0.0/16"), dhcp=False)
        networks_of: dict[str, list[str]] = {pid: [] for pid in tenants}
        for n in range(size.networks):
            pid = tenants[n % len(tenants)]
            new_net = self._add_network(reg, pid, f"{tag}-net-{n:04d}", external=False, index=n + 1)
            networks_of[pid].append(new_net)
            for s in range(size.subnets_per_network):
                self._add_subnet(reg, new_net, pid, f"{tag}-net-{n:04d}-sub-{s}", next(cidrs), dhcp=True)
        for net_id in (nid for nets in networks_of.values() for nid in nets):
            net = reg.networks[net_id]
            self._add_port(reg, net_id, net["project_id"], "network:dhcp",
                           f"dhcp{uuid.uuid5(uuid.NAMESPACE_DNS, controller)}-{net_id}", controller,
                           [net["subnets"][0]], [])
        # routers: project k's routers take its networks round robin; each has a gateway port
        router_of_net: dict[str, str] = {}
        routers_of: dict[str, list[str]] = {pid: [] for pid in tenants}
        for r in range(size.routers):
            pid = tenants[r % len(tenants)]
            rid = self._uuid()
            routers_of[pid].append(rid)
            gw_port = self._add_port(reg, ext_net, "", "network:router_gateway", rid, controller, [ext_subnet], [])
            gw_ip = reg.ports[gw_port]["fixed_ips"][0]
            reg.routers[rid] = {
                "admin_state_up": True, "availability_zone_hints": [], "availability_zones": ["nova"],
                "created_at": _ts(r), "description": "", "distributed": False,
                "external_gateway_info": {"enable_snat": True, "external_fixed_ips": [dict(gw_ip)],
                                          "network_id": ext_net},
                "flavor_id": None, "ha": False, "id": rid, "name": f"{tag}-router-{r:03d}", "revision_number": 3,
                "routes": [], "status": "ACTIVE", "updated_at": _ts(r + 5), "project_id": pid, "tenant_id": pid,
                "tags": [],
            }
        for pid, nets in networks_of.items():
            if not routers_of[pid]:
                continue
            for n, net_id in enumerate(nets):
                rid = routers_of[pid][n % len(routers_of[pid])]
                subnet = reg.subnets[reg.networks[net_id]["subnets"][0]]
                self._add_port(reg, net_id, pid, "network:router_interface", rid, controller, [subnet["id"]], [],
                               ip=subnet["gateway_ip"])
                router_of_net[net_id] = rid
        # instances, each with one port on one of its project's networks
        hosts_cycle = computes
        flavor_ids, image_ids = list(reg.flavors), list(reg.images)
        instance_ports: list[str] = []
        servers_of: dict[str, list[str]] = {pid: [] for pid in tenants}
        per_project = Counter[str]()
        for i in range(size.instances):
            pid = tenants[i % len(tenants)]
            nets = networks_of[pid] or [ext_net]
            net_id = nets[per_project[pid] % len(nets)]
            per_project[pid] += 1
            host = hosts_cycle[i % len(hosts_cycle)]
            sid = self._add_server(reg, pid, f"{tag}-vm-{i:05d}", host, flavor_ids[i % len(flavor_ids)] if flavor_ids
                                   else "1", image_ids[i % len(image_ids)] if image_ids else "")
            servers_of[pid].append(sid)
            net = reg.networks[net_id]
            subnet_id = net["subnets"][i % len(net["subnets"])]
            port = self._add_port(reg, net_id, pid, f"compute:{reg.hosts[host]['zone']}", sid, host, [subnet_id],
                                  [default_sg[pid]])
            instance_ports.append(port)
        for u in range(size.unscheduled_instances):
            pid = tenants[u % len(tenants)]
            sid = self._add_server(reg, pid, f"{tag}-broken-{u:03d}", None, flavor_ids[0] if flavor_ids else "1",
                                   image_ids[0] if image_ids else "")
        # floating IPs: the first ones on routed instance ports, the rest unassociated
        routed_ports: dict[str, list[str]] = {pid: [] for pid in tenants}
        for p in reversed(instance_ports):
            if reg.ports[p]["network_id"] in router_of_net:
                routed_ports[reg.ports[p]["project_id"]].append(p)
        for f in range(size.floating_ips):
            pid = tenants[f % len(tenants)]
            fip_port = routed_ports[pid].pop() if routed_ports[pid] else None
            self._add_floating_ip(reg, pid, ext_net, ext_subnet, controller, fip_port,
                                  router_of_net.get(reg.ports[fip_port]["network_id"]) if fip_port else None)
        # volumes: every other one attached to a server of its project; snapshots on volumes
        attached = Counter[str]()
        volume_ids = []
        for v in range(size.volumes):
            pid = tenants[v % len(tenants)]
            server: str | None = None
            candidates = servers_of[pid]  # scheduled servers only
            if v % 2 == 0 and candidates:
                server = candidates[attached[pid] % len(candidates)]
                attached[pid] += 1
            volume_ids.append(self._add_volume(reg, pid, f"{tag}-vol-{v:05d}", server, controller))
        for s in range(size.snapshots):
            if not volume_ids:
                break
            vol = reg.volumes[volume_ids[s % len(volume_ids)]]
            snap_id = self._uuid()
            reg.snapshots[snap_id] = {
                "created_at": _ts(s).replace("Z", ".000000").rstrip("Z"), "description": None, "id": snap_id,
                "metadata": {}, "name": f"{tag}-snap-{s:05d}", "os-extended-snapshot-attributes:progress": "100%",
                "os-extended-snapshot-attributes:project_id": vol["os-vol-tenant-attr:tenant_id"],
                "size": vol["size"], "status": "available", "updated_at": None, "volume_id": vol["id"],
            }
        # load balancers: VIP on the project's first network, one pool over two of its instances
        for b in range(size.load_balancers):
            pid = tenants[b % len(tenants)]
            nets = networks_of[pid] or [ext_net]
            self._add_load_balancer(reg, pid, f"{tag}-lb-{b:04d}", nets[0])
        for g in range(size.server_groups):
            pid = tenants[g % len(tenants)]
            members = servers_of[pid][2 * (g // len(tenants)):2 * (g // len(tenants)) + 2]
            gid = self._uuid()
            reg.server_groups[gid] = {"id": gid, "name": f"{tag}-group-{g:04d}",
                                      "policy": "anti-affinity" if g % 2 == 0 else "affinity", "rules": {},
                                      "members": list(members), "project_id": pid, "user_id": self.user_id}
        return reg

    def _add_security_group(self, reg: Region, pid: str, name: str) -> str:
        sg_id = self._uuid()
        rules: list[Item] = []
        for direction, ethertype, remote in (("egress", "IPv4", None), ("egress", "IPv6", None),
                                             ("ingress", "IPv4", sg_id), ("ingress", "IPv6", sg_id)):
            rules.append({
                "direction": direction, "ethertype": ethertype, "id": self._uuid(), "port_range_max": None,
                "port_range_min": None, "protocol": None, "remote_group_id": remote, "remote_ip_prefix": None,
                "security_group_id": sg_id, "project_id": pid, "revision_number": 0, "tags": [], "tenant_id": pid,
                "created_at": _ts(), "updated_at": _ts(), "description": None,
                "belongs_to_default_sg": name == "default",
            })
        reg.security_groups[sg_id] = {
            "description": "Default security group" if name == "default" else "", "id": sg_id, "name": name,
            "security_group_rules": rules, "project_id": pid, "tenant_id": pid, "revision_number": 1,
            "created_at": _ts(), "updated_at": _ts(), "tags": [], "stateful": True, "shared": False,
        }
        return sg_id

    def _add_network(self, reg: Region, pid: str, name: str, *, external: bool, index: int) -> str:
        net_id = self._uuid()
        reg.networks[net_id] = {
            "admin_state_up": True, "availability_zone_hints": [], "availability_zones": ["nova"],
            "created_at": _ts(index), "dns_domain": "", "id": net_id, "ipv4_address_scope": None,
            "ipv6_address_scope": None, "l2_adjacency": True, "mtu": 1500 if external else 1450, "name": name,
            "port_security_enabled": True, "project_id": pid, "qos_policy_id": None, "revision_number": 2,
            "router:external": external, "shared": False, "status": "ACTIVE", "subnets": [], "tenant_id": pid,
            "updated_at": _ts(index + 1), "description": "", "is_default": external, "tags": [],
            "provider:network_type": "flat" if external else "vxlan",
            "provider:physical_network": "public" if external else None,
            "provider:segmentation_id": None if external else 1000 + index,
        }
        return net_id

    def _add_subnet(self, reg: Region, net_id: str, pid: str, name: str, cidr: ipaddress.IPv4Network, *,
                    dhcp: bool) -> str:
        sub_id = self._uuid()
        hosts = cidr.hosts()
        gateway = str(next(hosts))
        reg.subnets[sub_id] = {
            "name": name, "enable_dhcp": dhcp, "network_id": net_id, "segment_id": None, "project_id": pid,
            "tenant_id": pid, "dns_nameservers": [], "dns_publish_fixed_ip": False,
            "allocation_pools": [{"start": str(cidr.network_address + 2), "end": str(cidr.broadcast_address - 1)}],
            "host_routes": [], "ip_version": 4, "gateway_ip": gateway, "cidr": str(cidr), "id": sub_id,
            "created_at": _ts(), "description": "", "ipv6_address_mode": None, "ipv6_ra_mode": None,
            "revision_number": 0, "service_types": [], "subnetpool_id": None, "tags": [], "updated_at": _ts(),
            "router:external": reg.networks[net_id]["router:external"],
        }
        reg.networks[net_id]["subnets"].append(sub_id)
        self._allocators[sub_id] = hosts
        return sub_id

    def _add_port(self, reg: Region, net_id: str, pid: str, owner: str, device_id: str, host: str | None,
                  subnet_ids: list[str], security_groups: list[str], *, ip: str | None = None) -> str:
        port_id = self._uuid()
        fixed = []
        for sub in subnet_ids:
            address = ip if ip is not None else str(next(self._allocators[sub]))
            fixed.append({"subnet_id": sub, "ip_address": address})
        reg.ports[port_id] = {
            "admin_state_up": True, "allowed_address_pairs": [], "binding:host_id": host or "",
            "binding:profile": {}, "binding:vif_details": {"port_filter": True, "connectivity": "l2"} if host else {},
            "binding:vif_type": "ovs" if host else "unbound", "binding:vnic_type": "normal",
            "created_at": _ts(), "data_plane_status": None, "description": "", "device_id": device_id,
            "device_owner": owner, "dns_assignment": [], "dns_domain": "", "dns_name": "",
            "extra_dhcp_opts": [], "fixed_ips": fixed, "id": port_id, "ip_allocation": "immediate",
            "mac_address": self._mac(), "name": "", "network_id": net_id, "project_id": pid,
            "revision_number": 4, "security_groups": list(security_groups), "status": "ACTIVE" if host else "DOWN",
            "tags": [], "tenant_id": pid, "updated_at": _ts(), "port_security_enabled": bool(security_groups),
            "propagate_uplink_status": False, "qos_network_policy_id": None, "qos_policy_id": None,
        }
        return port_id

    def _add_server(self, reg: Region, pid: str, name: str, host: str | None, flavor: str, image: str) -> str:
        sid = self._uuid()
        n = self._next()
        hostinfo = reg.hosts.get(host or "")
        reg.servers[sid] = {
            "accessIPv4": "", "accessIPv6": "", "addresses": {}, "created": _ts(n),
            "flavor": {"id": flavor, "links": []},
            "hostId": hashlib.sha224(f"{pid}{host}".encode()).hexdigest() if host else "", "id": sid,
            "image": {"id": image, "links": []} if image else "", "key_name": None, "links": [],
            "metadata": {}, "name": name, "config_drive": "", "OS-DCF:diskConfig": "MANUAL",
            "OS-EXT-AZ:availability_zone": hostinfo["zone"] if hostinfo else "",
            "OS-EXT-SRV-ATTR:host": host,
            "OS-EXT-SRV-ATTR:hypervisor_hostname": f"{host}.localdomain" if host else None,
            "OS-EXT-SRV-ATTR:instance_name": f"instance-{n:08x}", "OS-EXT-STS:power_state": 1 if host else 0,
            "OS-EXT-STS:task_state": None, "OS-EXT-STS:vm_state": "active" if host else "error",
            "os-extended-volumes:volumes_attached": [], "OS-SRV-USG:launched_at": _ts(n).replace("Z", ".000000")
            .rstrip("Z") if host else None, "OS-SRV-USG:terminated_at": None, "progress": 0,
            "security_groups": [{"name": "default"}] if host else [], "status": "ACTIVE" if host else "ERROR",
            "tenant_id": pid, "updated": _ts(n + 30), "user_id": self.user_id,
        }
        return sid

    def _add_floating_ip(self, reg: Region, pid: str, ext_net: str, ext_subnet: str, controller: str,
                         port_id: str | None, router_id: str | None) -> str:
        fip_id = self._uuid()
        fip_port = self._add_port(reg, ext_net, "", "network:floatingip", fip_id, None, [ext_subnet], [])
        address = reg.ports[fip_port]["fixed_ips"][0]["ip_address"]
        reg.ports[fip_port]["status"] = "N/A"
        reg.floatingips[fip_id] = {
            "router_id": router_id, "description": "", "dns_domain": "", "dns_name": "", "created_at": _ts(),
            "updated_at": _ts(), "revision_number": 1, "project_id": pid, "tenant_id": pid,
            "floating_network_id": ext_net, "fixed_ip_address": None, "floating_ip_address": address,
            "port_id": None, "id": fip_id, "status": "DOWN", "port_details": None, "tags": [],
            "port_forwardings": [], "qos_network_policy_id": None, "qos_policy_id": None,
        }
        if port_id is not None:
            self._associate(reg, fip_id, port_id, router_id)
        return fip_id

    def _associate(self, reg: Region, fip_id: str, port_id: str, router_id: str | None) -> None:
        fip, port = reg.floatingips[fip_id], reg.ports[port_id]
        fip.update(port_id=port_id, fixed_ip_address=port["fixed_ips"][0]["ip_address"], router_id=router_id,
                   status="ACTIVE", port_details={k: port[k] for k in (
                       "name", "network_id", "mac_address", "admin_state_up", "status", "device_id",
                       "device_owner")})

    def _add_volume(self, reg: Region, pid: str, name: str, server: str | None, controller: str) -> str:
        vol_id = self._uuid()
        attachments = []
        if server is not None:
            attachments.append({
                "id": vol_id, "attachment_id": self._uuid(), "volume_id": vol_id, "server_id": server,
                "host_name": reg.servers[server]["OS-EXT-SRV-ATTR:host"], "device": "/dev/vdb",
                "attached_at": _ts(60).replace("Z", ".000000").rstrip("Z"),
            })
            reg.servers[server]["os-extended-volumes:volumes_attached"].append({"id": vol_id})
        reg.volumes[vol_id] = {
            "attachments": attachments, "availability_zone": "nova", "bootable": "false",
            "consistencygroup_id": None, "created_at": _ts().replace("Z", ".000000").rstrip("Z"),
            "description": None, "encrypted": False, "id": vol_id, "links": [], "metadata": {},
            "migration_status": None, "multiattach": False, "name": name,
            "os-vol-host-attr:host": f"{controller}@lvmdriver-1#lvmdriver-1", "os-vol-mig-status-attr:migstat": None,
            "os-vol-mig-status-attr:name_id": None, "os-vol-tenant-attr:tenant_id": pid, "replication_status": None,
            "size": 1 + self._next() % 100, "snapshot_id": None, "source_volid": None,
            "status": "in-use" if attachments else "available", "updated_at": None, "user_id": self.user_id,
            "volume_type": "lvmdriver-1",
        }
        return vol_id

    def _add_load_balancer(self, reg: Region, pid: str, name: str, net_id: str) -> str:
        lb_id, pool_id, listener_id = self._uuid(), self._uuid(), self._uuid()
        subnet_id = reg.networks[net_id]["subnets"][0]
        vip = self._add_port(reg, net_id, pid, "Octavia", f"lb-{lb_id}", None, [subnet_id], [])
        reg.ports[vip]["name"] = f"octavia-lb-{lb_id}"
        full_members = [{"id": self._uuid(), "address": p["fixed_ips"][0]["ip_address"],
                         "subnet_id": p["fixed_ips"][0]["subnet_id"], "protocol_port": 80, "weight": 1,
                         "admin_state_up": True, "project_id": pid, "name": "", "provisioning_status": "ACTIVE",
                         "operating_status": "ONLINE", "monitor_address": None, "monitor_port": None,
                         "backup": False, "tags": []}
                        for p in reg.ports.values()
                        if p["network_id"] == net_id and p["device_owner"].startswith("compute:")][:2]
        members = [{"id": m["id"]} for m in full_members]
        reg.loadbalancers[lb_id] = {
            "description": "", "admin_state_up": True, "project_id": pid, "provisioning_status": "ACTIVE",
            "flavor_id": None, "vip_subnet_id": subnet_id, "listeners": [{"id": listener_id}],
            "vip_address": reg.ports[vip]["fixed_ips"][0]["ip_address"], "vip_network_id": net_id,
            "vip_port_id": vip, "additional_vips": [], "provider": "amphora", "pools": [{"id": pool_id}],
            "created_at": _ts(), "updated_at": _ts(1), "id": lb_id, "operating_status": "ONLINE", "name": name,
            "vip_qos_policy_id": None, "availability_zone": None, "tags": [], "vip_vnic_type": "normal",
        }
        # Octavia's pool listing names members by id only (the addresses need /pools/{id}/members).
        reg.pool_members[pool_id] = full_members
        reg.pools[pool_id] = {
            "lb_algorithm": "ROUND_ROBIN", "protocol": "HTTP", "description": "", "admin_state_up": True,
            "loadbalancers": [{"id": lb_id}], "created_at": _ts(), "provisioning_status": "ACTIVE",
            "updated_at": _ts(1), "session_persistence": None, "listeners": [{"id": listener_id}],
            "members": members, "healthmonitor_id": None, "project_id": pid, "id": pool_id,
            "operating_status": "ONLINE", "name": f"{name}-pool", "tags": [], "tls_container_ref": None,
            "ca_tls_container_ref": None, "crl_container_ref": None, "tls_enabled": False, "tls_ciphers": None,
            "tls_versions": None, "alpn_protocols": None,
        }
        return lb_id

    # -- changes (what a test does to the cloud between scans) -----------------------------------------
    def _touch(self) -> None:
        self.version += 1

    def region(self, name: str | None = None) -> Region:
        return self.regions[name or self.size.regions[0]]

    def items(self, collection: str, region: str | None = None) -> list[Item]:
        """A deep copy of a collection's items (the cloud's own items must only change through methods)."""
        with self.lock:
            return copy.deepcopy(list(self.region(region).collection(collection).values()))

    def update(self, collection: str, item_id: str, region: str | None = None, **fields: Any) -> None:
        """Change fields of one item, as an API update would."""
        with self.lock:
            _change(self.region(region).collection(collection)[item_id], **fields)
            self._touch()

    def rename(self, collection: str, item_id: str, name: str, region: str | None = None) -> None:
        self.update(collection, item_id, region, name=name)

    def delete_servers(self, server_ids: Iterable[str], region: str | None = None) -> None:
        """Delete servers the way Nova does: their ports go, floating IPs and volumes are released."""
        with self.lock:
            reg = self.region(region)
            gone = set(server_ids)
            for sid in gone:
                del reg.servers[sid]
            gone_ports = {pid for pid, p in reg.ports.items()
                          if p["device_id"] in gone and p["device_owner"].startswith("compute:")}
            for pid in gone_ports:
                del reg.ports[pid]
            for fip in reg.floatingips.values():
                if fip["port_id"] in gone_ports:
                    _change(fip, port_id=None, fixed_ip_address=None, router_id=None, status="DOWN",
                               port_details=None)
            for group in reg.server_groups.values():
                group["members"] = [m for m in group["members"] if m not in gone]
            for vol in reg.volumes.values():
                kept = [a for a in vol["attachments"] if a["server_id"] not in gone]
                if len(kept) != len(vol["attachments"]):
                    vol.update(attachments=kept, status="in-use" if kept else "available")
            self._touch()

    def delete(self, collection: str, item_id: str, region: str | None = None) -> None:
        """Remove one item as is (no cascade: the caller keeps the cloud consistent)."""
        with self.lock:
            del self.region(region).collection(collection)[item_id]
            self._touch()

    # -- derived views (what services compute from their own state) ------------------------------------
    def availability_zones(self, region: str) -> list[Item]:
        with self.lock:
            zones: dict[str, Item] = {}
            for host in self.regions[region].hosts.values():
                zone = zones.setdefault(host["zone"], {"zoneName": host["zone"], "zoneState": {"available": True},
                                                       "hosts": {}})
                zone["hosts"][host["name"]] = {b: {"available": True, "active": True, "updated_at": _now()}
                                               for b in host["binaries"]}
            return sorted(zones.values(), key=lambda z: z["zoneName"] != "internal")

    def compute_services(self, region: str) -> list[Item]:
        with self.lock:
            return [{"id": host["service_ids"][b], "binary": b, "disabled_reason": None, "host": host["name"],
                     "state": "up", "status": "enabled", "updated_at": _now(), "zone": host["zone"],
                     "forced_down": False}
                    for host in self.regions[region].hosts.values() for b in host["binaries"]]

    def hypervisors(self, region: str) -> list[Item]:
        with self.lock:
            reg = self.regions[region]
            running = Counter(s["OS-EXT-SRV-ATTR:host"] for s in reg.servers.values())
            out = []
            for host in reg.hosts.values():
                if "nova-compute" not in host["binaries"]:
                    continue
                vms = running[host["name"]]
                out.append({
                    "cpu_info": json.dumps({"arch": "x86_64", "model": "Cascadelake-Server", "vendor": "Intel"}),
                    "current_workload": 0, "status": "enabled", "state": "up", "disk_available_least": 1900,
                    "host_ip": host["host_ip"], "free_disk_gb": host["local_gb"] - vms,
                    "free_ram_mb": host["memory_mb"] - 512 * vms, "hypervisor_hostname": f"{host['name']}.localdomain",
                    "hypervisor_type": "QEMU", "hypervisor_version": 8002000, "id": host["hypervisor_id"],
                    "local_gb": host["local_gb"], "local_gb_used": vms, "memory_mb": host["memory_mb"],
                    "memory_mb_used": 512 * vms, "running_vms": vms,
                    "service": {"host": host["name"], "id": host["service_ids"]["nova-compute"],
                                "disabled_reason": None},
                    "vcpus": host["vcpus"], "vcpus_used": vms,
                })
            return out

    def server_groups_view(self, region: str, microversion: tuple[int, int] = (2, 1)) -> list[Item]:
        """Server groups as nova shows them at a compute microversion (project_id only from 2.13)."""
        with self.lock:
            out = []
            for group in self.regions[region].server_groups.values():
                item: Item = {"id": group["id"], "name": group["name"]}
                if microversion >= (2, 64):
                    item.update(policy=group["policy"], rules=group["rules"])
                else:
                    item.update(policies=[group["policy"]], metadata={})
                item["members"] = list(group["members"])
                if microversion >= (2, 13):
                    item.update(project_id=group["project_id"], user_id=group["user_id"])
                out.append(item)
            return out

    def servers_view(self, region: str) -> list[Item]:
        """Servers with ``addresses`` built from their ports, as Nova's network info cache has them.

        Built once per cloud version: a paged listing asks for it once per page.
        """
        with self.lock:
            cached = self._views.get(("servers", region))
            if cached is not None and cached[0] == self.version:
                return cached[1]
            reg = self.regions[region]
            by_device: dict[str, list[Item]] = {}
            for port in reg.ports.values():
                if port["device_owner"].startswith("compute:"):
                    by_device.setdefault(port["device_id"], []).append(port)
            floating = {f["port_id"]: f["floating_ip_address"] for f in reg.floatingips.values() if f["port_id"]}
            out = []
            for server in reg.servers.values():
                addresses: dict[str, list[Item]] = {}
                for port in by_device.get(server["id"], []):
                    entries = addresses.setdefault(reg.networks[port["network_id"]]["name"], [])
                    for ip in port["fixed_ips"]:
                        entries.append({"addr": ip["ip_address"], "OS-EXT-IPS-MAC:mac_addr": port["mac_address"],
                                        "OS-EXT-IPS:type": "fixed", "version": 4})
                    if port["id"] in floating:
                        entries.append({"addr": floating[port["id"]], "OS-EXT-IPS-MAC:mac_addr": port["mac_address"],
                                        "OS-EXT-IPS:type": "floating", "version": 4})
                out.append(dict(server, addresses=addresses))
            self._views[("servers", region)] = (self.version, out)
            return out

    # -- the map a complete scan must produce ----------------------------------------------------------
    def expected_objects(self, environment: str) -> dict[str, tuple[str, str]]:
        """Object id -> (type, parent id) for every object a complete scan stores.

        Objects and their owners come from the cloud; folders from ``folder_layout()``. Host refs
        (children of aggregates) are left out: see ``expected_host_refs``.
        """
        def under(owner: str, types_name: str) -> str:
            return stable_id(owner, types_name)

        with self.lock:
            out: dict[str, tuple[str, str]] = {}
            for pid in self.projects:
                out[pid] = ("project", under(environment, "projects"))
            for name, reg in self.regions.items():
                out[name] = ("region", under(environment, "regions"))
                for zone in {h["zone"] for h in reg.hosts.values()}:
                    out[stable_id("az", name, zone)] = ("availability_zone", under(name, "availability_zones"))
                for host in reg.hosts.values():
                    out[host["name"]] = ("host", stable_id("az", name, host["zone"]))
                for server in reg.servers.values():
                    host = server["OS-EXT-SRV-ATTR:host"]
                    if host in reg.hosts:
                        out[server["id"]] = ("instance", under(host, "instances"))
                for agg in reg.aggregates.values():
                    out[stable_id("aggregate", name, str(agg["id"]))] = ("aggregate", under(name, "aggregates"))
                for flavor in reg.flavors.values():
                    out[stable_id("flavor", name, flavor["id"])] = ("flavor", under(name, "flavors"))
                for image in reg.images.values():
                    out[image["id"]] = ("image", under(name, "images"))
                for net in reg.networks.values():
                    out[net["id"]] = ("network", under(net["project_id"], "networks"))
                for sub in reg.subnets.values():
                    out[sub["id"]] = ("subnet", under(sub["network_id"], "subnets"))
                for port in reg.ports.values():
                    out[port["id"]] = ("port", under(port["network_id"], "ports"))
                for kind, coll, key in (("router", reg.routers, "project_id"),
                                        ("floating_ip", reg.floatingips, "project_id"),
                                        ("security_group", reg.security_groups, "project_id"),
                                        ("volume", reg.volumes, "os-vol-tenant-attr:tenant_id"),
                                        ("load_balancer", reg.loadbalancers, "project_id"),
                                        ("server_group", reg.server_groups, "project_id")):
                    for item in coll.values():
                        out[item["id"]] = (kind, under(item[key], f"{kind}s"))
                for snap in reg.snapshots.values():
                    out[snap["id"]] = ("snapshot", under(snap["volume_id"], "snapshots"))
            layout = folder_layout()
            owners = [(environment, "environment")] + [(oid, kind) for oid, (kind, _) in out.items()]
            for owner, kind in owners:
                for folder_type, types_name in layout.get(kind, []):
                    out[under(owner, types_name)] = (folder_type, owner)
            return out

    def expected_host_refs(self) -> set[tuple[str, str]]:
        """(aggregate object id, host name) of every host_ref object.

        Kept apart from ``expected_objects`` because a host_ref's own id is an implementation choice
        of the fetcher; what must hold is which host each aggregate lists.
        """
        with self.lock:
            return {(stable_id("aggregate", name, str(agg["id"])), host)
                    for name, reg in self.regions.items() for agg in reg.aggregates.values() for host in agg["hosts"]}

    def expected_links(self) -> set[tuple[str, str, str]]:
        """(link type, source id, target id) of every link the shipped link finders must find."""
        with self.lock:
            links: set[tuple[str, str, str]] = set()
            for reg in self.regions.values():
                servers = {s["id"]: s for s in reg.servers.values() if s["OS-EXT-SRV-ATTR:host"] in reg.hosts}
                for sid, server in servers.items():
                    links.add(("host-instance", server["OS-EXT-SRV-ATTR:host"], sid))
                for port in reg.ports.values():
                    owner = port["device_owner"]
                    links.add(("port-network", port["id"], port["network_id"]))
                    if owner.startswith("compute:") and port["device_id"] in servers:
                        links.add(("instance-port", port["device_id"], port["id"]))
                    if owner in ("network:router_interface", "network:router_gateway"):
                        links.add(("router-network", port["device_id"], port["network_id"]))
                    for sg in port["security_groups"]:
                        links.add(("port-security_group", port["id"], sg))
                for sub in reg.subnets.values():
                    links.add(("network-subnet", sub["network_id"], sub["id"]))
                for fip in reg.floatingips.values():
                    if fip["port_id"]:
                        links.add(("floatingip-port", fip["id"], fip["port_id"]))
                for vol in reg.volumes.values():
                    for att in vol["attachments"]:
                        if att["server_id"] in servers:
                            links.add(("volume-instance", vol["id"], att["server_id"]))
                for lb in reg.loadbalancers.values():
                    links.add(("loadbalancer-port", lb["id"], lb["vip_port_id"]))
                    by_address = {(ip["subnet_id"], ip["ip_address"]): p["id"] for p in reg.ports.values()
                                  for ip in p["fixed_ips"]}
                    for pool in lb["pools"]:
                        for member in reg.pool_members.get(pool["id"], []):
                            port = by_address.get((member["subnet_id"], member["address"]))
                            if port is not None:
                                links.add(("loadbalancer-port", lb["id"], port))
            return links


# --------------------------------------------------------------------------------------------------
# the HTTP server


@dataclass(frozen=True)
class _Service:
    type: str
    name: str
    prefix: str  # first path segment (devstack's layout)
    catalog_suffix: str  # what the catalog URL adds after the prefix
    version: str  # the versioned path segment
    aliases: tuple[str, ...] = ()  # other version segments the service also answers on


SERVICES: dict[str, _Service] = {s.type: s for s in (
    _Service("identity", "keystone", "identity", "", "v3"),
    _Service("compute", "nova", "compute", "/v2.1", "v2.1"),
    _Service("network", "neutron", "networking", "", "v2.0"),
    _Service("image", "glance", "image", "", "v2"),
    _Service("block-storage", "cinder", "volume", "/v3", "v3"),
    _Service("load-balancer", "octavia", "load-balancer", "", "v2", ("v2.0",)),  # octavia mounts both
)}
_BY_PREFIX = {s.prefix: s for s in SERVICES.values()}


@dataclass(frozen=True)
class _Listing:
    key: str  # response key
    style: str  # nova | neutron | cinder | octavia | glance | none
    view: str  # FakeCloud collection or derived view name
    project_field: str | None = None  # filtered to the token's project unless all_tenants
    all_param: str = "all_tenants"  # the query parameter that lifts that filter


LISTINGS: dict[tuple[str, str], _Listing] = {
    ("compute", "/servers/detail"): _Listing("servers", "nova", "servers_view", "tenant_id"),
    ("compute", "/flavors/detail"): _Listing("flavors", "nova", "flavors"),
    ("compute", "/os-availability-zone/detail"): _Listing("availabilityZoneInfo", "none", "availability_zones"),
    ("compute", "/os-hypervisors/detail"): _Listing("hypervisors", "none", "hypervisors"),
    ("compute", "/os-services"): _Listing("services", "none", "compute_services"),
    ("compute", "/os-aggregates"): _Listing("aggregates", "none", "aggregates"),
    ("compute", "/os-server-groups"): _Listing("server_groups", "none", "server_groups_view", "project_id",
                                               "all_projects"),
    ("network", "/networks"): _Listing("networks", "neutron", "networks"),
    ("network", "/subnets"): _Listing("subnets", "neutron", "subnets"),
    ("network", "/ports"): _Listing("ports", "neutron", "ports"),
    ("network", "/routers"): _Listing("routers", "neutron", "routers"),
    ("network", "/floatingips"): _Listing("floatingips", "neutron", "floatingips"),
    ("network", "/security-groups"): _Listing("security_groups", "neutron", "security_groups"),
    ("image", "/images"): _Listing("images", "glance", "images"),
    ("block-storage", "/volumes/detail"): _Listing("volumes", "cinder", "volumes", "os-vol-tenant-attr:tenant_id"),
    ("block-storage", "/snapshots/detail"): _Listing("snapshots", "cinder", "snapshots",
                                                     "os-extended-snapshot-attributes:project_id"),
    ("load-balancer", "/lbaas/loadbalancers"): _Listing("loadbalancers", "octavia", "loadbalancers"),
    ("load-balancer", "/lbaas/pools"): _Listing("pools", "octavia", "pools"),
}


@dataclass
class Fault:
    """What to do instead of (or before) answering requests whose path matches ``pattern``.

    ``pattern`` is an fnmatch pattern over the URL path without its query (``/compute/v2.1/servers/*``).
    """

    pattern: str
    status: int | None = None  # answer with this status and an error body
    delay: float = 0.0  # seconds to wait before answering
    times: int | None = None  # how many matching requests it applies to (None: all)
    after: int = 0  # let this many matching requests through first (fail page 2, not page 1)
    method: str | None = None
    location: str | None = None  # with a 3xx status: where the answer redirects to
    hits: int = 0  # matching requests it acted on

    def applies(self, method: str, path: str) -> bool:
        """Whether this request is one the fault acts on; counts it either way (call under a lock)."""
        if self.method is not None and self.method != method:
            return False
        if not fnmatch.fnmatchcase(path.rstrip("/") or "/", self.pattern.rstrip("/") or "/"):
            return False
        if self.after > 0:
            self.after -= 1
            return False
        if self.times is not None and self.hits >= self.times:
            return False
        self.hits += 1
        return True


class _HTTPError(Exception):
    def __init__(self, status: int, body: Item, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


class FakeCloudServer:
    """Serves a ``FakeCloud`` over HTTP on 127.0.0.1 (a free port) until ``stop``.

    ``requests`` counts every request by URL path (query left out); ``max_limit`` is the largest
    page any service returns (nova's ``osapi_max_limit``, glance's ``api_limit_max``...), so a
    small value makes a small cloud page like a big one.
    """

    def __init__(self, cloud: FakeCloud, *, max_limit: int = 1000, host: str = "127.0.0.1",
                 tls: ssl.SSLContext | None = None) -> None:
        self.cloud = cloud
        self.max_limit = max_limit
        self.requests: Counter[str] = Counter()
        self.log: list[tuple[str, str, int]] = []  # (method, path?query, status) of every request
        self.faults: list[Fault] = []
        self.missing_services: set[tuple[str, str | None]] = set()  # (service type, region or None = all)
        self.endpoint_overrides: dict[tuple[str, str | None], str] = {}
        self.tokens: dict[str, str] = {}  # token -> project id
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer((host, 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        self._scheme = "http"
        if tls is not None:  # HTTPS, with the context's certificate (every endpoint of the catalog too)
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
            self._scheme = "https"
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self._scheme}://{host!s}:{port}"

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def start(self) -> FakeCloudServer:
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, name="fakecloud", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> FakeCloudServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------------------
    def path(self, service_type: str, path: str = "", region: str | None = None) -> str:
        """The URL path a client uses for ``path`` of a service (``path("compute", "/servers/detail")``)."""
        svc = SERVICES[service_type]
        base = "" if service_type == "identity" else self._region_prefix(region or self.cloud.size.regions[0])
        return f"{base}/{svc.prefix}/{svc.version}{path}"

    def fail(self, pattern: str, status: int = 500, *, times: int | None = None, after: int = 0,
             method: str | None = None) -> Fault:
        """Answer requests whose path matches ``pattern`` with ``status`` (an error body in JSON)."""
        fault = Fault(pattern, status=status, times=times, after=after, method=method)
        self.faults.append(fault)
        return fault

    def redirect(self, pattern: str, location: str, *, status: int = 307, times: int | None = None) -> Fault:
        """Redirect requests whose path matches ``pattern`` to ``location``."""
        fault = Fault(pattern, status=status, times=times, location=location)
        self.faults.append(fault)
        return fault

    def slow(self, pattern: str, seconds: float, *, times: int | None = None) -> Fault:
        """Wait ``seconds`` before answering requests whose path matches ``pattern``."""
        fault = Fault(pattern, delay=seconds, times=times)
        self.faults.append(fault)
        return fault

    def lift(self, *faults: Fault) -> None:
        """Stop these faults (the API answers again), leaving the others, tokens and counters as they are."""
        with self._lock:
            for fault in faults:
                self.faults.remove(fault)

    def remove_service(self, service_type: str, region: str | None = None) -> None:
        """Leave a service out of the catalogs issued from now on (in one region, or all)."""
        self.missing_services.add((service_type, region))

    def openstack_section(self, **extra: Any) -> dict[str, Any]:
        """An environment's OpenStack section that reaches this server as its admin user."""
        return {"name": "OpenStack", "auth_url": self.auth_url, "user": self.cloud.user, "pwd": self.cloud.password,
                **extra}

    def point_service_at(self, service_type: str, url: str, region: str | None = None) -> None:
        """Put another URL (e.g. a closed port) in the catalog for a service."""
        self.endpoint_overrides[(service_type, region)] = url

    def reset(self) -> None:
        """Drop faults, catalog changes, counters and issued tokens."""
        with self._lock:
            self.faults.clear()
            self.missing_services.clear()
            self.endpoint_overrides.clear()
            self.requests.clear()
            self.log.clear()
            self.tokens.clear()

    @property
    def calls(self) -> int:
        return sum(self.requests.values())

    # -- request handling ------------------------------------------------------------------------------
    def _region_prefix(self, region: str) -> str:
        return "" if region == self.cloud.size.regions[0] else f"/{region}"

    def _record(self, method: str, target: str, status: int) -> None:
        with self._lock:
            self.requests[urlsplit(target).path] += 1
            self.log.append((method, target, status))

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            return next((fault for fault in self.faults if fault.applies(method, path)), None)

    def handle(self, method: str, target: str, headers: dict[str, str], body: bytes
               ) -> tuple[int, dict[str, str], bytes]:
        """Answer one request: (status, headers, body). Runs on a server thread."""
        parts = urlsplit(target)
        path = parts.path
        query = parse_qsl(parts.query, keep_blank_values=True)
        fault = self._fault_for(method, path)
        if fault is not None:
            if fault.delay:
                time.sleep(fault.delay)
            if fault.status is not None:
                status = fault.status
                if fault.location is not None:
                    return status, {"Location": fault.location}, b""
                return status, {}, json.dumps({"error": {"code": status, "title": "Injected fault",
                                                         "message": f"injected {status} for {path}"}}).encode()
        try:
            status, payload, extra = self._route(method, path, query, headers, body)
        except _HTTPError as err:
            status, payload, extra = err.status, err.body, err.headers
        with self.cloud.lock:  # pages hold the cloud's live items: encode them before a test changes them
            encoded = json.dumps(payload).encode()
        return status, extra, encoded

    def _route(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes
               ) -> tuple[int, Item, dict[str, str]]:
        segments = [s for s in path.split("/") if s]
        region = self.cloud.size.regions[0]
        if segments and segments[0] in self.cloud.regions and segments[0] != region:
            region, segments = segments[0], segments[1:]
        if not segments or segments[0] not in _BY_PREFIX:
            raise _HTTPError(404, {"error": {"code": 404, "message": f"no service at {path}"}})
        svc = _BY_PREFIX[segments[0]]
        rest = segments[1:]
        if svc.type == "identity":
            return self._identity(method, rest, headers, body)
        if (svc.type, region) in self.missing_services or (svc.type, None) in self.missing_services:
            raise _HTTPError(404, {"error": {"code": 404, "message": f"{svc.type} is not deployed here"}})
        if not rest:
            return self._versions(svc, region)
        if rest[0] != svc.version and rest[0] not in svc.aliases:
            raise _HTTPError(404, _error(svc, 404, f"unknown version {rest[0]}"))
        if len(rest) == 1:
            return self._version(svc, region)
        project = self._check_token(headers)
        sub = "/" + "/".join(rest[1:])
        if svc.type == "block-storage" and rest[1] in self.cloud.projects:  # volumev3-style URL with project id
            sub = "/" + "/".join(rest[2:])
        if svc.type == "load-balancer" and method == "GET" and len(rest) == 5 and rest[1:3] == ["lbaas", "pools"] \
                and rest[4] == "members":
            with self.cloud.lock:
                members = self.cloud.region(region).pool_members.get(rest[3])
                if members is None:
                    raise _HTTPError(404, _error(svc, 404, f"pool {rest[3]} not found"))
                return 200, {"members": copy.deepcopy(members), "members_links": []}, {}
        listing = LISTINGS.get((svc.type, sub))
        if listing is None or method != "GET":
            raise _HTTPError(404, _error(svc, 404, f"the resource could not be found: {method} {sub}"))
        return self._list(svc, region, listing, path, query, project, _compute_microversion(headers))

    # identity
    def _identity(self, method: str, rest: list[str], headers: dict[str, str], body: bytes
                  ) -> tuple[int, Item, dict[str, str]]:
        if not rest:
            return 300, {"versions": {"values": [self._identity_version()]}}, {}
        if rest[0] != "v3":
            raise _HTTPError(404, {"error": {"code": 404, "title": "Not Found", "message": "not found"}})
        if len(rest) == 1:
            return 200, {"version": self._identity_version()}, {}
        if rest[1:] == ["auth", "tokens"] and method == "POST":
            return self._issue_token(body)
        if rest[1:] == ["projects"] and method == "GET":
            self._check_token(headers)
            with self.cloud.lock:
                projects = copy.deepcopy(list(self.cloud.projects.values()))
            for p in projects:
                p["links"] = {"self": f"{self.url}/identity/v3/projects/{p['id']}"}
            return 200, {"projects": projects, "links": {"self": f"{self.url}/identity/v3/projects",
                                                         "previous": None, "next": None}}, {}
        raise _HTTPError(404, {"error": {"code": 404, "title": "Not Found", "message": "not found"}})

    def _identity_version(self) -> Item:
        return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                "links": [{"rel": "self", "href": f"{self.url}/identity/v3/"}],
                "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}

    def _issue_token(self, body: bytes) -> tuple[int, Item, dict[str, str]]:
        unauthorized = _HTTPError(401, {"error": {"code": 401, "title": "Unauthorized", "message":
                                                  "The request you have made requires authentication."}})
        try:
            auth = json.loads(body or b"{}")["auth"]
            user = auth["identity"]["password"]["user"]
            scope = auth.get("scope", {}).get("project", {})
        except (ValueError, KeyError, TypeError):
            raise _HTTPError(400, {"error": {"code": 400, "title": "Bad Request",
                                             "message": "malformed auth request"}}) from None
        if user.get("name") != self.cloud.user or user.get("password") != self.cloud.password:
            raise unauthorized
        with self.cloud.lock:
            project = next((p for p in self.cloud.projects.values()
                            if p["name"] == scope.get("name", ADMIN_PROJECT) or p["id"] == scope.get("id")), None)
        if project is None:
            raise unauthorized
        token = uuid.uuid4().hex
        with self._lock:
            self.tokens[token] = project["id"]
        now = datetime.now(UTC)
        return 201, {"token": {
            "methods": ["password"], "audit_ids": [uuid.uuid4().hex[:22]],
            "user": {"domain": DOMAIN, "id": self.cloud.user_id, "name": self.cloud.user, "password_expires_at": None},
            "project": {"domain": DOMAIN, "id": project["id"], "name": project["name"]}, "is_domain": False,
            "roles": [{"id": uuid.uuid5(uuid.NAMESPACE_DNS, r).hex, "name": r} for r in ("admin", "member", "reader")],
            "issued_at": now.strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "expires_at": (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S.000000Z"),
            "catalog": self._catalog(),
        }}, {"X-Subject-Token": token}

    def _catalog(self) -> list[Item]:
        catalog = []
        for svc in SERVICES.values():
            endpoints = []
            regions = self.cloud.size.regions
            for region in regions:
                if (svc.type, region) in self.missing_services or (svc.type, None) in self.missing_services:
                    continue
                url = self.endpoint_overrides.get((svc.type, region)) or self.endpoint_overrides.get((svc.type, None))
                if url is None:
                    base = self.url if svc.type == "identity" else self.url + self._region_prefix(region)
                    url = f"{base}/{svc.prefix}{svc.catalog_suffix}"
                endpoints.append({"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{region}{url}").hex, "interface": "public",
                                  "region_id": region, "region": region, "url": url})
                if svc.type == "identity":
                    break  # one keystone for all regions
            if endpoints:
                catalog.append({"endpoints": endpoints, "id": uuid.uuid5(uuid.NAMESPACE_DNS, svc.type).hex,
                                "type": svc.type, "name": svc.name})
        return catalog

    def _check_token(self, headers: dict[str, str]) -> str:
        token = headers.get("x-auth-token", "")
        with self._lock:
            project = self.tokens.get(token)
        if project is None:
            raise _HTTPError(401, {"error": {"code": 401, "title": "Unauthorized",
                                             "message": "The request you have made requires authentication."}})
        return project

    # version discovery
    def _versions(self, svc: _Service, region: str) -> tuple[int, Item, dict[str, str]]:
        base = f"{self.url}{self._region_prefix(region)}/{svc.prefix}"
        if svc.type == "compute":
            return 200, {"versions": [
                {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "",
                 "updated": "2011-01-21T11:33:21Z", "links": [{"rel": "self", "href": f"{base}/v2/"}]},
                self._compute_version(base)]}, {}
        if svc.type == "network":
            return 200, {"versions": [{"id": "v2.0", "status": "CURRENT",
                                       "links": [{"href": f"{base}/v2.0/", "rel": "self"}]}]}, {}
        if svc.type == "image":
            return 300, {"versions": [{"id": f"v2.{m}", "status": "CURRENT" if m == 16 else "SUPPORTED",
                                       "links": [{"href": f"{base}/v2/", "rel": "self"}]}
                                      for m in range(16, -1, -1)]}, {}
        if svc.type == "block-storage":
            return 300, {"versions": [self._volume_version(base)]}, {}
        return 200, {"versions": [
            {"id": f"v2.{m}", "status": "CURRENT" if m == 27 else "SUPPORTED", "updated": "2023-01-01T00:00:00Z",
             "links": [{"href": f"{base}/v2", "rel": "self"}]} for m in range(27, -1, -1)]}, {}

    def _version(self, svc: _Service, region: str) -> tuple[int, Item, dict[str, str]]:
        base = f"{self.url}{self._region_prefix(region)}/{svc.prefix}"
        if svc.type == "compute":
            return 200, {"version": self._compute_version(base)}, {}
        if svc.type == "block-storage":
            return 200, {"versions": [self._volume_version(base)]}, {}
        if svc.type == "network":
            return 200, {"resources": [{"name": n[:-1], "collection": n,
                                        "links": [{"href": f"{base}/v2.0/{n}", "rel": "self"}]}
                                       for n in ("networks", "subnets", "ports", "routers", "floatingips")]}, {}
        return self._versions(svc, region)

    @staticmethod
    def _compute_version(base: str) -> Item:
        return {"id": "v2.1", "status": "CURRENT", "version": "2.96", "min_version": "2.1",
                "updated": "2013-07-23T11:33:21Z",
                "links": [{"rel": "self", "href": f"{base}/v2.1/"},
                          {"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.compute+json;version=2.1"}]}

    @staticmethod
    def _volume_version(base: str) -> Item:
        return {"id": "v3.0", "status": "CURRENT", "version": "3.70", "min_version": "3.0",
                "updated": "2023-08-31T00:00:00Z",
                "links": [{"href": "https://docs.openstack.org/", "type": "text/html", "rel": "describedby"},
                          {"href": f"{base}/v3/", "rel": "self"}],
                "media-types": [{"base": "application/json",
                                 "type": "application/vnd.openstack.volume+json;version=3"}]}

    # collections
    def _items(self, region: str, listing: _Listing, project: str | None, microversion: tuple[int, int]
               ) -> list[Item]:
        """A collection's items as served, narrowed to ``project`` when given."""
        cloud = self.cloud
        if listing.view == "server_groups_view":  # nova filters on the group's project whatever the shape
            with cloud.lock:
                mine = {g["id"] for g in cloud.regions[region].server_groups.values()
                        if project is None or g["project_id"] == project}
            return [g for g in cloud.server_groups_view(region, microversion) if g["id"] in mine]
        if listing.view in ("servers_view", "availability_zones", "compute_services", "hypervisors"):
            items = list(getattr(cloud, listing.view)(region))
        else:
            with cloud.lock:
                items = list(cloud.regions[region].collection(listing.view).values())
        if project is not None and listing.project_field:
            items = [i for i in items if i.get(listing.project_field) == project]
        return items

    def _list(self, svc: _Service, region: str, listing: _Listing, path: str, query: list[tuple[str, str]],
              project: str, microversion: tuple[int, int]) -> tuple[int, Item, dict[str, str]]:
        params = dict(query)
        everyone = params.get(listing.all_param, "").lower() in ("1", "true", "yes")
        items = self._items(region, listing, None if everyone else project, microversion)
        if listing.view == "flavors" and params.get("is_public", "true").lower() not in ("none", "false"):
            items = [i for i in items if i["os-flavor-access:is_public"]]
        version = f"{microversion[0]}.{microversion[1]}"
        headers = {"OpenStack-API-Version": f"compute {version}", "X-OpenStack-Nova-API-Version": version,
                   "Vary": "OpenStack-API-Version, X-OpenStack-Nova-API-Version"} if svc.type == "compute" else {}
        if listing.style == "none":
            return 200, {listing.key: items}, headers
        default = 25 if listing.style == "glance" else self.max_limit
        try:
            limit = min(int(params.get("limit", default)), self.max_limit)
        except ValueError:
            raise _HTTPError(400, _error(svc, 400, f"limit must be an integer, not {params['limit']!r}")) from None
        if limit < 0:
            raise _HTTPError(400, _error(svc, 400, "limit must be >= 0"))
        start = 0
        marker = params.get("marker")
        if marker is not None:
            index = next((n for n, item in enumerate(items) if str(item["id"]) == marker), None)
            if index is None:
                status = 404 if svc.type == "network" else 400
                raise _HTTPError(status, _error(svc, status, f"marker [{marker}] not found"))
            start = index + 1
        page = items[start:start + limit]
        body: Item = {listing.key: page}
        if listing.style == "glance":
            first = {k: v for k, v in params.items() if k != "marker"}
            body.update(first="/v2/images" + (f"?{urlencode(first)}" if first else ""), schema="/v2/schemas/images")
            if page and len(page) == limit:
                body["next"] = "/v2/images?" + urlencode({**first, "marker": page[-1]["id"]})
            return 200, body, headers
        # nova, neutron, cinder and octavia: absolute links built from the request URL, next when a page is full
        links = []
        if page and len(page) >= limit:
            nxt = {k: v for k, v in params.items() if k != "marker"}
            nxt.update(limit=str(limit), marker=str(page[-1]["id"]))
            links.append({"rel": "next", "href": f"{self.url}{path}?{urlencode(nxt)}"})
        if listing.style == "neutron" and marker is not None and page:
            prev = {k: v for k, v in params.items() if k != "marker"}
            prev.update(limit=str(limit), marker=str(page[0]["id"]), page_reverse="True")
            links.append({"rel": "previous", "href": f"{self.url}{path}?{urlencode(prev)}"})
        if links or listing.style != "neutron":
            body[f"{listing.key}_links"] = links
        if listing.style == "octavia" and not links:
            body[f"{listing.key}_links"] = []
        return 200, body, headers


NOVA_MAX_MICROVERSION = (2, 96)


def _compute_microversion(headers: dict[str, str]) -> tuple[int, int]:
    """The compute microversion a request asks for (2.1 when none), as nova reads its headers."""
    value = ""
    for part in headers.get("openstack-api-version", "").split(","):
        service, _, version = part.strip().partition(" ")
        if service == "compute":
            value = version.strip()
    value = value or headers.get("x-openstack-nova-api-version", "").strip()
    if not value:
        return (2, 1)
    if value == "latest":
        return NOVA_MAX_MICROVERSION
    major, _, minor = value.partition(".")
    try:
        return (int(major), int(minor))
    except ValueError:
        raise _HTTPError(400, {"badRequest": {"message": f"invalid microversion {value!r}", "code": 400}}) from None


def _error(svc: _Service, status: int, message: str) -> Item:
    """An error body in the service's own format."""
    if svc.type == "network":
        return {"NeutronError": {"type": "HTTPError", "message": message, "detail": ""}}
    if svc.type in ("compute", "block-storage"):
        kind = {400: "badRequest", 404: "itemNotFound"}.get(status, "computeFault")
        return {kind: {"message": message, "code": status}}
    return {"faultcode": "Client" if status < 500 else "Server", "faultstring": message, "debuginfo": None,
            "code": status, "title": "Error", "message": message}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fakecloud/1"

    def _serve(self) -> None:
        fake: FakeCloudServer = self.server.fake  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, extra, payload = fake.handle(self.command, self.path, headers, body)
        except Exception as exc:  # a bug in the fake must show up as a 500, not a hung client
            status, extra, payload = 500, {}, json.dumps({"error": {"code": 500, "message": repr(exc)}}).encode()
        fake._record(self.command, self.path, status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read FakeCloudServer.log instead of stderr noise


def closed_port_url() -> str:
    """A loopback URL on a port nothing listens on (bound, then released)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# a single item, as the handlers read it back: (service type, collection path) -> (listing, key of the item)
SHOW: dict[tuple[str, str], tuple[tuple[str, str], str]] = {
    ("network", "/ports"): (("network", "/ports"), "port"),
    ("network", "/networks"): (("network", "/networks"), "network"),
    ("network", "/subnets"): (("network", "/subnets"), "subnet"),
    ("network", "/routers"): (("network", "/routers"), "router"),
    ("network", "/floatingips"): (("network", "/floatingips"), "floatingip"),
    ("network", "/security-groups"): (("network", "/security-groups"), "security_group"),
    ("compute", "/servers"): (("compute", "/servers/detail"), "server"),
    ("compute", "/os-server-groups"): (("compute", "/os-server-groups"), "server_group"),
    ("block-storage", "/volumes"): (("block-storage", "/volumes/detail"), "volume"),
    ("block-storage", "/snapshots"): (("block-storage", "/snapshots/detail"), "snapshot"),
    ("load-balancer", "/lbaas/loadbalancers"): (("load-balancer", "/lbaas/loadbalancers"), "loadbalancer"),
}
FILTERS = {"id", "device_id", "network_id", "device_owner", "loadbalancer_id"}


class ShowingServer(FakeCloudServer):
    """``FakeCloudServer`` answers listings only, and ignores listing filters. The handlers also read
    single items (``GET /ports/{id}``, ``/servers/{id}``) and filtered listings (``?device_id=``), as a
    real cloud serves them in O(1): without this, every event would find its object "gone from the
    API" (and delete it), and an instance event would list every port of the cloud."""

    def __init__(self, *args: Any, latency_ms: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latency_s = latency_ms / 1000  # a remote cloud's round trip, added to every API answer
        self._index: dict[tuple[str, str], tuple[tuple[int, str, tuple[int, int]], dict[str, Any]]] = {}

    def _indexed(self, region: str, listing: Any, field: str, microversion: tuple[int, int] = (2, 1)
                 ) -> dict[str, Any]:
        """Items by ``field`` (as shown at ``microversion``), rebuilt only when the cloud changed."""
        stamp = (self.cloud.version, region, microversion)
        cached = self._index.get((listing.view, field))
        if cached is None or cached[0] != stamp:
            index: dict[str, Any] = {}
            for item in self._items(region, listing, None, microversion):
                if field == "id":
                    index[str(item["id"])] = item
                elif field == "loadbalancer_id" and "loadbalancers" in item:  # octavia filters pools so
                    for lb in item["loadbalancers"]:
                        index.setdefault(str(lb.get("id")), []).append(item)
                else:
                    index.setdefault(str(item.get(field)), []).append(item)
            cached = self._index[(listing.view, field)] = (stamp, index)
        return cached[1]

    def _route(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        if self.latency_s:
            time.sleep(self.latency_s)
        segments = [s for s in path.split("/") if s]
        region = self.cloud.size.regions[0]
        if segments and segments[0] in self.cloud.regions:
            region, segments = segments[0], segments[1:]
        svc = _BY_PREFIX.get(segments[0]) if segments else None
        if method != "GET" or svc is None or svc.type == "identity" or len(segments) < 3:
            return super()._route(method, path, query, headers, body)
        rest = segments[2:]  # after the service prefix and its version
        if svc.type == "block-storage" and rest and rest[0] in self.cloud.projects:
            rest = rest[1:]
        sub = "/" + "/".join(rest)
        collection, _, item_id = sub.rpartition("/")
        if (svc.type, collection) in SHOW and (svc.type, sub) not in LISTINGS:
            self._check_token(headers)
            listing_key, key = SHOW[(svc.type, collection)]
            item = self._indexed(region, LISTINGS[listing_key], "id", _compute_microversion(headers)).get(item_id)
            if item is None:
                raise _HTTPError(404, _error(svc, 404, f"{key} {item_id} not found"))
            return 200, {key: item}, {}
        filters: dict[str, list[str]] = {}  # as neutron reads them: a repeated filter matches any of its values
        for k, v in query:
            if k in FILTERS:
                filters.setdefault(k, []).append(v)
        listing = LISTINGS.get((svc.type, sub))
        if filters and listing is not None:
            self._check_token(headers)
            (field, values), *more = filters.items()
            index = self._indexed(region, listing, field)
            items = []
            for v in dict.fromkeys(values):
                found = index.get(v)
                items += ([found] if found else []) if field == "id" else (found or [])
            items = [i for i in items if all(str(i.get(k)) in vs for k, vs in more)]
            return 200, {listing.key: items}, {}
        return super()._route(method, path, query, headers, body)
