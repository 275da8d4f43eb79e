"""The real listener driving the real handlers, as ``stackmap-event-manager`` builds them (a batched
``Dispatcher``: a batch's writes commit together, before its one ack), on the real RabbitMQ, with
the API served by the fake cloud: after a stream of changes the map equals a fresh scan, every
message is acknowledged once and counted, and a store that is locked mid-stream (another process
holds SQLite's write lock) delays the stream without losing or dead-lettering anything."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from daemons.event_manager.listener import QueueNames
from handlers.apply import MapUpdater
from handlers.dispatch import Dispatcher, load_events_config
from handlers.envelope import Notification
from stackmap.logging import configure_logging
from stackmap.settings import EventManagerSettings
from stackmap.store.sqlite import SqliteStore
from tests.fakecloud import FakeCloud, ShowingServer
from tests.integration.event_doubles import exchanges_for
from tests.integration.event_helpers import (
    Publisher,
    cleanup_amqp,
    drain_queue,
    new_env_name,
    oslo_body,
    queue_depth,
    require_broker,
    running_listener,
    wait_for,
)
from tests.integration.test_event_listener import LOCKER, sample
from tests.integration.test_handlers_fakecloud import ENV, SIZE, World, compute_ports


def on_test_exchanges(updater: MapUpdater, listener_env: str) -> Dispatcher:
    """The dispatcher as the daemon builds it, bound to this test's own exchanges."""
    return Dispatcher(updater, load_events_config().bound_to(exchanges_for(listener_env)), batched=True)


@pytest.fixture(autouse=True)
def _logging_to_this_tests_stderr() -> None:
    configure_logging("INFO", "console", stream=sys.stderr)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    require_broker()
    cloud = FakeCloud(SIZE)
    with ShowingServer(cloud, max_limit=1000) as server:
        w = World(tmp_path, cloud, server)
        yield w
        w.store.close()


@pytest.fixture
def listener_env() -> Iterator[str]:
    name = new_env_name("h")
    yield name
    cleanup_amqp(name)


class Committed:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: list[str] = []

    def __call__(self, items: list[tuple[Notification, float]]) -> None:
        with self.lock:
            self.ids.extend(str(n.message_id) for n, _ in items)

    def count(self) -> int:
        with self.lock:
            return len(self.ids)


def current(cloud: FakeCloud, port_id: str) -> dict[str, Any]:
    """The port as neutron's notification carries it now (the API's item)."""
    return next(p for p in cloud.items("ports") if p["id"] == port_id)


def handled(env: str, event_type: str) -> float:
    return sample("stackmap_events_handled_total", env, event_type=event_type, result="handled")


def options() -> EventManagerSettings:
    return EventManagerSettings(retry_limit=5, retry_delay_s=0.1, retry_delay_max_s=0.5, heartbeat_s=10,
                                store_retry_max_s=1.0, reconnect_delay_max_s=2.0, connect_timeout_s=3.0)


