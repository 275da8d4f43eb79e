"""The monitor handler on the real RabbitMQ: Sensu Core results published to a results exchange,
consumed through the real consumer, written to a real SQLite store."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange, Producer, Queue

from daemons.monitor_handler.applier import StatusApplier
from daemons.monitor_handler.consumer import ResultConsumer
from daemons.monitor_handler.mapping import CheckMapper
from daemons.monitor_handler.pipeline import ResultPipeline
from stackmap.store import open_store
from tests.integration import monitor_fixtures
from tests.monitor_helpers import ENV, CountingStore, body, core_result, seed

# the shared RabbitMQ fixtures (a helper module, not a conftest: other suites keep theirs)
broker_url = monitor_fixtures.broker_url
amqp_names = monitor_fixtures.amqp_names

OBJ, PNIC = "h1-OVS", "eth0-fa:16:3e:00:00:01"


class Harness:
    """A consumer running in a thread, a producer, and ways to wait for the consumer to catch up."""

    def __init__(self, broker_url: str, names: dict[str, str], store: CountingStore, **options: Any) -> None:
        self.store = store
        self.names = names
        mapper = CheckMapper(store, environments=options.pop("environments", None),  # type: ignore[arg-type]
                             default_environment=options.pop("default_environment", None))
        applier = StatusApplier(store, derived_link_types=options.pop("derived_link_types", ("vedge-host_pnic",)),  # type: ignore[arg-type]
                                last_seen_flush_s=options.pop("last_seen_flush_s", 3600.0))
        self.pipeline = ResultPipeline(mapper, applier, text_limit=options.pop("text_limit", 4096),
                                       max_bytes=options.pop("max_bytes", 1_048_576))
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.consumer = ResultConsumer(
            Connection(broker_url), self.pipeline, exchange=names["exchange"], queue=names["queue"],
            dead_letter_exchange=names["dead_letter_exchange"], stop_event=self.stop, on_ready=self.ready.set,
            batch_size=options.pop("batch_size", 200), batch_timeout_s=0.05, **options)
        self.thread = threading.Thread(target=self.consumer.run_until_stopped, daemon=True)
        self.conn = Connection(broker_url)
        self.exchange = Exchange(names["exchange"], type="direct", durable=False)

    def __enter__(self) -> Harness:
        self.thread.start()
        assert self.ready.wait(15), "consumer did not start"
        self.producer = Producer(self.conn.channel(), exchange=self.exchange)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(15)
        self.conn.release()
        assert not self.thread.is_alive(), "consumer did not stop"

    def publish(self, *bodies: bytes) -> None:
        for raw in bodies:
            self.producer.publish(raw, routing_key="", content_type="application/json", content_encoding="utf-8")

    def settle(self, received: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pipeline.counts["received"] >= received and self.consumer.pending_results == 0:
                return
            time.sleep(0.02)
        raise AssertionError(f"consumer saw {self.pipeline.counts['received']} of {received} results")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    inner = open_store(f"sqlite:///{tmp_path / 'mon.db'}")
    seed(inner)
    yield CountingStore(inner)
    inner.close()


def queue_depth(broker_url: str, name: str) -> int:
    with Connection(broker_url) as conn:
        _name, messages, _consumers = Queue(name, channel=conn.channel()).queue_declare(passive=True)
        return int(messages)


def test_results_land_on_their_objects_and_links(broker_url: str, amqp_names: dict[str, str],
                                                 store: CountingStore) -> None:
    now = time.time()
    with Harness(broker_url, amqp_names, store) as h:
        h.publish(
            body(core_result("anything-at-all", 2, output="ovs-vswitchd not running", executed=now,
                             object_type="vedge", object_id=OBJ)),
            body(core_result("link_check", 1, executed=now, link_type="vnic-vconnector", source_id="h1-tap_1",
                             target_id="h1-br_int-8000")),
            body(core_result("vservice_h1-qdhcp-net_1", 0, executed=now)),  # legacy name; '_' inside the id
        )
        h.settle(3)
    vedge = store.get_object(ENV, OBJ)
    assert vedge is not None
    assert (vedge["status"], vedge["status_value"], vedge["status_text"]) == ("Critical", 2, "ovs-vswitchd not running")
    assert abs(vedge["status_timestamp"].timestamp() - int(now)) < 1
    link = store.find_links(ENV, link_type="vnic-vconnector")[0]
    assert (link["status"], link["status_value"]) == ("Warning", 1)
    vservice = store.get_object(ENV, "h1-qdhcp-net_1")
    assert vservice is not None and vservice["status"] == "OK"
    untouched = store.get_object(ENV, "h2-OVS")
    assert untouched is not None and "status" not in untouched
    assert len(store.find_messages(ENV, source_system="Sensu")) == 3


def test_a_change_writes_one_message_and_identical_results_write_nothing(
        broker_url: str, amqp_names: dict[str, str], store: CountingStore) -> None:
    start = time.time() - 2000
    with Harness(broker_url, amqp_names, store) as h:
        h.publish(body(core_result("c", 0, executed=start, object_id=OBJ)))
        h.settle(1)
        writes_after_first = store.writes
        assert writes_after_first == 2  # the message, then the status
        h.publish(*(body(core_result("c", 0, executed=start + i, object_id=OBJ)) for i in range(1, 1000)))
        h.settle(1000)
        assert store.writes == writes_after_first, store.calls
        assert h.pipeline.counts["unchanged"] == 999
        h.publish(body(core_result("c", 2, output="down", executed=start + 1000, object_id=OBJ)))
        h.settle(1001)
    messages = store.find_messages(ENV, related_object=OBJ)
    assert [m["level"] for m in messages] == ["error", "info"]  # newest first: the change, the first status
    assert "OK -> Critical" in messages[0]["message"]
    assert store.calls["update_objects"] == 2 and store.calls["append_messages"] == 2
    assert queue_depth(broker_url, amqp_names["queue"]) == 0  # everything acknowledged


def test_bad_input_is_counted_and_never_written_anywhere(broker_url: str, amqp_names: dict[str, str],
                                                         store: CountingStore) -> None:
    before = {o["id"]: o for o in store.find_objects(ENV)}
    huge = "x" * 200_000
    with Harness(broker_url, amqp_names, store, max_bytes=100_000) as h:
        h.publish(
            b"{not json",
            b"[1, 2, 3]",
            body({"client": "h1", "check": {"status": 0}}),  # no check name
            body({"client": "h1", "check": {"name": "c"}}),  # no status
            body(core_result("c", 0, object_id="no-such-object")),
            body(core_result("c", 0, env="no-such-env", object_id=OBJ)),
            body(core_result("c", 0, object_type="host_pnic", object_id=OBJ)),  # says pnic, is a vedge
            body(core_result("vedge_nothing", 0)),
            body(core_result("c", 0, output=huge, object_id=OBJ)),  # a 200 kB body: refused before parsing
            b"\xff\xfe\x00garbage",
        )
        h.settle(10)
        assert h.thread.is_alive()
        # the consumer still works after all that
        h.publish(body(core_result("c", 1, output="y" * 50_000, object_id=OBJ)))
        h.settle(11)
    counts = h.pipeline.counts
    assert counts["ignored"] == 10 and counts["applied"] == 1, counts
    for reason in ("malformed_json", "not_an_object", "missing_fields", "unknown_object", "unknown_environment",
                   "type_mismatch", "too_large"):
        assert counts[f"ignored:{reason}"] >= 1, (reason, counts)
    after = {o["id"]: o for o in store.find_objects(ENV)}
    changed = {oid for oid in after if after[oid] != before[oid]}
    assert changed == {OBJ}
    assert after[OBJ]["status"] == "Warning"
    assert len(after[OBJ]["status_text"].encode()) <= 4096  # truncated to the bound
    # the poison messages (not results at all) were dead-lettered, not requeued
    assert queue_depth(broker_url, amqp_names["queue"]) == 0
    assert queue_depth(broker_url, amqp_names["dead_letter_exchange"]) == 6


def test_a_link_follows_its_endpoints_where_configured(broker_url: str, amqp_names: dict[str, str],
                                                       store: CountingStore) -> None:
    t = time.time()
    with Harness(broker_url, amqp_names, store) as h:
        h.publish(body(core_result("a", 0, executed=t, object_id=OBJ)),
                  body(core_result("b", 0, executed=t, object_id=PNIC)))
        h.settle(2)
        link = store.find_links(ENV, link_type="vedge-host_pnic")[0]
        assert link["status"] == "OK"
        h.publish(body(core_result("b", 2, executed=t + 1, object_id=PNIC)))
        h.settle(3)
    link = store.find_links(ENV, link_type="vedge-host_pnic")[0]
    assert link["status"] == "Warning" and "Critical" in link["status_text"]


def test_a_store_outage_requeues_the_batch_and_loses_nothing(broker_url: str, amqp_names: dict[str, str],
                                                             store: CountingStore) -> None:
    t = time.time()
    store.fail_writes = 1
    with Harness(broker_url, amqp_names, store) as h:
        h.publish(body(core_result("a", 2, executed=t, object_id=OBJ)))
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            doc = store.get_object(ENV, OBJ)
            if doc is not None and doc.get("status") == "Critical" and h.consumer.pending_results == 0:
                break
            time.sleep(0.05)
        assert h.pipeline.counts["received"] == 2  # once, failed; once more after the requeue
    assert store.get_object(ENV, OBJ)["status"] == "Critical"  # type: ignore[index]
    assert len(store.find_messages(ENV, related_object=OBJ)) == 1


def test_a_result_that_always_fails_is_dead_lettered_not_looped(broker_url: str, amqp_names: dict[str, str],
                                                               store: CountingStore) -> None:
    real_get = store.inner.get_object

    def get_object(env: str, oid: str) -> dict | None:
        if oid == "h2-OVS":
            raise RuntimeError("a bug that this one object triggers")
        return real_get(env, oid)

    store.inner.get_object = get_object  # type: ignore[method-assign]
    t = time.time()
    with Harness(broker_url, amqp_names, store) as h:
        h.publish(body(core_result("bad", 2, executed=t, object_id="h2-OVS")),
                  body(core_result("good", 2, executed=t, object_id=OBJ)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if h.pipeline.counts["ignored:error"] == 1 and h.consumer.pending_results == 0 and \
                    (store.get_object(ENV, OBJ) or {}).get("status") == "Critical":
                break
            time.sleep(0.05)
    assert h.pipeline.counts["ignored:error"] == 1
    assert store.get_object(ENV, OBJ)["status"] == "Critical"  # type: ignore[index]
    assert queue_depth(broker_url, amqp_names["queue"]) == 0
    assert queue_depth(broker_url, amqp_names["dead_letter_exchange"]) == 1
