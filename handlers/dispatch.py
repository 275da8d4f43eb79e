"""Routing notifications to handlers, by the table in ``config/events.json`` built once at start.

The dispatcher is the one place that turns a handler's exception into an outcome (a failure that
is not retried, like oslo's older dispatcher: a poison message must not loop), and that writes the
``messages`` entry for what a handled event changed.
"""

from __future__ import annotations

import importlib
import json
from contextlib import AbstractContextManager, suppress
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from handlers.base import EventBase, EventResult
from handlers.envelope import Notification
from stackmap import paths
from stackmap.errors import ConfigError, StackmapError, StoreError, StoreUnavailable
from stackmap.logging import get_logger
from stackmap.model import MessageLevel
from stackmap.settings import describe_validation_error

log = get_logger("stackmap.events")

HANDLER_MODULES = ("instance", "network", "subnet", "port", "router", "floating_ip", "security_group", "volume",
                   "server_group", "load_balancer")


class Binding(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exchange: str = Field(min_length=1)
    routing_keys: list[str] = Field(min_length=1)


class EventsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    handlers_package: str = "handlers"
    bindings: list[Binding]
    event_handlers: dict[str, str]

    def bound_to(self, exchanges: list[str], routing_key: str = "notifications.*") -> EventsConfig:
        """The same handlers listening on other exchanges (a test's or a bench's own, where the
        broker may also serve a real cloud's nova and neutron)."""
        return self.model_copy(update={"bindings": [Binding(exchange=e, routing_keys=[routing_key])
                                                    for e in exchanges]})


def handler_classes() -> dict[str, type[EventBase]]:
    found: dict[str, type[EventBase]] = {}
    for module in HANDLER_MODULES:
        mod = importlib.import_module(f"handlers.{module}")
        for value in vars(mod).values():
            if isinstance(value, type) and issubclass(value, EventBase) and value is not EventBase and value.handles:
                found[value.__name__] = value
    return found


def load_events_config(path: str | Path | None = None) -> EventsConfig:
    file = Path(path) if path else paths.defaults_dir() / "events.json"
    try:
        config = EventsConfig.model_validate(json.loads(file.read_text()))
    except OSError as exc:
        raise ConfigError(f"cannot read events file {file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"events file {file} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    except ValidationError as exc:
        raise ConfigError(f"events file {file} is invalid: {describe_validation_error(exc)}") from None
    classes = handler_classes()
    for event_type, name in config.event_handlers.items():
        cls = classes.get(name)
        if cls is None:
            raise ConfigError(f"events file {file}: {event_type} names unknown handler {name!r}")
        if event_type not in cls.handles:
            raise ConfigError(f"events file {file}: handler {name} does not handle {event_type}")
    return config


def _level(notification: Notification, result: EventResult) -> MessageLevel:
    if not result.result:
        return MessageLevel.WARNING if result.retry else MessageLevel.ERROR
    try:
        return MessageLevel.coerce(notification.priority)
    except ValueError:
        return MessageLevel.INFO


class Dispatcher:
    """Handles the notifications of one environment; build once per listener.

    Each event's writes commit all-or-nothing where the store can (``Store.transaction``). With
    ``batched=True`` (how the listener builds it) the events handled between two ``flush()`` calls
    also share one transaction, their ``messages`` entries are written together, and the cliques
    they alter are rebuilt once, at the flush: nothing of a batch is committed before ``flush()``
    returns, which the listener calls before acknowledging the batch."""

    def __init__(self, updater: Any, config: EventsConfig | None = None, *, batched: bool = False) -> None:
        self.config = config or load_events_config()
        self.updater = updater
        self.batched = batched
        self._batch: AbstractContextManager[bool] | None = None
        self._messages: list[dict[str, Any]] = []
        self._lost: str | None = None  # why the events handled since the last flush were undone
        self._atomic_batch = False  # the batches commit as a whole (known once the first one is open)
        classes = handler_classes()
        instances: dict[str, EventBase] = {}
        self.table: dict[str, EventBase] = {}
        for event_type, name in self.config.event_handlers.items():
            if name not in instances:
                instances[name] = classes[name](updater)
            self.table[event_type] = instances[name]

    def bindings(self) -> list[tuple[str, str]]:
        return [(b.exchange, key) for b in self.config.bindings for key in b.routing_keys]

    def coalesce_key(self, notification: Notification) -> tuple[str, str] | None:
        """(kind, object id) when this event only brings an object up to date: then a later event with
        the same key, handled after it, leaves the map exactly as handling both would."""
        handler = self.table.get(notification.event_type)
        return handler.coalesce_key(notification) if handler is not None else None

    def group_key(self, notification: Notification) -> tuple[str, str] | None:
        """(handler, method) when the event can be handled together with others that share it
        (``handle_many``), and in any order with those of other keys: only in batches that commit as a
        whole, where links, cliques and instances derived from ports are redone at the flush from the
        state all the batch's events leave (``MapUpdater.begin_batch``)."""
        if not self.batched or not self._atomic_batch:
            return None
        handler = self.table.get(notification.event_type)
        if handler is None or handler.many_for(notification.event_type) is None:
            return None
        return type(handler).__name__, handler.handles[notification.event_type]

    def handle_many(self, notifications: list[Notification]) -> list[EventResult]:
        """Handle consecutive events of one ``group_key`` together, all-or-nothing, as one after the
        other would; one result per event. Where that cannot be done (a store without atomic
        batches, an object without its parent, any failure), they are handled one at a time."""
        first = notifications[0]
        handler = self.table.get(first.event_type)
        many = handler.many_for(first.event_type) if handler is not None else None
        key = self.group_key(first)
        store = self._store()
        if handler is None or many is None or store is None or len(notifications) == 1 \
                or any(self.group_key(n) != key for n in notifications[1:]):
            return [self.handle(n) for n in notifications]
        try:
            self._commit_before_waiting(notifications)
            self._open_batch()
            if not self._atomic_batch:
                return [self.handle(n) for n in notifications]
            with store.transaction() as atomic:  # these events' writes, all or nothing
                self.updater.atomic = atomic
                results = many(notifications)
                for notification, result in zip(notifications, results, strict=True):
                    if not result.ignored:
                        self.record(notification, result)
            return results
        except StoreUnavailable as exc:
            return [EventResult.store_unavailable(str(exc))] * len(notifications)
        except StackmapError as exc:
            if not exc.retryable:
                return self._one_at_a_time(notifications, exc)
            # the API is away: one at a time each would wait for it again, to the same end
            log.warning("API unavailable; events will be retried", event_type=first.event_type,
                        events=len(notifications), error=str(exc))
            return [EventResult.unavailable(str(exc))] * len(notifications)
        except Exception as exc:
            return self._one_at_a_time(notifications, exc)

    def _one_at_a_time(self, notifications: list[Notification], exc: Exception) -> list[EventResult]:
        """After a pass over several events was undone: each handled alone says what is wrong with it."""
        quiet = isinstance(exc, StackmapError)  # e.g. an object whose parent is not mapped yet
        (log.info if quiet else log.warning)(
            "events not handled together; handling them one at a time", event_type=notifications[0].event_type,
            events=len(notifications), error=f"{type(exc).__name__}: {exc}", exc_info=not quiet)
        return [self.handle(n) for n in notifications]

    def read_ahead(self, notification: Notification) -> None:
        """Start the API reads this event's handling will make (see ``MapUpdater.read_ahead``)."""
        handler = self.table.get(notification.event_type)
        start = getattr(self.updater, "read_ahead", None)
        if handler is not None and callable(start):
            reads = handler.reads(notification)
            if reads:
                start(reads)

    def close(self) -> None:
        if self._batch is not None:  # never flushed: undone, and the listener never acked it
            self._abandon(StackmapError("dispatcher closed before the batch was flushed"))
        close = getattr(self.updater, "close", None)
        if callable(close):
            close()

    def _store(self) -> Any:
        return getattr(self.updater, "store", None)

    def _open_batch(self) -> None:
        store = self._store()
        if store is None or self._batch is not None:
            return
        batch = store.transaction()
        atomic = batch.__enter__()
        self._batch = batch
        self._atomic_batch = atomic
        if atomic:
            # Cliques wait for the flush only where the batch commits as a whole: elsewhere a crash
            # before the flush would leave the events' writes without the cliques they alter, and
            # their redelivery finds nothing left to change.
            self.updater.begin_batch()

    def flush(self) -> None:
        """Rebuild the cliques the batch altered, write its messages and commit; raises
        ``StoreError`` (and undoes the whole batch) when that cannot be done."""
        lost, self._lost = self._lost, None
        if lost is not None:  # an earlier commit of this batch's events failed: they must come again
            self._abandon(StoreUnavailable(lost))
            raise StoreUnavailable(lost)
        batch, self._batch = self._batch, None
        if batch is None:
            return
        messages, self._messages = self._messages, []
        try:
            try:
                self.updater.flush_batch()
            except StoreError:
                raise
            except Exception as exc:  # a link or clique bug must not cost the batch's object updates
                log.error("relinking the batch's objects or rebuilding its cliques failed",
                          error=f"{type(exc).__name__}: {exc}", exc_info=True)
            if messages:
                self._store().append_messages(messages)
        except BaseException as exc:
            self.updater.discard_batch()
            batch.__exit__(type(exc), exc, exc.__traceback__)
            raise
        batch.__exit__(None, None, None)  # the commit; StoreUnavailable if it fails

    def abandon(self) -> None:
        """Undo the open batch (its messages will not be acknowledged, so they come back)."""
        self._abandon(StackmapError("batch abandoned"))

    def will_wait(self, notification: Notification) -> bool:
        """Whether handling this event will wait for the API (its reads were not read ahead, or have
        not come back yet). The listener settles its batch before such an event, so the events
        before it are committed and acknowledged instead of waiting with it."""
        handler = self.table.get(notification.event_type)
        if handler is None:
            return False
        try:
            return not self.updater.reads_ready(handler.reads(notification))
        except Exception:  # a payload too broken to name its reads: its handler will say why
            return False

    def _commit_before_waiting(self, notifications: list[Notification]) -> None:
        """Commit the batch so far when these events are going to wait for the API: a batch holds the
        store's write lock from its first write, and the scan manager and the monitor handler must
        not wait on a slow cloud. (The listener settles its batch before such events already; events
        handled together make all their reads before their first write.)"""
        if self._batch is None or not any(self.will_wait(n) for n in notifications):
            return
        try:
            self.flush()
        except StoreError as exc:
            # those events were acknowledged by nobody yet: the listener's next flush must fail too,
            # so that it handles them again instead of acknowledging them
            self._lost = f"the batch could not be committed: {exc}"
            raise StoreUnavailable(self._lost) from None

    def _abandon(self, exc: BaseException) -> None:
        batch, self._batch = self._batch, None
        self._messages = []
        self.updater.discard_batch()
        if batch is not None:
            with suppress(Exception):
                batch.__exit__(type(exc), exc, exc.__traceback__)

    def handle(self, notification: Notification) -> EventResult:
        handler = self.table.get(notification.event_type)
        if handler is None:
            return EventResult.skip(f"no handler for {notification.event_type}")
        method = handler.method_for(notification.event_type)
        if method is None:
            return EventResult.skip(f"no handler for {notification.event_type}")
        store = self._store()
        try:
            if self.batched:
                self._commit_before_waiting([notification])
                self._open_batch()
            if store is None:
                return method(notification)
            with store.transaction() as atomic:  # this event's writes, all or nothing
                self.updater.atomic = atomic
                result = method(notification)
                if not result.ignored:
                    self.record(notification, result)
            return result
        except StoreUnavailable as exc:
            return EventResult.store_unavailable(str(exc))
        except StackmapError as exc:
            if exc.retryable:
                log.warning("API unavailable; event will be retried", event_type=notification.event_type,
                            error=str(exc))
                return EventResult.unavailable(str(exc))
            log.warning("event failed", event_type=notification.event_type, error=str(exc))
            return EventResult.failed(str(exc))
        except Exception as exc:  # a handler bug must not kill the listener nor loop the message
            log.error("handler crashed", event_type=notification.event_type, error=f"{type(exc).__name__}: {exc}",
                      exc_info=True)
            return EventResult.failed(f"handler error: {type(exc).__name__}: {exc}")

    def record(self, notification: Notification, result: EventResult) -> None:
        """An entry in ``messages`` for what the event did (operators read these, Calipso's UI too)."""
        store = self._store()
        environment = getattr(self.updater, "environment", None)
        if store is None:
            return
        from stackmap.model import Message, utcnow

        (self._messages.extend if self._batch is not None else store.append_messages)([Message(
            environment=environment, source_system="OpenStack", level=_level(notification, result),
            message=result.message or notification.event_type, related_object=result.related_object,
            related_object_type=result.display_context, display_context=notification.event_type,
            received_timestamp=utcnow()).to_doc()])
