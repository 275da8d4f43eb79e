"""Host fetchers against real hosts: network + mount namespaces with real bridges, veths, taps,
VXLAN devices, qdhcp-/qrouter- namespaces and a userspace Open vSwitch private to each host.

The expected objects come from what the topology builders created (tests/hosttopo.py), never from a
previous run. Commands run through ``NsFacts`` (nsenter into each host), the stand-in for SSH.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.api.fetchers import Doc, FetchContext
from stackmap.discovery.api.resources import PORTS, SUBNETS, ResourceCache
from stackmap.discovery.host import fetchers as F
from stackmap.model import stable_id
from tests.hostbed import HostBed, TestHost, host_bed
from tests.hosttopo import (
    NetworkNode,
    build_lxb_host,
    build_network_node,
    build_ovs_compute,
    kill_host,
    missing_requirements,
    new_host,
    replace_tool,
    start_ovs,
    stop_ovs,
)
from tests.nsfacts import NsFacts, NsFactsWithoutPerHost

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))

REGION = "r1"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "host"


@pytest.fixture
def bed() -> Iterator[HostBed]:
    with host_bed("hf") as hosts:
        yield hosts


class Walk:
    """Places fetcher output the way the engine does (type, registered by id) for the next level."""

    def __init__(self, hosts: dict[str, TestHost], cache: ResourceCache | None = None,
                 source: type[NsFacts] = NsFacts) -> None:
        self.facts = source(hosts)
        self.ctx = FetchContext("env", cache or ResourceCache(None, [REGION], closed=True),  # type: ignore[arg-type]
                                {}, hosts=self.facts)
        for name in hosts:
            self.place("host", [{"id": name, "region": REGION}])

    def place(self, otype: str, docs: list[Doc]) -> list[Doc]:
        for doc in docs:
            doc["type"] = otype
            self.ctx.objects[doc["id"]] = doc
        return docs

    def folders(self, owners: list[Doc], types_name: str) -> list[Doc]:
        return self.place(f"{types_name}_folder", [{"id": stable_id(o["id"], types_name), "parent_id": o["id"]}
                                                   for o in owners])

    def host_docs(self) -> list[Doc]:
        return [d for d in self.ctx.objects.values() if d["type"] == "host"]

    def fetch(self, fetcher: type[F.Fetcher], otype: str, parents: list[Doc]) -> dict[str, Doc]:
        return {d["id"]: d for d in self.place(otype, fetcher().fetch(parents, self.ctx))}

    def failures(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for failure in self.ctx.host_failures:
            out.setdefault(failure.host, []).append(failure.message)
        return out


def test_ovs_compute_hosts_pnics_vconnectors_vedges_oteps(bed: HostBed) -> None:
    a, b = new_host(bed, "compute-a"), new_host(bed, "compute-b")
    start_ovs(a)
    start_ovs(b)
    ta = build_ovs_compute(a, [b.ip], gre_remote_ips=[b.ip])
    tb = build_ovs_compute(b, [a.ip])
    walk = Walk({"compute-a": a, "compute-b": b})
    hosts = walk.host_docs()

    pnics = walk.fetch(F.CliHostPnics, "host_pnic", walk.folders(hosts, "pnics"))
    assert set(pnics) == {stable_id("compute-a", "eth0"), stable_id("compute-b", "eth0")}
    nic = pnics[stable_id("compute-a", "eth0")]
    mac = a.exec(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    assert nic["mac_address"] == mac and nic["ip_addresses"] == [f"{a.ip}/24"] and nic["state"] == "up"
    assert nic["pnic_type"] == "ethernet" and nic["mtu"] == 1500 and nic["local_name"] == "eth0"
    assert nic["speed"] == int(a.exec(["cat", "/sys/class/net/eth0/speed"]).stdout)

    bridges = walk.fetch(F.CliVconnectors, "vconnector", walk.folders(hosts, "vconnectors"))
    qbr = bridges[stable_id("compute-a", ta.qbr)]
    assert qbr["interfaces_names"] == sorted([ta.qvb, ta.tap])
    assert qbr["interfaces"][ta.qvb]["peer"] == ta.qvo  # the hybrid plug's way onto br-int
    assert qbr["state"] == "up" and qbr["host"] == "compute-a"
    assert stable_id("compute-b", tb.qbr) in bridges

    vedges = walk.fetch(F.CliVedgesOvs, "vedge", walk.folders(hosts, "vedges"))
    assert set(vedges) == {stable_id("compute-a", "OVS"), stable_id("compute-b", "OVS")}
    ovs = vedges[stable_id("compute-a", "OVS")]
    assert ovs["agent_type"] == "Open vSwitch agent"
    assert {n: br["datapath_type"] for n, br in ovs["bridges"].items()} == {"br-int": "netdev", "br-tun": "netdev"}
    assert set(ovs["bridges"]["br-int"]["ports"]) == {"br-int", "patch-tun", ta.qvo, ta.internal}
    assert ovs["ports"][ta.qvo]["tag"] == ta.tag_hybrid and ovs["ports"][ta.internal]["tag"] == ta.tag_internal
    assert ovs["ports"][ta.internal]["type"] == "internal"
    tunnel = ta.vxlan_port(b.ip)
    gre = "gre-" + tunnel.removeprefix("vxlan-")
    assert ovs["tunnel_ports"] == sorted([tunnel, gre]) and ovs["ports"][gre]["type"] == "gre"
    assert ovs["ports"][tunnel]["options"]["remote_ip"] == b.ip and ovs["ports"][tunnel]["type"] == "vxlan"

    oteps = walk.fetch(F.CliOtepsOvs, "otep", list(vedges.values()))
    otep = oteps[stable_id("compute-a", "otep", "vxlan")]
    assert otep["ip_address"] == a.ip and otep["remote_ips"] == [b.ip] and otep["udp_port"] == 4789
    assert otep["ports"] == [tunnel] and otep["parent_id"] == ovs["id"]
    assert oteps[stable_id("compute-b", "otep", "vxlan")]["remote_ips"] == [a.ip]
    gre_otep = oteps[stable_id("compute-a", "otep", "gre")]
    assert (gre_otep["overlay_type"], gre_otep["ip_address"], gre_otep["remote_ips"], gre_otep["ports"],
            gre_otep["udp_port"]) == ("gre", a.ip, [b.ip], [gre], None)
    assert set(oteps) == {stable_id("compute-a", "otep", "vxlan"), stable_id("compute-a", "otep", "gre"),
                          stable_id("compute-b", "otep", "vxlan")}
    assert walk.failures() == {}
    # one collect() per level for all hosts of the level
    assert [hosts_ for hosts_, _ in walk.facts.calls] == [["compute-a", "compute-b"]] * 3


def test_network_node_vservices_and_their_vnics(bed: HostBed) -> None:
    node = new_host(bed, "network")
    topo = build_network_node(node, NetworkNode())
    subnets = [{"id": "sub-int", "network_id": topo.network_id, "cidr": topo.cidr},
               {"id": "sub-ext", "network_id": topo.external_network_id, "cidr": topo.external_cidr}]
    ports = [{"id": p, "network_id": n} for p, n in ((topo.dhcp_port, topo.network_id),
                                                      (topo.router_port, topo.network_id),
                                                      (topo.gateway_port, topo.external_network_id))]
    cache = ResourceCache(None, [REGION], closed=True)  # type: ignore[arg-type]
    cache.data[(SUBNETS.name, REGION)] = subnets
    cache.data[(PORTS.name, REGION)] = ports
    walk = Walk({"network": node}, cache)

    services = walk.fetch(F.CliVservices, "vservice", walk.folders(walk.host_docs(), "vservices"))
    dhcp = services[stable_id("network", topo.dhcp_ns)]
    router = services[stable_id("network", topo.router_ns)]
    assert set(services) == {dhcp["id"], router["id"]}
    assert (dhcp["service_type"], dhcp["local_service_id"], dhcp["network"]) == ("dhcp", topo.network_id,
                                                                                  [topo.network_id])
    assert router["service_type"] == "router" and router["local_service_id"] == topo.router_id
    assert router["network"] == sorted([topo.network_id, topo.external_network_id])  # matched by cidr

    vnics = walk.fetch(F.CliVserviceVnics, "vnic", walk.folders(list(services.values()), "vnics"))
    expected = {stable_id("network", ns, ifname): want for (ns, ifname), want in topo.vnics().items()}
    assert set(vnics) == set(expected)
    for vid, want in expected.items():
        vnic = vnics[vid]
        assert vnic["vnic_type"] == "vservice_vnic" and vnic["state"] == "up"
        assert vnic["ip_addresses"] == want["ips"] and vnic["peer"] == want["peer"]
        assert vnic["master"] == topo.bridge and vnic["port_id"] == want["port"]
        mac = node.exec(["ip", "-n", vnic["namespace"], "-br", "link", "show", vnic["local_name"]]).stdout.split()[2]
        assert vnic["mac_address"] == mac
    assert {v["network"] for v in vnics.values()} == {topo.network_id, topo.external_network_id}
    # the vnic level reused the namespaces the vservice level read: no third read of them
    assert len(walk.facts.calls) == 3 and walk.facts.calls[2][1] == {"network": ["ip_addr"]}
    assert walk.failures() == {}


def test_a_source_without_per_host_commands_gives_the_same_vnics(bed: HostBed) -> None:
    """The fetchers fall back to one call per command set with a source of the original contract."""
    a, b = new_host(bed, "net-a"), new_host(bed, "net-b")
    topo_a = build_network_node(a)
    topo_b = build_network_node(b, NetworkNode(network_id="0b0b0b0b-0000-4000-8000-000000000001",
                                               router_id="0b0b0b0b-0000-4000-8000-000000000002"))
    walk = Walk({"net-a": a, "net-b": b}, source=NsFactsWithoutPerHost)
    services = walk.fetch(F.CliVservices, "vservice", walk.folders(walk.host_docs(), "vservices"))
    assert len(services) == 4
    vnics = walk.fetch(F.CliVserviceVnics, "vnic", walk.folders(list(services.values()), "vnics"))
    assert set(vnics) == {stable_id(h, ns, ifname) for h, t in (("net-a", topo_a), ("net-b", topo_b))
                          for ns, ifname in t.vnics()}
    assert walk.failures() == {}
    assert [hosts for hosts, _ in walk.facts.calls] == [["net-a", "net-b"], ["net-a"], ["net-b"], ["net-a", "net-b"]]


def test_linux_bridge_host_vconnector_and_vxlan_otep(bed: HostBed) -> None:
    host, peer = new_host(bed, "lxb"), new_host(bed, "lxb-peer")
    topo = build_lxb_host(host, [peer.ip])
    walk = Walk({"lxb": host})
    bridges = walk.fetch(F.CliVconnectors, "vconnector", walk.folders(walk.host_docs(), "vconnectors"))
    brq = bridges[stable_id("lxb", topo.bridge)]
    assert brq["interfaces_names"] == sorted([topo.tap, topo.vxlan])
    assert brq["interfaces"][topo.vxlan]["kind"] == "vxlan"
    oteps = walk.fetch(F.CliOtepsLxb, "otep", list(bridges.values()))
    otep = oteps[stable_id("lxb", "otep", topo.vxlan)]
    assert otep["overlay_type"] == "vxlan" and otep["ip_address"] == host.ip and otep["udp_port"] == 4789
    assert otep["segmentation_id"] == topo.vni and otep["vconnector"] == topo.bridge
    assert otep["remote_ips"] == [peer.ip] and otep["ports"] == [topo.vxlan] and otep["parent_id"] == brq["id"]
    pnics = walk.fetch(F.CliHostPnics, "host_pnic", walk.folders(walk.host_docs(), "pnics"))
    assert list(pnics) == [stable_id("lxb", "eth0")]  # the tap, bridge and vxlan device are not NICs


def test_instance_vnics_from_the_domain_xml(bed: HostBed) -> None:
    """libvirtd cannot run here: on this host ``virsh`` prints the documented domain XML sample
    (tests/fixtures/host/libvirt.domain.xml); the taps it names are real devices on the host."""
    host = new_host(bed, "kvm")
    start_ovs(host)
    topo = build_ovs_compute(host, [])
    replace_tool(host, "virsh", f"cat {FIXTURES / 'libvirt.domain.xml'}")
    walk = Walk({"kvm": host})
    instance = walk.place("instance", [{"id": "3f1a6a3e-5b1c-4e7e-9a59-2d7c1e8b4f10", "host": "kvm",
                                        "local_name": "instance-00000007"}])
    vnics = walk.fetch(F.CliInstanceVnics, "vnic", walk.folders(instance, "vnics"))
    tap = vnics[stable_id("kvm", topo.tap)]
    assert tap["vnic_type"] == "instance_vnic" and tap["instance_id"] == instance[0]["id"]
    assert tap["master"] == topo.qbr and tap["port_id"] == topo.port_hybrid
    assert tap["state"] == "down"  # a tap nobody opened has no carrier, and the fetcher says so
    internal = vnics[stable_id("kvm", topo.internal)]
    assert internal["master"] is None and internal["port_id"] == topo.port_internal
    assert internal["mac_address"] == "fa:16:3e:5a:7b:02"
    assert walk.facts.calls[0][1]["kvm"] == ["dumpxml:instance-00000007", "ip_addr"]


def _ovs_pair(bed: HostBed) -> tuple[TestHost, TestHost]:
    good, bad = new_host(bed, "good"), new_host(bed, "bad")
    for h in (good, bad):
        start_ovs(h)
        build_ovs_compute(h, [])
    return good, bad


def _vedges(walk: Walk) -> dict[str, Doc]:
    return walk.fetch(F.CliVedgesOvs, "vedge", walk.folders(walk.host_docs(), "vedges"))


def test_a_host_whose_switch_is_down_is_a_per_host_error(bed: HostBed) -> None:
    good, bad = _ovs_pair(bed)
    stop_ovs(bad)
    walk = Walk({"good": good, "bad": bad})
    assert set(_vedges(walk)) == {stable_id("good", "OVS")}
    failures = walk.failures()
    assert list(failures) == ["bad"]
    assert "ovs-vsctl" in failures["bad"][0] and "database connection failed" in failures["bad"][0]
    assert walk.ctx.host_failures[0].types == ("vedge",)


def test_garbage_output_is_a_per_host_error(bed: HostBed) -> None:
    good, bad = _ovs_pair(bed)
    replace_tool(bad, "ovs-vsctl", "echo 'ovs-vsctl (Open vSwitch) 9.9 <<unexpected banner>>'")
    replace_tool(bad, "ip", "printf '{\"truncated\": [1, 2'")
    walk = Walk({"good": good, "bad": bad})
    assert set(_vedges(walk)) == {stable_id("good", "OVS")}
    pnics = walk.fetch(F.CliHostPnics, "host_pnic", walk.folders(walk.host_docs(), "pnics"))
    assert set(pnics) == {stable_id("good", "eth0")}
    messages = walk.failures()["bad"]
    assert any("ovs-vsctl list Bridge: not JSON" in m for m in messages)
    assert any("ip -j -d addr: not JSON" in m for m in messages)
    assert "good" not in walk.failures()


def test_a_missing_command_and_an_unreachable_host(bed: HostBed) -> None:
    if shutil.which("vppctl"):
        pytest.skip("vppctl is installed here: it cannot serve as the missing command")
    good, bad = _ovs_pair(bed)
    gone = new_host(bed, "gone")
    kill_host(gone)
    walk = Walk({"good": good, "bad": bad, "gone": gone})
    vpp = walk.fetch(F.CliVedgesVpp, "vedge", walk.folders(walk.host_docs(), "vedges"))
    assert vpp == {}
    failures = walk.failures()
    assert set(failures) == {"good", "bad", "gone"}
    assert "vppctl" in failures["good"][0] and "exit 127" in failures["good"][0]
    assert "unreachable" in failures["gone"][0]
    walk.ctx.host_failures.clear()
    assert set(_vedges(walk)) == {stable_id("good", "OVS"), stable_id("bad", "OVS")}
    assert list(walk.failures()) == ["gone"]


def test_no_cli_access_reads_nothing_and_keeps_everything() -> None:
    ctx = FetchContext("env", ResourceCache(None, [REGION], closed=True), {})  # type: ignore[arg-type]
    folder: dict[str, Any] = {"id": "h|pnics", "type": "pnics_folder", "parent_id": "h"}
    ctx.objects["h"] = {"id": "h", "type": "host"}
    assert F.CliHostPnics().fetch([folder], ctx) == []
    assert ctx.unread_types == {"host_pnic": "no CLI access to the hosts"} and ctx.host_failures == []
