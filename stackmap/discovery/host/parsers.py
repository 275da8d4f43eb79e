"""Pure functions from what host tools print to plain dicts.

Each parser either returns data or raises ``ParseError`` naming what it expected: a host whose tool
printed garbage becomes a per-host error in the scan, never a crash and never a half-read host that
would make its objects look deleted. Parsers keep only facts the tools state; they do not guess.
"""

from __future__ import annotations

import ipaddress
import json
import re
import xml.etree.ElementTree as ET
from typing import Any

from stackmap.errors import StackmapError

Iface = dict[str, Any]


class ParseError(StackmapError):
    """A command's output is not what its parser understands."""


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ParseError(f"{what}: not JSON ({exc.__class__.__name__}: {str(exc)[:80]})") from None


# -------------------------------------------------------------------------------------------------
# iproute2


def link_state(operstate: str | None, flags: list[str] | None = None) -> str:
    """'up', 'down' or 'unknown' from the kernel's operstate.

    Devices without carrier reporting (loopback, vxlan, tun) say UNKNOWN; for them the flags tell
    what the kernel knows: administratively down is down, UP with LOWER_UP is up.
    """
    state = (operstate or "").upper()
    if state == "UP":
        return "up"
    if state in ("DOWN", "LOWERLAYERDOWN", "NOTPRESENT"):
        return "down"
    have = set(flags or [])
    if "UP" not in have:
        return "down"
    if "LOWER_UP" in have:
        return "up"
    return "unknown"


def parse_ip_addr(text: str, what: str = "ip -j -d addr") -> list[Iface]:
    """Links with their kind, master, veth peer and addresses, from ``ip -j -d addr show``."""
    data = _json(text, what)
    if not isinstance(data, list):
        raise ParseError(f"{what}: expected a JSON list of links, got {type(data).__name__}")
    links = []
    for item in data:
        if not isinstance(item, dict) or not isinstance(item.get("ifname"), str):
            raise ParseError(f"{what}: a link without an interface name: {str(item)[:80]}")
        info = item.get("linkinfo") or {}
        flags = [str(f) for f in item.get("flags") or []]
        addresses = []
        for addr in item.get("addr_info") or []:
            local, plen = addr.get("local"), addr.get("prefixlen")
            if local is None or plen is None:
                continue
            try:
                iface = ipaddress.ip_interface(f"{local}/{plen}")
            except ValueError:
                raise ParseError(f"{what}: {item['ifname']} has a bad address {local!r}/{plen!r}") from None
            addresses.append({"cidr": str(iface), "family": "inet6" if iface.version == 6 else "inet",
                              "scope": addr.get("scope")})
        links.append({
            "ifname": item["ifname"], "ifindex": item.get("ifindex"), "kind": info.get("info_kind") or "",
            "info": info.get("info_data") or {}, "slave_kind": info.get("info_slave_kind") or "",
            "master": item.get("master"), "peer": item.get("link"), "peer_index": item.get("link_index"),
            "peer_netnsid": item.get("link_netnsid"), "mac_address": item.get("address"),
            "mtu": item.get("mtu"), "link_type": item.get("link_type"), "flags": flags,
            "state": link_state(item.get("operstate"), flags), "addresses": addresses,
        })
    return links


def global_cidrs(link: Iface) -> list[str]:
    """Addresses worth mapping: not link-local, not host-scoped."""
    return [a["cidr"] for a in link["addresses"] if a.get("scope") not in ("link", "host")]


def parse_netns(text: str) -> list[dict[str, Any]]:
    """Namespaces from ``ip -j netns list`` (or the text form ``name (id: N)`` of older iproute2)."""
    stripped = text.strip()
    if not stripped:
        return []
    if stripped.startswith("["):
        data = _json(stripped, "ip -j netns list")
        if not isinstance(data, list) or not all(isinstance(d, dict) and isinstance(d.get("name"), str)
                                                 for d in data):
            raise ParseError("ip -j netns list: expected a list of {name, id}")
        return [{"name": d["name"], "id": d.get("id")} for d in data]
    out = []
    for line in stripped.splitlines():
        m = re.fullmatch(r"([\w.:@+-]+)(?:\s+\(id:\s*(\d+)\))?", line.strip())
        if m is None:
            raise ParseError(f"ip netns list: unexpected line {line[:80]!r}")
        out.append({"name": m.group(1), "id": int(m.group(2)) if m.group(2) else None})
    return out


def parse_speeds(text: str) -> dict[str, int | None]:
    """Link speeds in Mb/s from ``grep -H . /sys/class/net/*/speed`` (-1 means the driver does not know)."""
    speeds: dict[str, int | None] = {}
    for line in text.splitlines():
        m = re.fullmatch(r"/sys/class/net/([^/]+)/speed:(-?\d+)", line.strip())
        if m:
            value = int(m.group(2))
            speeds[m.group(1)] = value if value > 0 else None
    return speeds


