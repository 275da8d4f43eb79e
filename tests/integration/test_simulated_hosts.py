"""tests/fakehosts.py: a FakeCloud's host layer, read by the real host fetchers in a whole scan.

The event bench maps its clouds with it, so what it measures includes the host layer (a port
update relinks pNICs to networks; an instance's clique walks vNIC -> bridge -> vEdge -> OTEP ->
pNIC). This checks that the simulated output is one the fetchers read whole: every placed instance
gets its vNIC, bridge and the chain down to the tunnel pNIC, as on a real OVS compute host.
"""

from __future__ import annotations

from pathlib import Path

from stackmap.discovery.scan import Scanner
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, ScanStatus, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer
from tests.fakehosts import SimulatedHosts, plan_cloud

ENV = "simhosts"


def test_a_scan_maps_every_instance_down_to_its_tunnel_pnic(tmp_path: Path) -> None:
    cloud = FakeCloud(CloudSize(hosts=3, instances=9, networks=2))
    servers, ports = cloud.items("servers"), cloud.items("ports")
    placed = [s for s in servers if s.get("OS-EXT-SRV-ATTR:host")]
    hosts = {str(s["OS-EXT-SRV-ATTR:host"]) for s in placed}
    with FakeCloudServer(cloud) as server:
        store = open_store(f"sqlite:///{tmp_path}/s.db")
        box = SecretBox(tmp_path / "k")
        add_environment(store, box, EnvironmentConfig.model_validate({
            "name": ENV, "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
            "configuration": [server.openstack_section(project="admin")]}))
        summary = Scanner(store, box, ENV, hosts=SimulatedHosts(plan_cloud(cloud))).run()
    assert summary.status == ScanStatus.COMPLETED.value, summary.errors
    links = {(lk["link_type"], lk["source_id"], lk["target_id"]): lk["state"] for lk in store.find_links(ENV)}
    on_instances = {str(p["device_id"]): str(p["id"]) for p in ports
                    if str(p.get("device_owner", "")).startswith("compute:")}
    for vm in placed:
        host, port_id = str(vm["OS-EXT-SRV-ATTR:host"]), on_instances[str(vm["id"])]
        vnic, bridge = stable_id(host, "tap" + port_id[:11]), stable_id(host, "qbr" + port_id[:11])
        vedge, otep, eth0 = stable_id(host, "OVS"), stable_id(host, "otep", "vxlan"), stable_id(host, "eth0")
        assert links[("instance-vnic", str(vm["id"]), vnic)] == "up"
        assert ("vnic-vconnector", vnic, bridge) in links
        assert ("vconnector-vedge", bridge, vedge) in links
        assert ("vedge-otep", vedge, otep) in links
        assert ("otep-host_pnic", otep, eth0) in links
        doc = store.get_object(ENV, vnic)
        assert doc is not None and doc["port_id"] == port_id and doc["instance_id"] == vm["id"]
        clique = store.find_cliques(ENV, focal_point=str(vm["id"]))[0]
        assert {vnic, bridge, vedge, otep, eth0} <= set(clique["nodes"])
    assert {lk[1] for lk in links if lk[0] == "host_pnic-network"} >= {stable_id(h, "eth0") for h in hosts}
    store.close()
