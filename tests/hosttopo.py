"""Real host topologies for the host fetchers, built on the hosts of ``tests/hostbed.py`` (network +
private mount namespaces), so the same topologies can be read through ``tests/nsfacts.py`` or over SSH.

A host here is anything with ``name``, ``ip``, ``pid`` and ``exec(argv, check=True, input=None)``
running inside its namespaces (the bed's TestHost).

Builders:
- ``start_ovs(host, workdir)``: an ovsdb-server + ovs-vswitchd private to the host (its own db and
  run dir, userspace ``datapath_type=netdev``, no kernel module);
- ``build_ovs_compute``: br-int with a hybrid plug (qbr/qvb/qvo, tag) and an internal tap port
  (tag), br-tun with a VXLAN port to another host's IP, the pNIC carrying the tunnel IP;
- ``build_network_node``: qdhcp-<net> and qrouter-<router> namespaces with addressed vNICs,
  veth'ed to a brq bridge;
- ``build_lxb_host``: brq<net> bridge with a tap and a vxlan-<vni> device (a VLAN sub-interface of
  the pNIC too when the kernel has 8021q; this CI kernel does not).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import hostbed
from tests.hostbed import HostBed, TestHost


def missing_requirements() -> str | None:
    """Why these topologies cannot be built here (tests skip with it), or None."""
    bed = hostbed.missing_requirements(sshd=False)
    if bed is not None:
        return bed
    absent = [t for t in ("bridge", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool", "ovs-appctl")
              if shutil.which(t) is None] + ([] if OVS_SCHEMA.exists() else [str(OVS_SCHEMA)])
    return f"missing for the host topologies: {', '.join(absent)} (apt-get install openvswitch-switch)" \
        if absent else None


# -------------------------------------------------------------------------------------------------
# hosts of the bed (tests/hostbed.py)


def new_host(bed: HostBed, name: str) -> TestHost:
    """A bed host whose /sys shows its own network namespace (what ``/sys/class/net/*/speed`` and
    friends read on a real host): sysfs is mounted again inside the host's private mount namespace."""
    host = bed.add_host(name)
    host.exec(["mount", "-t", "sysfs", "sysfs", "/sys"])
    return host


def kill_host(host: TestHost) -> None:
    """The host goes away (its anchor dies): commands can no longer enter it, as with a dead server."""
    with suppress(ProcessLookupError):
        os.kill(host.pid, signal.SIGKILL)


# -------------------------------------------------------------------------------------------------
# Open vSwitch private to a host


OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


def start_ovs(host: TestHost) -> Path:
    """ovsdb-server + ovs-vswitchd for this host only: its own db in the host's bed directory, its run
    dir on the host's private /run/openvswitch, userspace datapath. Returns that directory; the bed's
    close() ends both daemons with the rest of the host's processes."""
    work = host.dir / "ovs"
    work.mkdir(parents=True, exist_ok=True)
    schema = str(OVS_SCHEMA)
    db = work / "conf.db"
    host.exec(["ovsdb-tool", "create", str(db), schema])
    host.exec(["ovsdb-server", str(db), "--remote=punix:/run/openvswitch/db.sock",
               "--pidfile=/run/openvswitch/ovsdb-server.pid", "--detach", f"--log-file={work}/ovsdb-server.log"])
    host.exec(["ovs-vsctl", "--no-wait", "init"])
    host.exec(["ovs-vswitchd", "unix:/run/openvswitch/db.sock", "--pidfile=/run/openvswitch/ovs-vswitchd.pid",
               "--detach", f"--log-file={work}/ovs-vswitchd.log"])
    return work


def stop_ovs(host: TestHost) -> None:
    """Stop the host's switch (the commands then fail as on a host whose OVS died)."""
    for daemon in ("ovs-vswitchd", "ovsdb-server"):
        host.exec(["ovs-appctl", "-t", daemon, "exit"], check=False)


# -------------------------------------------------------------------------------------------------
# topologies


@dataclass
class OvsCompute:
    port_hybrid: str = "1234abcd-5678-4e9f-8a7b-6c5d4e3f2a1b"  # neutron port ids the device names derive from
    port_internal: str = "9876fedc-ba98-4765-8432-10fedcba9876"
    tag_hybrid: int = 3
    tag_internal: int = 4

    @property
    def tap(self) -> str:
        return "tap" + self.port_hybrid[:11]

    @property
    def qbr(self) -> str:
        return "qbr" + self.port_hybrid[:11]

    @property
    def qvb(self) -> str:
        return "qvb" + self.port_hybrid[:11]

    @property
    def qvo(self) -> str:
        return "qvo" + self.port_hybrid[:11]

    @property
    def internal(self) -> str:
        return "tap" + self.port_internal[:11]

    def vxlan_port(self, remote_ip: str) -> str:
        return "vxlan-" + "".join(f"{int(o):02x}" for o in remote_ip.split("."))


def build_ovs_compute(host: TestHost, remote_ips: Sequence[str], topo: OvsCompute | None = None,
                      gre_remote_ips: Sequence[str] = ()) -> OvsCompute:
    """The classic OVS hybrid-plug compute host (OVS must be running on it: ``start_ovs``)."""
    t = topo or OvsCompute()
    vsctl = ["ovs-vsctl", "--timeout=10"]
    host.exec([*vsctl, "add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev"])
    host.exec([*vsctl, "add-br", "br-tun", "--", "set", "bridge", "br-tun", "datapath_type=netdev"])
    for argv in (["ip", "link", "add", t.qbr, "type", "bridge"],
                 ["ip", "link", "add", t.qvb, "type", "veth", "peer", "name", t.qvo],
                 ["ip", "tuntap", "add", "dev", t.tap, "mode", "tap"],
                 ["ip", "link", "set", t.tap, "master", t.qbr],
                 ["ip", "link", "set", t.qvb, "master", t.qbr]):
        host.exec(argv)
    for dev in (t.qbr, t.qvb, t.qvo, t.tap):
        host.exec(["ip", "link", "set", dev, "up"])
    host.exec([*vsctl, "add-port", "br-int", t.qvo, f"tag={t.tag_hybrid}"])
    host.exec([*vsctl, "add-port", "br-int", t.internal, f"tag={t.tag_internal}", "--", "set", "interface",
               t.internal, "type=internal"])
    host.exec([*vsctl, "add-port", "br-int", "patch-tun", "--", "set", "interface", "patch-tun", "type=patch",
               "options:peer=patch-int"])
    host.exec([*vsctl, "add-port", "br-tun", "patch-int", "--", "set", "interface", "patch-int", "type=patch",
               "options:peer=patch-tun"])
    for remote in remote_ips:
        port = t.vxlan_port(remote)
        host.exec([*vsctl, "add-port", "br-tun", port, "--", "set", "interface", port, "type=vxlan",
                   f"options:remote_ip={remote}", f"options:local_ip={host.ip}", "options:key=flow",
                   "options:in_key=flow", "options:out_key=flow"])
    for remote in gre_remote_ips:
        port = "gre-" + "".join(f"{int(o):02x}" for o in remote.split("."))
        host.exec([*vsctl, "add-port", "br-tun", port, "--", "set", "interface", port, "type=gre",
                   f"options:remote_ip={remote}", f"options:local_ip={host.ip}"])
    return t


@dataclass
class NetworkNode:
    network_id: str = "5e1f1cbe-3b85-4b38-a7e0-0b6d1d9b2f31"
    router_id: str = "7b2c4e6a-9d1f-4a8b-bc3d-2e5f6a7b8c9d"
    external_network_id: str = "e0e1e2e3-e4e5-46e7-88e9-eaebecedeeef"
    dhcp_port: str = "aa11bb22-cc33-4d44-8e55-f66a77b88c99"
    router_port: str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
    gateway_port: str = "f0e1d2c3-b4a5-4697-8877-665544332211"
    cidr: str = "10.0.0.0/24"
    external_cidr: str = "172.24.4.0/24"

    @property
    def dhcp_ns(self) -> str:
        return f"qdhcp-{self.network_id}"

    @property
    def router_ns(self) -> str:
        return f"qrouter-{self.router_id}"

    @property
    def bridge(self) -> str:
        return "brq" + self.network_id[:11]

    def vnics(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(namespace, ifname) -> {host-side peer, addresses, port}: what the fetchers must find."""
        def nth(cidr: str, n: int) -> str:
            net = ipaddress.ip_network(cidr)
            return f"{net[n]}/{net.prefixlen}"

        return {
            (self.dhcp_ns, "ns-" + self.dhcp_port[:11]): {"peer": "tap" + self.dhcp_port[:11],
                                                          "ips": [nth(self.cidr, 2)], "port": self.dhcp_port},
            (self.router_ns, "qr-" + self.router_port[:11]): {"peer": "tap" + self.router_port[:11],
                                                              "ips": [nth(self.cidr, 1)], "port": self.router_port},
            (self.router_ns, "qg-" + self.gateway_port[:11]): {"peer": "tap" + self.gateway_port[:11],
                                                               "ips": [nth(self.external_cidr, 10)],
                                                               "port": self.gateway_port},
        }


def build_network_node(host: TestHost, topo: NetworkNode | None = None) -> NetworkNode:
    t = topo or NetworkNode()
    host.exec(["ip", "netns", "add", t.dhcp_ns])
    host.exec(["ip", "netns", "add", t.router_ns])
    host.exec(["ip", "link", "add", t.bridge, "type", "bridge"])
    host.exec(["ip", "link", "set", t.bridge, "up"])
    for (ns, ifname), want in t.vnics().items():
        host.exec(["ip", "link", "add", want["peer"], "type", "veth", "peer", "name", ifname, "netns", ns])
        host.exec(["ip", "link", "set", want["peer"], "master", t.bridge, "up"])
        host.exec(["ip", "-n", ns, "link", "set", "lo", "up"])
        host.exec(["ip", "-n", ns, "link", "set", ifname, "up"])
        for cidr in want["ips"]:
            host.exec(["ip", "-n", ns, "addr", "add", cidr, "dev", ifname])
    return t


@dataclass
class LxbHost:
    network_id: str = "5e1f1cbe-3b85-4b38-a7e0-0b6d1d9b2f31"
    vni: int = 1001
    port: str = "11112222-3333-4444-8555-666677778888"

    @property
    def bridge(self) -> str:
        return "brq" + self.network_id[:11]

    @property
    def tap(self) -> str:
        return "tap" + self.port[:11]

    @property
    def vxlan(self) -> str:
        return f"vxlan-{self.vni}"


def build_lxb_host(host: TestHost, remote_ips: Sequence[str], topo: LxbHost | None = None) -> LxbHost:
    t = topo or LxbHost()
    host.exec(["ip", "link", "add", t.bridge, "type", "bridge"])
    host.exec(["ip", "tuntap", "add", "dev", t.tap, "mode", "tap"])
    host.exec(["ip", "link", "set", t.tap, "master", t.bridge, "up"])
    host.exec(["ip", "link", "add", t.vxlan, "type", "vxlan", "id", str(t.vni), "local", host.ip, "dev", "eth0",
               "dstport", "4789", "nolearning"])
    host.exec(["ip", "link", "set", t.vxlan, "master", t.bridge, "up"])
    host.exec(["ip", "link", "set", t.bridge, "up"])
    for remote in remote_ips:
        host.exec(["bridge", "fdb", "append", "00:00:00:00:00:00", "dev", t.vxlan, "dst", remote])
    return t


def replace_tool(host: TestHost, tool: str, script: str) -> None:
    """Make ``tool`` on this host (its own mount namespace only) run ``script`` instead: a host whose
    tool is broken or of an unknown version, without touching the machine's real binary."""
    path = shutil.which(tool)
    assert path is not None, f"{tool} is not installed"
    fake = host.dir / f"replaced-{tool}"
    fake.write_text("#!/bin/sh\n" + script + "\n")
    fake.chmod(0o755)
    host.exec(["mount", "--bind", str(fake), path])
