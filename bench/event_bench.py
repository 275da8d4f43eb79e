"""Event throughput and latency: port and instance notifications through RabbitMQ into the map.

    python bench/event_bench.py [--sizes 1000 100000] [--burst 3000] [--rate 1000] [--seconds 10]

For each map size a ``FakeCloud`` is served over HTTP by a child process and scanned into a fresh
SQLite store, with its hosts' layer (pNICs, Open vSwitch vEdges, OTEPs, hybrid-plug bridges, vNICs)
read from simulated host tools (``tests/fakehosts.py``) unless ``--no-host-layer``: about that many
objects in all. A real ``Listener`` (in this process, batched acks) then feeds
``port.update.end`` and ``compute.instance.update`` notifications, published on RabbitMQ, to the real
``Dispatcher(MapUpdater(store, box, env), batched=True)``, exactly as ``stackmap-event-manager``
builds it. Every event announces a real change, as in a busy cloud: a port's payload carries a new
revision with its status flipped, and every API read of a port or a server finds it changed again
(``ChangingServer``), so each event writes its object, relinks it and rebuilds cliques.
``--no-change`` publishes duplicates instead (the map already holds what they say):

- burst: ``--burst`` events are queued while the listener is stopped, then drained: events/s with
  batched acks, and the listener thread's CPU time per event;
- rate: another process publishes ``--rate`` events/s for ``--seconds``: latency from publication
  (the notification's own timestamp, set when it is published) to the commit of its change, p50/p99;
- ratio: the per-event cost (1 / burst events/s) at the largest map over the smallest.

A ``consumer alone`` line measures the listener with a sink that does nothing: the ceiling the
broker, py-amqp and the listener allow on this machine. Without the handlers (``handlers.apply``
missing) the bench says so loudly and uses a stand-in sink (one read and one write per event).
The exchange is a bench-only one (the broker may also serve a real OpenStack); everything it
declares is deleted afterwards. Prints figures only; the targets (>= 10,000 events/s with batched
acks, p99 < 25 ms at 1,000 events/s, ratio <= 1.5) are checked by a person reading them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/event_bench.py` from the repo root, without installing
    sys.path.insert(0, str(ROOT))

import amqp  # noqa: E402
import kombu  # noqa: E402

from daemons.event_manager.listener import (  # noqa: E402
    EventSink,
    Listener,
    QueueNames,
    open_listener_store,
    settle_heap,
)
from handlers.base import EventResult  # noqa: E402
from handlers.envelope import Notification  # noqa: E402
from stackmap.environments import add_environment  # noqa: E402
from stackmap.logging import configure_logging  # noqa: E402
from stackmap.model import EnvironmentConfig  # noqa: E402
from stackmap.secrets import SecretBox  # noqa: E402
from stackmap.settings import EventManagerSettings  # noqa: E402
from stackmap.store import Store  # noqa: E402
from tests import fakecloud  # noqa: E402
from tests.fakecloud import CloudSize, FakeCloud, ShowingServer  # noqa: E402
from tests.fakehosts import SimulatedHosts, plan_cloud  # noqa: E402

BROKER = "amqp://guest:guest@127.0.0.1:5672//"
ROUTING_KEY = "notifications.info"


def real_handlers() -> str | None:
    """None when the real Dispatcher/MapUpdater can be built, else why not."""
    try:
        from handlers.apply import MapUpdater  # noqa: F401
        from handlers.dispatch import Dispatcher, load_events_config  # noqa: F401

        load_events_config()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# --------------------------------------------------------------------------------------------------
# the fake cloud, in its own process

class ChangingServer(ShowingServer):
    """Once events start, every read of one port or server finds it changed since the previous read,
    as in a busy cloud where each notification announces a real change: a port's status flips and its
    revision goes up; a server is stopped or started. So handlers that re-read the API do real work
    (without it they would find every object as the map has it, and write nothing)."""

    changing = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reads: dict[str, int] = {}
        self._reads_lock = threading.Lock()

    def _route(self, method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str],
               body: bytes) -> tuple[int, Any, dict[str, str]]:
        status, answer, extra = super()._route(method, path, query, headers, body)
        if self.changing and isinstance(answer, dict) and len(answer) == 1:
            key, item = next(iter(answer.items()))
            if key in ("port", "server") and isinstance(item, dict):
                answer = {key: self._changed(key, item)}
            elif key == "ports" and any(k == "id" for k, _ in query):  # ports read by id, several at once
                answer = {key: [self._changed("port", port) for port in item]}
        return status, answer, extra

    def _changed(self, key: str, item: dict[str, Any]) -> dict[str, Any]:
        with self._reads_lock:
            n = self._reads[item["id"]] = self._reads.get(item["id"], 0) + 1
        return changed_port(item, n) if key == "port" else changed_server(item, n)


def changed_port(port: dict[str, Any], n: int) -> dict[str, Any]:
    """The port after its ``n``-th change: status flipped ``n`` times, revision up by ``n``."""
    flip = {"ACTIVE": "DOWN", "DOWN": "ACTIVE"}
    status = port.get("status", "ACTIVE")
    return dict(port, revision_number=int(port.get("revision_number", 0)) + n,
                status=flip.get(status, "DOWN") if n % 2 else status)


def changed_server(server: dict[str, Any], n: int) -> dict[str, Any]:
    if n % 2 == 0:
        return server
    return dict(server, status="SHUTOFF", **{"OS-EXT-STS:vm_state": "stopped", "OS-EXT-STS:power_state": 4})


def _serve(size: CloudSize, conn: Pipe, samples: int, latency_ms: float = 0.0, change: bool = True,
           host_layer: bool = True) -> None:
    # FakeCloudServer writes headers and body in two sends: with Nagle on, every keep-alive response
    # waits ~40 ms for a delayed ACK, an artefact no real API shows. (Set in this child process only.)
    fakecloud._Handler.disable_nagle_algorithm = True
    cloud = FakeCloud(size)
    with ChangingServer(cloud, max_limit=1000) as server:
        server.latency_s = 0.0  # the scan that builds the map is not what is measured
        ports = [p for p in cloud.items("ports") if str(p.get("device_owner", "")).startswith("compute:")]
        servers = [s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host")]
        conn.send({"auth_url": server.auth_url, "user": cloud.user, "password": cloud.password,
                   "ports": ports[:samples], "servers": servers[:samples],
                   "hosts": plan_cloud(cloud) if host_layer else None})
        if conn.recv() == "go":  # the map is built: events start
            server.latency_s = latency_ms / 1000
            server.changing = change
            conn.recv()  # "stop"


def cloud_size(objects: int, host_layer: bool) -> CloudSize:
    """A cloud whose map, host layer included when there is one, holds about ``objects`` objects."""
    target = objects
    for _ in range(6):  # the host layer grows with instances and hosts, as the rest of the map does
        size = CloudSize.for_objects(target)
        regions = len(size.regions)
        # per instance: its vNIC, vNICs folder and qbr bridge; per host: 2 pNICs, a vEdge, an OTEP
        extra = regions * (3 * size.instances + 4 * (size.hosts + 1)) if host_layer else 0
        total = size.object_count() + extra
        if abs(total - objects) <= max(5, objects // 500):
            break
        target = max(100, int(target * objects / total))
    return size


@contextmanager
def fake_cloud(objects: int, samples: int, latency_ms: float = 0.0, change: bool = True,
               host_layer: bool = True) -> Iterator[dict[str, Any]]:
    ctx = mp.get_context("fork")  # nothing is threaded yet: the child inherits the imports
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(cloud_size(objects, host_layer), child, samples, latency_ms, change,
                                               host_layer), daemon=True)
    process.start()
    try:
        info = parent.recv()
        info["go"] = lambda: parent.send("go")
        yield info
    finally:
        with suppress(OSError):
            parent.send("stop")
        process.join(10)


# --------------------------------------------------------------------------------------------------
# events


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def event_body(kind: str, item: dict[str, Any], seq: int, change: int = 0) -> bytes:
    """An oslo.messaging v2 notification, stamped with the time it is built (= published). A port's
    payload is the port after its ``change``-th change (0: as it was scanned, a duplicate)."""
    payload: dict[str, Any]
    if kind == "port":
        event_type, payload = "port.update.end", {"port": changed_port(item, change)}
        publisher = "network.controller"
    else:
        event_type = "compute.instance.update"
        payload = {"instance_id": item["id"], "display_name": item.get("name"), "state": "active",
                   "host": item.get("OS-EXT-SRV-ATTR:host"), "tenant_id": item.get("tenant_id")}
        publisher = f"compute.{item.get('OS-EXT-SRV-ATTR:host')}"
    inner = {"event_type": event_type, "payload": payload, "message_id": f"bench-{seq}", "priority": "INFO",
             "publisher_id": publisher, "timestamp": _now()}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode()


def event_items(ports: list[dict[str, Any]], servers: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """Alternate ports and instances."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(max(len(ports), len(servers))):
        if i < len(ports):
            out.append(("port", ports[i]))
        if i < len(servers):
            out.append(("instance", servers[i]))
    return out


