"""Link finders for the host layer: how a packet leaves an instance and reaches a network.

The chain is instance → vnic → vconnector (Linux bridge) and/or vedge (OVS/VPP) → otep (tunnel
endpoint) → host_pnic → network. Every host-layer object carries ``host`` and ``local_name`` and has
the id ``stable_id(host, <local key>)``, so most finders *compute* the other end's id from the
holder's own fields (a vnic's ``master`` names its bridge, an OVS port names a pNIC) and fetch every
candidate with one ``Lookup.get`` per call. Only two questions cannot be answered by id — which pNIC
carries an IP address, and which networks a pNIC reaches — and those finders read the few object
types they need once per call (``Lookup.find(type)``), never once per holder, so a store-backed
update costs a constant number of queries whatever the number of holders.

Link state comes from what the host tools reported: a pNIC, vNIC, bridge or OVS port that is "down"
gives a down link ("unknown", which tunnels and bridges often report while working, does not).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from ipaddress import ip_interface
from typing import Any, TypeGuard

from stackmap.discovery.links import FINDER_CLASSES, LinkFinder, Lookup, link_state
from stackmap.model import stable_id
from stackmap.store.base import Doc

__all__ = [
    "HOST_FINDER_CLASSES",
    "HostPnicNetworkFinder",
    "InstanceVnicFinder",
    "OtepHostPnicFinder",
    "OtepVconnectorFinder",
    "VconnectorHostPnicFinder",
    "VconnectorVedgeFinder",
    "VedgeHostPnicFinder",
    "VedgeOtepFinder",
    "VnicVconnectorFinder",
    "VnicVedgeFinder",
    "VserviceVnicFinder",
]

VEDGE_KINDS = ("OVS", "VPP")
OVERLAY_TYPES = frozenset({"vxlan", "gre", "geneve"})
PHYSICAL_TYPES = frozenset({"vlan", "flat"})
# OVS port types that are the host's own devices (an empty type is OVS's default, "system")
SYSTEM_PORT_TYPES = frozenset({"system", ""})


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _sid(host: Any, *parts: Any) -> str | None:
    """The id of a host-layer object, or None when the parts cannot form one (missing, or a name
    holding the id separator): such a reference simply gives no link."""
    if not _str(host) or not all(_str(p) for p in parts):
        return None
    try:
        return stable_id(host, *parts)
    except ValueError:
        return None


def _of_type(doc: Doc | None, type_: str) -> TypeGuard[Doc]:
    """A looked-up object that exists and is of the type a link end needs (narrows ``doc`` to a Doc)."""
    return doc is not None and doc.get("type") == type_


def _names(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        value = list(value)
    if isinstance(value, list | tuple | set):
        return [v for v in value if isinstance(v, str) and v]
    return []


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _network_of(vnic: Mapping[str, Any], ports: Mapping[str, Doc]) -> str | None:
    """A vNIC's network: its own ``network`` (vservice vNICs), else its neutron port's."""
    own = vnic.get("network")
    if isinstance(own, list) and len(own) == 1:
        own = own[0]
    if _str(own):
        return str(own)
    port = ports.get(_str(vnic.get("port_id")) or "")
    return _str(port.get("network_id")) if port is not None and port.get("type") == "port" else None


def _vnic_ports(vnics: Iterable[Mapping[str, Any]], lookup: Lookup) -> dict[str, Doc]:
    """The neutron ports of the vNICs that name one, in one lookup."""
    return lookup.get({p for v in vnics if (p := _str(v.get("port_id")))})


def _net_attributes(network: str | None, **more: Any) -> dict[str, Any]:
    attributes = {"network": network} if network else {}
    attributes.update({k: v for k, v in more.items() if v is not None and v != ""})
    return attributes


class InstanceVnicFinder(LinkFinder):
    """instance → vnic, from the instance vNIC's ``instance_id``."""

    link_type = "instance-vnic"
    source_type = "instance"
    target_type = "vnic"
    supported_holder_types = ("vnic",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(v, i) for v in holders
                  if v.get("vnic_type", "instance_vnic") == "instance_vnic" and (i := _str(v.get("instance_id")))]
        found = lookup.get({i for _, i in wanted} | {p for v, _ in wanted if (p := _str(v.get("port_id")))})
        links = []
        for vnic, inst_id in wanted:
            inst = found.get(inst_id)
            if not _of_type(inst, self.source_type):
                continue
            links.append(self.link(environment, inst, vnic, link_name=vnic.get("mac_address") or vnic["local_name"],
                                   attributes=_net_attributes(_network_of(vnic, found), port_id=vnic.get("port_id")),
                                   host=_str(vnic.get("host"))))
        return links