def test_a_stream_of_changes_through_the_listener_leaves_the_map_like_a_fresh_scan(
        world: World, listener_env: str) -> None:
    cloud = world.cloud
    dispatcher = on_test_exchanges(MapUpdater(world.store, world.box, ENV), listener_env)  # API re-reads, read ahead
    committed = Committed()
    pub = Publisher(exchanges_for(listener_env)[1])
    published = 0
    with running_listener(listener_env, world.store, options(), sink=dispatcher,
                          on_committed=committed) as listener:
        ports = compute_ports(cloud)
        assert len(ports) > 8
        for i, port in enumerate(ports[:8]):
            cloud.rename("ports", port["id"], f"stream-port-{i}")
            pub.publish(oslo_body("port.update.end", {"port": current(cloud, port["id"])}, f"p{i}"))
            published += 1
        servers = [s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host")]
        for i, server in enumerate(servers[:4]):
            cloud.rename("servers", server["id"], f"stream-vm-{i}")
            pub.publish(oslo_body("compute.instance.update", {"instance_id": server["id"], "state": "active"},
                                  f"s{i}"))
            published += 1
        gone = ports[-1]  # an interface detached: neutron says the port is gone, nova that the server changed
        cloud.delete("ports", gone["id"])
        pub.publish(oslo_body("port.delete.end", {"port_id": gone["id"]}, "gone"))
        pub.publish(oslo_body("compute.instance.update", {"instance_id": gone["device_id"], "state": "active"},
                              "detached"))
        published += 2
        wait_for(lambda: committed.count() == published, 60, "every event committed")
        wait_for(lambda: queue_depth(listener.names.main) == 0, 10, "every event acked")
    pub.close()
    dispatcher.close()
    assert handled(listener_env, "port.update.end") == 8
    assert handled(listener_env, "compute.instance.update") == 5
    assert handled(listener_env, "port.delete.end") == 1
    assert drain_queue(QueueNames.for_environment(listener_env).dead) == []
    world.assert_like_a_fresh_scan()


@pytest.mark.fault
def test_a_store_locked_mid_stream_delays_the_batches_and_loses_nothing(
        world: World, listener_env: str, tmp_path: Path) -> None:
    cloud = world.cloud
    # the listener's own connection, with a short busy timeout as the daemon opens it
    store = SqliteStore(world.store.url, busy_timeout_s=0.3)
    updater = MapUpdater(store, world.box, ENV, trust_payloads=True)  # payloads: whole batches, no API
    dispatcher = on_test_exchanges(updater, listener_env)
    committed = Committed()
    pub = Publisher(exchanges_for(listener_env)[1])
    ports = compute_ports(cloud)[:10]

    def change_all(round_: int) -> None:
        for i, port in enumerate(ports):
            cloud.rename("ports", port["id"], f"round-{round_}-{i}")
            pub.publish(oslo_body("port.update.end", {"port": current(cloud, port["id"])}, f"r{round_}-{i}"))

    try:
        with running_listener(listener_env, store, options(), sink=dispatcher,
                              on_committed=committed) as listener:
            change_all(0)
            wait_for(lambda: committed.count() == 10, 30, "the first round")
            locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(store.path), "4"], stdout=subprocess.PIPE,
                                      text=True)
            try:
                assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
                locked_at = time.monotonic()
                for round_ in (1, 2, 3):
                    change_all(round_)
                wait_for(lambda: sample("stackmap_event_store_unavailable_total", listener_env) >= 1,
                         10, "the listener to find the store locked")
                assert committed.count() == 10  # nothing acked while nothing could be committed
                assert locker.wait(30) == 0 and time.monotonic() - locked_at >= 3.5
            finally:
                locker.kill()
            wait_for(lambda: committed.count() == 40, 60, "every event after the lock")
            wait_for(lambda: queue_depth(listener.names.main) == 0, 10, "every event acked")
    finally:
        pub.close()
        dispatcher.close()
        store.close()
    assert sorted(committed.ids) == sorted(f"r{r}-{i}" for r in range(4) for i in range(10))  # each once
    assert handled(listener_env, "port.update.end") == 40
    assert drain_queue(QueueNames.for_environment(listener_env).dead) == []
    assert [world.store.get_object(ENV, p["id"])["name"] for p in ports] == [f"round-3-{i}" for i in range(10)]
    world.assert_like_a_fresh_scan()


class WaitingSink:
    """Records the listener's calls; events whose payload says ``wait`` will wait for the API."""

    def __init__(self, exchanges: list[str]) -> None:
        self.exchanges = exchanges
        self.calls: list[str] = []
        self.table = {"test.thing.update.end": None}

    def bindings(self) -> list[tuple[str, str]]:
        return [(exchange, "notifications.*") for exchange in self.exchanges]

    def will_wait(self, n: Notification) -> bool:
        return bool(n.data.get("wait"))

    def handle(self, n: Notification) -> Any:
        from handlers.base import EventResult

        self.calls.append(str(n.message_id))
        return EventResult.done("handled")

    def flush(self) -> None:
        self.calls.append("flush")


def test_the_batch_before_an_event_that_will_wait_is_settled_first(listener_env: str, tmp_path: Path) -> None:
    require_broker()
    store = SqliteStore(f"sqlite:///{tmp_path}/m.db")
    sink = WaitingSink(exchanges_for(listener_env))
    with running_listener(listener_env, store, options(), sink=sink):
        pass  # declares the queue and its bindings
    pub = Publisher(exchanges_for(listener_env)[1])
    for mid, wait in (("a", False), ("b", False), ("w", True), ("d", False)):
        pub.publish(oslo_body("test.thing.update.end", {"wait": wait}, mid))  # queued: they arrive together
    pub.close()
    committed = Committed()
    with running_listener(listener_env, store, options(), sink=sink, on_committed=committed):
        wait_for(lambda: committed.count() == 4, 20, "the four events")
    store.close()
    assert sink.calls == ["a", "b", "flush", "w", "d", "flush"]