def parse_fdb_remotes(text: str) -> dict[str, list[str]]:
    """Remote tunnel endpoints per device from ``bridge -j fdb show`` (entries that carry ``dst``)."""
    if not text.strip():
        return {}
    data = _json(text, "bridge -j fdb show")
    if not isinstance(data, list):
        raise ParseError("bridge -j fdb show: expected a JSON list of entries")
    out: dict[str, set[str]] = {}
    for entry in data:
        if isinstance(entry, dict) and entry.get("dst") and entry.get("ifname"):
            out.setdefault(str(entry["ifname"]), set()).add(str(entry["dst"]))
    return {dev: sorted(dsts) for dev, dsts in out.items()}


PNIC_KINDS = {"": "ethernet", "bond": "bond"}


def pnic_type(link: Iface, namespace_ids: set[int]) -> str | None:
    """What kind of host NIC a link is, or None when it is virtual plumbing.

    A device with no link kind is hardware; a bond is a NIC. A veth whose peer lives in a namespace
    that is not one of the host's named namespaces is the host's uplink (containers and test hosts
    get their NICs that way); a veth into a qdhcp-/qrouter- namespace is a service's vNIC instead.
    """
    if link["link_type"] != "ether":
        return None
    kind = link["kind"]
    if kind in PNIC_KINDS:
        return PNIC_KINDS[kind]
    if kind == "veth" and link["peer_netnsid"] is not None and link["peer_netnsid"] not in namespace_ids:
        return "ethernet"
    return None


# -------------------------------------------------------------------------------------------------
# Open vSwitch


def _ovsdb_value(value: Any) -> Any:
    """OVSDB's JSON encoding: ["uuid", u], ["set", [...]], ["map", [[k, v]...]], or an atom."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
        tag, body = value
        if tag in ("uuid", "named-uuid"):
            return body
        if tag == "set":
            return [_ovsdb_value(v) for v in body]
        if tag == "map":
            return {str(_ovsdb_value(k)): _ovsdb_value(v) for k, v in body}
    return value


def parse_ovsdb_table(text: str, what: str) -> list[dict[str, Any]]:
    """Rows of ``ovs-vsctl --format=json list <table>`` as dicts."""
    data = _json(text, what)
    if not isinstance(data, dict) or not isinstance(data.get("headings"), list) or \
            not isinstance(data.get("data"), list):
        raise ParseError(f"{what}: expected ovs-vsctl JSON with 'headings' and 'data'")
    heads = data["headings"]
    rows = []
    for row in data["data"]:
        if not isinstance(row, list) or len(row) != len(heads):
            raise ParseError(f"{what}: a row does not match the headings")
        try:
            rows.append({h: _ovsdb_value(v) for h, v in zip(heads, row, strict=True)})
        except (TypeError, ValueError):
            raise ParseError(f"{what}: a value is not in OVSDB's JSON encoding") from None
    return rows


def _as_list(value: Any) -> list[Any]:
    """OVSDB prints a one-element set as the bare element."""
    return value if isinstance(value, list) else [value]


def parse_ovs(bridges_text: str, ports_text: str, interfaces_text: str) -> dict[str, Any]:
    """The switch as bridges -> ports -> interface facts (type, tag, tunnel options, MAC, state)."""
    bridges = parse_ovsdb_table(bridges_text, "ovs-vsctl list Bridge")
    ports = {p["_uuid"]: p for p in parse_ovsdb_table(ports_text, "ovs-vsctl list Port")}
    interfaces = {i["_uuid"]: i for i in parse_ovsdb_table(interfaces_text, "ovs-vsctl list Interface")}
    out_bridges: dict[str, Any] = {}
    out_ports: dict[str, Any] = {}
    for bridge in bridges:
        name = bridge.get("name")
        if not isinstance(name, str):
            raise ParseError("ovs-vsctl list Bridge: a bridge without a name")
        names = []
        for port_uuid in _as_list(bridge.get("ports")):
            port = ports.get(port_uuid)
            if port is None:
                continue  # added between the two reads; the next scan sees it
            iface = next((interfaces[u] for u in _as_list(port.get("interfaces")) if u in interfaces), {})
            tag = port.get("tag")
            raw_options = iface.get("options")
            options: dict[str, Any] = raw_options if isinstance(raw_options, dict) else {}
            names.append(port["name"])
            out_ports[port["name"]] = {
                "bridge": name, "type": iface.get("type") or "",
                "tag": tag if isinstance(tag, int) else None,
                "options": {k: options[k] for k in ("remote_ip", "local_ip", "key", "peer", "dst_port")
                            if k in options},
                "mac_address": iface.get("mac_in_use") or None,
                "state": _ovs_state(iface.get("admin_state"), iface.get("link_state")),
            }
        out_bridges[name] = {"datapath_type": bridge.get("datapath_type") or "system", "ports": sorted(names)}
    return {"bridges": out_bridges, "ports": out_ports}


def _ovs_state(admin: Any, link: Any) -> str:
    if admin == "down" or link == "down":
        return "down"
    if link == "up":
        return "up"
    return "unknown"


TUNNEL_TYPES = ("vxlan", "gre", "geneve")
DEFAULT_UDP_PORTS = {"vxlan": 4789, "geneve": 6081}


# -------------------------------------------------------------------------------------------------
# VPP (vppctl has no JSON output)

_VPP_STATES = {"up": "up", "down": "down", "bond-slave": "up"}


def parse_vpp_interfaces(text: str) -> dict[str, dict[str, Any]]:
    """``vppctl show interface``: name -> {index, admin_state, bond_slave}. Counter lines are skipped."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not re.match(r"\s*Name\s+Idx\s+State", lines[0]):
        raise ParseError("vppctl show interface: no 'Name Idx State' header")
    out = {}
    for line in lines[1:]:
        if line[:1].isspace():
            continue  # a further counter of the interface above
        parts = line.split()
        if len(parts) < 3 or not parts[1].isdigit():
            raise ParseError(f"vppctl show interface: unexpected line {line[:80]!r}")
        out[parts[0]] = {"index": int(parts[1]), "state": _VPP_STATES.get(parts[2], "unknown"),
                         "bond_slave": parts[2] == "bond-slave"}
    return out