class VserviceVnicFinder(LinkFinder):
    """vservice → vnic, from the vservice vNIC's ``namespace`` (the vservice is ``(host, namespace)``)."""

    link_type = "vservice-vnic"
    source_type = "vservice"
    target_type = "vnic"
    supported_holder_types = ("vnic",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(v, s) for v in holders
                  if v.get("vnic_type") == "vservice_vnic" and (s := _sid(v.get("host"), v.get("namespace")))]
        services = lookup.get({s for _, s in wanted})
        links = []
        for vnic, service_id in wanted:
            service = services.get(service_id)
            if not _of_type(service, self.source_type):
                continue
            links.append(self.link(environment, service, vnic, link_name=vnic.get("local_name") or vnic["id"],
                                   attributes=_net_attributes(_network_of(vnic, {})), host=_str(vnic.get("host"))))
        return links


class VnicVconnectorFinder(LinkFinder):
    """vnic → vconnector, from the vNIC's ``master``: the Linux bridge its host-side device is on."""

    link_type = "vnic-vconnector"
    source_type = "vnic"
    target_type = "vconnector"
    supported_holder_types = ("vnic",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(v, b) for v in holders if (b := _sid(v.get("host"), v.get("master")))]
        found = lookup.get({b for _, b in wanted} | {p for v, _ in wanted if (p := _str(v.get("port_id")))})
        links = []
        for vnic, bridge_id in wanted:
            bridge = found.get(bridge_id)
            if not _of_type(bridge, self.target_type):
                continue  # an OVS "master" (ovs-system) or a bridge not scanned
            links.append(self.link(environment, vnic, bridge, link_name=vnic.get("mac_address") or vnic["local_name"],
                                   attributes=_net_attributes(_network_of(vnic, found)),
                                   host=_str(vnic.get("host"))))
        return links


def _vedges_of(hosts: Iterable[str], lookup: Lookup) -> dict[str, list[Doc]]:
    """Each host's vEdges (OVS and/or VPP), by computed id, in one lookup."""
    ids = {i for h in hosts for kind in VEDGE_KINDS if (i := _sid(h, kind))}
    by_host: dict[str, list[Doc]] = defaultdict(list)
    for doc in lookup.get(ids).values():
        if doc.get("type") == "vedge" and _str(doc.get("host")):
            by_host[doc["host"]].append(doc)
    return by_host


def _vedge_port(vedge: Mapping[str, Any], *names: Any) -> tuple[str, Mapping[str, Any]] | None:
    ports = _mapping(vedge.get("ports"))
    for name in names:
        if _str(name) and isinstance(ports.get(name), Mapping):
            return name, ports[name]
    return None


