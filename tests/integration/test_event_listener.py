"""The event listener on the real RabbitMQ, with a test double in place of the handlers.

Every test uses its own environment name, hence its own queues and test-only exchanges (never nova or
neutron: this broker also serves a real OpenStack rig), deleted afterwards. The fault tests (store
unavailable for 30 s, broker restart mid-stream, 10,000 bad messages) are marked ``fault`` so they can
be selected (``-m fault``) or left out (``-m 'not fault'``); the default test command runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kombu
import pytest
from prometheus_client import REGISTRY

from daemons.event_manager.listener import (
    ATTEMPT_HEADER,
    DETAIL_HEADER,
    EVENT_TYPE_HEADER,
    ORIGINAL_EXCHANGE_HEADER,
    REASON_HEADER,
    Listener,
    QueueNames,
    run_listener,
)
from handlers.envelope import MAX_BODY_BYTES
from stackmap.logging import configure_logging
from stackmap.secrets import SecretBox
from stackmap.settings import EventManagerSettings, load_settings
from stackmap.store import Store
from stackmap.store.sqlite import SqliteStore
from tests.integration.event_doubles import GroupingSink, exchanges_for
from tests.integration.event_helpers import (
    BROKER,
    Publisher,
    add_env,
    calls_by_message,
    cleanup_amqp,
    drain_queue,
    handled_ids,
    new_env_name,
    oslo_body,
    queue_depth,
    require_broker,
    running_listener,
    versioned_body,
    wait_for,
)


@pytest.fixture(autouse=True)
def _logging_to_this_tests_stderr() -> None:
    """Listener threads log; an earlier test (click's CliRunner) may have left structlog writing to a
    stream that is closed by now."""
    configure_logging("INFO", "console", stream=sys.stderr)

@pytest.fixture
def event_broker() -> str:
    return require_broker()


@pytest.fixture
def env_name(event_broker: str) -> Iterator[str]:
    name = new_env_name()
    yield name
    cleanup_amqp(name)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def sqlite_store(db: Path) -> Iterator[Store]:
    store = SqliteStore(f"sqlite:///{db}", busy_timeout_s=1.0)
    yield store
    store.close()


@pytest.fixture
def options() -> EventManagerSettings:
    return EventManagerSettings(retry_limit=3, retry_delay_s=0.05, retry_delay_max_s=0.2, heartbeat_s=10,
                                store_retry_max_s=2.0, reconnect_delay_max_s=2.0, connect_timeout_s=3.0)


def sample(name: str, env: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"environment": env, **labels}) or 0.0


def publisher(env: str) -> Publisher:
    return Publisher(exchanges_for(env)[0])


# --------------------------------------------------------------------------------------------------
# mechanics


def test_legacy_bare_and_versioned_envelopes_are_handled_and_acked(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options) as listener:
        pub = publisher(env_name)
        pub.publish(oslo_body("compute.instance.update", {"instance_id": "i-1"}, "m-legacy"), "m-legacy")
        pub.publish(oslo_body("test.thing.update.end", {"id": "x"}, "m-bare", wrap=False), "m-bare")
        pub.publish(versioned_body("instance.update", {"uuid": "i-2", "state": "active"}, "m-versioned"),
                    "m-versioned", routing_key="versioned_notifications.info")
        # and through the second exchange of the bindings
        Publisher(exchanges_for(env_name)[1]).publish(
            oslo_body("test.thing.create.end", {"id": "y"}, "m-neutron"), "m-neutron")
        wait_for(lambda: handled_ids(db, env_name) >= {"m-legacy", "m-bare", "m-versioned", "m-neutron"}, 15,
                 "four handled notifications")
        wait_for(lambda: queue_depth(listener.names.main) == 0, 10, "the queue to be empty")
    assert sample("stackmap_events_handled_total", env_name, event_type="instance.update", result="handled") == 1
    assert sample("stackmap_events_handled_total", env_name, event_type="compute.instance.update",
                  result="handled") == 1
    assert sample("stackmap_event_lag_seconds_count", env_name) == 4
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def test_unknown_event_type_is_acked_and_counted_as_ignored(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options) as listener:
        pub = publisher(env_name)
        pub.publish(oslo_body("image.upload", {"id": "img"}, "m-1"))
        pub.publish(oslo_body("test.thing.update.end", {"do": "unknown_id", "id": "nope"}, "m-2"))
        wait_for(lambda: sample("stackmap_events_handled_total", env_name, event_type="other",
                                result="ignored") == 1, 10, "the unknown type to be ignored")
        wait_for(lambda: sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                                result="ignored") == 1, 10, "the unknown id to be ignored")
        wait_for(lambda: queue_depth(listener.names.main) == 0, 10, "both to be acked")
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def test_retry_count_travels_in_the_message_until_it_succeeds(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options) as listener:
        publisher(env_name).publish(oslo_body("test.thing.update.end", {"do": "retry_then_ok:2"}, "m-1"))
        wait_for(lambda: "m-1" in handled_ids(db, env_name), 15, "the third attempt to succeed")
        wait_for(lambda: queue_depth(listener.names.main) + queue_depth(listener.names.retry) == 0, 10,
                 "nothing left in the queues")
    assert calls_by_message(db, env_name)["m-1"] == ["retry", "retry", "handled"]
    assert sample("stackmap_event_retries_total", env_name, event_type="test.thing.update.end") == 2
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") == 1
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def test_past_the_retry_limit_a_message_is_dead_lettered_with_its_reason(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    body = oslo_body("test.thing.update.end", {"do": "retry"}, "m-1")
    with running_listener(env_name, sqlite_store, options):
        publisher(env_name).publish(body)
        names = QueueNames.for_environment(env_name)
        wait_for(lambda: queue_depth(names.dead) == 1, 15, "the dead letter")
    assert calls_by_message(db, env_name)["m-1"] == ["retry"] * 4  # the first try and retry_limit=3 more
    [(headers, dead_body)] = drain_queue(QueueNames.for_environment(env_name).dead)
    assert dead_body.decode() == body
    assert headers[REASON_HEADER] == "retry_limit" and headers[ATTEMPT_HEADER] == 3
    assert "not there yet" in headers[DETAIL_HEADER]
    assert headers[ORIGINAL_EXCHANGE_HEADER] == exchanges_for(env_name)[0]
    assert headers[EVENT_TYPE_HEADER] == "test.thing.update.end"
    assert sample("stackmap_event_dead_letters_total", env_name, reason="retry_limit") == 1


def test_failures_and_undecodable_bodies_are_dead_lettered_with_a_reason(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    cases = {
        oslo_body("test.thing.update.end", {"do": "fail"}, "m-fail"): "handler_failed",
        oslo_body("test.thing.update.end", {"do": "raise"}, "m-raise"): "sink_error",
        "this is not json": "not_json",
        json.dumps({"oslo.version": "2.0", "oslo.message": {"event_type": "x"}}): "bad_envelope",
        json.dumps({"oslo.version": "2.0", "oslo.message": "{not json"}): "bad_envelope",
        json.dumps({"payload": {}}): "no_event_type",
        json.dumps({"event_type": "test.thing.update.end", "payload": [1, 2]}): "bad_payload",
        json.dumps([1, 2, 3]): "not_an_object",
    }
    with running_listener(env_name, sqlite_store, options) as listener:
        pub = publisher(env_name)
        for body in cases:
            pub.publish(body)
        wait_for(lambda: queue_depth(listener.names.dead) == len(cases), 15, "every dead letter")
        assert listener.consuming.is_set()
    dead = drain_queue(QueueNames.for_environment(env_name).dead)
    assert sorted(h[REASON_HEADER] for h, _ in dead) == sorted(cases.values())
    assert {b.decode(): h[REASON_HEADER] for h, b in dead} == cases
    for reason, count in Counter(cases.values()).items():
        assert sample("stackmap_event_dead_letters_total", env_name, reason=reason) == count


def test_exchange_declared_with_other_flags_is_used_as_it_is(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with kombu.Connection(BROKER) as conn:  # e.g. a deployment with amqp_durable_queues = true
        conn.channel().exchange_declare(exchanges_for(env_name)[0], "topic", durable=True, auto_delete=False)
    with running_listener(env_name, sqlite_store, options):
        publisher(env_name).publish(oslo_body("test.thing.update.end", {}, "m-1"))
        wait_for(lambda: "m-1" in handled_ids(db, env_name), 10, "the message through the durable exchange")


def test_queue_declared_with_other_arguments_is_used_as_it_is(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with kombu.Connection(BROKER) as conn:  # e.g. the queue settings were changed since it was created
        conn.channel().queue_declare(QueueNames.for_environment(env_name).main, durable=True, auto_delete=False,
                                     arguments={"x-max-length": 7})
    with running_listener(env_name, sqlite_store, options):
        publisher(env_name).publish(oslo_body("test.thing.update.end", {}, "m-1"))
        wait_for(lambda: "m-1" in handled_ids(db, env_name), 10, "the message through the existing queue")


def test_queue_is_durable_and_bounded_while_nobody_listens(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    bounded = options.model_copy(update={"queue_max_length": 5, "queue_message_ttl_s": 2})
    with running_listener(env_name, sqlite_store, bounded):
        pass  # declares and binds the queue, then stops: the listener is away
    pub = publisher(env_name)
    for i in range(20):
        pub.publish(oslo_body("test.thing.update.end", {}, f"m-{i}"), f"m-{i}")
    names = QueueNames.for_environment(env_name)
    assert queue_depth(names.main) == 5  # the oldest were dropped
    wait_for(lambda: queue_depth(names.main) == 0, 10, "the messages to expire")
    with running_listener(env_name, sqlite_store, bounded):
        pub.publish(oslo_body("test.thing.update.end", {}, "m-after"), "m-after")
        wait_for(lambda: "m-after" in handled_ids(db, env_name), 10, "a message after the outage")


def test_messages_published_while_the_listener_is_away_are_not_lost(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options):
        pass
    pub = publisher(env_name)
    for i in range(50):
        pub.publish(oslo_body("test.thing.update.end", {}, f"m-{i}"), f"m-{i}")
    with running_listener(env_name, sqlite_store, options):
        wait_for(lambda: handled_ids(db, env_name) >= set(pub.confirmed), 15, "every message")


def test_waiting_events_for_one_object_are_coalesced_to_the_last(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options):
        pass
    pub = publisher(env_name)
    # a slow first event (longer than a handling turn), so that all the others are received while it
    # is handled and wait together, whatever the broker's framing
    pub.publish(oslo_body("test.thing.update.end", {"sleep_ms": 700}, "slow"), "slow")
    for i, key in enumerate(["a", "b", "a", None, "a", "b"]):
        pub.publish(oslo_body("test.thing.update.end", {"key": key} if key else {}, f"m-{i}"), f"m-{i}")
    with running_listener(env_name, sqlite_store, options) as listener:
        wait_for(lambda: queue_depth(listener.names.main) == 0 and
                 sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                        result="coalesced") == 3, 15, "all seven to be settled")
    # only the last event per key was handled (each handling writes one message); none was lost
    assert handled_ids(db, env_name) == {"slow", "m-3", "m-4", "m-5"}
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") == 4
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def waiting_behind_a_slow_event(env_name: str, store: Store, options: EventManagerSettings,
                                payloads: list[dict[str, Any]]) -> GroupingSink:
    """The grouping double, with events ``m-0``, ``m-1``... queued behind one that takes longer than
    a handling turn, so that they all wait together, whatever the broker's framing."""
    sink = GroupingSink(env_name, store)
    with running_listener(env_name, store, options, sink=sink):
        pass  # declares the queue
    pub = publisher(env_name)
    pub.publish(oslo_body("test.thing.update.end", {"sleep_ms": 700}, "slow"), "slow")
    for i, payload in enumerate(payloads):
        pub.publish(oslo_body("test.thing.update.end", payload, f"m-{i}"), f"m-{i}")
    return sink


def test_a_run_of_waiting_events_is_handled_together_key_by_key_up_to_a_barrier(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    sink = waiting_behind_a_slow_event(env_name, sqlite_store, options, [
        {"group": "A"}, {"group": "B"}, {"group": "A"}, {},  # {}: no key, a barrier
        {"group": "A"}, {"group": "A", "do": "fail"}, {"group": "B"}])
    with running_listener(env_name, sqlite_store, options, sink=sink) as listener:
        wait_for(lambda: queue_depth(listener.names.main) == 0 and queue_depth(listener.names.dead) == 1, 15,
                 "all eight to be settled")
    # the keyed ones before the barrier key by key (A's together, B's alone), then the barrier, then the rest
    assert sink.groups == [["m-0", "m-2"], ["m-4", "m-5"]]
    assert sink.order == ["slow", "m-0", "m-2", "m-1", "m-3", "m-4", "m-5", "m-6"]
    # each event of a group has its own fate
    assert handled_ids(db, env_name) == {"slow", "m-0", "m-1", "m-2", "m-3", "m-4", "m-6"}
    dead = drain_queue(QueueNames.for_environment(env_name).dead)
    assert [(h[REASON_HEADER], json.loads(json.loads(b)["oslo.message"])["message_id"]) for h, b in dead] == \
        [("handler_failed", "m-5")]
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") == 7


def test_a_store_outage_in_a_run_holds_the_rest_of_it_and_loses_nothing(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    sink = waiting_behind_a_slow_event(env_name, sqlite_store, options, [
        {"group": "A"}, {"group": "B", "do": "outage"}, {"group": "A"}, {"group": "B"}])
    with running_listener(env_name, sqlite_store, options, sink=sink) as listener:
        wait_for(lambda: queue_depth(listener.names.main) == 0 and len(handled_ids(db, env_name)) == 5, 20,
                 "all five to be handled")
        assert sample("stackmap_event_store_unavailable_total", env_name) == 1
    # A's pair was handled, then B's pair found the store away: the run is held from m-1 on, m-2
    # (handled, but after m-1) included, and all of it handled again once the store is back
    assert sink.groups[:2] == [["m-0", "m-2"], ["m-1", "m-3"]]
    assert sink.order.count("m-0") == 1 and sink.order.count("m-2") == 2 and sink.order.count("m-1") == 1
    assert handled_ids(db, env_name) == {"slow", "m-0", "m-1", "m-2", "m-3"}
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") == 5  # each acknowledged once
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def test_queue_depths_are_reported_and_a_deleted_queue_is_declared_again(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    names = QueueNames.for_environment(env_name)
    with running_listener(env_name, sqlite_store, options, depth_poll_s=0.2) as listener:
        pub = publisher(env_name)
        for i in range(3):
            pub.publish(oslo_body("test.thing.update.end", {"do": "fail"}, f"m-{i}"), f"m-{i}")
        wait_for(lambda: sample("stackmap_event_queue_depth", env_name, queue="dead") == 3, 15,
                 "the dead-letter queue's depth")
        assert sample("stackmap_event_queue_depth", env_name, queue="main") == 0
        with kombu.Connection(BROKER) as conn:  # an operator deletes it (dead letters would be dropped)
            conn.channel().queue_delete(names.dead)
        wait_for(lambda: sample("stackmap_event_broker_reconnects_total", env_name) >= 1
                 and listener.consuming.is_set(), 15, "the listener to reconnect")
        wait_for(lambda: _exists(names.dead), 10, "the dead-letter queue to be declared again")
        pub.publish(oslo_body("test.thing.update.end", {"do": "fail"}, "m-after"), "m-after")
        wait_for(lambda: queue_depth(names.dead) == 1, 15, "the next dead letter in it")


def _exists(queue: str) -> bool:
    try:
        queue_depth(queue)
    except Exception:
        return False
    return True


def test_a_backlog_with_slow_handlers_is_worked_through_without_idling(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    # 80 x 25 ms = 2 s of handling, acknowledged 5 at a time: the listener must go straight on to
    # what is already received (it once waited a second for the broker after every batch)
    small_batches = options.model_copy(update={"batch_size": 5})
    with running_listener(env_name, sqlite_store, small_batches):
        pass
    publisher(env_name).publish_many(
        oslo_body("test.thing.update.end", {"sleep_ms": 25}, f"m-{i}") for i in range(80))
    started = time.monotonic()
    with running_listener(env_name, sqlite_store, small_batches):
        wait_for(lambda: len(handled_ids(db, env_name)) == 80, 30, "the backlog")
    assert time.monotonic() - started < 6


def batches_of_queued(env_name: str, store: Store, db: Path, opts: EventManagerSettings, count: int) -> list[int]:
    """Queue ``count`` events of 5 ms handling while no listener runs, then the sizes of the batches a
    listener settles them in (every one handled)."""
    with running_listener(env_name, store, opts):  # the queue, declared
        pass
    publisher(env_name).publish_many(
        oslo_body("test.thing.update.end", {"sleep_ms": 5}, f"m-{i}") for i in range(count))
    batches: list[int] = []
    with running_listener(env_name, store, opts, on_committed=lambda items: batches.append(len(items))):
        wait_for(lambda: sum(batches) == count, 30, f"the {count} queued events")
    assert len(handled_ids(db, env_name)) == count
    return batches


def test_a_backlog_is_settled_in_larger_batches_than_a_trickle(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    # 60 x 5 ms of handling queued before the listener starts: 10 ms alone would settle a batch every
    # two events, but with more waiting behind it a batch may grow for batch_backlog_delay_ms
    opts = options.model_copy(update={"batch_size": 30, "batch_max_delay_ms": 10, "batch_backlog_delay_ms": 5000})
    batches = batches_of_queued(env_name, sqlite_store, db, opts, 60)
    assert max(batches) >= 15 and len(batches) <= 12, batches
    # and once the backlog is gone, a lone event is settled within batch_max_delay_ms, not the backlog's
    batches.clear()
    with running_listener(env_name, sqlite_store, opts, on_committed=lambda items: batches.append(len(items))):
        started = time.monotonic()
        publisher(env_name).publish(oslo_body("test.thing.update.end", {}, "lone"), "lone")
        wait_for(lambda: batches == [1], 10, "the lone event")
        assert time.monotonic() - started < 2.5


def test_a_few_messages_waiting_are_not_a_backlog(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    # a steady stream nearly always has a few messages waiting: were that a backlog, every batch would
    # be held for batch_backlog_delay_ms. Six waiting, with batches of 40, are settled in 10 ms batches
    opts = options.model_copy(update={"batch_size": 40, "batch_max_delay_ms": 10, "batch_backlog_delay_ms": 5000})
    batches = batches_of_queued(env_name, sqlite_store, db, opts, 6)
    assert len(batches) >= 2 and max(batches) <= 4, batches


def test_broker_from_the_environments_amqp_section(env_name: str, db: Path) -> None:
    settings = load_settings(store_url=f"sqlite:///{db}")
    settings.event_manager = settings.event_manager.model_copy(update={"heartbeat_s": 10})
    box = SecretBox(settings.secret_key_file)
    store = SqliteStore(settings.store_url)
    add_env(store, box, env_name)
    assert store.get_environment(env_name)["configuration"][1]["pwd"].startswith("enc:v1:")  # sealed
    states: list[tuple[str, str | None]] = []

    class Capture:
        def state(self, state: str, reason: str | None = None) -> None:
            states.append((state, reason))

        def beat(self) -> None:
            pass

    started: list[Listener] = []
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(run_listener(
        env_name, settings, "tests.integration.event_doubles:make_sink", reporter=Capture(),
        install_signals=False, ready=started.append)), daemon=True)
    thread.start()
    try:
        wait_for(lambda: started and started[0].consuming.is_set(), 20, "the listener to consume")
        publisher(env_name).publish(oslo_body("test.thing.update.end", {}, "m-1"))
        wait_for(lambda: "m-1" in handled_ids(db, env_name), 10, "the message")
    finally:
        if started:
            started[0].stop()
        thread.join(20)
        store.close()
    assert codes == [0]
    assert ("consuming", None) in states
    assert not any(r and ("guest@" in r or "enc:v1" in r) for _, r in states)


def test_missing_environment_or_amqp_section_is_a_configuration_error(db: Path) -> None:
    settings = load_settings(store_url=f"sqlite:///{db}")
    store = SqliteStore(settings.store_url)
    name = new_env_name()
    add_env(store, SecretBox(settings.secret_key_file), name, amqp=False)
    store.close()
    assert run_listener("nope", settings, install_signals=False) == 2
    assert run_listener(name, settings, install_signals=False) == 2


# --------------------------------------------------------------------------------------------------
# faults


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


@pytest.mark.fault
def test_store_unavailable_for_30_s_holds_messages_and_loses_none(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options) as listener:
        pub = publisher(env_name)
        for i in range(20):  # the store works: these are handled at once
            pub.publish(oslo_body("test.thing.update.end", {}, f"before-{i}"), f"before-{i}")
        wait_for(lambda: len(handled_ids(db, env_name)) == 20, 10, "the first messages")
        locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(db), "30"], stdout=subprocess.PIPE, text=True)
        try:
            assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
            locked_at = time.monotonic()
            for i in range(300):
                pub.publish(oslo_body("test.thing.update.end", {"seq": i}, f"during-{i}"), f"during-{i}")
            wait_for(lambda: sample("stackmap_event_store_unavailable_total", env_name) >= 2, 15,
                     "the listener to notice the store is unavailable")
            assert listener.consuming.is_set()
            assert not handled_ids(db, env_name) & {f"during-{i}" for i in range(300)}
            assert queue_depth(listener.names.dead) == 0 and queue_depth(listener.names.retry) == 0
            assert locker.wait(60) == 0
            assert time.monotonic() - locked_at >= 29
        finally:
            locker.kill()
        wait_for(lambda: handled_ids(db, env_name) >= set(pub.confirmed), 30, "every message after the outage")
        wait_for(lambda: queue_depth(listener.names.main) == 0, 10, "every message acked")
    calls = calls_by_message(db, env_name)
    assert all(calls[mid] == ["handled"] for mid in pub.confirmed), "each handled once, none retried"
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") == 320
    assert sample("stackmap_event_retries_total", env_name, event_type="test.thing.update.end") == 0
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def _rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", *args], check=True, capture_output=True, timeout=120)


@pytest.mark.fault
def test_broker_restart_mid_stream_loses_nothing(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    with running_listener(env_name, sqlite_store, options) as listener:
        # 3 ms each: the listener is mid-way through them when the broker goes
        publisher(env_name).publish_many(
            oslo_body("test.thing.update.end", {"sleep_ms": 3}, f"a-{i}") for i in range(2000))
        wait_for(lambda: len(handled_ids(db, env_name)) >= 300, 30, "the stream to be under way")
        try:
            _rabbitmqctl("stop_app")
            wait_for(lambda: not listener.consuming.is_set(), 20, "the listener to notice")
            assert len(handled_ids(db, env_name)) < 2000, "the stream was over before the restart"
            time.sleep(2)
        finally:
            _rabbitmqctl("start_app")
        wait_for(listener.consuming.is_set, 60, "the listener to reconnect")
        pub = publisher(env_name)  # and the stream goes on after the restart
        for i in range(500):
            pub.publish(oslo_body("test.thing.update.end", {}, f"b-{i}"), f"b-{i}")
        expected = {f"a-{i}" for i in range(2000)} | {f"b-{i}" for i in range(500)}
        wait_for(lambda: handled_ids(db, env_name) >= expected, 90, "every message, before and after")
        wait_for(lambda: queue_depth(listener.names.main) == 0, 20, "every message acked")
    calls = calls_by_message(db, env_name)
    handled_calls = sum(outcomes.count("handled") for outcomes in calls.values())
    assert handled_ids(db, env_name) == expected
    # redeliveries of what was in flight are the only duplicates
    assert handled_calls - len(expected) <= options.prefetch
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") <= handled_calls
    assert sample("stackmap_event_broker_reconnects_total", env_name) >= 1
    assert drain_queue(QueueNames.for_environment(env_name).dead) == []


def _bad_messages(count: int) -> tuple[list[tuple[bytes, str]], Counter[str]]:
    """``count`` generated bad messages: (body, expected outcome: 'ignored' or a dead-letter reason)."""
    huge = json.dumps({"event_type": "test.thing.update.end",
                       "payload": {"blob": "x" * (MAX_BODY_BYTES + 10)}}).encode()
    kinds: list[tuple[Any, str]] = [
        (lambda i: f"not json {i} {{".encode(), "not_json"),
        (lambda i: b"", "not_json"),
        (lambda i: b"\xff\xfe\x00garbage" + str(i).encode(), "not_utf8"),
        (lambda i: json.dumps([i, "list"]).encode(), "not_an_object"),
        (lambda i: json.dumps({"oslo.version": "2.0", "oslo.message": {"event_type": i}}).encode(), "bad_envelope"),
        (lambda i: json.dumps({"oslo.version": "2.0", "oslo.message": f"{{{i}"}).encode(), "bad_envelope"),
        (lambda i: json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps([i])}).encode(), "bad_envelope"),
        (lambda i: json.dumps({"payload": {"id": i}}).encode(), "no_event_type"),
        (lambda i: json.dumps({"event_type": i, "payload": {}}).encode(), "no_event_type"),
        (lambda i: json.dumps({"event_type": "test.thing.update.end"}).encode(), "bad_payload"),
        (lambda i: json.dumps({"event_type": "test.thing.update.end", "payload": f"s{i}"}).encode(), "bad_payload"),
        (lambda i: oslo_body("test.thing.update.end", {"do": "wrong_types", "id": i}, f"w{i}").encode(),
         "handler_failed"),
        (lambda i: oslo_body("test.thing.update.end", {"do": "unknown_id", "id": f"ghost-{i}"}, f"u{i}").encode(),
         "ignored"),
        (lambda i: oslo_body(f"made.up.event.{i % 97}", {"id": i}, f"e{i}").encode(), "ignored"),
        (lambda i: ("[" * 200_000).encode(), "too_deep"),
    ]
    out: list[tuple[bytes, str]] = []
    for i in range(count - 10):
        make, expected = kinds[i % len(kinds)]
        out.append((make(i), expected))
    out += [(huge, "too_large")] * 10
    return out, Counter(expected for _, expected in out)


@pytest.mark.fault
def test_ten_thousand_bad_messages_are_each_ignored_or_dead_lettered_with_a_reason(
        env_name: str, sqlite_store: Store, db: Path, options: EventManagerSettings) -> None:
    messages, expected = _bad_messages(10_000)
    with running_listener(env_name, sqlite_store, options) as listener:
        pub = publisher(env_name)
        assert pub.publish_many(body for body, _ in messages) == len(messages)
        names = listener.names
        wait_for(lambda: queue_depth(names.dead) == sum(v for k, v in expected.items() if k != "ignored"), 180,
                 "every bad message to be dead-lettered", interval=1.0)
        wait_for(lambda: queue_depth(names.main) == 0, 30, "every message acked")
        # still up: a good message after all that is handled
        pub.publish(oslo_body("test.thing.update.end", {}, "good"), "good")
        wait_for(lambda: "good" in handled_ids(db, env_name), 15, "a good message afterwards")
        assert listener.consuming.is_set()
    dead = drain_queue(QueueNames.for_environment(env_name).dead)
    reasons = Counter(str(h[REASON_HEADER]) for h, _ in dead)
    assert all(h.get(DETAIL_HEADER) is not None for h, _ in dead)
    assert reasons == Counter({k: v for k, v in expected.items() if k != "ignored"})
    for reason, count in reasons.items():
        assert sample("stackmap_event_dead_letters_total", env_name, reason=reason) == count
    ignored = sum(sample("stackmap_events_handled_total", env_name, event_type=t, result="ignored")
                  for t in ("other", "test.thing.update.end"))
    assert ignored == expected["ignored"]
    dead_counted = sum(sample("stackmap_events_handled_total", env_name, event_type=t, result="dead_lettered")
                       for t in ("invalid", "other", "test.thing.update.end"))
    assert dead_counted == len(dead)
    received = sum(sample("stackmap_events_received_total", env_name, event_type=t)
                   for t in ("invalid", "other", "test.thing.update.end"))
    assert received == 10_001
    assert sample("stackmap_events_handled_total", env_name, event_type="test.thing.update.end",
                  result="handled") == 1
