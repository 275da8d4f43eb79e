"""Host fetchers: what runs on each host, read through the FactsSource and placed under the host.

Like the API fetchers, each is called once per hierarchy level with all parents of that level and
asks the FactsSource once for all hosts of the level (per-item commands, e.g. per namespace or per
libvirt domain, go in one more call with per-host command sets). A host that cannot be read, or
whose essential command failed or printed garbage, is reported with ``ctx.report_host_failure``:
its objects are kept as they were and the other hosts go on.
"""

from __future__ import annotations

import ipaddress
import re
from collections import defaultdict
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, ClassVar, cast

from stackmap.discovery.api import resources as R
from stackmap.discovery.api.fetchers import Doc, FetchContext, Fetcher
from stackmap.discovery.host import commands as C
from stackmap.discovery.host import parsers as P
from stackmap.discovery.host.facts import CommandOutput, HostFacts, PerHostFactsSource, takes_per_host
from stackmap.logging import get_logger
from stackmap.model import ID_SEPARATOR, stable_id

log = get_logger("stackmap.discovery.host")

NAMESPACE_SERVICES = {"qdhcp": "dhcp", "qrouter": "router", "snat": "router", "fip": "other", "qlbaas": "other",
                      "ovnmeta": "other"}


def describe(output: CommandOutput | None, key: str) -> str | None:
    """Why a command's output cannot be used, or None when it can."""
    if output is None:
        return f"{key}: not run"
    if output.ok:
        return None
    lines = (output.stderr or output.stdout).strip().splitlines()
    detail = output.error or (lines[-1] if lines else "no output")
    return f"`{output.command}` failed (exit {output.exit_status}): {detail[:200]}"


def _safe_part(name: str) -> bool:
    return bool(name) and ID_SEPARATOR not in name