class VnicVedgeFinder(LinkFinder):
    """vnic → vedge, when an OVS/VPP port is the vNIC itself (``local_name``) or its veth ``peer``."""

    link_type = "vnic-vedge"
    source_type = "vnic"
    target_type = "vedge"
    supported_holder_types = ("vnic",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [v for v in holders if _str(v.get("host"))]
        vedges = _vedges_of({v["host"] for v in wanted}, lookup)
        ports = _vnic_ports(wanted, lookup) if any(vedges.get(v["host"]) for v in wanted) else {}
        links = []
        for vnic in wanted:
            for vedge in vedges.get(vnic["host"], ()):
                hit = _vedge_port(vedge, vnic.get("local_name"), vnic.get("peer"))
                if hit is None:
                    continue
                name, port = hit
                links.append(self.link(
                    environment, vnic, vedge, link_name=name, state=link_state(vnic, vedge, port),
                    attributes=_net_attributes(_network_of(vnic, ports), port=name, bridge=port.get("bridge"),
                                               vlan=port.get("tag")),
                    host=vnic["host"]))
        return links


def _peer_names(vconnector: Mapping[str, Any], member: str) -> list[str]:
    """Names the far end of a bridge member may have in OVS: its recorded veth peer, else the
    neutron hybrid-plug convention (qvbXXX on the bridge, qvoXXX in br-int), else itself."""
    details = _mapping(_mapping(vconnector.get("interfaces")).get(member))
    names = [p] if (p := _str(details.get("peer"))) else []
    if member.startswith("qvb"):
        names.append("qvo" + member[3:])
    names.append(member)
    return names


class VconnectorVedgeFinder(LinkFinder):
    """vconnector → vedge, through a bridge member whose veth peer is an OVS port (qvb/qvo)."""

    link_type = "vconnector-vedge"
    source_type = "vconnector"
    target_type = "vedge"
    supported_holder_types = ("vconnector",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [c for c in holders if _str(c.get("host"))]
        vedges = _vedges_of({c["host"] for c in wanted}, lookup)
        links: dict[tuple[str, str], Doc] = {}
        for bridge in wanted:
            for vedge in vedges.get(bridge["host"], ()):
                for member in _names(bridge.get("interfaces_names")):
                    hit = _vedge_port(vedge, *_peer_names(bridge, member))
                    if hit is None or (bridge["id"], vedge["id"]) in links:
                        continue
                    name, port = hit
                    links[(bridge["id"], vedge["id"])] = self.link(
                        environment, bridge, vedge, link_name=f"{member}-{name}" if name != member else member,
                        state=link_state(bridge, vedge, port),
                        attributes=_net_attributes(None, interface=member, port=name, bridge=port.get("bridge"),
                                                   vlan=port.get("tag"), mac_address=port.get("mac_address")),
                        host=bridge["host"])
        return list(links.values())


def _pnic_names(vconnector: Mapping[str, Any], member: str) -> list[tuple[str, int | None]]:
    """Names a bridge member's pNIC may have, with the VLAN it carries: the member itself, the
    parent the host reported for a VLAN device (``interfaces``), else the ``eth1.100`` naming the
    Linux bridge agent uses."""
    details = _mapping(_mapping(vconnector.get("interfaces")).get(member))
    names: list[tuple[str, int | None]] = [(member, None)]
    vlan_id = details.get("vlan_id")
    if (parent := _str(details.get("parent"))) and parent != member:
        names.append((parent, vlan_id if isinstance(vlan_id, int) else None))
    base, dot, vlan = member.rpartition(".")
    if dot and base and vlan.isdigit():
        names.append((base, int(vlan)))
    return names


class VconnectorHostPnicFinder(LinkFinder):
    """vconnector → host_pnic, from a bridge member that is a pNIC (or a VLAN sub-interface of one)."""

    link_type = "vconnector-host_pnic"
    source_type = "vconnector"
    target_type = "host_pnic"
    supported_holder_types = ("vconnector",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(c, m, p, vlan) for c in holders for m in _names(c.get("interfaces_names"))
                  for name, vlan in _pnic_names(c, m) if (p := _sid(c.get("host"), name))]
        pnics = lookup.get({p for _, _, p, _ in wanted})
        links: dict[tuple[str, str], Doc] = {}
        for bridge, member, pnic_id, vlan in wanted:
            pnic = pnics.get(pnic_id)
            if not _of_type(pnic, self.target_type) or (bridge["id"], pnic_id) in links:
                continue
            links[(bridge["id"], pnic_id)] = self.link(
                environment, bridge, pnic, link_name=member,
                attributes=_net_attributes(None, interface=member, vlan=vlan), host=_str(bridge.get("host")))
        return list(links.values())


class VedgeHostPnicFinder(LinkFinder):
    """vedge → host_pnic, from an OVS port of the host's own devices (type system/"") named as a pNIC."""

    link_type = "vedge-host_pnic"
    source_type = "vedge"
    target_type = "host_pnic"
    supported_holder_types = ("vedge",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [
            (v, name, port, p) for v in holders for name, port in _mapping(v.get("ports")).items()
            if isinstance(port, Mapping) and str(port.get("type") or "") in SYSTEM_PORT_TYPES
            and (p := _sid(v.get("host"), name))
        ]
        pnics = lookup.get({p for *_, p in wanted})
        links = []
        for vedge, name, port, pnic_id in wanted:
            pnic = pnics.get(pnic_id)
            if not _of_type(pnic, self.target_type):
                continue  # a bridge's own internal port, or a device that is not a pNIC
            links.append(self.link(
                environment, vedge, pnic, link_name=name, state=link_state(vedge, pnic, port),
                attributes=_net_attributes(None, port=name, bridge=port.get("bridge"), vlan=port.get("tag")),
                host=_str(vedge.get("host"))))
        return links


class VedgeOtepFinder(LinkFinder):
    """vedge → otep, from an OVS/VPP tunnel endpoint's ``vedge`` or parent (oteps are stored under
    their vEdge; a Linux bridge VXLAN device's parent is a vconnector, which the type check skips)."""

    link_type = "vedge-otep"
    source_type = "vedge"
    target_type = "otep"
    supported_holder_types = ("otep",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [(o, v) for o in holders if (v := _str(o.get("vedge")) or _str(o.get("parent_id")))]
        vedges = lookup.get({v for _, v in wanted})
        links = []
        for otep, vedge_id in wanted:
            vedge = vedges.get(vedge_id)
            if not _of_type(vedge, self.source_type):
                continue
            links.append(self.link(
                environment, vedge, otep, link_name=f"{otep.get('overlay_type') or 'tunnel'}-{otep.get('ip_address')}",
                attributes=_net_attributes(None, overlay_type=otep.get("overlay_type"),
                                           ports=_names(otep.get("ports")) or None),
                host=_str(otep.get("host"))))
        return links


class OtepVconnectorFinder(LinkFinder):
    """otep → vconnector, from a Linux-bridge VXLAN device's bridge (``vconnector``, else its parent)."""

    link_type = "otep-vconnector"
    source_type = "otep"
    target_type = "vconnector"
    supported_holder_types = ("otep",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = []
        for otep in holders:
            bridge_id = _sid(otep.get("host"), otep.get("vconnector"))
            if bridge_id is None and otep.get("parent_type") == "vconnector":
                bridge_id = _str(otep.get("parent_id"))
            if bridge_id:
                wanted.append((otep, bridge_id))
        bridges = lookup.get({b for _, b in wanted})
        links = []
        for otep, bridge_id in wanted:
            bridge = bridges.get(bridge_id)
            if not _of_type(bridge, self.target_type):
                continue
            links.append(self.link(environment, otep, bridge, link_name=otep.get("local_name") or bridge["local_name"],
                                   attributes=_net_attributes(None, overlay_type=otep.get("overlay_type")),
                                   host=_str(otep.get("host"))))
        return links


def _address(value: Any) -> str | None:
    """The address part of "10.0.0.1/24" or "10.0.0.1"; None for anything that is not an IP."""
    if not isinstance(value, str) or not value:
        return None
    return _parsed_address(value)


@lru_cache(maxsize=65_536)
def _parsed_address(value: str) -> str | None:
    # cached: every relink of a port compares its host's tunnel addresses with its pNICs' again, and
    # parsing an address costs more than the rest of that comparison
    try:
        return str(ip_interface(value.strip()).ip)
    except ValueError:
        return None


def _pnics_by_host(lookup: Lookup, hosts: set[str]) -> dict[str, list[Doc]]:
    """The pNICs of some hosts, read with one lookup whatever the number of hosts."""
    by_host: dict[str, list[Doc]] = defaultdict(list)
    for pnic in lookup.find_on_hosts("host_pnic", hosts):
        by_host[pnic["host"]].append(pnic)
    return by_host


class OtepHostPnicFinder(LinkFinder):
    """otep → host_pnic: the pNIC (or bond) of the otep's host that carries its ``ip_address``, or
    the pNIC a Linux VXLAN device is bound to (its ``device``).

    An address is not an id, so the host's pNICs are read once per call (one query) and matched.
    """

    link_type = "otep-host_pnic"
    source_type = "otep"
    target_type = "host_pnic"
    supported_holder_types = ("otep",)

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        wanted = [o for o in holders if _str(o.get("host"))]
        pnics = _pnics_by_host(lookup, {o["host"] for o in wanted})
        links: dict[tuple[str, str], Doc] = {}
        for otep in wanted:
            ip = _address(otep.get("ip_address"))
            device = _str(otep.get("device"))
            for pnic in pnics.get(otep["host"], ()):
                carries = ip is not None and ip in {_address(a) for a in pnic.get("ip_addresses") or ()}
                if (carries or pnic.get("local_name") == device) and (otep["id"], pnic["id"]) not in links:
                    links[(otep["id"], pnic["id"])] = self.link(
                        environment, otep, pnic, link_name=ip or pnic["local_name"],
                        attributes=_net_attributes(None, ip_address=ip, overlay_type=otep.get("overlay_type")),
                        host=otep["host"])
        return list(links.values())


def _physnet_mappings(agent_configs: Iterable[Mapping[str, Any]]) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(physical network → bridges, physical network → interfaces) from neutron agent configurations.

    OVS agents map physnets to OVS bridges (``bridge_mappings``), Linux bridge agents to interfaces
    (``physical_interface_mappings``, reported as ``interface_mappings``) or to existing bridges.
    Values may be dicts or "physnet:name,physnet:name" strings (the ini-file form).
    """
    bridges: dict[str, set[str]] = defaultdict(set)
    interfaces: dict[str, set[str]] = defaultdict(set)
    for config in agent_configs:
        for key, target in (("bridge_mappings", bridges), ("interface_mappings", interfaces),
                            ("physical_interface_mappings", interfaces)):
            value = config.get(key)
            if isinstance(value, str):
                value = {k: v for k, _, v in (p.partition(":") for p in value.split(",")) if v}
            for physnet, name in _mapping(value).items():
                if _str(physnet) and _str(name):
                    target[physnet.strip()].add(name.strip())
    return bridges, interfaces


def _network_kind(net: Mapping[str, Any]) -> str | None:
    """"physical" (a VLAN or flat network on a physical network), "overlay" (tunnelled), or None."""
    physnet = _str(net.get("provider:physical_network"))
    net_type = str(net.get("provider:network_type") or "").lower()
    if physnet and net_type in PHYSICAL_TYPES | {""}:
        return "physical"
    if not physnet and net_type in OVERLAY_TYPES | {""}:
        return "overlay"
    return None


def _tunnels_of(hosts: set[str], lookup: Lookup) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each host's tunnel endpoint IPs and VXLAN devices, from its oteps (one lookup)."""
    tunnel_ips: dict[str, set[str]] = defaultdict(set)
    tunnel_devices: dict[str, set[str]] = defaultdict(set)
    for otep in lookup.find_on_hosts("otep", hosts):
        if ip := _address(otep.get("ip_address")):
            tunnel_ips[otep["host"]].add(ip)
        if device := _str(otep.get("device")):
            tunnel_devices[otep["host"]].add(device)
    return tunnel_ips, tunnel_devices


def _is_tunnel_pnic(pnic: Mapping[str, Any], tunnel_ips: set[str], tunnel_devices: set[str]) -> bool:
    """Whether overlay traffic leaves through this pNIC: it holds a tunnel IP, or is a VXLAN device's."""
    pnic_ips = {_address(a) for a in pnic.get("ip_addresses") or ()}
    return bool(tunnel_ips & pnic_ips) or pnic["local_name"] in tunnel_devices


class HostPnicNetworkFinder(LinkFinder):
    """host_pnic → network: the networks a pNIC carries.

    - VLAN/flat networks: a network whose ``provider:physical_network`` the host's neutron agent
      maps to something the pNIC is on: an OVS bridge (``bridge_mappings``; the pNIC is a system
      port of that bridge in the host's vEdge), an interface (``physical_interface_mappings``: the
      pNIC itself) or a Linux bridge (the pNIC's ``master``). The mappings are read from the agent
      ``configurations`` on the host's vEdge documents and on its ``network_agent`` documents.
    - Overlay networks (vxlan/gre/geneve, or no physical network at all): when the pNIC carries
      one of the host's tunnel endpoint IPs (or is a VXLAN device's ``device``), every such network
      that has a port bound to the host (``binding:host_id``): their traffic leaves through it.

    A port is a holder too: a port newly bound to a host (the usual notification) may bring a new
    overlay network to that host's tunnel pNIC. A port holder whose host's pNICs are not holders
    yields only that: its tunnel pNICs' links to its own network. Nothing else a pNIC carries
    depends on a port, and reading what the whole computation reads (every port, network, agent
    and otep of the environment) at every port update would cost as much as the map is large.

    Query bound: one ``get`` (the hosts' vEdges, by computed id) and ``find`` of networks, ports,
    oteps and network agents, once each per call, for pNIC holders; for port holders, one ``find``
    of pNICs and of oteps and one ``get`` of their networks. At most nine queries for any number of
    holders.
    """

    link_type = "host_pnic-network"
    source_type = "host_pnic"
    target_type = "network"
    supported_holder_types = ("host_pnic", "port")

    def find(self, holders: Sequence[Doc], lookup: Lookup, environment: str) -> list[Doc]:
        pnics = [p for p in holders
                 if p.get("type") == "host_pnic" and _str(p.get("host")) and _str(p.get("local_name"))]
        hosts = {p["host"] for p in pnics}
        links: dict[tuple[str, str], Doc] = {}
        if pnics:
            self._carried(links, pnics, hosts, lookup, environment)
        bound_nets: dict[str, set[str]] = defaultdict(set)  # host -> networks of port holders bound there
        for port in holders:
            host, net = _str(port.get("binding:host_id")), _str(port.get("network_id"))
            if port.get("type") == "port" and host and net and host not in hosts:
                bound_nets[host].add(net)
        if bound_nets:
            self._bound_by_ports(links, bound_nets, lookup, environment)
        return list(links.values())

    def _carried(self, links: dict[tuple[str, str], Doc], pnics: list[Doc], hosts: set[str], lookup: Lookup,
                 environment: str) -> None:
        """Every network these pNICs carry."""
        vedges = _vedges_of(hosts, lookup)
        configs: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for host, docs in vedges.items():
            configs[host].extend(c for d in docs if (c := _mapping(d.get("configurations"))))
        for agent in lookup.find_on_hosts("network_agent", hosts):
            if c := _mapping(agent.get("configurations")):
                configs[agent["host"]].append(c)
        tunnel_ips, tunnel_devices = _tunnels_of(hosts, lookup)
        bound: dict[str, set[str]] = defaultdict(set)
        if tunnel_ips or tunnel_devices:
            for port in lookup.find("port"):
                bound_host, bound_net = _str(port.get("binding:host_id")), _str(port.get("network_id"))
                if (bound_host in tunnel_ips or bound_host in tunnel_devices) and bound_net:
                    bound[bound_host].add(bound_net)
        physical: dict[str, list[Doc]] = defaultdict(list)
        overlay: dict[str, Doc] = {}
        for net in lookup.find("network"):
            kind = _network_kind(net)
            if kind == "physical":
                physical[str(net["provider:physical_network"])].append(net)
            elif kind == "overlay":
                overlay[net["id"]] = net

        for pnic in pnics:
            host, name = pnic["host"], pnic["local_name"]
            bridges, interfaces = _physnet_mappings(configs.get(host, ()))
            on_bridges = {str(bridge) for v in vedges.get(host, ())
                          if (bridge := _mapping(_mapping(v.get("ports")).get(name)).get("bridge"))}
            if _str(pnic.get("master")):
                on_bridges.add(pnic["master"])
            for physnet in sorted(set(bridges) | set(interfaces)):
                if not (bridges.get(physnet, set()) & on_bridges or name in interfaces.get(physnet, set())):
                    continue
                for net in physical.get(physnet, ()):
                    self._add(links, environment, pnic, net, physnet=physnet)
            if _is_tunnel_pnic(pnic, tunnel_ips.get(host, set()), tunnel_devices.get(host, set())):
                for net_id in sorted(bound.get(host, ())):
                    if net_id in overlay:
                        self._add(links, environment, pnic, overlay[net_id], physnet=None)

    def _bound_by_ports(self, links: dict[tuple[str, str], Doc], bound_nets: dict[str, set[str]], lookup: Lookup,
                        environment: str) -> None:
        """The links a port bound to a host adds: its host's tunnel pNICs carry its overlay network."""
        hosts = set(bound_nets)
        tunnel_ips, tunnel_devices = _tunnels_of(hosts, lookup)
        if not tunnel_ips and not tunnel_devices:
            return
        nets = lookup.get({n for ids in bound_nets.values() for n in ids})
        for host, pnics in _pnics_by_host(lookup, hosts).items():
            for pnic in pnics:
                if not _str(pnic.get("local_name")) or \
                        not _is_tunnel_pnic(pnic, tunnel_ips.get(host, set()), tunnel_devices.get(host, set())):
                    continue
                for net_id in sorted(bound_nets[host]):
                    net = nets.get(net_id)
                    if net is not None and _network_kind(net) == "overlay":
                        self._add(links, environment, pnic, net, physnet=None)

    def _add(self, links: dict[tuple[str, str], Doc], environment: str, pnic: Doc, net: Doc,
             physnet: str | None) -> None:
        key = (pnic["id"], net["id"])
        if key in links:
            return
        segment = net.get("provider:segmentation_id")
        links[key] = self.link(
            environment, pnic, net, link_name=f"Segment-{segment}" if segment is not None else (net.get("name") or ""),
            attributes=_net_attributes(net["id"], network_type=net.get("provider:network_type"),
                                       segmentation_id=segment, physical_network=physnet),
            host=pnic["host"])


HOST_FINDER_CLASSES: dict[str, type[LinkFinder]] = {
    cls.__name__: cls
    for cls in (
        InstanceVnicFinder,
        VserviceVnicFinder,
        VnicVconnectorFinder,
        VnicVedgeFinder,
        VconnectorVedgeFinder,
        VconnectorHostPnicFinder,
        VedgeHostPnicFinder,
        VedgeOtepFinder,
        OtepVconnectorFinder,
        OtepHostPnicFinder,
        HostPnicNetworkFinder,
    )
}
# link_finders.json names finders through links.FINDER_CLASSES; these join it when this module is
# imported, which links.py itself does, so loading the config always sees them.
FINDER_CLASSES.update(HOST_FINDER_CLASSES)
