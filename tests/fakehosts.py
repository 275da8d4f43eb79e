"""The host layer of a FakeCloud: what its hosts' tools would print, for the real host fetchers.

``SimulatedHosts`` stands where the SSH runner stands (a ``FactsSource`` taking per-host commands)
and answers the fetchers' named commands with output in the tools' own formats (``ip -j -d addr``,
``ovs-vsctl --format=json``, ``virsh dumpxml``), so a scan builds pNICs, vEdges, oteps, vconnectors
and vNICs through the same parsing and placement as on a real cloud. Every host runs Open vSwitch
with nova's hybrid plug: an instance's tap sits on a ``qbr`` Linux bridge whose ``qvb`` veth leads
to ``qvo`` on br-int; eth0 carries the host's VXLAN tunnel address, eth1 is br-ex's uplink. Each host
tunnels to the next few hosts (as l2population would to the hosts sharing its networks), not to all:
a full mesh would make a big cloud's vEdges quadratic in size.

Built from plain data (``HostPlan``), so a process that only has the cloud's servers and ports (the
event bench, whose cloud lives in another process) can plan its hosts too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stackmap.discovery.host import commands as C
from stackmap.discovery.host.facts import CommandOutput, HostFacts

TUNNEL_PEERS = 4  # remote hosts each host has a VXLAN port to


@dataclass
class Vm:
    domain: str  # libvirt's name for it: nova's instance_name
    uuid: str
    ports: list[tuple[str, str]]  # (neutron port id, MAC)


@dataclass
class HostPlan:
    name: str
    tunnel_ip: str
    vms: list[Vm] = field(default_factory=list)
    peers: list[str] = field(default_factory=list)  # remote tunnel IPs


def plan_hosts(hosts: Iterable[str], servers: Iterable[Mapping[str, Any]],
               ports: Iterable[Mapping[str, Any]]) -> dict[str, HostPlan]:
    """Every host, with the instances nova placed on it and their ports (from API items)."""
    names = sorted(set(hosts))
    plans = {h: HostPlan(h, f"10.{128 + i // 62_500}.{i // 250 % 250}.{i % 250 + 1}")
             for i, h in enumerate(names)}
    by_device: dict[str, list[tuple[str, str]]] = {}
    for port in ports:
        if str(port.get("device_owner") or "").startswith("compute:"):
            by_device.setdefault(str(port["device_id"]), []).append((str(port["id"]), str(port["mac_address"])))
    for server in servers:
        host = server.get("OS-EXT-SRV-ATTR:host")
        if host in plans and server.get("OS-EXT-SRV-ATTR:instance_name"):
            plans[str(host)].vms.append(Vm(str(server["OS-EXT-SRV-ATTR:instance_name"]), str(server["id"]),
                                           sorted(by_device.get(str(server["id"]), []))))
    ips = [plans[h].tunnel_ip for h in names]
    for i, h in enumerate(names):
        plans[h].peers = [ips[(i + k) % len(ips)] for k in range(1, min(TUNNEL_PEERS, len(ips) - 1) + 1)]
    return plans


def plan_cloud(cloud: Any) -> dict[str, HostPlan]:
    """``plan_hosts`` for every host, server and port of a ``tests.fakecloud.FakeCloud``."""
    hosts: list[str] = []
    servers: list[dict[str, Any]] = []
    ports: list[dict[str, Any]] = []
    for region in cloud.regions:
        hosts += list(cloud.region(region).hosts)
        servers += cloud.items("servers", region)
        ports += cloud.items("ports", region)
    return plan_hosts(hosts, servers, ports)


def _dev(prefix: str, port_id: str) -> str:
    return prefix + port_id[:11]  # nova's and neutron's device names: 14 characters at most


def _link(index: int, name: str, *, kind: str = "", master: str | None = None, peer: str | None = None,
          mac: str = "", addresses: Sequence[tuple[str, int]] = (), up: bool = True,
          link_type: str = "ether") -> dict[str, Any]:
    link: dict[str, Any] = {
        "ifindex": index, "ifname": name, "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"] if up else
        ["BROADCAST", "MULTICAST"], "mtu": 1500, "operstate": "UP" if up else "DOWN", "link_type": link_type,
        "address": mac or f"52:54:00:{index >> 16 & 255:02x}:{index >> 8 & 255:02x}:{index & 255:02x}",
        "addr_info": [{"family": "inet", "local": ip, "prefixlen": plen, "scope": "global"} for ip, plen in addresses],
    }
    if kind:
        link["linkinfo"] = {"info_kind": kind}
    if master:
        link["master"] = master
    if peer:
        link["link"] = peer
    return link


def ip_addr(plan: HostPlan) -> str:
    links = [_link(1, "lo", link_type="loopback", mac="00:00:00:00:00:00", addresses=[("127.0.0.1", 8)]),
             _link(2, "eth0", addresses=[(plan.tunnel_ip, 16)]),
             _link(3, "eth1", master="ovs-system"),
             _link(4, "ovs-system", kind="openvswitch", up=False)]
    links += [_link(5 + i, br, kind="openvswitch", up=False) for i, br in enumerate(("br-int", "br-tun", "br-ex"))]
    index = 10
    for vm in plan.vms:
        for port_id, mac in vm.ports:
            qbr, qvb, qvo, tap = (_dev(p, port_id) for p in ("qbr", "qvb", "qvo", "tap"))
            links += [_link(index, qbr, kind="bridge"),
                      _link(index + 1, qvo, kind="veth", master="ovs-system", peer=qvb),
                      _link(index + 2, qvb, kind="veth", master=qbr, peer=qvo),
                      _link(index + 3, tap, kind="tun", master=qbr, mac="fe" + mac[2:])]
            index += 4
    return json.dumps(links)


def _ovsdb(headings: list[str], rows: list[list[Any]]) -> str:
    return json.dumps({"headings": headings, "data": rows})


def _uuid(kind: str, n: int) -> list[str]:
    return ["uuid", f"{kind}{n:07x}-0000-4000-8000-000000000000"]


def ovs_tables(plan: HostPlan) -> tuple[str, str, str]:
    """``list Bridge``, ``list Port`` and ``list Interface`` of the host's switch."""
    bridges: dict[str, list[tuple[str, str, int | None, dict[str, str]]]] = {  # name, type, tag, options
        "br-int": [("br-int", "internal", None, {}), ("patch-tun", "patch", None, {"peer": "patch-int"})],
        "br-tun": [("br-tun", "internal", None, {}), ("patch-int", "patch", None, {"peer": "patch-tun"})],
        "br-ex": [("br-ex", "internal", None, {}), ("eth1", "", None, {})],
    }
    for tag, vm in enumerate(plan.vms, start=1):
        bridges["br-int"] += [(_dev("qvo", port_id), "", tag, {}) for port_id, _ in vm.ports]
    for peer in plan.peers:
        name = "vxlan-" + "".join(f"{int(octet):02x}" for octet in peer.split("."))
        bridges["br-tun"].append((name, "vxlan", None, {"remote_ip": peer, "local_ip": plan.tunnel_ip, "key": "flow",
                                                        "dst_port": "4789"}))
    bridge_rows: list[list[Any]] = []
    port_rows: list[list[Any]] = []
    iface_rows: list[list[Any]] = []
    n = 0
    for bridge, members in bridges.items():
        port_refs = []
        for name, type_, vlan, options in members:
            n += 1
            port_refs.append(_uuid("b", n))
            port_rows.append([_uuid("b", n), name, _uuid("c", n), vlan if vlan is not None else ["set", []]])
            iface_rows.append([_uuid("c", n), name, type_, ["map", sorted(options.items())], ["set", []],
                               "up" if type_ != "vxlan" else ["set", []], "up"])
        bridge_rows.append([bridge, ["set", port_refs], "system"])
    return (_ovsdb(["name", "ports", "datapath_type"], bridge_rows),
            _ovsdb(["_uuid", "name", "interfaces", "tag"], port_rows),
            _ovsdb(["_uuid", "name", "type", "options", "mac_in_use", "link_state", "admin_state"], iface_rows))