def parse_vpp_hardware(text: str) -> dict[str, dict[str, Any]]:
    """``vppctl show hardware-interfaces``: name -> {index, link, hardware, mac_address, speed, mtu}."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not re.match(r"\s*Name\s+Idx\s+Link\s+Hardware", lines[0]):
        raise ParseError("vppctl show hardware-interfaces: no 'Name Idx Link Hardware' header")
    out: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in lines[1:]:
        if not line[:1].isspace():
            parts = line.split(None, 3)
            if len(parts) < 3 or not parts[1].isdigit():
                raise ParseError(f"vppctl show hardware-interfaces: unexpected line {line[:80]!r}")
            current = out[parts[0]] = {"index": int(parts[1]), "link": parts[2],
                                       "hardware": parts[3] if len(parts) > 3 else "",
                                       "mac_address": None, "speed": None, "mtu": None}
            continue
        if current is None:
            raise ParseError("vppctl show hardware-interfaces: details before any interface")
        mac = re.search(r"Ethernet address ([0-9a-f:]{17})", line)
        if mac:
            current["mac_address"] = mac.group(1)
        speed = re.search(r"[Ss]peed:?\s+(\d+)\s*([GMK]bps)?", line)
        if speed and current["speed"] is None:
            value, unit = int(speed.group(1)), speed.group(2) or "Mbps"
            current["speed"] = value * 1000 if unit == "Gbps" else value // 1000 if unit == "Kbps" else value
        mtu = re.search(r"\bmtu (\d+)", line)
        if mtu and current["mtu"] is None:
            current["mtu"] = int(mtu.group(1))
    return out


# -------------------------------------------------------------------------------------------------
# libvirt


def parse_domain_xml(text: str) -> dict[str, Any]:
    """A domain's name, uuid, nova port ids and interfaces (tap device, MAC, bridge) from ``virsh dumpxml``."""
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise ParseError("virsh dumpxml: document type declarations are not accepted")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise ParseError(f"virsh dumpxml: not XML ({exc})") from None
    if root.tag != "domain":
        raise ParseError(f"virsh dumpxml: root element is <{root.tag}>, not <domain>")
    nova = "{http://openstack.org/xmlns/libvirt/nova/1.1}"
    port_ids = [p.get("uuid") for p in root.iter(f"{nova}port") if p.get("uuid")]
    interfaces = []
    for iface in root.findall("./devices/interface"):
        target = iface.find("target")
        mac = iface.find("mac")
        source = iface.find("source")
        model = iface.find("model")
        alias = iface.find("alias")
        interfaces.append({
            "type": iface.get("type"), "target": target.get("dev") if target is not None else None,
            "mac_address": mac.get("address") if mac is not None else None,
            "bridge": source.get("bridge") if source is not None else None,
            "model": model.get("type") if model is not None else None,
            "alias": alias.get("name") if alias is not None else None,
        })
    return {"name": root.findtext("name"), "uuid": root.findtext("uuid"), "port_ids": port_ids,
            "interfaces": interfaces}


def port_id_for_tap(tap: str | None, port_ids: list[str]) -> str | None:
    """Nova names a port's tap ``tap`` + the first 11 characters of the port id."""
    if not tap or not tap.startswith("tap"):
        return None
    prefix = tap[3:]
    matches = [p for p in port_ids if p.startswith(prefix)]
    return matches[0] if len(matches) == 1 else None
