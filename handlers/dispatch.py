"""Routing notifications to handlers, by the table in ``config/events.json`` built once at start.

The dispatcher is the one place that turns a handler's exception into an outcome (a failure that
is not retried, like oslo's older dispatcher: a poison message must not loop), and that writes the
``messages`` entry for what a handled event changed.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from handlers.base import EventBase, EventResult
from handlers.envelope import Notification
from stackmap import paths
from stackmap.errors import ConfigError, StackmapError, StoreUnavailable
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
    """Handles the notifications of one environment; build once per listener."""

    def __init__(self, updater: Any, config: EventsConfig | None = None) -> None:
        self.config = config or load_events_config()
        self.updater = updater
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

    def read_ahead(self, notification: Notification) -> None:
        """Start the API reads this event's handling will make (see ``MapUpdater.read_ahead``)."""
        handler = self.table.get(notification.event_type)
        start = getattr(self.updater, "read_ahead", None)
        if handler is not None and callable(start):
            reads = handler.reads(notification)
            if reads:
                start(reads)

    def close(self) -> None:
        close = getattr(self.updater, "close", None)
        if callable(close):
            close()

    def handle(self, notification: Notification) -> EventResult:
        handler = self.table.get(notification.event_type)
        if handler is None:
            return EventResult.skip(f"no handler for {notification.event_type}")
        method = handler.method_for(notification.event_type)
        if method is None:
            return EventResult.skip(f"no handler for {notification.event_type}")
        try:
            result = method(notification)
            if not result.ignored:
                self.record(notification, result)
            return result
        except StoreUnavailable as exc:
            return EventResult.store_unavailable(str(exc))
        except StackmapError as exc:
            log.warning("event failed", event_type=notification.event_type, error=str(exc))
            return EventResult.failed(str(exc))
        except Exception as exc:  # a handler bug must not kill the listener nor loop the message
            log.error("handler crashed", event_type=notification.event_type, error=f"{type(exc).__name__}: {exc}",
                      exc_info=True)
            return EventResult.failed(f"handler error: {type(exc).__name__}: {exc}")

    def record(self, notification: Notification, result: EventResult) -> None:
        """An entry in ``messages`` for what the event did (operators read these, Calipso's UI too)."""
        store = getattr(self.updater, "store", None)
        environment = getattr(self.updater, "environment", None)
        if store is None:
            return
        from stackmap.model import Message, utcnow

        store.append_messages([Message(
            environment=environment, source_system="OpenStack", level=_level(notification, result),
            message=result.message or notification.event_type, related_object=result.related_object,
            related_object_type=result.display_context, display_context=notification.event_type,
            received_timestamp=utcnow()).to_doc()])