def dumpxml(vm: Vm) -> str:
    ports = "".join(f'<nova:port uuid="{p}"/>' for p, _ in vm.ports)
    interfaces = "".join(f"<interface type='bridge'><mac address='{mac}'/><source bridge='{_dev('qbr', p)}'/>"
                         f"<target dev='{_dev('tap', p)}'/><model type='virtio'/></interface>" for p, mac in vm.ports)
    return (f"<domain type='kvm'><name>{vm.domain}</name><uuid>{vm.uuid}</uuid><metadata>"
            f"<nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'><nova:ports>{ports}"
            f"</nova:ports></nova:instance></metadata><devices>{interfaces}</devices></domain>")


class SimulatedHosts:
    """A FactsSource over ``HostPlan``s. A command it does not simulate fails as a missing tool
    would (exit 127), and a host it has no plan for is unreachable."""

    def __init__(self, plans: Mapping[str, HostPlan]) -> None:
        self.plans = dict(plans)
        self._outputs: dict[str, dict[str, str]] = {}

    def _host_outputs(self, plan: HostPlan) -> dict[str, str]:
        if plan.name not in self._outputs:
            bridges, ports, interfaces = ovs_tables(plan)
            outputs = {C.IP_ADDR: ip_addr(plan), C.NETNS: "[]", C.OVS_BRIDGES: bridges, C.OVS_PORTS: ports,
                       C.OVS_INTERFACES: interfaces, C.FDB: "[]",
                       C.SPEED: "/sys/class/net/eth0/speed:10000\n/sys/class/net/eth1/speed:10000\n"}
            outputs.update({C.dumpxml_key(vm.domain): dumpxml(vm) for vm in plan.vms})
            self._outputs[plan.name] = outputs
        return self._outputs[plan.name]

    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str],
                per_host: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, HostFacts]:
        out: dict[str, HostFacts] = {}
        for doc in hosts:
            host = str(doc["id"])
            plan = self.plans.get(host)
            if plan is None:
                out[host] = HostFacts(host, error="no route to host")
                continue
            known = self._host_outputs(plan)
            facts = HostFacts(host, address=plan.tunnel_ip)
            for key, command in {**commands, **dict((per_host or {}).get(host, {}))}.items():
                text = known.get(key)
                facts.outputs[key] = CommandOutput(key, command, 0, text) if text is not None else \
                    CommandOutput(key, command, 127, stderr=f"{command.split()[0]}: command not found",
                                  error="exit status 127")
            out[host] = facts
        return out
