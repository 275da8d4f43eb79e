"""Real notifications from the rig, through the real handlers: after each change the map must equal
a fresh scan's, and each event is handled well within a second."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.apply import MapUpdater
from handlers.dispatch import Dispatcher
from stackmap.discovery.scan import Scanner, ScanOptions
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.e2e import topology
from tests.e2e.bus import BusTap
from tests.e2e.mapdiff import differences

pytestmark = pytest.mark.e2e


def new_map(path: Path, box: SecretBox) -> Store:
    store = open_store(f"sqlite:///{path}")
    add_environment(store, box, EnvironmentConfig.model_validate(topology.rig_environment()))
    return store


class Harness:
    def __init__(self, tmp: Path, conn: Any, **updater: Any) -> None:
        self.tmp, self.conn = tmp, conn
        self.box = SecretBox(tmp / "key")
        self.store = new_map(tmp / "events.db", self.box)
        summary = Scanner(self.store, self.box, "rig").run()
        assert summary.status == "completed", summary.errors
        self.dispatcher = Dispatcher(MapUpdater(self.store, self.box, "rig", **updater), batched=True)
        self.tap = BusTap(self.dispatcher, self.dispatcher.bindings())
        self.rounds = 0

    def after(self, action: Callable[[], Any], expect: set[str], quiet_for: float = 4.0) -> Any:
        """Run an action while its notifications are handled as they come, then compare with a
        fresh scan. The action runs in a thread so that a slow one (a server booting) does not hold
        its notifications back: their handling latency is the product's, not the test's."""
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["value"] = action()
            except BaseException as exc:  # surfaced below
                box["error"] = exc

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        handled = self.tap.drain(quiet_for=quiet_for, timeout=300, busy=worker.is_alive)
        worker.join(60)
        if "error" in box:
            raise box["error"]
        value = box.get("value")
        seen = {et for et, _ in handled}
        assert expect <= seen, f"expected {expect}, saw {sorted(seen)}"
        for event_type, result in handled:
            if event_type in expect:
                assert result.result, f"{event_type}: {result.message}"
        self.rounds += 1
        fresh = new_map(self.tmp / f"scan{self.rounds}.db", self.box)
        try:
            fresh_scan = Scanner(fresh, self.box, "rig", ScanOptions()).run()
            for _ in range(2):  # the rig's neutron stalls reads for ~a minute after some router changes
                if fresh_scan.status == "completed":
                    break
                time.sleep(30)
                fresh_scan = Scanner(fresh, self.box, "rig", ScanOptions()).run()
            assert fresh_scan.status == "completed", fresh_scan.errors
            diff = differences(self.store, fresh, "rig")
        finally:
            fresh.close()
        assert diff == [], "map after events differs from a fresh scan:\n" + "\n".join(diff)
        return value


@pytest.fixture(scope="module")
def conn() -> Any:
    return topology.connect()


@pytest.fixture
def harness(tmp_path: Path, conn: Any) -> Iterator[Harness]:
    h = Harness(tmp_path, conn)
    yield h
    h.tap.close()
    h.store.close()


def test_network_subnet_port_router_fip_sg_events(harness: Harness, conn: Any) -> None:
    net = conn.network
    p = f"sme2ev-{harness.tap.queue_name[-6:]}"
    made: dict[str, Any] = {}
    try:
        made["net"] = harness.after(lambda: net.create_network(name=f"{p}-net"), {"network.create.end"})
        made["sub"] = harness.after(lambda: net.create_subnet(name=f"{p}-sub", network_id=made["net"].id,
                                                              ip_version=4, cidr="10.88.0.0/24"),
                                    {"subnet.create.end"})
        harness.after(lambda: net.update_subnet(made["sub"], name=f"{p}-sub2"), {"subnet.update.end"})
        harness.after(lambda: net.update_network(made["net"], name=f"{p}-net2"), {"network.update.end"})
        made["sg"] = harness.after(lambda: net.create_security_group(name=f"{p}-sg"), {"security_group.create.end"})
        harness.after(lambda: net.create_security_group_rule(security_group_id=made["sg"].id, direction="ingress",
                                                             protocol="tcp", port_range_min=22, port_range_max=22,
                                                             ethertype="IPv4"),
                      {"security_group_rule.create.end"})
        made["port"] = harness.after(lambda: net.create_port(name=f"{p}-port", network_id=made["net"].id,
                                                             security_group_ids=[made["sg"].id]),
                                     {"port.create.end"})
        harness.after(lambda: net.update_port(made["port"], name=f"{p}-port2"), {"port.update.end"})
        # a VLAN external network: the rig's one flat network may be taken by another test
        made["ext"] = harness.after(lambda: net.create_network(
            name=f"{p}-ext", is_router_external=True, provider_network_type="vlan",
            provider_physical_network="physnet1"), {"network.create.end"})
        made["extsub"] = harness.after(lambda: net.create_subnet(
            name=f"{p}-extsub", network_id=made["ext"].id, ip_version=4, cidr="198.18.0.0/24",
            is_dhcp_enabled=False), {"subnet.create.end"})
        made["router"] = harness.after(lambda: net.create_router(name=f"{p}-router"), {"router.create.end"})
        harness.after(lambda: net.update_router(made["router"], external_gateway_info={"network_id": made["ext"].id}),
                      {"router.update.end"})
        harness.after(lambda: net.add_interface_to_router(made["router"], subnet_id=made["sub"].id),
                      {"router.interface.create"})
        made["fip"] = harness.after(lambda: net.create_ip(floating_network_id=made["ext"].id,
                                                          port_id=made["port"].id), {"floatingip.create.end"})
        harness.after(lambda: net.update_ip(made["fip"], port_id=None), {"floatingip.update.end"})
        harness.after(lambda: net.delete_ip(made.pop("fip")), {"floatingip.delete.end"})
        harness.after(lambda: net.remove_interface_from_router(made["router"], subnet_id=made["sub"].id),
                      {"router.interface.delete"})
        harness.after(lambda: net.update_router(made["router"], external_gateway_info=None), {"router.update.end"})
        harness.after(lambda: net.delete_router(made.pop("router")), {"router.delete.end"})
        harness.after(lambda: net.delete_port(made.pop("port")), {"port.delete.end"})
        harness.after(lambda: net.delete_security_group(made.pop("sg")), {"security_group.delete.end"})
        harness.after(lambda: net.delete_subnet(made.pop("sub")), {"subnet.delete.end"})
        harness.after(lambda: net.delete_network(made.pop("net")), {"network.delete.end"})
        assert_handled_within_a_second(harness)
    finally:
        leftovers = topology.Topology(prefix=p)
        for kind, key in (("floating_ip", "fip"), ("router", "router"), ("security_group", "sg"),
                          ("network", "net"), ("network", "ext")):
            if made.get(key) is not None:
                leftovers.add(kind, made[key].id)
        topology.cleanup(conn, leftovers)


def assert_handled_within_a_second(harness: Harness) -> None:
    """The issue's latency bound: every event handled at its first delivery was in the map within 1 s
    of the notification's own timestamp (retries wait for the API on purpose and are left out)."""
    seconds = sorted(s for _, s in harness.tap.latencies)
    if seconds:
        print(f"\nnotification -> map: {len(seconds)} events, p50 {seconds[len(seconds) // 2] * 1000:.0f} ms, "
              f"max {seconds[-1] * 1000:.0f} ms")
    slow = [(et, round(s, 3)) for et, s in harness.tap.latencies if s > 1.0]
    assert harness.tap.latencies and not slow, f"handled later than 1 s after the notification: {slow[:10]}"


