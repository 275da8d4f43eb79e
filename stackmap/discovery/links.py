"""Link finders: derive the edges of the map from inventory documents.

Each finder looks at one *holder* object (the object whose own fields name the other end: a port
names its network, a subnet its network, a volume its instances) and asks a ``Lookup`` for the other
end. Because the other end is fetched through a port, the same finder code serves a full scan (every
object in memory, ``MemoryLookup``) and an incremental update after a notification (the changed
objects as holders, the rest read from the store, ``StoreLookup``).

Rules every finder keeps, so the map never lies:
- a link is produced only when both ends exist (no dangling links to deleted or unscanned objects);
- its ``state`` comes from the data (a port that is DOWN gives a down link), never a hard-coded "up";
- each finder batches its lookups: one ``Lookup.get`` for all holders of a call, never one per holder,
  so a store-backed update costs a handful of queries and a full scan stays O(objects).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

from stackmap.discovery.api.fetchers import FILED_BY, folder_id
from stackmap.errors import ConfigError
from stackmap.model import LinkState, link_id
from stackmap.paths import defaults_dir
from stackmap.store.base import Doc, Store, link_key

__all__ = [
    "FINDER_CLASSES",
    "FloatingIpPortFinder",
    "HostInstanceFinder",
    "InstancePortFinder",
    "LinkFinder",
    "LoadBalancerPortFinder",
    "Lookup",
    "MemoryLookup",
    "NetworkSubnetFinder",
    "PortNetworkFinder",
    "PortSecurityGroupFinder",
    "RouterNetworkFinder",
    "StoreLookup",
    "VolumeInstanceFinder",
    "find_links",
    "link_state",
    "link_types_of",
    "load_link_finders",
]

LINK_FINDERS_FILE = "link_finders.json"

# --------------------------------------------------------------------------------------------------
# lookups


class Lookup(Protocol):
    """Where a finder reads the objects at the other end of its links."""

    def get(self, ids: Iterable[str]) -> dict[str, Doc]:
        """Objects by id; ids that do not exist are simply absent from the result."""
        ...

    def find(self, type: str, **equals: Any) -> list[Doc]:
        """Objects of ``type`` whose top-level fields equal the given values."""
        ...

    def find_on_hosts(self, type: str, hosts: Iterable[str]) -> list[Doc]:
        """Objects of ``type`` whose ``host`` is one of ``hosts``: a few hosts' host-layer objects,
        which a store finds through an index instead of reading those of every host."""
        ...


class MemoryLookup:
    """Lookups over documents held in memory, for a full scan.

    ``find`` indexes (type, field) lazily and keeps the index, so a finder that calls it once per
    holder still costs O(objects) overall instead of a scan of every object per call.
    """

    def __init__(self, docs: Iterable[Mapping[str, Any]]) -> None:
        self._by_id: dict[str, Doc] = {}
        self._by_type: dict[str, list[Doc]] = defaultdict(list)
        for doc in docs:
            obj = doc if isinstance(doc, dict) else dict(doc)
            self._by_id[obj["id"]] = obj
            self._by_type[obj.get("type", "")].append(obj)
        self._indexes: dict[tuple[str, str], dict[Hashable, list[Doc]]] = {}

    def get(self, ids: Iterable[str]) -> dict[str, Doc]:
        by_id = self._by_id
        return {i: by_id[i] for i in ids if i in by_id}

    def _index(self, type_: str, field: str) -> dict[Hashable, list[Doc]]:
        key = (type_, field)
        index = self._indexes.get(key)
        if index is None:
            index = defaultdict(list)
            for doc in self._by_type.get(type_, ()):
                value = doc.get(field)
                if isinstance(value, Hashable):
                    index[value].append(doc)
            self._indexes[key] = index
        return index

    def find_on_hosts(self, type: str, hosts: Iterable[str]) -> list[Doc]:
        index = self._index(type, "host")
        return [doc for host in dict.fromkeys(hosts) for doc in index.get(host, ())]

    def find(self, type: str, **equals: Any) -> list[Doc]:
        if not equals:
            return list(self._by_type.get(type, ()))
        items = iter(equals.items())
        field, value = next(items)
        if not isinstance(value, Hashable):
            return []
        candidates = self._index(type, field).get(value, [])
        rest = list(items)
        return [doc for doc in candidates if all(doc.get(f) == v for f, v in rest)]


class StoreLookup:
    """Lookups against the store, for an incremental update after a notification.

    A StoreLookup lives for one computation of links, during which nothing is written: so ``get``
    remembers what it read, and what it did not find (the finders ask for the same networks,
    instances and ports in turn), starting from ``known``, objects just read from the store (the
    holders). Make a new one after a write.
    """

    def __init__(self, store: Store, environment: str, known: Iterable[Doc] = ()) -> None:
        self.store = store
        self.environment = environment
        self._got: dict[str, Doc | None] = {doc["id"]: doc for doc in known}

    def get(self, ids: Iterable[str]) -> dict[str, Doc]:
        wanted = set(ids)
        unread = sorted(wanted - self._got.keys())
        if unread:
            self._got.update(dict.fromkeys(unread))
            self._got.update((doc["id"], doc) for doc in self.store.find_objects(self.environment, ids=unread))
        return {i: doc for i in wanted if (doc := self._got[i]) is not None}

    def find(self, type: str, **equals: Any) -> list[Doc]:
        filed = FILED_BY.get(type)
        owner = equals.get(filed[0]) if filed is not None else None
        if filed is not None and isinstance(owner, str) and owner:  # the ports of one network: its folder
            docs = self.store.find_objects(self.environment, type=type, parent_id=folder_id(owner, filed[1]))
        else:
            docs = self.store.find_objects(self.environment, type=type)
        return [doc for doc in docs if all(doc.get(f) == v for f, v in equals.items())]

    def find_on_hosts(self, type: str, hosts: Iterable[str]) -> list[Doc]:
        wanted = sorted(set(hosts))
        return self.store.find_objects(self.environment, type=type, hosts=wanted) if wanted else []


class OnlyLookup:
    """A lookup whose ``find`` answers from given objects only (``get`` asks the real lookup): for
    refreshing just the links to those objects, with finders that declare ``finds_ends``."""

    def __init__(self, lookup: Lookup, only: Iterable[Doc]) -> None:
        self.lookup = lookup
        self.only = MemoryLookup(only)

    def get(self, ids: Iterable[str]) -> dict[str, Doc]:
        return self.lookup.get(ids)

    def find(self, type: str, **equals: Any) -> list[Doc]:
        return self.only.find(type, **equals)

    def find_on_hosts(self, type: str, hosts: Iterable[str]) -> list[Doc]:
        return self.only.find_on_hosts(type, hosts)


# --------------------------------------------------------------------------------------------------
# link state from the data

_DOWN_STATUSES = frozenset(
    {"DOWN", "ERROR", "SHUTOFF", "SUSPENDED", "PAUSED", "STOPPED", "SHELVED", "SHELVED_OFFLOADED",
     "DELETED", "SOFT_DELETED", "OFFLINE"}
)


def _is_down(doc: Mapping[str, Any]) -> bool:
    """Whether an object's own fields say it is not carrying traffic.

    Neutron and Nova report this in different fields (``admin_state_up``, ``status``; a host's
    ``state``), Octavia in ``operating_status``; any of them saying so is enough.
    """
    if doc.get("admin_state_up") is False:
        return True
    for field in ("status", "operating_status"):
        value = doc.get(field)
        if isinstance(value, str) and value.upper() in _DOWN_STATUSES:
            return True
    state = doc.get("state")
    return isinstance(state, str) and state.lower() == "down"


def link_state(*ends: Mapping[str, Any]) -> str:
    """A link is down when either end says it is down, otherwise up."""
    return LinkState.DOWN.value if any(_is_down(end) for end in ends) else LinkState.UP.value


# --------------------------------------------------------------------------------------------------
# finders


class LinkFinder:
    """Base of all finders: one link type, produced from holders of given types.

    Subclasses declare the link type, its end types and the holder types they understand; the
    config may narrow the holder types (e.g. to turn off a secondary source) but never widen them.
    """

    link_type: ClassVar[str]
    source_type: ClassVar[str]
    target_type: ClassVar[str]
    supported_holder_types: ClassVar[tuple[str, ...]]
    # Whatever this finder gets from ``lookup.find`` is a candidate other end of its links, never a
    # step towards one: so a relink that refreshes only the links to some objects may let its
    # ``find`` see just those (``OnlyLookup``).
    finds_ends: ClassVar[bool] = False

    def __init__(self, holder_types: Sequence[str] | None = None) -> None:
        chosen = tuple(holder_types) if holder_types else self.supported_holder_types
        unknown = [t for t in chosen if t not in self.supported_holder_types]
        if unknown:
            raise ValueError(
                f"{type(self).__name__} cannot find {self.link_type} links from {', '.join(unknown)} "
                f"(it understands {', '.join(self.supported_holder_types)})"
            )
        self.holder_types: tuple[str, ...] = chosen

    @property
    def holder_type(self) -> str:
        """The main holder type (the first one), for callers that think of one holder per finder."""
        return self.holder_types[0]

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        """Links found from ``holders`` (already of this finder's holder types)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.link_type!r}, holders={list(self.holder_types)})"

    def link(
        self,
        environment: str,
        source: Mapping[str, Any],
        target: Mapping[str, Any],
        *,
        link_name: str | None = None,
        state: str | None = None,
        attributes: dict[str, Any] | None = None,
        host: str | None = None,
    ) -> Doc:
        """A link document between two existing objects, shaped exactly as ``Link(...).to_doc()``.

        The dict is built directly rather than through the model: a full scan makes ~100k links and
        validating each costs ten times more than finding it. The ends come from stored objects
        (whose ids the store has already checked) and the tests hold the shape to the model's.
        """
        source_id, target_id = source["id"], target["id"]
        doc: Doc = {
            "environment": environment,
            "link_type": self.link_type,
            "source_id": source_id,
            "target_id": target_id,
            "source_type": self.source_type,
            "target_type": self.target_type,
            "id": link_id(self.link_type, source_id, target_id),
            "link_name": link_name or "",
            "state": state if state is not None else link_state(source, target),
            "link_weight": 0,
            "source_label": str(source.get("name") or source_id),
            "target_label": str(target.get("name") or target_id),
            "implicit": False,
        }
        if host:
            doc["host"] = host
        doc["attributes"] = attributes or {}
        return doc


def _str(value: Any) -> str | None:
    """A usable id: a non-empty string, else None (APIs give "" or null for 'not set')."""
    return value if isinstance(value, str) and value else None


def _network_ids(value: Any) -> list[str]:
    """A network field as a list: Calipso stores ``network`` as a string, newer code as a list."""
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, list | tuple | set):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _bound_host(port: Mapping[str, Any]) -> str | None:
    return _str(port.get("binding:host_id"))


