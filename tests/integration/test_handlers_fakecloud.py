"""The real handlers on a fake cloud served over HTTP: after each change in the cloud and the
notification that announces it, the incrementally updated map equals a fresh scan's (objects, links
and cliques), and an event that changes nothing writes nothing.

This is the CI counterpart of tests/e2e/test_rig_events.py (which needs the OpenStack rig): the same
handlers, fetchers, link finders and clique builder, with the API served by tests/fakecloud.py.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.apply import MapUpdater
from handlers.dispatch import Dispatcher
from handlers.envelope import parse
from stackmap.discovery.api import resources as R
from stackmap.discovery.api.client import ApiError
from stackmap.discovery.scan import Scanner
from stackmap.environments import add_environment
from stackmap.errors import StackmapError
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.e2e.mapdiff import differences
from tests.fakecloud import CloudSize, FakeCloud, ShowingServer

ENV = "fc"
SIZE = CloudSize(projects=3, hosts=3, instances=12, networks=6, routers=2, floating_ips=4, volumes=4, snapshots=2,
                 load_balancers=2, server_groups=2)


def notification(event_type: str, payload: dict[str, Any], publisher: str = "network.controller") -> Any:
    inner = {"event_type": event_type, "payload": payload, "message_id": f"m-{event_type}", "priority": "INFO",
             "publisher_id": publisher, "timestamp": "2026-11-23 12:00:00.000000"}
    return parse(json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode())


class World:
    """A scanned map and a dispatcher on it; ``batched`` as the listener builds it (each event then
    flushed on its own, so the cliques it alters are rebuilt at the flush instead of in the handler)."""

    def __init__(self, tmp: Path, cloud: FakeCloud, server: ShowingServer, batched: bool = False,
                 store_url: str | None = None) -> None:
        self.tmp, self.cloud, self.server = tmp, cloud, server
        self.box = SecretBox(tmp / "key")
        self.store = self.new_store("events", store_url)
        assert Scanner(self.store, self.box, ENV).run().status == "completed"
        self.dispatcher = Dispatcher(MapUpdater(self.store, self.box, ENV), batched=batched)
        self.rounds = 0

    def new_store(self, name: str, url: str | None = None) -> Store:
        store = open_store(url or f"sqlite:///{self.tmp}/{name}.db")
        add_environment(store, self.box, EnvironmentConfig.model_validate({
            "name": ENV, "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
            "configuration": [{"name": "OpenStack", "auth_url": self.server.auth_url, "user": self.cloud.user,
                               "pwd": self.cloud.password, "project": "admin"}]}))
        return store

    def handle(self, event_type: str, payload: dict[str, Any], publisher: str = "network.controller") -> str:
        result = self.dispatcher.handle(notification(event_type, payload, publisher))
        self.dispatcher.flush()
        assert result.result, result.message
        return result.message

    def assert_like_a_fresh_scan(self) -> None:
        self.rounds += 1
        fresh = self.new_store(f"scan{self.rounds}")
        assert Scanner(fresh, self.box, ENV).run().status == "completed"
        assert differences(self.store, fresh, ENV) == []
        fresh.close()


@pytest.fixture(params=["per-event", "batched", "batched-mongomock"])
def world(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[World]:
    """Per event, or batched as the listener builds it; on SQLite (atomic events and batches) and on
    mongomock (neither: every write commits on its own)."""
    cloud = FakeCloud(SIZE)
    url = f"mongomock://fc{uuid.uuid4().hex[:10]}" if request.param.endswith("mongomock") else None
    with ShowingServer(cloud, max_limit=1000) as server:
        w = World(tmp_path, cloud, server, batched=request.param.startswith("batched"), store_url=url)
        yield w
        w.store.close()


def compute_ports(cloud: FakeCloud) -> list[dict[str, Any]]:
    return [p for p in cloud.items("ports") if str(p.get("device_owner", "")).startswith("compute:")]


def test_an_unchanged_object_writes_nothing(world: World) -> None:
    port = compute_ports(world.cloud)[0]
    # neutron bumps revision_number on every change: the same revision again is a duplicate
    message = world.handle("port.update.end", {"port": port})
    if world.store.url.startswith("sqlite"):  # atomic events: the map holds that revision with its links
        assert f"at revision {port['revision_number']} already; duplicate ignored" in message
    else:  # each write on its own: the duplicate is handled again, and finds nothing to write
        assert "(0 written)" in message and "links +0/-0" in message and "0 clique(s) rebuilt" in message
    server = world.cloud.items("servers")[0]
    message = world.handle("compute.instance.update", {"instance_id": server["id"], "state": "active"},
                           publisher=f"compute.{server['OS-EXT-SRV-ATTR:host']}")
    assert "(0 written)" in message and "0 clique(s) rebuilt" in message
    world.assert_like_a_fresh_scan()


def test_renames_and_deletes_converge_to_a_fresh_scan(world: World) -> None:
    cloud = world.cloud
    port = compute_ports(cloud)[0]
    cloud.rename("ports", port["id"], "renamed-port")
    world.handle("port.update.end", {"port": {"id": port["id"]}})
    world.assert_like_a_fresh_scan()

    # (a network without instances: nova's server addresses are keyed by network name, and this fake
    # cloud would change them at once, where nova changes them only when it refreshes its cache)
    used = {p["network_id"] for p in compute_ports(cloud)}
    network = next(n for n in cloud.items("networks") if n["id"] not in used)
    cloud.rename("networks", network["id"], "renamed-net")
    world.handle("network.update.end", {"network": {"id": network["id"]}})
    world.assert_like_a_fresh_scan()

    server = next(s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host"))
    cloud.rename("servers", server["id"], "renamed-vm")
    world.handle("compute.instance.update", {"instance_id": server["id"], "state": "active"},
                 publisher=f"compute.{server['OS-EXT-SRV-ATTR:host']}")
    world.assert_like_a_fresh_scan()

    other = next(s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host") and s["id"] != server["id"])
    its_ports = [p["id"] for p in compute_ports(cloud) if p["device_id"] == other["id"]]
    its_fips = [f["id"] for f in cloud.items("floatingips") if f.get("port_id") in its_ports]
    cloud.delete_servers([other["id"]])
    for pid in its_ports:
        world.handle("port.delete.end", {"port_id": pid})
    for fid in its_fips:  # neutron disassociates them, and says so
        world.handle("floatingip.update.end", {"floatingip": {"id": fid}})
    world.handle("compute.instance.delete.end", {"instance_id": other["id"]},
                 publisher=f"compute.{other['OS-EXT-SRV-ATTR:host']}")
    world.assert_like_a_fresh_scan()


def test_a_port_re_derives_the_instances_it_joins_and_leaves_and_a_status_flip_none(
        world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    cloud, updater = world.cloud, world.dispatcher.updater
    rederived: list[str] = []
    real = updater.refresh_instance_ports

    def spying(instance_id: str, *args: Any, **kwargs: Any) -> None:
        rederived.append(instance_id)
        real(instance_id, *args, **kwargs)

    monkeypatch.setattr(updater, "refresh_instance_ports", spying)
    port = compute_ports(cloud)[0]
    left = port["device_id"]
    cloud.update("ports", port["id"], status="DOWN", revision_number=port["revision_number"] + 1)
    world.handle("port.update.end", {"port": {"id": port["id"]}})
    atomic = world.store.url.startswith("sqlite")  # the stored port and its instance committed together
    assert rederived == ([] if atomic else [left])  # an instance takes nothing from a port's status
    world.assert_like_a_fresh_scan()

    joined = next(s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host") and s["id"] != left)
    rederived.clear()
    cloud.update("ports", port["id"], device_id=joined["id"], revision_number=port["revision_number"] + 2)
    world.handle("port.update.end", {"port": {"id": port["id"]}})
    assert sorted(rederived) == sorted([joined["id"], left])
    for server in (s for s in cloud.items("servers") if s["id"] in (left, joined["id"])):  # nova says so too
        world.handle("compute.instance.update", {"instance_id": server["id"], "state": "active"},
                     publisher=f"compute.{server['OS-EXT-SRV-ATTR:host']}")
    world.assert_like_a_fresh_scan()


def test_an_instance_that_stops_takes_down_the_links_others_hold_to_it(world: World) -> None:
    cloud = world.cloud
    attached = {a.get("server_id") for v in cloud.items("volumes") for a in v.get("attachments") or ()}
    server = next(s for s in cloud.items("servers") if s["id"] in attached and s.get("OS-EXT-SRV-ATTR:host"))
    held_by_volumes = [lk for lk in world.store.find_links(ENV, link_type="volume-instance", target_id=server["id"])]
    assert held_by_volumes and all(lk["state"] == "up" for lk in held_by_volumes)
    cloud.update("servers", server["id"], status="SHUTOFF")
    world.handle("compute.instance.power_off.end", {"instance_id": server["id"], "state": "stopped"},
                 publisher=f"compute.{server['OS-EXT-SRV-ATTR:host']}")
    assert {lk["state"] for lk in world.store.find_links(ENV, link_type="volume-instance",
                                                          target_id=server["id"])} == {"down"}
    world.assert_like_a_fresh_scan()


def test_a_load_balancer_member_port_that_goes_down_takes_its_member_link_down(world: World) -> None:
    lb_ports = {lk["target_id"] for lk in world.store.find_links(ENV, link_type="loadbalancer-port")
                if (lk.get("attributes") or {}).get("role") != "vip"}
    port = next(p for p in compute_ports(world.cloud) if p["id"] in lb_ports)
    assert {lk["state"] for lk in world.store.find_links(ENV, link_type="loadbalancer-port",
                                                          target_id=port["id"])} == {"up"}
    world.cloud.update("ports", port["id"], status="DOWN", revision_number=port["revision_number"] + 1)
    world.handle("port.update.end", {"port": {"id": port["id"]}})
    assert {lk["state"] for lk in world.store.find_links(ENV, link_type="loadbalancer-port",
                                                          target_id=port["id"])} == {"down"}
    world.assert_like_a_fresh_scan()


def test_volume_server_group_and_load_balancer_events_converge_to_a_fresh_scan(world: World) -> None:
    cloud = world.cloud
    volume = cloud.items("volumes")[0]
    cloud.rename("volumes", volume["id"], "renamed-volume")
    world.handle("volume.update.end", {"volume_id": volume["id"]}, publisher="volume.controller")
    world.assert_like_a_fresh_scan()

    group = cloud.items("server_groups")[0]
    cloud.rename("server_groups", group["id"], "renamed-group")
    world.handle("servergroup.update", {"server_group_id": group["id"]}, publisher="compute.controller")
    world.assert_like_a_fresh_scan()

    lb = cloud.items("loadbalancers")[0]
    cloud.rename("loadbalancers", lb["id"], "renamed-lb")
    world.handle("octavia.loadbalancer.update.end", {"loadbalancer_id": lb["id"]}, publisher="octavia")
    world.assert_like_a_fresh_scan()

    snapshot = next(iter(cloud.items("snapshots")))
    cloud.delete("snapshots", snapshot["id"])
    world.handle("snapshot.delete.end", {"snapshot_id": snapshot["id"]}, publisher="volume.controller")
    cloud.delete("server_groups", group["id"])
    world.handle("servergroup.delete", {"server_group_id": group["id"]}, publisher="compute.controller")
    world.assert_like_a_fresh_scan()


def test_reads_started_ahead_are_taken_by_the_handler_and_only_once(world: World) -> None:
    updater = world.dispatcher.updater
    port = compute_ports(world.cloud)[0]
    # the listener calls this when a notification arrives behind others
    world.dispatcher.read_ahead(notification("port.update.end", {"port": {"id": port["id"]}}))
    read = updater.show_read("port", port["id"])
    updater._ahead[read][1].result(timeout=30)  # the read is done before the cloud changes
    world.cloud.rename("ports", port["id"], "renamed-later")
    assert updater.show("port", port["id"])["name"] == port["name"]  # the read made ahead
    assert updater.show("port", port["id"])["name"] == "renamed-later"  # taken once: now read again
    server = next(s for s in world.cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host"))
    world.dispatcher.read_ahead(notification("compute.instance.update", {"instance_id": server["id"]}))
    assert len(updater._ahead) == 2  # the server and its ports
    message = world.handle("compute.instance.update", {"instance_id": server["id"], "state": "active"},
                           publisher=f"compute.{server['OS-EXT-SRV-ATTR:host']}")
    assert updater._ahead == {} and "0 clique(s) rebuilt" in message


def test_port_reads_ahead_are_merged_into_few_listings_with_each_read_answered_as_its_own(world: World) -> None:
    updater = world.dispatcher.updater
    ports = compute_ports(world.cloud)[:8]
    gone = ports[-1]
    world.cloud.delete("ports", gone["id"])
    world.cloud.rename("ports", ports[0]["id"], "renamed-before-the-read")
    server = next(s for s in world.cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host"))
    events = [notification("port.update.end", {"port": {"id": p["id"]}}) for p in ports] + [
        notification("compute.instance.update", {"instance_id": server["id"], "state": "active"})]
    world.server.reset()
    updater.read_ahead_threads = 1
    gate = threading.Event()
    updater._reader().submit(gate.wait, 30)  # the reads queue up, as while the read-ahead threads are busy
    for event in events:
        world.dispatcher.read_ahead(event)
    gate.set()
    for entry in list(updater._ahead.values()):
        entry[1].result(timeout=30)
    region = updater.region()
    assert updater.show("port", ports[0]["id"], region)["name"] == "renamed-before-the-read"
    assert updater.show("port", gone["id"], region) is None  # absent from the listing: gone, as a 404 says
    assert [p["id"] for p in updater.list_filtered(R.PORTS, region, device_id=server["id"])] == \
        [p["id"] for p in compute_ports(world.cloud) if p["device_id"] == server["id"]]
    port_requests = [target for _, target, _ in world.server.log if "/ports" in target]
    # one request for the 8 shows, one for the device's ports
    assert len(port_requests) == 2 and all("/ports/" not in t for t in port_requests), port_requests
    # nova tells of the detached port's server too (its addresses changed)
    events.append(notification("compute.instance.update", {"instance_id": gone["device_id"], "state": "active"}))
    for event in events:
        assert world.dispatcher.handle(event).result
    world.dispatcher.flush()
    world.assert_like_a_fresh_scan()


def test_a_merged_read_that_fails_fails_each_of_its_reads_where_taken(world: World) -> None:
    updater = world.dispatcher.updater
    ports = compute_ports(world.cloud)[:3]
    updater.read_ahead_threads = 1
    gate = threading.Event()
    updater._reader().submit(gate.wait, 30)
    world.server.fail("*/ports", 503, times=1)
    for p in ports:
        world.dispatcher.read_ahead(notification("port.update.end", {"port": {"id": p["id"]}}))
    gate.set()
    region = updater.region()
    for p in ports:  # each read raises as its own request would have
        with pytest.raises(ApiError) as failed:
            updater.show("port", p["id"], region)
        assert failed.value.status == 503
    assert updater.show("port", ports[0]["id"], region)["id"] == ports[0]["id"]  # taken: read again
    # and reads queued when the updater closes fail instead of leaving their takers waiting
    gate = threading.Event()
    updater._reader().submit(gate.wait, 30)
    world.dispatcher.read_ahead(notification("port.update.end", {"port": {"id": ports[1]["id"]}}))
    updater.close()
    gate.set()
    with pytest.raises(StackmapError, match="closed"):
        updater.show("port", ports[1]["id"], region)


def test_an_api_away_gets_an_event_retried_and_a_refusal_gets_it_dead_lettered(world: World) -> None:
    """Unreachable is a passing state: the event is retried (its attempts counted by the listener).
    A 403 is the API's answer about the request itself: the event fails, to the dead letters."""
    port = compute_ports(world.cloud)[0]
    world.cloud.rename("ports", port["id"], "renamed-while-away")
    payload = {"port": next(p for p in world.cloud.items("ports") if p["id"] == port["id"])}

    def handle_with_a_new_client() -> Any:  # a new client: its token's catalog is the one served now
        dispatcher = Dispatcher(MapUpdater(world.store, world.box, ENV), batched=world.dispatcher.batched)
        try:
            result = dispatcher.handle(notification("port.update.end", payload))
            dispatcher.flush()
            return result
        finally:
            dispatcher.close()

    world.server.point_service_at("network", "http://127.0.0.1:9")  # nothing listens there
    away = handle_with_a_new_client()
    assert (away.result, away.retry) == (False, True) and "cannot reach the network API" in away.message
    world.server.reset()
    world.server.fail(world.server.path("network", "/ports/*"), 403, times=1)
    refused = handle_with_a_new_client()
    assert (refused.result, refused.retry) == (False, False) and "403" in refused.message
    assert world.store.get_object(ENV, port["id"])["name"] != "renamed-while-away"
    assert handle_with_a_new_client().result
    assert world.store.get_object(ENV, port["id"])["name"] == "renamed-while-away"