def publish(exchange: str, items: list[tuple[str, dict[str, Any]]], count: int, start: int = 0,
            rate: float | None = None, change: bool = True) -> None:
    """Publish ``count`` events (cycling over ``items``), paced at ``rate``/s when given; confirmed at the end."""
    with kombu.Connection(BROKER) as conn:
        ch = conn.channel()
        ch.confirm_select()
        began = time.perf_counter()
        for n in range(count):
            if rate:
                delay = began + n / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            kind, item = items[(start + n) % len(items)]
            changes = 1 + (start + n) // len(items) if change else 0  # the item's changes so far, this one included
            ch.basic_publish(amqp.Message(event_body(kind, item, start + n, changes), content_type="application/json",
                                          delivery_mode=2), exchange=exchange, routing_key=ROUTING_KEY)
        ch.basic_publish_confirm(amqp.Message(b"{}"), exchange="", routing_key="")


def _publisher_process(exchange: str, items: list[tuple[str, dict[str, Any]]], count: int, start: int,
                       rate: float, change: bool) -> None:
    publish(exchange, items, count, start, rate, change)


# --------------------------------------------------------------------------------------------------
# sinks


class StandInSink:
    """Used only when the handlers cannot be built: one read and one write per event."""

    def __init__(self, store: Store, environment: str, exchange: str) -> None:
        self.store, self.environment, self.exchange = store, environment, exchange

    def bindings(self) -> list[tuple[str, str]]:
        return [(self.exchange, "notifications.*")]

    def handle(self, n: Notification) -> EventResult:
        data = n.data
        oid = str(data.get("instance_id") or (data.get("port") or {}).get("id"))
        if self.store.get_object(self.environment, oid) is None:
            return EventResult.skip("not in the map")
        self.store.update_object(self.environment, oid, {"status": "ACTIVE"})
        return EventResult.done("updated", oid)