def retried(env: str, event_type: str) -> float:
    return sample("stackmap_events_handled_total", env, event_type=event_type, result="retried")


@pytest.mark.fault
def test_an_api_outage_mid_stream_retries_the_events_and_dead_letters_none(world: World, listener_env: str) -> None:
    """nova and neutron answer 503 for a while (an API restarting behind its load balancer): the
    events that need them are retried, not dead-lettered, for longer than ``retry_limit`` retries
    would last, and once the APIs answer again the map is the truth."""
    cloud, server = world.cloud, world.server
    dispatcher = on_test_exchanges(MapUpdater(world.store, world.box, ENV), listener_env)
    committed = Committed()
    pub = Publisher(exchanges_for(listener_env)[1])
    ports = compute_ports(cloud)[:6]
    servers = [s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host")][:2]
    try:
        opts = options().model_copy(update={"retry_limit": 1})
        with running_listener(listener_env, world.store, opts, sink=dispatcher, on_committed=committed) as listener:
            outage = [server.fail(server.path("network", "/*"), 503), server.fail(server.path("compute", "/*"), 503)]
            for i, port in enumerate(ports):
                cloud.rename("ports", port["id"], f"outage-port-{i}")
                pub.publish(oslo_body("port.update.end", {"port": current(cloud, port["id"])}, f"p{i}"))
            for i, item in enumerate(servers):
                cloud.rename("servers", item["id"], f"outage-vm-{i}")
                pub.publish(oslo_body("compute.instance.update", {"instance_id": item["id"], "state": "active"},
                                      f"s{i}"))
            wait_for(lambda: retried(listener_env, "port.update.end") >= 3 * len(ports)
                     and retried(listener_env, "compute.instance.update") >= 3 * len(servers), 30,
                     "every event to be retried three times (retry_limit is 1) while the APIs answer 503")
            assert committed.count() == 0
            assert sample("stackmap_event_api_unavailable_total", listener_env) >= 3 * (len(ports) + len(servers))
            server.lift(*outage)
            wait_for(lambda: committed.count() == len(ports) + len(servers), 60, "every event after the outage")
            wait_for(lambda: queue_depth(listener.names.main) == 0 and queue_depth(listener.names.retry) == 0, 10,
                     "every event acked")
    finally:
        pub.close()
        dispatcher.close()
    assert drain_queue(QueueNames.for_environment(listener_env).dead) == []
    assert handled(listener_env, "port.update.end") == len(ports)
    assert [world.store.get_object(ENV, p["id"])["name"] for p in ports] == [f"outage-port-{i}" for i in range(6)]
    world.assert_like_a_fresh_scan()


@pytest.mark.fault
def test_an_api_away_for_longer_than_api_outage_max_s_gets_the_event_dead_lettered(
        world: World, listener_env: str) -> None:
    cloud, server = world.cloud, world.server
    dispatcher = on_test_exchanges(MapUpdater(world.store, world.box, ENV), listener_env)
    pub = Publisher(exchanges_for(listener_env)[1])
    port = compute_ports(cloud)[0]
    server.fail(server.path("network", "/*"), 503)
    opts = options().model_copy(update={"retry_limit": 100, "api_outage_max_s": 1.0})
    dead: list[tuple[dict[str, Any], bytes]] = []
    try:
        with running_listener(listener_env, world.store, opts, sink=dispatcher):
            cloud.rename("ports", port["id"], "never-mapped")
            pub.publish(oslo_body("port.update.end", {"port": current(cloud, port["id"])}, "p0"))
            names = QueueNames.for_environment(listener_env)
            wait_for(lambda: queue_depth(names.dead) == 1, 30, "the event to be dead-lettered")
            dead = drain_queue(names.dead)
    finally:
        pub.close()
        dispatcher.close()
    [(headers, _)] = dead
    assert headers["x-stackmap-reason"] == "unavailable_too_long"
    assert "503" in headers["x-stackmap-detail"] and 1 < headers["x-stackmap-attempt"] < 100
    assert sample("stackmap_event_dead_letters_total", listener_env, reason="unavailable_too_long") == 1
    assert world.store.get_object(ENV, port["id"])["name"] != "never-mapped"