def test_an_api_that_does_not_answer_is_not_asked_again_for_a_while(world: World) -> None:
    """A blackholed endpoint: the first read waits out the timeout, the reads after it fail at once
    (each event retried) without a request, until the pause is over; then the API is asked again."""
    ports = compute_ports(world.cloud)[:4]
    slow = world.server.slow(world.server.path("network", "/ports/*"), 3.0)
    updater = MapUpdater(world.store, world.box, ENV, read_ahead_threads=0, api_timeout_s=0.3, api_pause_s=1.5)
    dispatcher = Dispatcher(updater, batched=world.dispatcher.batched)
    try:
        for i, port in enumerate(ports):
            world.cloud.rename("ports", port["id"], f"after-the-pause-{i}")
        payloads = [{"port": next(p for p in world.cloud.items("ports") if p["id"] == port["id"])} for port in ports]
        results = [dispatcher.handle(notification("port.update.end", payload)) for payload in payloads]
        dispatcher.flush()
        assert all((r.result, r.retry) == (False, True) for r in results), [r.message for r in results]
        assert "cannot reach the network API" in results[0].message
        assert all("not asked again" in r.message for r in results[1:])
        assert slow.hits == 1  # one request waited for the endpoint; the other events did not
        world.server.lift(slow)
        time.sleep(1.6)
        results = [dispatcher.handle(notification("port.update.end", payload)) for payload in payloads]
        dispatcher.flush()
        assert all(r.result for r in results), [r.message for r in results]
    finally:
        dispatcher.close()
    assert [world.store.get_object(ENV, p["id"])["name"] for p in ports] == [f"after-the-pause-{i}" for i in range(4)]


def _established_to(port: int) -> int:
    """This process's established TCP connections to 127.0.0.1:port (from /proc: no extra package)."""
    mine = set()
    for fd in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            mine.add(target[8:-1])
    count = 0
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == "01" and int(remote.split(":")[1], 16) == port and inode in mine:
            count += 1
    return count


def test_finished_scans_leave_no_connection_open_to_the_api(world: World) -> None:
    # A scan manager runs scan after scan in one process: connections left open pile up in the API
    # services (the rig's neutron stopped answering after ~100 of them).
    port = int(world.server.auth_url.split(":")[2].split("/")[0])
    for i in range(3):
        store = world.new_store(f"again{i}")
        assert Scanner(store, world.box, ENV).run().status == "completed"
        store.close()
    assert _established_to(port) == 0