class CliFetcher(Fetcher):
    """A fetcher reading host facts. Subclasses say which commands are essential (without them the
    host's objects cannot be known) and which only enrich, and build documents per host."""

    needs_hosts = True
    essential: ClassVar[tuple[str, ...]] = ()
    optional: ClassVar[tuple[str, ...]] = ()
    keeps: ClassVar[tuple[str, ...]] = ()  # types kept when a host fails; default: the fetcher's own type

    @property
    def kept_types(self) -> tuple[str, ...]:
        return self.keeps or (self.object_type,)

    # -- helpers shared by all host fetchers -----------------------------------------------------
    @staticmethod
    def owner(parent: Doc, ctx: FetchContext) -> Doc | None:
        """The object a folder belongs to (a folder's parent), or the parent itself."""
        if str(parent.get("type", "")).endswith("_folder"):
            return ctx.objects.get(parent.get("parent_id") or "")
        return parent

    def host_of(self, parent: Doc, ctx: FetchContext) -> str | None:
        owner = self.owner(parent, ctx)
        if owner is None:
            return None
        return str(owner["id"]) if owner.get("type") == "host" else owner.get("host")

    def by_host(self, parents: list[Doc], ctx: FetchContext) -> dict[str, list[Doc]]:
        groups: dict[str, list[Doc]] = defaultdict(list)
        for parent in parents:
            host = self.host_of(parent, ctx)
            if host:
                groups[host].append(parent)
            else:  # cannot tell which host to ask: keep what is stored rather than prune it
                ctx.report_unread(self.kept_types, f"the host of {parent.get('id')} is not known")
        return groups

    def collect(self, ctx: FetchContext, hosts: list[str], commands: Mapping[str, str],
                per_host: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, HostFacts]:
        """Ask the FactsSource once; a source that breaks is every asked host's failure, not the scan's."""
        assert ctx.hosts is not None
        docs = [ctx.objects.get(h) or {"id": h, "host": h} for h in hosts]
        try:
            if not per_host:
                return ctx.hosts.collect(docs, commands)
            if takes_per_host(ctx.hosts):
                return cast(PerHostFactsSource, ctx.hosts).collect(docs, commands, per_host=per_host)
            # a source without per-host commands: one call per distinct command set (slower, same facts)
            groups: dict[tuple[tuple[str, str], ...], list[dict[str, Any]]] = defaultdict(list)
            for doc in docs:
                groups[tuple(sorted((per_host.get(doc["id"]) or {}).items()))].append(doc)
            out: dict[str, HostFacts] = {}
            for extra, members in groups.items():
                out.update(ctx.hosts.collect(members, {**commands, **dict(extra)}))
            return out
        except Exception as exc:  # a runner bug must not end the scan of the other types
            log.error("host facts source failed", fetcher=self.name, error=str(exc)[:200])
            return {h: HostFacts(host=h, error=f"facts source failed: {exc.__class__.__name__}: {str(exc)[:160]}")
                    for h in hosts}

    def usable(self, host: str, facts: HostFacts | None, keys: tuple[str, ...], ctx: FetchContext,
               types: tuple[str, ...] | None = None) -> bool:
        """Whether a host's essential facts are there; if not, report the host and keep its objects."""
        problem = None
        if facts is None:
            problem = "no answer from the facts source"
        elif facts.error:
            problem = facts.error
        else:
            problem = next((p for p in (describe(facts.output(k), k) for k in keys) if p), None)
        if problem is None:
            return True
        ctx.report_host_failure(host, types or self.kept_types, f"{self.name}: {problem}")
        log.warning("host not read", fetcher=self.name, host=host, problem=problem)
        return False

    def parsed(self, ctx: FetchContext, host: str, facts: HostFacts | None, key: str,
               parse: Callable[[str], Any], label: str = "") -> Any:
        """One command's parsed output on one host, or None once the host is reported (its objects
        of this fetcher's types are then kept)."""
        problem = "no answer from the facts source" if facts is None else \
            facts.error or describe(facts.output(key), key)
        if problem is None:
            assert facts is not None
            try:
                return parse(self.text(facts, key))
            except P.ParseError as exc:
                problem = str(exc)
        ctx.report_host_failure(host, self.kept_types, f"{self.name}: {label}{problem}")
        log.warning("host not read", fetcher=self.name, host=host, problem=f"{label}{problem}")
        return None

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        if ctx.hosts is None:
            if parents:
                ctx.report_unread(self.kept_types, "no CLI access to the hosts")
            return []
        groups = self.by_host(parents, ctx)
        if not groups:
            return []
        facts = self.collect(ctx, sorted(groups), C.pick(*self.essential, *self.optional))
        out: list[Doc] = []
        for host, mine in sorted(groups.items()):
            host_facts = facts.get(host)
            if not self.usable(host, host_facts, self.essential, ctx):
                continue
            assert host_facts is not None
            try:
                out.extend(self.build(host, mine, host_facts, ctx))
            except P.ParseError as exc:
                ctx.report_host_failure(host, self.kept_types, f"{self.name}: {exc}")
                log.warning("host output not understood", fetcher=self.name, host=host, error=str(exc))
        return out

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        raise NotImplementedError

    @staticmethod
    def text(facts: HostFacts, key: str) -> str:
        output = facts.output(key)
        return output.stdout if output is not None and output.ok else ""

    @staticmethod
    def links(facts: HostFacts) -> list[P.Iface]:
        return P.parse_ip_addr(CliFetcher.text(facts, C.IP_ADDR))


def namespace_ids(facts: HostFacts) -> set[int]:
    return {ns["id"] for ns in P.parse_netns(CliFetcher.text(facts, C.NETNS)) if ns["id"] is not None}


# -------------------------------------------------------------------------------------------------
# pNICs


class CliHostPnics(CliFetcher):
    name = "CliHostPnics"
    object_type = "host_pnic"
    essential = (C.IP_ADDR, C.NETNS)
    optional = (C.SPEED,)

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        links = self.links(facts)
        ns_ids = namespace_ids(facts)
        speeds = P.parse_speeds(self.text(facts, C.SPEED))
        out = []
        for folder in parents:
            for link in links:
                kind = P.pnic_type(link, ns_ids)
                name = link["ifname"]
                if kind is None or not _safe_part(name):
                    continue
                out.append({
                    "id": stable_id(host, name), "name": f"{host}-{name}", "parent_id": folder["id"], "host": host,
                    "local_name": name, "pnic_type": kind, "mac_address": link["mac_address"], "mtu": link["mtu"],
                    "state": link["state"], "speed": speeds.get(name), "ip_addresses": P.global_cidrs(link),
                    "master": link["master"],
                    "bond_members": sorted(lk["ifname"] for lk in links if lk["master"] == name) if kind == "bond"
                    else [],
                })
        return out


# -------------------------------------------------------------------------------------------------
# vservices (network namespaces) and their vNICs


Networks = dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str]


