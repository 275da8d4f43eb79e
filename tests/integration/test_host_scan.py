"""Whole scans with the host layer: a fake OpenStack over HTTP for the APIs, real namespace hosts
(tests/hosttopo.py) for the host commands, a real SQLite store.

The hosts are built from the cloud's own data (its networks, subnets, router and ports), so the
host objects must line up with the API objects. Then hosts break in real ways (a stopped switch, a
host that went away) and the store must keep exactly what could not be read, while everything the
scan did read is pruned as usual.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.scan import Scanner, ScanOptions, ScanSummary
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, ScanStatus, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer
from tests.hostbed import HostBed, TestHost, host_bed
from tests.hosttopo import (
    LxbHost,
    NetworkNode,
    OvsCompute,
    build_lxb_host,
    build_network_node,
    build_ovs_compute,
    kill_host,
    missing_requirements,
    new_host,
    start_ovs,
    stop_ovs,
)
from tests.nsfacts import NsFacts

pytestmark = [
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary"),
]

ENV = "hosts"
SIZE = CloudSize(projects=2, hosts=2, instances=0, networks=1, routers=1, floating_ips=0, security_groups=0,
                 volumes=0, snapshots=0, flavors=1, images=1, aggregates=0, second_region=False)
CONTROLLER, C0, C1 = "r1-controller", "r1-compute-000", "r1-compute-001"
COMMON_FIELDS = {"id", "name", "host", "local_name", "environment", "type", "parent_id", "parent_type"}
AGREED_FIELDS = {
    "host_pnic": {"mac_address", "mtu", "state", "speed", "ip_addresses", "master", "bond_members", "pnic_type"},
    "vnic": {"vnic_type", "mac_address", "state", "ip_addresses", "master", "peer", "namespace", "network",
             "port_id"},
    "vservice": {"service_type", "local_service_id", "network"},
    "vconnector": {"connector_type", "interfaces_names", "mac_address", "state"},
    "vedge": {"agent_type", "bridges", "ports", "tunnel_ports"},
    "otep": {"overlay_type", "ip_address", "udp_port", "remote_ips", "ports"},
}


@dataclass
class HostRig:
    cloud: FakeCloud
    store: Store
    box: SecretBox
    bed: HostBed
    hosts: dict[str, TestHost]
    facts: NsFacts

    def scan(self) -> ScanSummary:
        return Scanner(self.store, self.box, ENV, ScanOptions(), hosts=self.facts).run()

    def objects(self, otype: str) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in self.store.find_objects(ENV, type=otype)}


def network_node_of(cloud: FakeCloud) -> NetworkNode:
    """The controller's namespaces as neutron would have made them for this cloud."""
    region = next(iter(cloud.regions))
    nets = cloud.items("networks", region)
    ext = next(n for n in nets if n.get("router:external"))
    tenant = next(n for n in nets if not n.get("router:external"))
    cidr = {s["network_id"]: s["cidr"] for s in cloud.items("subnets", region)}
    ports = {p["device_owner"]: p["id"] for p in cloud.items("ports", region)}
    router = cloud.items("routers", region)[0]
    return NetworkNode(network_id=tenant["id"], router_id=router["id"], external_network_id=ext["id"],
                       dhcp_port=ports["network:dhcp"], router_port=ports["network:router_interface"],
                       gateway_port=ports["network:router_gateway"], cidr=cidr[tenant["id"]],
                       external_cidr=cidr[ext["id"]])


@pytest.fixture
def rig_factory(tmp_path: Path) -> Iterator[Any]:
    with host_bed("hs") as bed, FakeCloudServer(FakeCloud(SIZE)) as server:
        store = open_store(f"sqlite:///{tmp_path}/s.db")

        def make(mechanism: str) -> HostRig:
            box = SecretBox(tmp_path / "k")
            add_environment(store, box, EnvironmentConfig.model_validate({
                "name": ENV, "distribution": "Stock", "mechanism_drivers": [mechanism], "type_drivers": "vxlan",
                "configuration": [server.openstack_section(project="admin")],
            }))
            hosts = {name: new_host(bed, name) for name in (CONTROLLER, C0, C1)}
            return HostRig(server.cloud, store, box, bed, hosts, NsFacts(hosts))

        yield make
        store.close()


@pytest.fixture
def ovs_rig(rig_factory: Any) -> HostRig:
    rig: HostRig = rig_factory("OVS")
    for host in rig.hosts.values():
        start_ovs(host)
    build_network_node(rig.hosts[CONTROLLER], network_node_of(rig.cloud))
    rig.hosts[CONTROLLER].exec(["ovs-vsctl", "add-br", "br-int", "--", "set", "bridge", "br-int",
                                "datapath_type=netdev"])
    build_ovs_compute(rig.hosts[C0], [rig.hosts[C1].ip])
    build_ovs_compute(rig.hosts[C1], [rig.hosts[C0].ip])
    return rig


