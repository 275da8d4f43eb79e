"""A minimal consumer for e2e tests: a private queue on the rig's notification exchanges whose
messages go through the real Dispatcher, so a test can wait until the map has caught up."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import kombu

from handlers.envelope import BadMessage, parse

RIG_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class BusTap:
    def __init__(self, dispatcher: Any, bindings: list[tuple[str, str]]) -> None:
        self.dispatcher = dispatcher
        self.queue_name = f"stackmap.e2e.{uuid.uuid4().hex[:8]}"
        self.conn = kombu.Connection(RIG_BROKER)
        self.channel = self.conn.channel()
        self.queue = kombu.Queue(self.queue_name, channel=self.channel, auto_delete=False, durable=False)
        self.queue.declare()
        for exchange, key in bindings:
            ex = kombu.Exchange(exchange, type="topic", durable=False, channel=self.channel)
            ex.declare()
            self.queue.bind_to(ex, routing_key=key)
        self.results: list[tuple[str, Any]] = []
        self.last_handled = time.monotonic()
        # (event type, seconds from the notification's own timestamp to the end of its handling), for
        # events handled at their first delivery (a retry waits for the API on purpose)
        self.latencies: list[tuple[str, float]] = []

    def drain(self, quiet_for: float = 3.0, timeout: float = 60.0,
              busy: Callable[[], bool] = lambda: False) -> list[tuple[str, Any]]:
        """Handle messages until none arrived for ``quiet_for`` seconds (and ``busy()`` is false: the
        action that causes them may still be running); returns what was handled."""
        handled: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        later: list[tuple[float, int, Any]] = []  # (due, attempt, notification): retries with a delay
        while time.monotonic() < deadline and (time.monotonic() - quiet_since < quiet_for or later or busy()):
            due = [item for item in later if item[0] <= time.monotonic()]
            for item in due:
                later.remove(item)
                result = self.dispatcher.handle(item[2])
                if result.retry and item[1] < 10:
                    later.append((time.monotonic() + 0.5, item[1] + 1, item[2]))
                else:
                    handled.append((item[2].event_type, result))
                quiet_since = time.monotonic()
            message = self.queue.get(no_ack=False)
            if message is None:
                time.sleep(0.02)
                continue
            quiet_since = time.monotonic()
            try:
                notification = parse(message.body)
            except BadMessage as exc:
                handled.append(("bad", exc.reason))
                message.ack()
                continue
            result = self.dispatcher.handle(notification)
            if result.retry:
                later.append((time.monotonic() + 0.5, 1, notification))
            else:
                handled.append((notification.event_type, result))
                sent = _sent_at(notification.timestamp)
                if sent is not None:
                    self.latencies.append((notification.event_type, time.time() - sent))
            message.ack()
        self.results.extend(handled)
        return handled

    def close(self) -> None:
        try:
            self.queue.delete()
        finally:
            self.conn.release()


def _sent_at(stamp: str | None) -> float | None:
    """oslo's notification timestamp (UTC, "2026-11-23 12:00:00.123456") as epoch seconds."""
    if not stamp:
        return None
    for fmt in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return datetime.strptime(stamp, fmt).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    return None