class HostInstanceFinder(LinkFinder):
    """host → instance, from the instance's ``host`` (the compute host name = the host's id)."""

    link_type = "host-instance"
    source_type = "host"
    target_type = "instance"
    supported_holder_types = ("instance",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(inst, h) for inst in holders if (h := _str(inst.get("host")))]
        hosts = lookup.get({h for _, h in wanted})
        links = []
        for inst, host_id in wanted:
            host = hosts.get(host_id)
            if host is not None and host.get("type") == self.source_type:
                links.append(self.link(environment, host, inst, link_name=inst.get("name") or inst["id"],
                                       host=host_id))
        return links


class InstancePortFinder(LinkFinder):
    """instance → port, from a port owned by Nova (``device_owner`` compute:*, ``device_id``)."""

    link_type = "instance-port"
    source_type = "instance"
    target_type = "port"
    supported_holder_types = ("port",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [
            (port, dev) for port in holders
            if str(port.get("device_owner") or "").startswith("compute:") and (dev := _str(port.get("device_id")))
        ]
        instances = lookup.get({d for _, d in wanted})
        links = []
        for port, dev in wanted:
            inst = instances.get(dev)
            if inst is None or inst.get("type") != self.source_type:
                continue
            attributes = {"network": port["network_id"]} if _str(port.get("network_id")) else {}
            links.append(self.link(
                environment, inst, port, link_name=port.get("mac_address") or port["id"],
                state=link_state(port, inst), attributes=attributes,
                host=_bound_host(port) or _str(inst.get("host")),
            ))
        return links


class PortNetworkFinder(LinkFinder):
    """port → network, from the port's ``network_id``."""

    link_type = "port-network"
    source_type = "port"
    target_type = "network"
    supported_holder_types = ("port",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(port, n) for port in holders if (n := _str(port.get("network_id")))]
        networks = lookup.get({n for _, n in wanted})
        links = []
        for port, net_id in wanted:
            net = networks.get(net_id)
            if net is None or net.get("type") != self.target_type:
                continue
            links.append(self.link(environment, port, net, link_name=net.get("name") or net_id,
                                   attributes={"network": net_id}, host=_bound_host(port)))
        return links


class NetworkSubnetFinder(LinkFinder):
    """network → subnet, from the subnet's ``network_id``."""

    link_type = "network-subnet"
    source_type = "network"
    target_type = "subnet"
    supported_holder_types = ("subnet",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(sub, n) for sub in holders if (n := _str(sub.get("network_id")))]
        networks = lookup.get({n for _, n in wanted})
        links = []
        for sub, net_id in wanted:
            net = networks.get(net_id)
            if net is None or net.get("type") != self.source_type:
                continue
            links.append(self.link(environment, net, sub, link_name=sub.get("cidr") or sub.get("name") or sub["id"],
                                   attributes={"network": net_id}))
        return links


_GATEWAY_OWNER = "network:router_gateway"


def _router_port_kind(owner: str) -> str | None:
    if owner == _GATEWAY_OWNER:
        return "gateway"
    if owner.startswith("network:router_interface") or owner == "network:ha_router_replicated_interface":
        return "interface"
    return None


class RouterNetworkFinder(LinkFinder):
    """router → network, from the router's ports and, failing a visible gateway port, its gateway info.

    Ports are the better source (they carry the port id, subnets, binding host and status), but
    non-admin credentials often cannot see a router's gateway port, so ``external_gateway_info``
    fills that gap. Several ports of one router on one network (one per subnet) give one link whose
    ``subnet_ids`` gathers them all.
    """

    link_type = "router-network"
    source_type = "router"
    target_type = "network"
    supported_holder_types = ("port", "router")

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        ports = [p for p in holders if p.get("type") == "port"]
        routers = [r for r in holders if r.get("type") == "router"]
        by_key: dict[tuple[str, str], Doc] = {}

        router_ports = []
        for port in ports:
            kind = _router_port_kind(str(port.get("device_owner") or ""))
            router_id, net_id = _str(port.get("device_id")), _str(port.get("network_id"))
            if kind and router_id and net_id:
                router_ports.append((port, kind, router_id, net_id))
        gateways: list[tuple[Doc, Mapping[str, Any], str]] = []
        for router in routers:
            info = router.get("external_gateway_info")
            if isinstance(info, Mapping) and (gw_net := _str(info.get("network_id"))):
                gateways.append((router, info, gw_net))

        ends = lookup.get({r for _, _, r, _ in router_ports} | {n for _, _, _, n in router_ports}
                          | {n for _, _, n in gateways})
        for port, kind, router_id, net_id in sorted(router_ports, key=lambda item: item[0]["id"]):
            owner, net = ends.get(router_id), ends.get(net_id)
            if owner is None or net is None or owner.get("type") != "router" or net.get("type") != "network":
                continue
            subnets = [s for ip in port.get("fixed_ips") or () if (s := _str(ip.get("subnet_id")))]
            existing = by_key.get((router_id, net_id))
            if existing is not None:
                attrs = existing["attributes"]
                attrs["subnet_ids"] = sorted(set(attrs["subnet_ids"]) | set(subnets))
                if kind == "gateway":
                    attrs["interface_type"] = "gateway"
                if existing["state"] == LinkState.DOWN.value:
                    existing["state"] = link_state(port, owner, net)
                continue
            by_key[(router_id, net_id)] = self.link(
                environment, owner, net, link_name=net.get("name") or net_id,
                state=link_state(port, owner, net),
                attributes={"network": net_id, "interface_type": kind, "port_id": port["id"],
                            "subnet_ids": sorted(set(subnets))},
                host=_bound_host(port),
            )

        if gateways:
            # A router's gateway port may exist without being among the holders (an update about the
            # router alone): look for visible gateway ports once for the whole batch.
            seen_gateway = {r for _, kind, r, _ in router_ports if kind == "gateway"}
            unseen = {n for r, _, n in gateways if r["id"] not in seen_gateway}
            for net_id in sorted(unseen):  # (a gateway port is on its router's gateway network)
                seen_gateway |= {
                    dev for p in lookup.find("port", network_id=net_id, device_owner=_GATEWAY_OWNER)
                    if (dev := _str(p.get("device_id")))
                }
            for router, info, net_id in gateways:
                net = ends.get(net_id)
                if router["id"] in seen_gateway or net is None or net.get("type") != "network":
                    continue
                if (router["id"], net_id) in by_key:
                    continue
                subnets = [s for ip in info.get("external_fixed_ips") or () if (s := _str(ip.get("subnet_id")))]
                by_key[(router["id"], net_id)] = self.link(
                    environment, router, net, link_name=net.get("name") or net_id,
                    attributes={"network": net_id, "interface_type": "gateway", "subnet_ids": sorted(set(subnets))},
                )
        return list(by_key.values())


class FloatingIpPortFinder(LinkFinder):
    """floating_ip → port, from the floating IP's ``port_id`` (null while unassociated: no link)."""

    link_type = "floatingip-port"
    source_type = "floating_ip"
    target_type = "port"
    supported_holder_types = ("floating_ip",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(fip, p) for fip in holders if (p := _str(fip.get("port_id")))]
        ports = lookup.get({p for _, p in wanted})
        links = []
        for fip, port_id in wanted:
            port = ports.get(port_id)
            if port is None or port.get("type") != self.target_type:
                continue
            attributes: dict[str, Any] = {}
            if _str(port.get("network_id")):
                attributes["network"] = port["network_id"]
            for field in ("floating_ip_address", "fixed_ip_address"):
                if fip.get(field):
                    attributes[field] = fip[field]
            links.append(self.link(environment, fip, port, link_name=fip.get("floating_ip_address") or fip["id"],
                                   attributes=attributes, host=_bound_host(port)))
        return links


class VolumeInstanceFinder(LinkFinder):
    """volume → instance, one link per attachment."""

    link_type = "volume-instance"
    source_type = "volume"
    target_type = "instance"
    supported_holder_types = ("volume",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [
            (vol, att, server) for vol in holders for att in vol.get("attachments") or ()
            if isinstance(att, Mapping) and (server := _str(att.get("server_id")))
        ]
        instances = lookup.get({s for _, _, s in wanted})
        links: dict[tuple[str, str], Doc] = {}
        for vol, att, server in wanted:
            inst = instances.get(server)
            if inst is None or inst.get("type") != self.target_type or (vol["id"], server) in links:
                continue
            attributes = {k: att[k] for k in ("device", "attachment_id") if att.get(k)}
            links[(vol["id"], server)] = self.link(
                environment, vol, inst, link_name=att.get("device") or vol.get("name") or vol["id"],
                attributes=attributes, host=_str(inst.get("host")),
            )
        return list(links.values())


class LoadBalancerPortFinder(LinkFinder):
    """load_balancer → port: its VIP port, and the port behind each pool member.

    Octavia names a member only by (subnet, address), so a member's port is the port on that
    subnet's network whose fixed IPs include that pair; members outside the cloud (no such port)
    give no link.
    """

    link_type = "loadbalancer-port"
    source_type = "load_balancer"
    target_type = "port"
    supported_holder_types = ("load_balancer",)
    finds_ends = True  # the ports of the member networks, to match members by address

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        members = [
            (lb, m) for lb in holders for m in lb.get("members") or ()
            if isinstance(m, Mapping) and _str(m.get("subnet_id")) and _str(m.get("address"))
        ]
        vip_ids = {p for lb in holders if (p := _str(lb.get("vip_port_id")))}
        found = lookup.get(vip_ids | {m["subnet_id"] for _, m in members})
        by_address: dict[tuple[str, str], Doc] = {}
        member_networks = {
            n for _, m in members
            if (sub := found.get(m["subnet_id"])) is not None and (n := _str(sub.get("network_id")))
        }
        for net_id in sorted(member_networks):
            for port in lookup.find("port", network_id=net_id):
                for ip in port.get("fixed_ips") or ():
                    if isinstance(ip, Mapping) and ip.get("subnet_id") and ip.get("ip_address"):
                        by_address.setdefault((ip["subnet_id"], ip["ip_address"]), port)

        links: dict[tuple[str, str], Doc] = {}
        for lb in holders:
            vip = found.get(_str(lb.get("vip_port_id")) or "")
            if vip is not None and vip.get("type") == self.target_type:
                vip_attributes: dict[str, Any] = {"role": "vip"}
                if _str(vip.get("network_id")):
                    vip_attributes["network"] = vip["network_id"]
                links[(lb["id"], vip["id"])] = self.link(environment, lb, vip, link_name="vip",
                                                         attributes=vip_attributes, host=_bound_host(vip))
        for lb, member in sorted(members, key=lambda item: (item[0]["id"], str(item[1].get("pool_id") or ""))):
            member_port = by_address.get((member["subnet_id"], member["address"]))
            if member_port is None:
                continue
            existing = links.get((lb["id"], member_port["id"]))
            pool = _str(member.get("pool_id"))
            if existing is not None:
                attrs = existing["attributes"]
                if attrs.get("role") == "member" and pool:
                    attrs["pool_ids"] = sorted(set(attrs.get("pool_ids", [])) | {pool})
                continue
            attributes: dict[str, Any] = {"role": "member"}
            if pool:
                attributes.update(pool_id=pool, pool_ids=[pool])
            if _str(member_port.get("network_id")):
                attributes["network"] = member_port["network_id"]
            for field in ("id", "protocol_port"):
                if member.get(field) is not None:
                    attributes[f"member_{field}"] = member[field]
            port_no = member.get("protocol_port")
            links[(lb["id"], member_port["id"])] = self.link(
                environment, lb, member_port,
                link_name=f"{member['address']}:{port_no}" if port_no else member["address"],
                attributes=attributes, host=_bound_host(member_port),
            )
        return list(links.values())


class PortSecurityGroupFinder(LinkFinder):
    """port → security_group, one link per group in the port's ``security_groups``."""

    link_type = "port-security_group"
    source_type = "port"
    target_type = "security_group"
    supported_holder_types = ("port",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [
            (port, sg) for port in holders for sg in dict.fromkeys(port.get("security_groups") or ())
            if _str(sg)
        ]
        groups = lookup.get({sg for _, sg in wanted})
        links = []
        for port, sg_id in wanted:
            group = groups.get(sg_id)
            if group is None or group.get("type") != self.target_type:
                continue
            links.append(self.link(environment, port, group, link_name=group.get("name") or sg_id,
                                   state=link_state(port), host=_bound_host(port)))
        return links


FINDER_CLASSES: dict[str, type[LinkFinder]] = {
    cls.__name__: cls
    for cls in (
        HostInstanceFinder,
        InstancePortFinder,
        PortNetworkFinder,
        NetworkSubnetFinder,
        RouterNetworkFinder,
        FloatingIpPortFinder,
        VolumeInstanceFinder,
        LoadBalancerPortFinder,
        PortSecurityGroupFinder,
    )
}


# --------------------------------------------------------------------------------------------------
# configuration


def _fail(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"{path}: {problem}")


def load_link_finders(path: str | Path | None = None) -> list[LinkFinder]:
    """The finders ``link_finders.json`` declares, in its order.

    Validation is strict because a typo here silently removes a whole link type from the map: an
    unknown finder class, a link type that the class does not produce, or a link type given twice
    (two finders would fight over the same links) are all refused.
    """
    file = Path(path) if path is not None else defaults_dir() / LINK_FINDERS_FILE
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise _fail(file, f"cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise _fail(file, f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(entries, list):
        raise _fail(file, "expected a list of {link_type, finder, holder_type} objects")

    finders: list[LinkFinder] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, start=1):
        where = f"entry {n}"
        if not isinstance(entry, dict):
            raise _fail(file, f"{where} is not an object")
        unknown_keys = sorted(set(entry) - {"link_type", "finder", "holder_type", "description"})
        if unknown_keys:
            raise _fail(file, f"{where} has unknown key(s): {', '.join(unknown_keys)}")
        link_type, class_name, holder = entry.get("link_type"), entry.get("finder"), entry.get("holder_type")
        if not isinstance(link_type, str) or "-" not in link_type:
            raise _fail(file, f"{where} needs a link_type like 'source_type-target_type'")
        where = f"entry {n} ({link_type})"
        if not isinstance(class_name, str) or class_name not in FINDER_CLASSES:
            raise _fail(file, f"{where}: unknown finder {class_name!r} (known: {', '.join(sorted(FINDER_CLASSES))})")
        cls = FINDER_CLASSES[class_name]
        if cls.link_type != link_type:
            raise _fail(file, f"{where}: finder {class_name} produces {cls.link_type!r} links, not {link_type!r}")
        if link_type in seen:
            raise _fail(file, f"link type {link_type!r} is given twice")
        seen.add(link_type)
        holders: list[str] | None
        if holder is None:
            holders = None
        elif isinstance(holder, str) and holder:
            holders = [holder]
        elif isinstance(holder, list) and holder and all(isinstance(h, str) and h for h in holder):
            holders = holder
        else:
            raise _fail(file, f"{where}: holder_type must be an object type or a list of them")
        try:
            finders.append(cls(holders))
        except ValueError as exc:
            raise _fail(file, f"{where}: {exc}") from None
    return finders


# --------------------------------------------------------------------------------------------------
# running finders


def link_types_of(finders: Iterable[LinkFinder]) -> list[str]:
    """The link types these finders own: after a complete scan, links of these types that were not
    found again are gone, while links of other types (made by someone else) must be left alone."""
    return [f.link_type for f in finders]


def find_links(
    environment: str, holders: Iterable[Mapping[str, Any]], lookup: Lookup, finders: Iterable[LinkFinder]
) -> list[Doc]:
    """Every link the finders derive from ``holders``, each key once (the first finder's wins).

    Holders are grouped by type in one pass, then each finder sees only its own holder types, so
    the cost is O(holders + links) whatever the number of finders.
    """
    by_type: dict[str, list[Doc]] = defaultdict(list)
    for doc in holders:
        by_type[str(doc.get("type") or "")].append(doc if isinstance(doc, dict) else dict(doc))
    result: dict[tuple[str, str, str], Doc] = {}
    for finder in finders:
        mine = [doc for t in finder.holder_types for doc in by_type.get(t, ())]
        if not mine:
            continue
        for link in finder.find(mine, lookup, environment):
            result.setdefault(link_key(link), link)
    return list(result.values())


# The host layer's finders live in their own module and join FINDER_CLASSES when it is imported.
import stackmap.discovery.host.links  # noqa: E402, F401