def test_ovs_cloud_scan_maps_every_host_object_and_keeps_what_it_cannot_read(ovs_rig: HostRig) -> None:
    rig, node = ovs_rig, network_node_of(ovs_rig.cloud)
    topo = OvsCompute()
    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED.value, summary.errors
    assert rig.objects("host_pnic").keys() == {stable_id(h, "eth0") for h in rig.hosts}
    assert rig.objects("vedge").keys() == {stable_id(h, "OVS") for h in rig.hosts}
    assert rig.objects("otep").keys() == {stable_id(h, "otep", "vxlan") for h in (C0, C1)}
    assert rig.objects("vconnector").keys() == {stable_id(C0, topo.qbr), stable_id(C1, topo.qbr),
                                                stable_id(CONTROLLER, node.bridge)}
    services = rig.objects("vservice")
    assert services[stable_id(CONTROLLER, node.dhcp_ns)]["network"] == [node.network_id]
    assert services[stable_id(CONTROLLER, node.router_ns)]["network"] == sorted([node.network_id,
                                                                                 node.external_network_id])
    vnics = rig.objects("vnic")
    assert vnics.keys() == {stable_id(CONTROLLER, ns, ifname) for ns, ifname in node.vnics()}
    assert {v["port_id"] for v in vnics.values()} == {node.dhcp_port, node.router_port, node.gateway_port}
    # placed under their host's folders, with the walk's paths
    pnic = rig.objects("host_pnic")[stable_id(C0, "eth0")]
    assert pnic["parent_id"] == stable_id(C0, "pnics") and pnic["parent_type"] == "pnics_folder"
    assert pnic["id_path"].endswith(f"/{C0}/{stable_id(C0, 'pnics')}/{pnic['id']}")
    vnic = next(iter(vnics.values()))
    assert vnic["parent_type"] == "vnics_folder" and f"/{stable_id(CONTROLLER, vnic['namespace'])}/" in \
        vnic["id_path"]
    # the agreed document shapes (host layer): every object carries them, with values from the tools
    for otype, fields in AGREED_FIELDS.items():
        for doc in rig.objects(otype).values():
            missing = (COMMON_FIELDS | fields) - doc.keys()
            assert not missing, f"{otype} {doc['id']} lacks {missing}"
            assert doc["host"] in rig.hosts and doc["environment"] == ENV
            if "state" in fields:
                assert doc["state"] in ("up", "down", "unknown")
    # an OVS cloud never asks for what only Linux-bridge fetchers read
    assert not any("fdb" in keys for _, per in rig.facts.calls for keys in per.values())
    second = rig.scan()  # nothing changed on the hosts: nothing rewritten, nothing deleted
    assert second.status == ScanStatus.COMPLETED.value and second.objects_deleted == 0
    assert second.objects_written == 0, second

    # syncs of one type and rescans of one object find their hosts through the stored folders
    only_pnics = Scanner(rig.store, rig.box, ENV, ScanOptions(resource_types=["host_pnic"]), hosts=rig.facts).run()
    assert only_pnics.status == ScanStatus.COMPLETED.value and only_pnics.objects_by_type == {"host_pnic": 3}
    assert only_pnics.objects_deleted == 0 and only_pnics.objects_written == 0
    one = Scanner(rig.store, rig.box, ENV, ScanOptions(object_id=stable_id(CONTROLLER, node.dhcp_ns)),
                  hosts=rig.facts).run()
    assert one.status == ScanStatus.COMPLETED.value, one.errors
    assert one.objects_by_type == {"vservice": 1, "vnics_folder": 1, "vnic": 1} and one.objects_deleted == 0

    # compute-001's switch dies; on compute-000 the hybrid plug's bridge goes away for real
    stop_ovs(rig.hosts[C1])
    rig.hosts[C0].exec(["ip", "link", "del", topo.qbr])
    third = rig.scan()
    assert third.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    assert [e for e in third.errors if C1 in e and "database connection failed" in e and "vedge" in e], \
        third.errors
    assert rig.objects("vedge").keys() == {stable_id(h, "OVS") for h in rig.hosts}  # kept, not a ghost removed
    assert stable_id(C1, "otep", "vxlan") in rig.objects("otep")  # and what is under it
    assert stable_id(C0, topo.qbr) not in rig.objects("vconnector")  # what was read is pruned as usual
    assert third.objects_deleted == 1

    # the controller goes away altogether: all its host objects stay as last seen
    controller = rig.hosts[CONTROLLER]
    kill_host(controller)
    fourth = rig.scan()
    assert [e for e in fourth.errors if CONTROLLER in e and "unreachable" in e]
    assert rig.objects("vnic").keys() == vnics.keys()
    assert rig.objects("vservice").keys() == services.keys()
    assert stable_id(CONTROLLER, "eth0") in rig.objects("host_pnic")
    # and the scan's message in the store says which host could not be read
    assert any(CONTROLLER in m["message"] and "unreachable" in m["message"] for m in rig.store.find_messages(ENV))


def test_linux_bridge_cloud_has_no_vedges_and_finds_vxlan_oteps(rig_factory: Any) -> None:
    rig: HostRig = rig_factory("LXB")
    topo = LxbHost()
    build_lxb_host(rig.hosts[C0], [rig.hosts[C1].ip])
    build_lxb_host(rig.hosts[C1], [rig.hosts[C0].ip])
    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED.value, summary.errors
    assert rig.objects("vedge") == {} and rig.objects("vedges_folder") == {}
    oteps = rig.objects("otep")
    assert oteps.keys() == {stable_id(h, "otep", topo.vxlan) for h in (C0, C1)}
    otep = oteps[stable_id(C0, "otep", topo.vxlan)]
    assert otep["parent_id"] == stable_id(C0, topo.bridge) and otep["remote_ips"] == [rig.hosts[C1].ip]
    assert otep["ip_address"] == rig.hosts[C0].ip
    # never an OVS command on a Linux-bridge cloud
    assert not any(k.startswith("ovs") for _, per in rig.facts.calls for keys in per.values() for k in keys)
