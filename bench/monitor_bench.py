"""Monitor handler throughput: Sensu Core results through the real RabbitMQ path into a store.

    python bench/monitor_bench.py [--results 50000] [--objects 2000] [--changed 0.1] [--store URL]

Publishes N results (10% of them status changes by default, the rest repeats) for a store of
monitored objects to a fresh results exchange on the broker, then runs the real consumer (kombu,
parsing, mapping, change detection, batched writes and acks) until every result is committed, and
prints results/s and the handling latency (arrival at the consumer to commit and ack). The store's
final statuses are checked against what was published. Prints figures only; the target
(>= 10,000 results/s) is checked by a person reading them, never by a timed test.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from kombu import Connection, Exchange, Queue

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemons.monitor_handler.applier import StatusApplier
from daemons.monitor_handler.consumer import ResultConsumer
from daemons.monitor_handler.main import open_monitor_store
from daemons.monitor_handler.mapping import CheckMapper
from daemons.monitor_handler.pipeline import ResultPipeline
from stackmap.model import EnvironmentConfig
from stackmap.store import Store

ENV = "bench"


def seed(store: Store, objects: int) -> list[str]:
    store.add_environment(EnvironmentConfig(name=ENV, environment_type="Bare-metal").to_doc())
    old = datetime(2020, 1, 1, tzinfo=UTC)
    ids = [f"host-{i // 2}-{'OVS' if i % 2 == 0 else 'pnic-eth0'}" for i in range(objects)]
    store.upsert_objects(ENV, [
        {"environment": ENV, "id": oid, "type": "vedge" if oid.endswith("OVS") else "host_pnic",
         "id_path": f"/{ENV}/{oid}", "name": oid, "host": oid.rsplit("-", 1)[0]}
        for oid in ids])
    for oid in ids:  # the monitor's fields are its own: written as the monitor writes them, not by a scan
        store.update_object(ENV, oid, {"status": "OK", "status_value": 0, "status_text": "",
                                       "status_timestamp": old, "status_last_seen": old})
    return ids


def make_results(ids: list[str], n: int, changed: float, seed_value: int = 7) -> tuple[list[bytes], dict[str, int]]:
    """Bodies in Sensu Core's result shape; the final expected status of every object."""
    rng = random.Random(seed_value)
    current = dict.fromkeys(ids, 0)
    start = int(time.time()) - n
    bodies = []
    for i in range(n):
        oid = ids[i % len(ids)]
        if rng.random() < changed:
            current[oid] = 2 if current[oid] == 0 else 0
        check = {"name": f"check_{oid}", "status": current[oid], "output": "ok" if current[oid] == 0 else "down",
                 "executed": start + i, "issued": start + i, "interval": 15,
                 "stackmap": {"environment": ENV, "object_id": oid}}
        bodies.append(orjson.dumps({"client": oid.split("-")[1], "check": check}))
    return bodies, current


