"""Host parsers on outputs captured from the real tools (tests/fixtures/host/README.md), and on garbage."""

from __future__ import annotations

from pathlib import Path

import pytest

from stackmap.discovery.host import parsers as P

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "host"


def text(name: str) -> str:
    return (FIX / name).read_text()


def links(name: str) -> dict[str, P.Iface]:
    return {link["ifname"]: link for link in P.parse_ip_addr(text(name))}


def test_ovs_host_links_kinds_masters_peers_and_addresses() -> None:
    got = links("ovs_host.ip_addr.json")
    assert got["eth0"]["kind"] == "veth" and got["eth0"]["peer_netnsid"] == 0
    assert P.global_cidrs(got["eth0"]) == ["192.168.77.11/24"]
    assert got["qbr1234abcd-56"]["kind"] == "bridge"
    assert got["qvb1234abcd-56"]["master"] == "qbr1234abcd-56" and got["qvb1234abcd-56"]["peer"] == "qvo1234abcd-56"
    assert got["tap1234abcd-56"]["kind"] == "tun" and got["tap1234abcd-56"]["master"] == "qbr1234abcd-56"
    assert got["qvo1234abcd-56"]["state"] == "up" and got["tap1234abcd-56"]["state"] == "down"
    # link-local IPv6 is on the bridge but is not a mapped address
    assert P.global_cidrs(got["qbr1234abcd-56"]) == []


def test_pnics_are_hardware_bonds_and_uplink_veths_not_service_veths() -> None:
    ovs = links("ovs_host.ip_addr.json")
    assert {n for n, lk in ovs.items() if P.pnic_type(lk, set())} == {"eth0"}
    net = links("net_host.ip_addr.json")
    ns_ids = {ns["id"] for ns in P.parse_netns(text("net_host.netns.json")) if ns["id"] is not None}
    assert ns_ids == {1, 2}
    # the taps are veths into qdhcp-/qrouter- namespaces: service vNICs, not NICs
    assert {n for n, lk in net.items() if P.pnic_type(lk, ns_ids)} == {"eth0"}
    lxb = links("lxb_host.ip_addr.json")
    assert {n: P.pnic_type(lk, set()) for n, lk in lxb.items() if P.pnic_type(lk, set())} == \
        {"eth0": "ethernet", "eth1": "ethernet"}
    bond = dict(lxb["eth0"], kind="bond", peer_netnsid=None)
    assert P.pnic_type(bond, set()) == "bond"


def test_lxb_vxlan_device_facts() -> None:
    vx = links("lxb_host.ip_addr.json")["vxlan-1001"]
    assert vx["kind"] == "vxlan" and vx["master"] == "brq5e1f1cbe-3b"
    assert vx["info"]["id"] == 1001 and vx["info"]["local"] == "192.168.77.31" and vx["info"]["port"] == 4789
    assert vx["state"] == "up"  # operstate UNKNOWN, flags UP + LOWER_UP


def test_namespace_vnics_and_addresses() -> None:
    router = links("net_host.ns_qrouter.ip_addr.json")
    assert P.global_cidrs(router["qg-f0e1d2c3-b4"]) == ["172.24.4.10/24", "172.24.4.11/32"]
    assert P.global_cidrs(router["qr-a1b2c3d4-e5"]) == ["10.0.0.1/24", "2001:db8::1/64"]
    dhcp = links("net_host.ns_qdhcp.ip_addr.json")
    assert dhcp["ns5e1f1cbe-3b"]["peer_netnsid"] is not None and dhcp["ns5e1f1cbe-3b"]["peer_index"]


def test_link_state_from_operstate_and_flags() -> None:
    assert P.link_state("UP") == "up"
    assert P.link_state("DOWN", ["UP"]) == "down"
    assert P.link_state("UNKNOWN", ["BROADCAST", "UP", "LOWER_UP"]) == "up"
    assert P.link_state("UNKNOWN", ["BROADCAST"]) == "down"
    assert P.link_state("UNKNOWN", ["UP"]) == "unknown"


def test_netns_text_and_json_agree() -> None:
    assert P.parse_netns(text("net_host.netns.txt")) == P.parse_netns(text("net_host.netns.json"))
    assert P.parse_netns("") == []


def test_speeds() -> None:
    speeds = P.parse_speeds(text("ovs_host.speed.txt"))
    assert speeds["eth0"] == 10000
    assert P.parse_speeds("/sys/class/net/eno1/speed:-1\nnoise\n") == {"eno1": None}