def test_server_and_volume_events(harness: Harness, conn: Any) -> None:
    net, compute = conn.network, conn.compute
    p = f"sme2vm-{harness.tap.queue_name[-6:]}"
    made: dict[str, Any] = {}
    image = next(iter(conn.image.images(name="cirros-fake")))
    flavor = compute.find_flavor("m1.tiny")

    def boot() -> Any:
        server = compute.create_server(name=f"{p}-vm", image_id=image.id, flavor_id=flavor.id,
                                       networks=[{"uuid": made["net"].id}])
        return compute.wait_for_server(server, status="ACTIVE", wait=180)

    def volume_status(status: str) -> Callable[[], Any]:
        return lambda: topology.wait_for(lambda: conn.block_storage.get_volume(made["vol"].id).status == status,
                                         f"volume {status}")

    try:
        made["net"] = harness.after(lambda: net.create_network(name=f"{p}-net"), {"network.create.end"})
        made["sub"] = harness.after(lambda: net.create_subnet(name=f"{p}-sub", network_id=made["net"].id,
                                                              ip_version=4, cidr="10.89.0.0/24"),
                                    {"subnet.create.end"})
        made["vm"] = harness.after(boot, {"compute.instance.create.end", "port.create.end"}, quiet_for=6.0)
        harness.after(lambda: compute.update_server(made["vm"], name=f"{p}-vm2"), {"compute.instance.update"})
        harness.after(lambda: (compute.stop_server(made["vm"]),
                               compute.wait_for_server(made["vm"], status="SHUTOFF", wait=120)),
                      {"compute.instance.power_off.end"})
        harness.after(lambda: (compute.start_server(made["vm"]),
                               compute.wait_for_server(made["vm"], status="ACTIVE", wait=120)),
                      {"compute.instance.power_on.end"})
        if conn.has_service("block-storage") or conn.has_service("volumev3"):
            made["vol"] = harness.after(lambda: (vol := conn.block_storage.create_volume(name=f"{p}-vol", size=1),
                                                 topology.wait_for(lambda: conn.block_storage.get_volume(
                                                     vol.id).status == "available", "volume available"))[0],
                                        {"volume.create.end"})
            harness.after(lambda: conn.block_storage.update_volume(made["vol"], name=f"{p}-vol2"),
                          {"volume.update.end"})
            harness.after(lambda: (compute.create_volume_attachment(made["vm"], volume_id=made["vol"].id),
                                   volume_status("in-use")()), {"volume.attach.end"}, quiet_for=6.0)
            harness.after(lambda: (compute.delete_volume_attachment(made["vol"].id, made["vm"]),
                                   volume_status("available")()), {"volume.detach.end"}, quiet_for=6.0)
            harness.after(lambda: (conn.block_storage.delete_volume(made["vol"]),
                                   topology.wait_for(lambda: conn.block_storage.find_volume(made["vol"].id) is None,
                                                     "volume deleted")), {"volume.delete.end"})
            made.pop("vol")
        harness.after(lambda: (compute.delete_server(made["vm"]),
                               compute.wait_for_delete(made["vm"], wait=120)),
                      {"compute.instance.delete.end"}, quiet_for=6.0)
        made.pop("vm")
        assert_handled_within_a_second(harness)
    finally:
        leftovers = topology.Topology(prefix=p)
        for kind, key in (("instance", "vm"), ("volume", "vol"), ("network", "net")):
            if made.get(key) is not None:
                leftovers.add(kind, made[key].id)
        topology.cleanup(conn, leftovers)
