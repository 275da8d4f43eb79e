"""The same host topologies scanned over SSH: a real sshd in every bed host, the paramiko runner
(``stackmap.discovery.host.ssh``) opened by the scan from the environment's CLI section, reaching the
hosts by name through a compute host as jump host (which resolves the names, as a cloud's management
host does), host keys checked against a known_hosts file. What the namespace runner finds, SSH must
find too; a host whose sshd is gone is a per-host error and keeps its objects.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from stackmap.discovery.scan import Scanner, ScanOptions, ScanSummary
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, ScanStatus, stable_id
from stackmap.secrets import SecretBox
from stackmap.settings import SshSettings
from stackmap.store import open_store
from tests.fakecloud import FakeCloud, FakeCloudServer
from tests.hostbed import _pids_in_netns, host_bed
from tests.hostbed import missing_requirements as bed_missing
from tests.hosttopo import (
    OvsCompute,
    build_network_node,
    build_ovs_compute,
    missing_requirements,
    new_host,
    start_ovs,
    stop_ovs,
)
from tests.integration.test_host_scan import C0, C1, CONTROLLER, ENV, SIZE, network_node_of

pytestmark = [
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.skipif(bed_missing(sshd=True) is not None, reason=str(bed_missing(sshd=True))),
    pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary"),
]


@pytest.fixture
def ssh_scan(tmp_path: Path) -> Iterator[tuple[object, ...]]:
    with host_bed("hx") as bed, FakeCloudServer(FakeCloud(SIZE)) as server:
        hosts = {name: new_host(bed, name) for name in (CONTROLLER, C0, C1)}
        region = next(iter(server.cloud.regions))
        for name, host in hosts.items():  # the hypervisors report the bed addresses as their host_ip
            server.cloud.regions[region].hosts[name]["host_ip"] = host.ip
            host.start_sshd()
            start_ovs(host)
        build_network_node(hosts[CONTROLLER], network_node_of(server.cloud))
        hosts[CONTROLLER].exec(["ovs-vsctl", "add-br", "br-int", "--", "set", "bridge", "br-int",
                                "datapath_type=netdev"])
        build_ovs_compute(hosts[C0], [hosts[C1].ip])
        build_ovs_compute(hosts[C1], [hosts[C0].ip])
        # the jump host resolves the other hosts' names (the controller has no hypervisor address)
        names = hosts[C0].dir / "hosts"
        names.write_text("127.0.0.1 localhost\n" + "".join(f"{h.ip} {n}\n" for n, h in hosts.items()))
        hosts[C0].exec(["mount", "--bind", str(names), "/etc/hosts"])
        known = tmp_path / "known_hosts"
        known.write_text(bed.known_hosts_text())
        store = open_store(f"sqlite:///{tmp_path}/s.db")
        box = SecretBox(tmp_path / "k")
        # the production path: the environment's CLI section, the scan opens (and closes) its runner
        add_environment(store, box, EnvironmentConfig.model_validate({
            "name": ENV, "distribution": "Stock", "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
            "configuration": [
                server.openstack_section(project="admin"),
                {"name": "CLI", "host": hosts[C0].ip, "user": "root", "key": bed.client_key,
                 "connection_policy": "public"},
            ],
        }))
        settings = SshSettings(host_key_policy="known_hosts", known_hosts=known, connect_timeout_s=5,
                               connect_retries=0)

        def scan() -> ScanSummary:
            return Scanner(store, box, ENV, ScanOptions(), ssh=settings).run()

        try:
            yield scan, store, hosts, server.cloud
        finally:
            store.close()


def test_scan_over_ssh_finds_the_host_layer_and_keeps_a_lost_host(ssh_scan: tuple[object, ...]) -> None:
    scan, store, hosts, cloud = ssh_scan
    node, topo = network_node_of(cloud), OvsCompute()  # type: ignore[arg-type]

    def ids(otype: str) -> set[str]:
        return {o["id"] for o in store.find_objects(ENV, type=otype)}  # type: ignore[attr-defined]

    summary = scan()  # type: ignore[operator]
    assert summary.status == ScanStatus.COMPLETED.value, summary.errors
    assert ids("host_pnic") == {stable_id(h, "eth0") for h in (CONTROLLER, C0, C1)}
    assert ids("vedge") == {stable_id(h, "OVS") for h in (CONTROLLER, C0, C1)}
    assert ids("otep") == {stable_id(h, "otep", "vxlan") for h in (C0, C1)}
    assert ids("vconnector") == {stable_id(C0, topo.qbr), stable_id(C1, topo.qbr), stable_id(CONTROLLER, node.bridge)}
    assert ids("vservice") == {stable_id(CONTROLLER, node.dhcp_ns), stable_id(CONTROLLER, node.router_ns)}
    assert ids("vnic") == {stable_id(CONTROLLER, ns, ifname) for ns, ifname in node.vnics()}
    [otep] = [o for o in store.find_objects(ENV, type="otep") if o["host"] == C0]  # type: ignore[attr-defined]
    assert otep["ip_address"] == hosts[C0].ip and otep["remote_ips"] == [hosts[C1].ip]  # type: ignore[index]
    # the host layer's links from what was read over SSH, and the scan's cliques over them
    links = {(lk["link_type"], lk["source_id"], lk["target_id"])
             for lk in store.find_links(ENV)}  # type: ignore[attr-defined]
    for h in (C0, C1):
        assert ("vedge-otep", stable_id(h, "OVS"), stable_id(h, "otep", "vxlan")) in links
        assert ("otep-host_pnic", stable_id(h, "otep", "vxlan"), stable_id(h, "eth0")) in links
        assert ("vconnector-vedge", stable_id(h, topo.qbr), stable_id(h, "OVS")) in links
    [clique] = store.find_cliques(ENV, focal_point=stable_id(C0, "otep", "vxlan"))  # type: ignore[attr-defined]
    assert {stable_id(C0, "OVS"), stable_id(C0, "eth0")} <= set(clique["nodes"])

    stop_ovs(hosts[C0])  # type: ignore[index]
    # sshd dies on compute-001, with the session the runner kept open to it
    inode = os.stat(f"/proc/{hosts[C1].pid}/ns/net").st_ino  # type: ignore[index]
    for pid in _pids_in_netns(inode):
        if Path(f"/proc/{pid}/comm").read_text().strip() == "sshd":
            os.kill(pid, signal.SIGKILL)
    second = scan()  # type: ignore[operator]
    assert second.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    assert [e for e in second.errors if C0 in e and "vedge" in e and "ovs-vsctl" in e], second.errors
    assert [e for e in second.errors if C1 in e and "host_pnic" in e], second.errors
    assert second.objects_deleted == 0
    assert ids("vedge") == {stable_id(h, "OVS") for h in (CONTROLLER, C0, C1)}
    assert stable_id(C1, topo.qbr) in ids("vconnector") and stable_id(C1, "eth0") in ids("host_pnic")
    assert ids("otep") == {stable_id(h, "otep", "vxlan") for h in (C0, C1)}
