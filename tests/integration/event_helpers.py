"""Helpers for the event listener/manager tests on the real RabbitMQ: environments, publishing,
reading queues and metrics, and cleaning up every queue and exchange a test created."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import amqp
import kombu
import pytest

from daemons.event_manager.listener import Listener, QueueNames
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.settings import EventManagerSettings
from stackmap.store import Store
from tests.integration.event_doubles import DoubleSink, exchanges_for

BROKER = "amqp://guest:guest@127.0.0.1:5672//"


def require_broker() -> str:
    """The broker URL, failing the test clearly when RabbitMQ is not running."""
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return BROKER
    except OSError:
        pytest.fail("RabbitMQ is not listening on 127.0.0.1:5672 (start it with: rabbitmq-server -detached)")


def new_env_name(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def env_config(name: str, *, amqp_port: int = 5672, listen: bool = True, scanned: bool = True,
               amqp: bool = True) -> EnvironmentConfig:
    sections: list[dict[str, Any]] = [
        {"name": "OpenStack", "host": "127.0.0.1", "user": "admin", "pwd": "secret"}]
    if amqp:
        sections.append({"name": "AMQP", "host": "127.0.0.1", "port": amqp_port, "user": "guest", "pwd": "guest"})
    return EnvironmentConfig.model_validate({"name": name, "listen": listen, "scanned": scanned,
                                             "configuration": sections})


def add_env(store: Store, box: SecretBox, name: str, **kw: Any) -> None:
    add_environment(store, box, env_config(name, **kw))


def oslo_body(event_type: str, payload: Any, message_id: str, *, wrap: bool = True,
              timestamp: str | None = None) -> str:
    """A notification as oslo.messaging puts it on the wire (v2 wrapper), or a bare v1 envelope."""
    inner = {"event_type": event_type, "payload": payload, "message_id": message_id, "priority": "INFO",
             "publisher_id": "test.host", "timestamp": timestamp or datetime.now(UTC).strftime(
                 "%Y-%m-%d %H:%M:%S.%f"), "_context_request_id": "req-1"}
    text = json.dumps(inner)
    return json.dumps({"oslo.version": "2.0", "oslo.message": text}) if wrap else text


def versioned_body(event_type: str, data: dict[str, Any], message_id: str) -> str:
    """A nova versioned notification (payload is a nova_object tree), oslo-wrapped."""
    inner = {"event_type": event_type, "priority": "INFO", "publisher_id": "nova-compute:host1",
             "message_id": message_id, "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
             "payload": {"nova_object.name": "InstanceUpdatePayload", "nova_object.namespace": "nova",
                         "nova_object.version": "1.8", "nova_object.data": data}}
    return json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)})


class Publisher:
    """Publishes to a test exchange with publisher confirms, persistent, retrying through broker
    restarts; ``confirmed`` lists the message ids the broker took."""

    def __init__(self, exchange: str, url: str = BROKER) -> None:
        self.exchange = exchange
        self.conn = kombu.Connection(url, transport_options={"confirm_publish": True}, connect_timeout=5)
        self.producer = kombu.Producer(self.conn, auto_declare=False)
        self.confirmed: list[str] = []
        self._declared = False

    def publish(self, body: str | bytes, message_id: str = "", routing_key: str = "notifications.info",
                content_type: str = "application/json") -> None:
        def _do(body: Any = body) -> None:
            self.producer.publish(body, exchange=self.exchange, routing_key=routing_key,
                                  content_type=content_type, content_encoding="utf-8" if isinstance(body, str)
                                  else "binary", delivery_mode=2)

        self.conn.ensure(self.producer, _do, max_retries=120, interval_start=0.5, interval_step=0.5,
                         interval_max=1)()
        if message_id:
            self.confirmed.append(message_id)

    def publish_many(self, bodies: Iterable[str | bytes], routing_key: str = "notifications.info") -> int:
        """Fast: one channel, no confirm per message; the broker confirms them all at the end, in order."""
        count = 0
        with kombu.Connection(BROKER) as conn:
            ch = conn.channel()
            ch.confirm_select()
            for body in bodies:
                ch.basic_publish(amqp.Message(body, content_type="application/json", delivery_mode=2),
                                 exchange=self.exchange, routing_key=routing_key)
                count += 1
            # confirms arrive in order: once a confirmed publish returns, all before it are confirmed too
            ch.basic_publish_confirm(amqp.Message(b"{}", delivery_mode=2), exchange="", routing_key="")
        return count

    def close(self) -> None:
        self.conn.release()


def drain_queue(name: str, url: str = BROKER, limit: int = 1_000_000) -> list[tuple[dict[str, Any], bytes]]:
    """Take every message out of a queue: (headers, body)."""
    out: list[tuple[dict[str, Any], bytes]] = []
    with kombu.Connection(url) as conn:
        ch = conn.channel()
        ch.auto_decode = False
        while len(out) < limit:
            msg = ch.basic_get(name, no_ack=True)
            if msg is None:
                break
            out.append((dict(msg.headers or {}), msg.body))
    return out


def queue_depth(name: str, url: str = BROKER) -> int:
    with kombu.Connection(url) as conn:
        ok = conn.channel().queue_declare(name, passive=True)
        return int(ok.message_count)


def cleanup_amqp(environment: str, url: str = BROKER, extra_exchanges: Iterable[str] = ()) -> None:
    names = QueueNames.for_environment(environment)
    with kombu.Connection(url) as conn:
        for queue in (names.main, names.retry, names.dead):
            ch = conn.channel()
            with suppress(Exception):
                ch.queue_delete(queue)
        for exchange in (names.dead, *exchanges_for(environment), *extra_exchanges):
            ch = conn.channel()
            with suppress(Exception):
                ch.exchange_delete(exchange)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def calls_by_message(db: Path, environment: str) -> dict[str, list[str]]:
    """message_id -> the double's outcomes, in order, read straight from the SQLite store."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT related_object, doc FROM messages WHERE environment = ? ORDER BY seq",
                            (environment,)).fetchall()
    out: dict[str, list[str]] = {}
    for mid, doc in rows:
        out.setdefault(mid, []).append(json.loads(doc)["message"])
    return out


def handled_ids(db: Path, environment: str) -> set[str]:
    return {mid for mid, outcomes in calls_by_message(db, environment).items() if "handled" in outcomes}


@contextmanager
def running_listener(environment: str, store: Store, options: EventManagerSettings,
                     url: str = BROKER, sink: Any = None, **kw: Any) -> Iterator[Listener]:
    """A listener with the test double (or ``sink``), in a thread of this process, consuming before
    it is yielded."""
    listener = Listener(environment, kombu.Connection(url, transport_options={"confirm_publish": True},
                                                      heartbeat=options.heartbeat_s, connect_timeout=5),
                        sink if sink is not None else DoubleSink(environment, store), options, **kw)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            listener.run()
        except BaseException as exc:  # surfaced by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"listener-{environment}", daemon=True)
    thread.start()
    try:
        if not listener.consuming.wait(20):
            raise AssertionError(f"listener did not start consuming: {errors}")
        yield listener
    finally:
        listener.stop()
        thread.join(30)
        assert not thread.is_alive(), "listener did not stop"
        assert not errors, errors


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` in a /metrics text."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        m = re.match(r"^(\w+)(?:\{(.*)\})?\s+(\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else 0.0
