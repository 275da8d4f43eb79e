"""Host-layer links and cliques from a whole scan of real namespace hosts (tests/hosttopo.py) and a
fake OpenStack over HTTP, into a real SQLite store: the done-when of the host layer.

Compute-000 gets, besides its hybrid-plug qbr/qvb/qvo into br-int and VXLAN ports on br-tun, an
instance-like vNIC: a namespace interface whose host-side veth peer is enslaved to the qbr bridge.
Its clique must walk vNIC -> bridge -> vEdge -> OTEP -> pNIC -> network, all read from the tools.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.scan import Scanner, ScanOptions, ScanSummary
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, ScanStatus, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.fakecloud import FakeCloud, FakeCloudServer
from tests.hostbed import host_bed
from tests.hosttopo import (
    LxbHost,
    NetworkNode,
    OvsCompute,
    build_lxb_host,
    build_network_node,
    build_ovs_compute,
    missing_requirements,
    new_host,
    start_ovs,
)
from tests.integration.test_host_scan import C0, C1, CONTROLLER, SIZE
from tests.nsfacts import NsFacts

pytestmark = [
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary"),
]

ENV = "hostlinks"
NS = "qlbaas-0c0ffee0-1111-4222-8333-444455556666"  # a namespace the vservice fetcher maps (service "other")
INSIDE, OUTSIDE = "ns-0c0ffee0-11", "tap0c0ffee0-11"


class Rig:
    def __init__(self, store: Store, box: SecretBox, facts: NsFacts, cloud: FakeCloud, hosts: dict[str, Any]):
        self.store, self.box, self.facts, self.cloud, self.hosts = store, box, facts, cloud, hosts

    def scan(self) -> ScanSummary:
        summary = Scanner(self.store, self.box, ENV, ScanOptions(), hosts=self.facts).run()
        assert summary.status == ScanStatus.COMPLETED.value, summary.errors
        return summary

    def links(self, link_type: str) -> dict[tuple[str, str], dict[str, Any]]:
        return {(lk["source_id"], lk["target_id"]): lk for lk in self.store.find_links(ENV, link_types=[link_type])}

    def clique(self, focal: str) -> dict[str, Any]:
        found = self.store.find_cliques(ENV, focal_point=focal)
        assert len(found) == 1, f"no clique for {focal}"
        return found[0]


def network_node_of(cloud: FakeCloud) -> tuple[NetworkNode, str]:
    """The controller's namespaces as neutron would have made them for this cloud, and the tenant cidr."""
    region = next(iter(cloud.regions))
    nets = cloud.items("networks", region)
    ext = next(n for n in nets if n.get("router:external"))
    tenant = next(n for n in nets if not n.get("router:external"))
    cidr = {s["network_id"]: s["cidr"] for s in cloud.items("subnets", region)}
    ports = {p["device_owner"]: p["id"] for p in cloud.items("ports", region)}
    router = cloud.items("routers", region)[0]
    node = NetworkNode(network_id=tenant["id"], router_id=router["id"], external_network_id=ext["id"],
                       dhcp_port=ports["network:dhcp"], router_port=ports["network:router_interface"],
                       gateway_port=ports["network:router_gateway"], cidr=cidr[tenant["id"]],
                       external_cidr=cidr[ext["id"]])
    return node, cidr[tenant["id"]]


def add_instance_like_vnic(host: Any, bridge: str, cidr: str) -> None:
    """A namespace interface whose host-side veth peer is enslaved to ``bridge``, as an instance's tap."""
    net = ipaddress.ip_network(cidr)
    host.exec(["ip", "netns", "add", NS])
    host.exec(["ip", "link", "add", OUTSIDE, "type", "veth", "peer", "name", INSIDE, "netns", NS])
    host.exec(["ip", "link", "set", OUTSIDE, "master", bridge, "up"])
    host.exec(["ip", "-n", NS, "link", "set", INSIDE, "up"])
    host.exec(["ip", "-n", NS, "addr", "add", f"{net[50]}/{net.prefixlen}", "dev", INSIDE])


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Any]:
    with host_bed("hl") as bed, FakeCloudServer(FakeCloud(SIZE)) as server:
        store = open_store(f"sqlite:///{tmp_path}/s.db")

        def make(mechanism: str) -> Rig:
            box = SecretBox(tmp_path / "k")
            add_environment(store, box, EnvironmentConfig.model_validate({
                "name": ENV, "distribution": "Stock", "mechanism_drivers": [mechanism], "type_drivers": "vxlan",
                "configuration": [server.openstack_section(project="admin")],
            }))
            hosts = {name: new_host(bed, name) for name in (CONTROLLER, C0, C1)}
            # a port of the tenant network bound to compute-000, as neutron binds an instance's port
            node, _ = network_node_of(server.cloud)
            server.cloud.update("ports", node.dhcp_port, **{"binding:host_id": C0})
            return Rig(store, box, NsFacts(hosts), server.cloud, hosts)

        yield make
        store.close()


@pytest.fixture
def rig(rig_factory: Any) -> Rig:
    """OVS hosts: the controller's namespaces on a Linux bridge, two hybrid-plug VXLAN computes."""
    rig: Rig = rig_factory("OVS")
    hosts = rig.hosts
    for host in hosts.values():
        start_ovs(host)
    node, tenant_cidr = network_node_of(rig.cloud)
    build_network_node(hosts[CONTROLLER], node)
    hosts[CONTROLLER].exec(["ovs-vsctl", "add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev"])
    topo = build_ovs_compute(hosts[C0], [hosts[C1].ip])
    build_ovs_compute(hosts[C1], [hosts[C0].ip])
    add_instance_like_vnic(hosts[C0], topo.qbr, tenant_cidr)
    return rig