class NoopSink:
    def __init__(self, exchange: str) -> None:
        self.exchange = exchange

    def bindings(self) -> list[tuple[str, str]]:
        return [(self.exchange, "notifications.*")]

    def handle(self, n: Notification) -> EventResult:
        return EventResult.done("nothing")


# --------------------------------------------------------------------------------------------------
# measuring


@dataclass
class Figures:
    label: str
    objects: int = 0
    burst_events: int = 0
    burst_s: float = 0.0
    cpu_s: float = 0.0
    process_cpu_s: float = 0.0  # the whole bench process: listener, API reads ahead, checkpoints (one GIL)
    outcomes: dict[str, int] | None = None
    rate: float = 0.0
    rate_events: int = 0
    latencies_ms: list[float] | None = None
    missing: int = 0
    unsustainable: float = 0.0  # the asked rate, when the burst showed it cannot be kept up

    @property
    def events_per_s(self) -> float:
        return self.burst_events / self.burst_s if self.burst_s else 0.0

    @property
    def cost_us(self) -> float:
        return 1e6 * self.burst_s / self.burst_events if self.burst_events else 0.0


class Run:
    """A listener in a thread of this process, with a commit hook that records what it committed."""

    def __init__(self, environment: str, sink: EventSink, options: EventManagerSettings) -> None:
        # (event type, sent, committed): not the notifications themselves, whose objects would make
        # every full garbage collection of this process slower as the run goes on
        self.committed: list[tuple[str, float | None, float]] = []
        self.lock = threading.Lock()
        self.listener = Listener(environment, kombu.Connection(BROKER, heartbeat=options.heartbeat_s), sink,
                                 options, on_committed=self._committed)
        self.cpu = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _committed(self, items: list[tuple[Notification, float]]) -> None:
        done = [(n.event_type, n.sent_at, committed) for n, committed in items]
        with self.lock:
            self.committed.extend(done)

    def _run(self) -> None:
        began = time.thread_time()
        self.listener.run()
        self.cpu = time.thread_time() - began

    def __enter__(self) -> Run:
        self.thread.start()
        if not self.listener.consuming.wait(30):
            raise SystemExit("the listener did not start consuming (is RabbitMQ up on 127.0.0.1:5672?)")
        return self

    def __exit__(self, *exc: object) -> None:
        self.listener.stop()
        self.thread.join(60)

    def wait(self, count: int, timeout: float) -> float:
        """Wait until ``count`` events are committed; returns when the last one was (perf_counter)."""
        deadline = time.monotonic() + timeout
        while len(self.committed) < count and time.monotonic() < deadline:
            time.sleep(0.005)
        return time.perf_counter()