def _networks_by_cidr(ctx: FetchContext, region: str | None) -> Networks:
    """Subnet cidr -> network id in a region, to tell which network an address is on."""
    out: Networks = {}
    if region is None:
        return out
    for network_id, subnets in ctx.subnets_by_network(region).items():
        for subnet in subnets:
            try:
                out[ipaddress.ip_network(str(subnet.get("cidr")), strict=False)] = network_id
            except ValueError:
                continue
    return out


def _network_of(cidrs: list[str], by_cidr: Mapping[Any, str]) -> str | None:
    for cidr in cidrs:
        iface = ipaddress.ip_interface(cidr)
        for net, network_id in by_cidr.items():
            if iface.version == net.version and iface.ip in net:
                return network_id
    return None


def _read_namespaces(fetcher: CliFetcher, ctx: FetchContext, wanted: Mapping[str, list[str]],
                     host_commands: Mapping[str, str]) -> dict[str, HostFacts]:
    """The links of the named namespaces of each host (plus ``host_commands``), in one call."""
    per_host = {host: {C.ns_addr_key(ns): C.ns_addr(ns) for ns in names} for host, names in wanted.items()}
    return fetcher.collect(ctx, sorted(wanted), host_commands, per_host=per_host)


def _region(ctx: FetchContext, host: str) -> str | None:
    return (ctx.objects.get(host) or {}).get("region")