def test_scan_links_the_host_layer_and_the_instance_like_vnic_clique_walks_to_the_network(rig: Rig) -> None:
    rig.scan()
    node, _ = network_node_of(rig.cloud)
    topo = OvsCompute()
    tenant = node.network_id
    vnic = stable_id(C0, NS, INSIDE)
    qbr, ovs, otep, eth0 = (stable_id(C0, topo.qbr), stable_id(C0, "OVS"), stable_id(C0, "otep", "vxlan"),
                            stable_id(C0, "eth0"))

    # the links of the path, each found from what the tools printed
    assert (stable_id(C0, NS), vnic) in rig.links("vservice-vnic")
    assert rig.links("vnic-vconnector")[(vnic, qbr)]["attributes"] == {"network": tenant}
    hybrid = rig.links("vconnector-vedge")[(qbr, ovs)]
    assert hybrid["attributes"]["interface"] == topo.qvb and hybrid["attributes"]["port"] == topo.qvo
    assert hybrid["attributes"]["vlan"] == topo.tag_hybrid
    assert set(rig.links("vedge-otep")) == {(stable_id(h, "OVS"), stable_id(h, "otep", "vxlan")) for h in (C0, C1)}
    assert set(rig.links("otep-host_pnic")) == {(stable_id(h, "otep", "vxlan"), stable_id(h, "eth0"))
                                                for h in (C0, C1)}
    assert rig.links("otep-host_pnic")[(otep, eth0)]["attributes"]["ip_address"] == rig.hosts[C0].ip
    assert set(rig.links("host_pnic-network")) == {(eth0, tenant)}  # only compute-000 has a bound port
    # the controller's namespace vNICs: their services, and the Linux bridge their peers are on
    controller_vnics = {stable_id(CONTROLLER, ns, ifname) for ns, ifname in node.vnics()}
    assert {v for _, v in rig.links("vservice-vnic")} == controller_vnics | {vnic}
    assert {(v, stable_id(CONTROLLER, node.bridge)) for v in controller_vnics} <= set(rig.links("vnic-vconnector"))
    states = {lk["state"] for lk in rig.store.find_links(ENV)
              if lk["source_type"] in ("vnic", "vconnector", "vedge", "otep", "host_pnic", "vservice")}
    assert states == {"up"}

    # the clique of the instance-like vNIC, built by the scan and stored
    clique = rig.clique(vnic)
    assert clique["clique_type"] == "ovs-vxlan-vnic"
    assert clique["constraints"] == {"network": tenant}
    assert {vnic, qbr, ovs, otep, eth0, tenant} <= set(clique["nodes"])
    by_pair = {(lk["source_id"], lk["target_id"]): lk["link_type"] for lk in clique["links_detailed"]}
    assert by_pair[(vnic, qbr)] == "vnic-vconnector"
    assert by_pair[(qbr, ovs)] == "vconnector-vedge"
    assert by_pair[(ovs, otep)] == "vedge-otep"
    assert by_pair[(otep, eth0)] == "otep-host_pnic"
    assert by_pair[(eth0, tenant)] == "host_pnic-network"
    assert not [n for n in clique["nodes"] if n.startswith(C1) or n.startswith(CONTROLLER)]

    # a pNIC the host reports down: its links go down with it on the next scan
    rig.hosts[C1].exec(["ip", "link", "set", "eth0", "down"])
    rig.scan()
    c1 = rig.links("otep-host_pnic")[(stable_id(C1, "otep", "vxlan"), stable_id(C1, "eth0"))]
    assert c1["state"] == "down"
    assert rig.links("otep-host_pnic")[(otep, eth0)]["state"] == "up"


def test_linux_bridge_scan_walks_vnic_bridge_vxlan_otep_pnic_network(rig_factory: Any) -> None:
    rig: Rig = rig_factory("LXB")
    node, tenant_cidr = network_node_of(rig.cloud)
    topo = LxbHost(network_id=node.network_id)
    build_lxb_host(rig.hosts[C0], [rig.hosts[C1].ip], topo)
    build_lxb_host(rig.hosts[C1], [rig.hosts[C0].ip], topo)
    add_instance_like_vnic(rig.hosts[C0], topo.bridge, tenant_cidr)
    rig.scan()
    vnic, brq = stable_id(C0, NS, INSIDE), stable_id(C0, topo.bridge)
    otep, eth0 = stable_id(C0, "otep", topo.vxlan), stable_id(C0, "eth0")
    assert set(rig.links("otep-vconnector")) == {(stable_id(h, "otep", topo.vxlan), stable_id(h, topo.bridge))
                                                 for h in (C0, C1)}
    assert set(rig.links("otep-host_pnic")) == {(stable_id(h, "otep", topo.vxlan), stable_id(h, "eth0"))
                                                for h in (C0, C1)}
    assert rig.links("vedge-otep") == {} and rig.links("vconnector-vedge") == {}
    clique = rig.clique(vnic)
    assert clique["clique_type"] == "lxb-vxlan-vnic"
    by_pair = {(lk["source_id"], lk["target_id"]): lk["link_type"] for lk in clique["links_detailed"]}
    assert by_pair[(vnic, brq)] == "vnic-vconnector"
    assert by_pair[(otep, brq)] == "otep-vconnector"
    assert by_pair[(otep, eth0)] == "otep-host_pnic"
    assert by_pair[(eth0, node.network_id)] == "host_pnic-network"
    assert not [n for n in clique["nodes"] if n.startswith(C1)]