def _sent(event_type: str, sent: float | None) -> float:
    if sent is None:  # the bench stamps every event it publishes
        raise ValueError(f"a bench event ({event_type}) without a readable timestamp")
    return sent


def measure(label: str, environment: str, exchange: str, make_sink: Callable[[], EventSink],
            items: list[tuple[str, dict[str, Any]]], args: argparse.Namespace, options: EventManagerSettings,
            objects: int = 0, rate_phase: bool = True) -> Figures:
    figures = Figures(label, objects)
    sink = make_sink()
    settle_heap()  # as run_listener does before it consumes
    with Run(environment, sink, options) as warm:  # declares the queue and bindings; warms caches
        publish(exchange, items, args.warmup, start=0, change=args.change)
        warm.wait(args.warmup, 120)
    publish(exchange, items, args.burst, start=args.warmup, change=args.change)  # queued while nobody listens
    started, process_began = time.perf_counter(), time.process_time()
    with Run(environment, sink, options) as burst:
        ended = burst.wait(args.burst, args.timeout)
        figures.process_cpu_s = time.process_time() - process_began
    figures.burst_events = len(burst.committed)
    figures.burst_s = ended - started
    figures.cpu_s = burst.cpu
    outcomes: dict[str, int] = {}
    for event_type, _, _ in burst.committed:
        outcomes[event_type] = outcomes.get(event_type, 0) + 1
    figures.outcomes = outcomes
    if not rate_phase:
        return figures
    rate = args.rate
    if figures.events_per_s < rate:
        # the target rate cannot be sustained: latency would only measure a growing queue. Measure it
        # at 80% of what the burst sustained instead, and say so.
        figures.unsustainable = rate
        rate = max(1.0, 0.8 * figures.events_per_s)
    count = max(1, int(rate * args.seconds))
    with Run(environment, sink, options) as steady:
        ctx = mp.get_context("spawn")
        publisher = ctx.Process(target=_publisher_process,
                                args=(exchange, items, count, args.warmup + args.burst, rate, args.change))
        publisher.start()
        publisher.join(args.seconds + 60)
        steady.wait(count, args.timeout)
    figures.rate, figures.rate_events = rate, count
    figures.latencies_ms = sorted(1000 * (committed - _sent(event_type, sent))
                                  for event_type, sent, committed in steady.committed)
    figures.missing = count - len(steady.committed)
    return figures


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