class CliVservices(CliFetcher):
    name = "CliVservices"
    object_type = "vservice"
    essential = (C.NETNS,)
    resources = (R.SUBNETS,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        docs = super().fetch(parents, ctx)
        if not docs or ctx.hosts is None:
            return docs
        # second call: the links inside every service namespace, for the routers' networks (and kept
        # for the vnic level below, which would otherwise read them again)
        wanted: dict[str, list[str]] = defaultdict(list)
        for doc in docs:
            wanted[doc["host"]].append(doc["local_name"])
        facts = _read_namespaces(self, ctx, wanted, {})
        kept = []
        for doc in docs:
            host, ns = doc["host"], doc["local_name"]
            links = self.parsed(ctx, host, facts.get(host), C.ns_addr_key(ns),
                                partial(P.parse_ip_addr, what=f"ip -n {ns} -j -d addr"),
                                f"namespace {ns}: ")
            if links is None:
                continue
            ctx.scratch[("ns_links", host, ns)] = links
            if doc["service_type"] != "dhcp":
                by_cidr = _networks_by_cidr(ctx, _region(ctx, host))
                networks = {_network_of(P.global_cidrs(lk), by_cidr) for lk in links}
                doc["network"] = sorted(n for n in networks if n)
            kept.append(doc)
        return kept

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        out = []
        for folder in parents:
            for ns in P.parse_netns(self.text(facts, C.NETNS)):
                name = ns["name"]
                prefix, _, service_id = name.partition("-")
                service_type = NAMESPACE_SERVICES.get(prefix)
                if service_type is None or not service_id or not _safe_part(name):
                    continue  # not a neutron namespace
                out.append({"id": stable_id(host, name), "name": name, "parent_id": folder["id"], "host": host,
                            "local_name": name, "service_type": service_type, "local_service_id": service_id,
                            "network": [service_id] if service_type == "dhcp" else []})
        return out


def _port_index(ctx: FetchContext, region: str | None) -> dict[str, list[Doc]]:
    """Neutron ports by the 11-character prefix of their id that device names carry."""
    out: dict[str, list[Doc]] = defaultdict(list)
    if region is not None:
        for port in ctx.cache.get(R.PORTS, region):
            out[str(port.get("id", ""))[:11]].append(port)
    return out


def _port_id_from_device(name: str, ports: Mapping[str, list[Doc]]) -> str | None:
    """neutron names devices <prefix><first 11 chars of the port id>: tap, ns-, qr-, qg-, sg-, qvo..."""
    m = re.fullmatch(r"(?:tap|ns-|qr-|qg-|sg-|rfp-|fpr-|qvo|qvb|qbr)([0-9a-f]{8}-[0-9a-f]{2})", name)
    if m is None:
        return None
    matches = ports.get(m.group(1)) or []
    return str(matches[0]["id"]) if len(matches) == 1 else None


class CliVserviceVnics(CliFetcher):
    name = "CliVserviceVnics"
    object_type = "vnic"
    essential = (C.IP_ADDR,)
    resources = (R.SUBNETS, R.PORTS)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        if ctx.hosts is None:
            if parents:
                ctx.report_unread(self.kept_types, "no CLI access to the hosts")
            return []
        services: dict[str, list[tuple[Doc, Doc]]] = defaultdict(list)  # host -> (folder, vservice)
        for folder in parents:
            vservice = self.owner(folder, ctx)
            if vservice is not None and vservice.get("host"):
                services[vservice["host"]].append((folder, vservice))
            else:
                ctx.report_unread(self.kept_types, f"the vservice of {folder.get('id')} is not known")
        if not services:
            return []
        missing = {host: [vs["local_name"] for _, vs in pairs
                          if ("ns_links", host, vs["local_name"]) not in ctx.scratch]
                   for host, pairs in services.items()}
        facts = _read_namespaces(self, ctx, missing, C.pick(C.IP_ADDR))
        out: list[Doc] = []
        for host, pairs in sorted(services.items()):
            host_facts = facts.get(host)
            if not self.usable(host, host_facts, self.essential, ctx):
                continue
            assert host_facts is not None
            try:
                host_links = {lk["ifindex"]: lk for lk in self.links(host_facts)}
            except P.ParseError as exc:
                ctx.report_host_failure(host, self.kept_types, f"{self.name}: {exc}")
                continue
            region = _region(ctx, host)
            ports = _port_index(ctx, region)
            by_cidr = _networks_by_cidr(ctx, region)
            for folder, vservice in pairs:
                ns = vservice["local_name"]
                links = ctx.scratch.get(("ns_links", host, ns)) or self.parsed(
                    ctx, host, host_facts, C.ns_addr_key(ns),
                    partial(P.parse_ip_addr, what=f"ip -n {ns} -j -d addr"), f"namespace {ns}: ")
                if links is None:
                    continue
                out.extend(self._vnics(host, ns, folder, vservice, links, host_links, ports, by_cidr))
        return out

    @staticmethod
    def _vnics(host: str, ns: str, folder: Doc, vservice: Doc, links: list[P.Iface], host_links: Mapping[Any, P.Iface],
               ports: Mapping[str, list[Doc]], by_cidr: Mapping[Any, str]) -> list[Doc]:
        out = []
        for link in links:
            name = link["ifname"]
            if link["link_type"] != "ether" or not _safe_part(name):
                continue
            peer = host_links.get(link["peer_index"]) if link["peer_netnsid"] is not None else None
            cidrs = P.global_cidrs(link)
            network = vservice["local_service_id"] if vservice.get("service_type") == "dhcp" else \
                _network_of(cidrs, by_cidr)
            out.append({
                "id": stable_id(host, ns, name), "name": f"{host}-{ns}-{name}", "parent_id": folder["id"],
                "host": host, "vnic_type": "vservice_vnic", "local_name": name, "namespace": ns,
                "mac_address": link["mac_address"], "mtu": link["mtu"], "state": link["state"],
                "ip_addresses": cidrs, "peer": peer["ifname"] if peer else link["peer"],
                "master": peer["master"] if peer else None, "network": network,
                "port_id": _port_id_from_device(name, ports),
            })
        return out


# -------------------------------------------------------------------------------------------------
# instance vNICs (libvirt)


class CliInstanceVnics(CliFetcher):
    name = "CliInstanceVnics"
    object_type = "vnic"
    essential = (C.IP_ADDR,)
    resources = (R.PORTS,)

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        if ctx.hosts is None:
            if parents:
                ctx.report_unread(self.kept_types, "no CLI access to the hosts")
            return []
        instances: dict[str, list[tuple[Doc, Doc]]] = defaultdict(list)
        for folder in parents:
            instance = self.owner(folder, ctx)
            if instance is not None and instance.get("host") and instance.get("local_name"):
                instances[instance["host"]].append((folder, instance))
            elif instance is None:
                ctx.report_unread(self.kept_types, f"the instance of {folder.get('id')} is not known")
        if not instances:
            return []
        per_host = {host: {C.dumpxml_key(i["local_name"]): C.dumpxml(i["local_name"]) for _, i in pairs}
                    for host, pairs in instances.items()}
        facts = self.collect(ctx, sorted(instances), C.pick(C.IP_ADDR), per_host=per_host)
        out: list[Doc] = []
        for host, pairs in sorted(instances.items()):
            host_facts = facts.get(host)
            if not self.usable(host, host_facts, self.essential, ctx):
                continue
            assert host_facts is not None
            try:
                links = {lk["ifname"]: lk for lk in self.links(host_facts)}
            except P.ParseError as exc:
                ctx.report_host_failure(host, self.kept_types, f"{self.name}: {exc}")
                continue
            ports = {str(p.get("id")): p for p in ctx.cache.get(R.PORTS, _region(ctx, host))}
            for folder, instance in pairs:
                domain = self.parsed(ctx, host, host_facts, C.dumpxml_key(instance["local_name"]),
                                     P.parse_domain_xml, f"instance {instance['local_name']}: ")
                if domain is None:
                    continue
                out.extend(self._vnics(host, folder, instance, domain, links, ports))
        return out

    @staticmethod
    def _vnics(host: str, folder: Doc, instance: Doc, domain: dict[str, Any], links: Mapping[str, P.Iface],
               ports: Mapping[str, Doc]) -> list[Doc]:
        out = []
        known_ports = list(domain["port_ids"]) or [p for p, doc in ports.items()
                                                   if doc.get("device_id") == instance["id"]]
        for iface in domain["interfaces"]:
            tap = iface["target"]
            if not tap or not _safe_part(tap):
                continue
            link = links.get(tap)
            port_id = P.port_id_for_tap(tap, known_ports)
            port = ports.get(port_id or "") or {}
            out.append({
                "id": stable_id(host, tap), "name": f"{host}-{tap}", "parent_id": folder["id"], "host": host,
                "vnic_type": "instance_vnic", "local_name": tap, "instance_id": instance["id"],
                "mac_address": iface["mac_address"], "state": link["state"] if link else "unknown",
                "mtu": link["mtu"] if link else None, "master": link["master"] if link else None,
                "source_bridge": iface["bridge"], "peer": None, "port_id": port_id,
                "network": port.get("network_id"),
                "ip_addresses": [ip["ip_address"] for ip in port.get("fixed_ips") or [] if ip.get("ip_address")],
                "model": iface["model"],
            })
        return out


# -------------------------------------------------------------------------------------------------
# vconnectors (Linux bridges) and their VXLAN tunnel endpoints


def _member(link: P.Iface) -> dict[str, Any]:
    """A bridge member as the links need it: a veth's peer, a VLAN device's parent NIC and VLAN id."""
    out = {"kind": link["kind"], "state": link["state"], "mac_address": link["mac_address"], "peer": None}
    if link["kind"] == "vlan":
        out.update(parent=link["peer"], vlan_id=link["info"].get("id"))
    elif link["kind"] == "veth":
        out["peer"] = link["peer"]
    return out


class CliVconnectors(CliFetcher):
    name = "CliVconnectors"
    object_type = "vconnector"
    essential = (C.IP_ADDR,)

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        links = self.links(facts)
        out = []
        for folder in parents:
            for link in links:
                name = link["ifname"]
                if link["kind"] != "bridge" or not _safe_part(name):
                    continue
                out.append({
                    "id": stable_id(host, name), "name": f"{host}-{name}", "parent_id": folder["id"], "host": host,
                    "local_name": name, "connector_type": "bridge", "mac_address": link["mac_address"],
                    "state": link["state"], "ip_addresses": P.global_cidrs(link),
                    "interfaces_names": sorted(lk["ifname"] for lk in links if lk["master"] == name),
                    # members' kind and veth peer: the qvb of a hybrid plug names its qvo on the vedge
                    "interfaces": {lk["ifname"]: _member(lk) for lk in links if lk["master"] == name},
                })
        return out


class CliOtepsLxb(CliFetcher):
    """VXLAN devices the Linux bridge agent enslaves to its brq bridges (vxlan-<vni>)."""

    name = "CliOtepsLxb"
    object_type = "otep"
    essential = (C.IP_ADDR,)
    optional = (C.FDB,)

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        links = self.links(facts)
        by_name = {lk["ifname"]: lk for lk in links}
        remotes = P.parse_fdb_remotes(self.text(facts, C.FDB))
        out = []
        for vconnector in parents:
            for link in links:
                name = link["ifname"]
                if link["kind"] != "vxlan" or link["master"] != vconnector.get("local_name") or not _safe_part(name):
                    continue
                info = link["info"]
                local = info.get("local") or info.get("local6")
                if local is None and info.get("link") in by_name:  # no local set: the device's own address
                    local = next((c.split("/")[0] for c in P.global_cidrs(by_name[info["link"]])), None)
                remote = [r for r in (info.get("remote"), info.get("group")) if r]
                out.append({
                    "id": stable_id(host, "otep", name), "name": f"{host}-otep-{name}", "parent_id": vconnector["id"],
                    "host": host, "overlay_type": "vxlan", "local_name": name, "ip_address": local,
                    "udp_port": info.get("port") or P.DEFAULT_UDP_PORTS["vxlan"], "segmentation_id": info.get("id"),
                    "remote_ips": sorted(set(remote) | set(remotes.get(name, []))), "ports": [name],
                    "vconnector": vconnector.get("local_name"), "state": link["state"],
                    "device": info.get("link"),
                })
        return out


# -------------------------------------------------------------------------------------------------
# vedges: Open vSwitch, VPP


class CliVedgesOvs(CliFetcher):
    name = "CliVedgesOvs"
    object_type = "vedge"
    essential = (C.OVS_BRIDGES, C.OVS_PORTS, C.OVS_INTERFACES)

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        switch = P.parse_ovs(self.text(facts, C.OVS_BRIDGES), self.text(facts, C.OVS_PORTS),
                             self.text(facts, C.OVS_INTERFACES))
        tunnels = sorted(n for n, p in switch["ports"].items() if p["type"] in P.TUNNEL_TYPES)
        return [{"id": stable_id(host, "OVS"), "name": f"{host}-OVS", "parent_id": folder["id"], "host": host,
                 "local_name": "OVS", "agent_type": "Open vSwitch agent", "bridges": switch["bridges"],
                 "ports": switch["ports"], "tunnel_ports": tunnels}
                for folder in parents]


class CliOtepsOvs(Fetcher):
    """Tunnel endpoints of an OVS vedge, one per overlay type, from the tunnel ports the vedge read."""

    name = "CliOtepsOvs"
    object_type = "otep"

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        out = []
        for vedge in parents:
            host = vedge.get("host")
            if not host:
                continue
            ports = vedge.get("ports") or {}
            by_type: dict[str, list[str]] = defaultdict(list)
            for name in vedge.get("tunnel_ports") or []:
                by_type[ports[name]["type"]].append(name)
            for overlay, names in sorted(by_type.items()):
                options = [ports[n]["options"] for n in names]
                local = next((o["local_ip"] for o in options if o.get("local_ip")), None)
                port = next((o["dst_port"] for o in options if o.get("dst_port")), None)
                out.append({
                    "id": stable_id(host, "otep", overlay), "name": f"{host}-otep-{overlay}",
                    "parent_id": vedge["id"], "host": host, "local_name": f"otep-{overlay}", "overlay_type": overlay,
                    "ip_address": local, "udp_port": int(port) if port else P.DEFAULT_UDP_PORTS.get(overlay),
                    "remote_ips": sorted({o["remote_ip"] for o in options if o.get("remote_ip")}),
                    "ports": sorted(names), "vedge": vedge["id"],
                    "state": "up" if any(ports[n]["state"] == "up" for n in names) else
                    ("down" if all(ports[n]["state"] == "down" for n in names) else "unknown"),
                })
        return out


class CliVedgesVpp(CliFetcher):
    name = "CliVedgesVpp"
    object_type = "vedge"
    essential = (C.VPP_INTERFACES,)
    optional = (C.VPP_HARDWARE,)

    def build(self, host: str, parents: list[Doc], facts: HostFacts, ctx: FetchContext) -> list[Doc]:
        interfaces = P.parse_vpp_interfaces(self.text(facts, C.VPP_INTERFACES))
        hardware_text = self.text(facts, C.VPP_HARDWARE)
        hardware = P.parse_vpp_hardware(hardware_text) if hardware_text.strip() else {}
        ports = {}
        for name, sw in interfaces.items():
            hw = hardware.get(name, {})
            ports[name] = {"index": sw["index"], "state": sw["state"], "bond_slave": sw["bond_slave"],
                           "mac_address": hw.get("mac_address"), "speed": hw.get("speed"), "mtu": hw.get("mtu"),
                           "hardware": hw.get("hardware")}
        return [{"id": stable_id(host, "VPP"), "name": f"{host}-VPP", "parent_id": folder["id"], "host": host,
                 "local_name": "VPP", "agent_type": "VPP", "ports": ports}
                for folder in parents]
