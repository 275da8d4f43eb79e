"""A stand-in for the handlers' Dispatcher, for tests of the event listener's mechanics.

It has the interface the listener drives (``bindings()``, ``handle()``, ``event_types()``) and does
what the payload tells it (``payload["do"]``), so a test can produce every outcome on demand. Every
call is written to the real store (one ``messages`` document, committed, ``related_object`` = the
notification's message_id) exactly like the dispatcher records what an event did, so tests count
calls and handled messages from the store, and a store made unavailable makes it fail for real.

Its bindings are test-only exchanges derived from the environment's name, never nova/neutron: the
RabbitMQ these tests use also serves a real OpenStack rig.
"""

from __future__ import annotations

import time
from multiprocessing.connection import Connection
from typing import Any

from handlers.base import EventResult
from handlers.envelope import Notification
from stackmap.errors import StackmapError, StoreUnavailable
from stackmap.model import Message
from stackmap.secrets import SecretBox
from stackmap.store import Store

KNOWN = ("test.thing.create.end", "test.thing.update.end", "instance.update", "compute.instance.update")
ROUTING_KEYS = ("notifications.*", "versioned_notifications.*")


def exchanges_for(environment: str) -> list[str]:
    return [f"stackmap-test.{environment}.nova", f"stackmap-test.{environment}.neutron"]


class DoubleSink:
    def __init__(self, environment: str, store: Store) -> None:
        self.environment = environment
        self.store = store

    def bindings(self) -> list[tuple[str, str]]:
        return [(ex, key) for ex in exchanges_for(self.environment) for key in ROUTING_KEYS]

    def event_types(self) -> list[str]:
        return list(KNOWN)

    def calls(self, message_id: str) -> int:
        return len(self.store.find_messages(self.environment, related_object=message_id, limit=10_000))

    def _record(self, n: Notification, outcome: str) -> None:
        self.store.append_messages([Message(
            environment=self.environment, source_system="test", message=outcome,
            related_object=n.message_id, display_context=n.event_type).to_doc()])

    def coalesce_key(self, n: Notification) -> tuple[str, str] | None:
        """Like the handlers' re-read events: ``{"key": ...}`` in the payload names the object."""
        key = n.data.get("key")
        return ("thing", key) if isinstance(key, str) else None

    def handle(self, n: Notification) -> EventResult:
        try:
            return self._handle(n)
        except StoreUnavailable as exc:  # what Dispatcher.handle does
            return EventResult.store_unavailable(str(exc))

    def _handle(self, n: Notification) -> EventResult:
        if n.event_type not in KNOWN:
            return EventResult.skip(f"no handler for {n.event_type}")
        data = n.data
        action = data.get("do", "ok")
        if isinstance(data.get("sleep_ms"), int | float):  # a slow handler, so a stream is still mid-way
            time.sleep(data["sleep_ms"] / 1000)
        if action == "raise":
            raise RuntimeError("the double was told to raise")
        if action == "ignore":
            self._record(n, "ignored")
            return EventResult.skip("nothing to do")
        if action == "fail":
            self._record(n, "failed")
            return EventResult.failed("the double was told to fail")
        if action == "wrong_types" and not isinstance(data.get("id"), str):
            self._record(n, "failed")
            return EventResult.failed(f"id is {type(data.get('id')).__name__}, not a string")
        if action == "unknown_id":
            self._record(n, "ignored")
            return EventResult.skip(f"object {data.get('id')} is not in the map")
        if action == "retry":
            self._record(n, "retry")
            return EventResult.again("not there yet")
        if isinstance(action, str) and action.startswith("retry_then_ok:"):
            wanted = int(action.split(":", 1)[1])
            if self.calls(str(n.message_id)) < wanted:
                self._record(n, "retry")
                return EventResult.again("not there yet")
        self._record(n, "handled")
        return EventResult.done("done", n.message_id)


def make_sink(environment: str, store: Store, box: SecretBox, settings: Any = None) -> DoubleSink:
    """Sink factory for ``--sink tests.integration.event_doubles:make_sink``."""
    if environment.endswith("-crash"):
        raise RuntimeError("this environment's sink cannot be built (test)")
    if environment.endswith("-badconf"):
        raise StackmapError("this environment's configuration is unusable (test)")
    return DoubleSink(environment, store)


def silent_listener(environment: str, settings: Any, sink_spec: str, pipe: Connection | None) -> None:
    """A listener process that hangs without ever reporting (what a wedged listener looks like)."""
    time.sleep(3600)


def failing_listener(environment: str, settings: Any, sink_spec: str, pipe: Connection | None) -> None:
    """A listener process that reports a reason and dies at once."""
    if pipe is not None:
        pipe.send(("error", "broker exploded (test)"))
    raise SystemExit(1)


class GroupingSink(DoubleSink):
    """The double, handling events together as the dispatcher does: ``{"group": g}`` in a payload is
    its group key; ``handle_many`` notes each group it is given (message ids), then handles each
    event as ``handle`` would, in order. A group holding ``{"do": "outage"}`` reports a store
    outage for all of its events, as an undone pass would (once per message id, then it works)."""

    def __init__(self, environment: str, store: Store) -> None:
        super().__init__(environment, store)
        self.groups: list[list[str]] = []
        self.order: list[str] = []  # message ids, in the order they were handled (retries included)
        self.outages: set[str] = set()

    def group_key(self, n: Notification) -> str | None:
        group = n.data.get("group")
        return group if isinstance(group, str) else None

    def handle(self, n: Notification) -> EventResult:
        self.order.append(str(n.message_id))
        return super().handle(n)

    def handle_many(self, ns: list[Notification]) -> list[EventResult]:
        ids = [str(n.message_id) for n in ns]
        self.groups.append(ids)
        outage = [i for n, i in zip(ns, ids, strict=True) if n.data.get("do") == "outage" and i not in self.outages]
        if outage:
            self.outages.update(outage)
            return [EventResult.store_unavailable("the double was told the store is away")] * len(ns)
        return [self.handle(n) for n in ns]