def publish(broker_url: str, exchange: str, queue: Queue, bodies: list[bytes]) -> float:
    with Connection(broker_url) as conn:
        channel = conn.channel()
        queue(channel).declare()  # bound before publishing, so nothing is lost
        started = time.perf_counter()
        for raw in bodies:
            channel.basic_publish(channel.prepare_message(raw, content_type="application/json"),
                                  exchange=exchange, routing_key="")
        elapsed = time.perf_counter() - started
    return len(bodies) / elapsed if elapsed else float("inf")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = tempfile.TemporaryDirectory(prefix="monitor-bench-")
    store = open_monitor_store(args.store or f"sqlite:///{Path(tmp.name) / 'bench.db'}")  # as the daemon opens it
    tag = uuid.uuid4().hex[:8]
    names = {"exchange": f"bench.results.{tag}", "queue": f"bench.stackmap.monitor.{tag}",
             "dead_letter_exchange": f"bench.stackmap.dead.{tag}"}
    try:
        ids = seed(store, args.objects)
        bodies, expected = make_results(ids, args.results, args.changed)
        mapper = CheckMapper(store)
        applier = StatusApplier(store, derived_link_types=(), last_seen_flush_s=3600)
        pipeline = ResultPipeline(mapper, applier)
        stop, latencies = threading.Event(), []
        consumer = ResultConsumer(Connection(args.broker_url), pipeline, exchange=names["exchange"],
                                  queue=names["queue"], dead_letter_exchange=names["dead_letter_exchange"],
                                  prefetch=args.prefetch, batch_size=args.batch_size, batch_timeout_s=0.05,
                                  stop_event=stop, latencies=latencies)
        rate_in = publish(args.broker_url, names["exchange"], consumer.queue, bodies)
        cpu: list[float] = []

        def consume() -> None:
            begun = time.thread_time()
            try:
                consumer.run_until_stopped()
            finally:
                cpu.append(time.thread_time() - begun)

        thread = threading.Thread(target=consume, daemon=True)
        started = time.perf_counter()
        thread.start()
        while pipeline.counts["received"] < args.results or consumer.pending_results:
            if not thread.is_alive():
                raise SystemExit("consumer died")
            time.sleep(0.005)
        elapsed = time.perf_counter() - started
        stop.set()
        thread.join(10)
        load = os.getloadavg()[0]
        wrong = [oid for oid, status in expected.items()
                 if (store.get_object(ENV, oid) or {}).get("status_value") != status]
        return {
            "results": args.results, "objects": args.objects, "changed_share": args.changed,
            "publish_per_s": rate_in, "results_per_s": args.results / elapsed, "seconds": elapsed,
            "p50_ms": percentile(latencies, 0.50) * 1000, "p99_ms": percentile(latencies, 0.99) * 1000,
            "mean_ms": statistics.fmean(latencies) * 1000,
            "cpu_us_per_result": cpu[0] / args.results * 1e6 if cpu else float("nan"), "load": load,
            "applied": pipeline.counts["applied"], "unchanged": pipeline.counts["unchanged"],
            "ignored": pipeline.counts["ignored"], "status_writes": pipeline.counts["status_writes"],
            "messages": pipeline.counts["messages"], "batches": consumer.batches, "wrong_final_statuses": len(wrong),
        }
    finally:
        with Connection(args.broker_url) as conn:
            channel = conn.channel()
            for queue in (names["queue"], names["dead_letter_exchange"]):
                Queue(queue, channel=channel).delete()
            for exchange in (names["exchange"], names["dead_letter_exchange"]):
                Exchange(exchange, channel=channel).delete()
        store.close()
        tmp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--results", type=int, default=50_000)
    parser.add_argument("--objects", type=int, default=2_000)
    parser.add_argument("--changed", type=float, default=0.1, help="share of results that change a status")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--prefetch", type=int, default=2000)
    parser.add_argument("--store", help="store URL (default: a temporary SQLite file)")
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672//")
    args = parser.parse_args()
    f = run(args)
    print(f"monitor handler: {f['results']} results for {f['objects']} objects, "
          f"{f['changed_share']:.0%} status changes (published at {f['publish_per_s']:,.0f}/s)")
    print(f"  consumed        {f['results_per_s']:>10,.0f} results/s ({f['seconds']:.2f} s, {f['batches']} batches)")
    print(f"  consumer CPU    {f['cpu_us_per_result']:.0f} us/result = {1e6 / f['cpu_us_per_result']:,.0f} results/s "
          f"per core (machine load average {f['load']:.1f} on {os.cpu_count()} CPUs)")
    print(f"  handling        p50 {f['p50_ms']:.1f} ms, p99 {f['p99_ms']:.1f} ms, mean {f['mean_ms']:.1f} ms "
          "(arrival to commit+ack)")
    print(f"  outcomes        applied {f['applied']}, unchanged {f['unchanged']}, ignored {f['ignored']}; "
          f"status writes {f['status_writes']}, messages {f['messages']}")
    print(f"  final statuses  {'all correct' if not f['wrong_final_statuses'] else f['wrong_final_statuses']} ")
    if f["wrong_final_statuses"] or f["ignored"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