def test_ovs_switch_bridges_ports_tags_and_tunnels() -> None:
    sw = P.parse_ovs(text("ovs_host.ovs_bridges.json"), text("ovs_host.ovs_ports.json"),
                     text("ovs_host.ovs_interfaces.json"))
    assert set(sw["bridges"]) == {"br-int", "br-tun", "br-ex"}
    assert sw["bridges"]["br-int"] == {"datapath_type": "netdev",
                                       "ports": ["br-int", "patch-tun", "qvo1234abcd-56", "tap9876fedc-ba"]}
    ports = sw["ports"]
    assert ports["qvo1234abcd-56"]["tag"] == 3 and ports["qvo1234abcd-56"]["type"] == ""
    assert ports["tap9876fedc-ba"]["tag"] == 4 and ports["tap9876fedc-ba"]["type"] == "internal"
    assert ports["vxlan-c0a84d0c"] == {"bridge": "br-tun", "type": "vxlan", "tag": None,
                                       "options": {"remote_ip": "192.168.77.12", "local_ip": "192.168.77.11",
                                                   "key": "flow"},
                                       "mac_address": ports["vxlan-c0a84d0c"]["mac_address"], "state": "up"}
    assert ports["gre-c0a84d0d"]["type"] == "gre" and ports["gre-c0a84d0d"]["options"]["remote_ip"] == "192.168.77.13"
    assert ports["patch-tun"]["options"] == {"peer": "patch-int"}


def test_vpp_published_outputs() -> None:
    ints = P.parse_vpp_interfaces(text("vpp.show_int.txt"))
    assert set(ints) == {"BondEthernet0", "BondEthernet0.1099", "TenGigabitEthernete/0/0",
                         "TenGigabitEthernete/0/1", "VirtualEthernet0/0/0", "local0"}
    assert ints["local0"]["state"] == "down" and ints["TenGigabitEthernete/0/0"]["bond_slave"]
    docs = P.parse_vpp_interfaces(text("vpp.show_int_fdio_docs.txt"))
    assert docs["TenGigabitEthernet86/0/1"] == {"index": 2, "state": "down", "bond_slave": False}
    hw = P.parse_vpp_hardware(text("vpp.show_hardware.txt"))
    assert hw["BondEthernet0"]["mac_address"] == "3c:fd:fe:a3:49:44"
    assert hw["TenGigabitEthernete/0/0"]["speed"] == 10000 and hw["TenGigabitEthernete/0/0"]["mtu"] == 9216
    assert P.parse_vpp_hardware("  Name  Idx  Link  Hardware\navf-0/5e/2/0 1 up avf-0/5e/2/0\n"
                                "  Link speed: 40 Gbps\n")["avf-0/5e/2/0"]["speed"] == 40000


def test_domain_xml_interfaces_and_port_ids() -> None:
    dom = P.parse_domain_xml(text("libvirt.domain.xml"))
    assert dom["name"] == "instance-00000007"
    taps = {i["target"]: i for i in dom["interfaces"]}
    assert taps["tap1234abcd-56"]["bridge"] == "qbr1234abcd-56"
    assert taps["tap9876fedc-ba"]["mac_address"] == "fa:16:3e:5a:7b:02"
    assert P.port_id_for_tap("tap1234abcd-56", dom["port_ids"]) == "1234abcd-5678-4e9f-8a7b-6c5d4e3f2a1b"
    assert P.port_id_for_tap("vnet0", dom["port_ids"]) is None


@pytest.mark.parametrize("parse", [
    P.parse_ip_addr, P.parse_netns, P.parse_vpp_interfaces, P.parse_vpp_hardware, P.parse_domain_xml,
    lambda t: P.parse_ovs(t, t, t),
])
@pytest.mark.parametrize("garbage", [
    "Segmentation fault", "{\"half\": ", "[1, 2, 3]", "<html><body>503</body></html>", "\x00\xff binary",
    "{\"headings\": [\"name\"], \"data\": [[1, 2]]}",
])
def test_garbage_is_a_parse_error_never_a_crash(parse, garbage: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(P.ParseError):
        parse(garbage)


def test_domain_xml_refuses_entities() -> None:
    bomb = '<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaa">]><domain><name>&a;</name></domain>'
    with pytest.raises(P.ParseError, match="declarations"):
        P.parse_domain_xml(bomb)


def test_vpp_vedge_from_published_output() -> None:
    """VPP cannot run here: the fetcher's document from the published VPP outputs."""
    from stackmap.discovery.host import commands as C
    from stackmap.discovery.host.facts import CommandOutput, HostFacts
    from stackmap.discovery.host.fetchers import CliVedgesVpp

    facts = HostFacts("h1", outputs={
        C.VPP_INTERFACES: CommandOutput(C.VPP_INTERFACES, C.COMMANDS[C.VPP_INTERFACES], 0, text("vpp.show_int.txt")),
        C.VPP_HARDWARE: CommandOutput(C.VPP_HARDWARE, C.COMMANDS[C.VPP_HARDWARE], 0, text("vpp.show_hardware.txt")),
    })
    [vedge] = CliVedgesVpp().build("h1", [{"id": "h1|vedges"}], facts, None)  # type: ignore[arg-type]
    assert vedge["id"] == "h1|VPP" and vedge["agent_type"] == "VPP" and vedge["parent_id"] == "h1|vedges"
    assert vedge["ports"]["TenGigabitEthernete/0/0"] == {
        "index": 2, "state": "up", "bond_slave": True, "mac_address": "3c:fd:fe:a3:49:44", "speed": 10000,
        "mtu": 9216, "hardware": "TenGigabitEthernete/0/0"}
    assert vedge["ports"]["VirtualEthernet0/0/0"]["mac_address"] is None  # not in the published hardware list
