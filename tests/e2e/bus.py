"""The product's own consumer for e2e tests: a real ``Listener`` (its queue, batching, retries with
delay, coalescing) in a thread, driving the real Dispatcher, so a test can wait until the map has
caught up and measure how long each notification took to reach it.

The listener runs under its own environment name (its queues are ``stackmap.notifications.<name>``,
deleted on close) so it never competes with a real event manager for the rig's notifications.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import kombu

from daemons.event_manager.listener import Listener, QueueNames
from handlers.base import EventResult
from handlers.envelope import Notification
from stackmap.settings import EventManagerSettings

RIG_BROKER = "amqp://guest:guest@127.0.0.1:5672//"


class _Recording:
    """The dispatcher as the listener's sink, remembering every final result."""

    def __init__(self, dispatcher: Any, bindings: list[tuple[str, str]]) -> None:
        self.dispatcher = dispatcher
        self._bindings = bindings
        self.table = getattr(dispatcher, "table", {})
        self.lock = threading.Lock()
        self.final: list[tuple[str, EventResult]] = []
        self.retried: set[str] = set()  # message ids that waited for the API on purpose
        self.last = time.monotonic()

    def bindings(self) -> list[tuple[str, str]]:
        return self._bindings

    def coalesce_key(self, notification: Notification) -> Any:
        return self.dispatcher.coalesce_key(notification)

    def read_ahead(self, notification: Notification) -> None:
        self.dispatcher.read_ahead(notification)

    def flush(self) -> None:
        self.dispatcher.flush()

    def will_wait(self, notification: Notification) -> bool:
        return bool(self.dispatcher.will_wait(notification))

    def abandon(self) -> None:
        self.dispatcher.abandon()

    def handle(self, notification: Notification) -> EventResult:
        result: EventResult = self.dispatcher.handle(notification)
        with self.lock:
            self.last = time.monotonic()
            if result.retry:
                self.retried.add(str(notification.message_id))
            else:
                self.final.append((notification.event_type, result))
        return result


class BusTap:
    def __init__(self, dispatcher: Any, bindings: list[tuple[str, str]]) -> None:
        self.environment = f"e2e{uuid.uuid4().hex[:8]}"
        self.queue_name = QueueNames.for_environment(self.environment).main
        self.sink = _Recording(dispatcher, bindings)
        options = EventManagerSettings(retry_delay_s=0.5, retry_delay_max_s=2.0, retry_limit=20)
        self.listener = Listener(self.environment, kombu.Connection(RIG_BROKER, heartbeat=options.heartbeat_s),
                                 self.sink, options, on_committed=self._committed)
        self.results: list[tuple[str, Any]] = []
        # (event type, seconds from the notification's own timestamp to the commit of its change), for
        # events not retried (a retry waits for the API on purpose)
        self.latencies: list[tuple[str, float]] = []
        self._committed_log: list[tuple[Notification, float]] = []
        self._seen = 0
        self._thread = threading.Thread(target=self.listener.run, name="e2e-listener", daemon=True)
        self._thread.start()
        if not self.listener.consuming.wait(30):
            raise RuntimeError("the e2e listener did not start consuming")

    def _committed(self, items: list[tuple[Notification, float]]) -> None:
        with self.sink.lock:
            self._committed_log.extend(items)
            self.sink.last = time.monotonic()

    def drain(self, quiet_for: float = 3.0, timeout: float = 60.0,
              busy: Callable[[], bool] = lambda: False) -> list[tuple[str, Any]]:
        """Wait until nothing was handled for ``quiet_for`` seconds (and ``busy()`` is false: the action
        that causes the notifications may still be running); returns the final results since the
        last drain (events coalesced into a later one count as handled by it)."""
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            with self.sink.lock:
                quiet = time.monotonic() - max(self.sink.last, started) >= quiet_for
            if quiet and not busy():
                break
            time.sleep(0.05)
        with self.sink.lock:
            final, self.sink.final = self.sink.final, []
            committed, self._committed_log = self._committed_log, []
            retried = set(self.sink.retried)
        handled: list[tuple[str, Any]] = list(final)
        finals = {et for et, _ in final}
        for notification, at in committed:
            if notification.event_type not in finals:  # coalesced into a later one: acked, not handled
                handled.append((notification.event_type, EventResult.skip("coalesced")))
            sent = notification.sent_at
            if sent is not None and str(notification.message_id) not in retried:
                self.latencies.append((notification.event_type, at - sent))
        self.results.extend(handled)
        return handled

    def close(self) -> None:
        self.listener.stop()
        self._thread.join(30)
        names = QueueNames.for_environment(self.environment)
        with kombu.Connection(RIG_BROKER) as conn:
            for queue in (names.main, names.retry, names.dead):
                with suppress(Exception):
                    conn.channel().queue_delete(queue)
            with suppress(Exception):
                conn.channel().exchange_delete(names.dead)