def report(f: Figures) -> None:
    print(f"\n== {f.label}" + (f": map of {f.objects:,} objects" if f.objects else ""))
    print(f"  burst        {f.burst_events:>7,} events in {f.burst_s:6.2f} s = {f.events_per_s:>9,.0f} events/s "
          f"(batched acks); {f.cost_us:,.0f} us/event wall, "
          f"{1e6 * f.cpu_s / max(1, f.burst_events):,.0f} us/event listener CPU, "
          f"{1e6 * f.process_cpu_s / max(1, f.burst_events):,.0f} us/event process CPU")
    if f.outcomes:
        print(f"  handled      {', '.join(f'{k}: {v}' for k, v in sorted(f.outcomes.items()))}")
    if f.unsustainable:
        print(f"  at {f.unsustainable:,.0f}/s    not sustainable ({f.events_per_s:,.0f} events/s at most): the queue, "
              "and so the latency, would grow without bound; measured at 80% of the burst rate instead:")
    if f.latencies_ms is not None:
        lat = f.latencies_ms
        print(f"  at {f.rate:,.0f}/s    {len(lat):>7,} events: publish->commit p50 {pct(lat, 0.5):7.1f} ms, "
              f"p99 {pct(lat, 0.99):7.1f} ms, max {max(lat) if lat else float('nan'):7.1f} ms"
              + (f"  ({f.missing} not committed in time)" if f.missing else ""))
        if lat:
            print(f"               mean {statistics.fmean(lat):.1f} ms")


def cleanup(environment: str, exchange: str) -> None:
    names = QueueNames.for_environment(environment)
    with kombu.Connection(BROKER) as conn:
        for queue in (names.main, names.retry, names.dead):
            with suppress(Exception):
                conn.channel().queue_delete(queue)
        for ex in (names.dead, exchange):
            with suppress(Exception):
                conn.channel().exchange_delete(ex)


def bench_size(objects: int, args: argparse.Namespace, options: EventManagerSettings, why_not: str | None) -> Figures:
    environment = f"bench{uuid.uuid4().hex[:8]}"
    exchange = f"stackmap-bench.{environment}"
    try:
        with tempfile.TemporaryDirectory(prefix="event-bench-") as tmp, \
                fake_cloud(objects, args.samples, args.api_latency_ms, args.change, args.host_layer) as cloud:
            url = f"sqlite:///{tmp}/bench.db"
            store = open_listener_store(url, options.store_busy_timeout_s)
            box = SecretBox(Path(tmp) / "key")
            # the simulated hosts run Open vSwitch with VXLAN: the environment says so, which selects
            # the host-layer clique types; without a host layer the map is the API objects' alone
            drivers = {"mechanism_drivers": ["OVS"], "type_drivers": "vxlan"} if cloud["hosts"] is not None else {}
            add_environment(store, box, EnvironmentConfig.model_validate({
                "name": environment, **drivers,
                "configuration": [{"name": "OpenStack", "auth_url": cloud["auth_url"],
                                   "user": cloud["user"], "pwd": cloud["password"]}]}))
            from stackmap.discovery.scan import Scanner

            began = time.perf_counter()
            hosts = SimulatedHosts(cloud["hosts"]) if cloud["hosts"] is not None else None
            summary = Scanner(store, box, environment, hosts=hosts).run()
            counted = sum(summary.objects_by_type.values())
            host_layer = sum(n for t, n in summary.objects_by_type.items()
                             if t in ("host_pnic", "vedge", "otep", "vconnector", "vnic", "vservice"))
            print(f"\n  (map of {counted:,} objects, {host_layer:,} of them host-layer, scanned in "
                  f"{time.perf_counter() - began:.1f} s, {summary.status})")
            cloud["go"]()
            items = event_items(cloud["ports"] if "port" in args.kinds else [],
                                cloud["servers"] if "instance" in args.kinds else [])

            def make_sink() -> EventSink:
                if why_not is None:
                    from handlers.apply import MapUpdater
                    from handlers.dispatch import Dispatcher, load_events_config
                    from stackmap.settings import load_settings

                    opts = load_settings().event_manager  # STACKMAP_EVENT_MANAGER__TRUST_PAYLOADS=true...
                    updater = MapUpdater(store, box, environment, trust_payloads=opts.trust_payloads,
                                         read_ahead_threads=0 if args.no_read_ahead else opts.read_ahead_threads,
                                         api_timeout_s=opts.api_timeout_s)
                    # as the daemon builds it, on the bench's own exchange instead of nova's and neutron's
                    return Dispatcher(updater, load_events_config().bound_to([exchange]), batched=True)
                return StandInSink(store, environment, exchange)

            label = "real Dispatcher(MapUpdater)" if why_not is None else "STAND-IN sink (handlers missing)"
            figures = measure(label, environment, exchange, make_sink, items, args, options, counted)
            store.close()
            return figures
    finally:
        cleanup(environment, exchange)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 100_000], help="map sizes (objects)")
    parser.add_argument("--burst", type=int, default=3000, help="events queued, then drained (fewer: noisier figures)")
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--rate", type=float, default=1000.0, help="events/s for the latency phase")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the latency phase")
    parser.add_argument("--samples", type=int, default=2000, help="distinct ports and instances to cycle over")
    parser.add_argument("--baseline", type=int, default=20_000, help="events for the consumer-alone line (0: skip)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for a phase to drain")
    parser.add_argument("--prefetch", type=int, default=500)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--batch-max-delay-ms", type=int, default=EventManagerSettings().batch_max_delay_ms)
    parser.add_argument("--batch-backlog-delay-ms", type=int, default=EventManagerSettings().batch_backlog_delay_ms)
    parser.add_argument("--api-latency-ms", type=float, default=0.0,
                        help="added to every API answer while events are handled (a remote cloud's round trip)")
    parser.add_argument("--kinds", nargs="+", choices=("port", "instance"), default=["port", "instance"],
                        help="which events to publish (port.update.end, compute.instance.update)")
    parser.add_argument("--no-change", dest="change", action="store_false",
                        help="events announce no change (duplicates): the map already holds what they say")
    parser.add_argument("--no-read-ahead", action="store_true", help="handlers read the API one event at a time")
    parser.add_argument("--no-host-layer", dest="host_layer", action="store_false",
                        help="map the API objects only (no pNICs, vEdges, OTEPs, bridges or vNICs)")
    args = parser.parse_args(argv)
    configure_logging("WARNING", "console")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the clean-ups (queues, the fake cloud)
    options = EventManagerSettings(prefetch=args.prefetch, batch_size=args.batch,
                                   batch_max_delay_ms=args.batch_max_delay_ms,
                                   batch_backlog_delay_ms=args.batch_backlog_delay_ms, queue_max_length=0,
                                   queue_message_ttl_s=0, heartbeat_s=60)

    why_not = real_handlers()
    if why_not is not None:
        print("!" * 100)
        print(f"!! the real Dispatcher/MapUpdater cannot be built yet ({why_not}):")
        print("!! the figures below are for a STAND-IN sink (one store read + one write per event), not the handlers")
        print("!" * 100)
    else:
        print("handlers: the real Dispatcher(MapUpdater(store, box, env)), as stackmap-event-manager builds it")

    if args.baseline:
        environment = f"bench{uuid.uuid4().hex[:8]}"
        exchange = f"stackmap-bench.{environment}"
        items = [("port", {"id": f"p{i}", "name": "p", "network_id": "n", "device_owner": "compute:nova"})
                 for i in range(100)]
        try:
            base_args = argparse.Namespace(**{**vars(args), "burst": args.baseline})
            report(measure("consumer alone (a sink that does nothing)", environment, exchange,
                           lambda: NoopSink(exchange), items, base_args, options))
        finally:
            cleanup(environment, exchange)

    results = [bench_size(objects, args, options, why_not) for objects in args.sizes]
    for figures in results:
        report(figures)
    if len(results) >= 2 and results[0].cost_us:
        small, big = results[0], results[-1]
        cpu_small = small.cpu_s / max(1, small.burst_events)
        cpu_big = big.cpu_s / max(1, big.burst_events)
        print(f"\n== per-event cost at {big.objects:,} vs {small.objects:,} objects: "
              f"{big.cost_us / small.cost_us:.2f}x wall, {cpu_big / cpu_small if cpu_small else float('nan'):.2f}x "
              "listener CPU (target <= 1.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
