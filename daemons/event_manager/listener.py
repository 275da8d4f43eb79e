"""One environment's notification listener: its own durable queue, ack only after commit.

Why it looks the way it does (Calipso's listener is the counter-example, see calipso_model.md §4.3):

- **Its own queue.** ``stackmap.notifications.<env>`` is durable and bound to the service exchanges
  and routing keys of ``config/events.json`` (via the sink's ``bindings()``), like an oslo.messaging
  listener pool: it never takes messages from ``notifications.info`` and whoever reads that. Optional
  TTL, max length and expiry bound it, so a listener that is away for long cannot fill the broker.
  The service exchanges are declared as oslo declares them (topic, non-durable); one that exists with
  other flags is used as it is.
- **Ack after commit, in batches.** Messages are handled as they arrive (the handlers commit their
  writes, or buffer them for a ``flush()`` the listener calls), and acknowledged together with one
  ``basic.ack(multiple=True)`` once per ``batch_size`` messages or ``batch_max_delay_ms``, or when the
  stream pauses. While a backlog waits behind the batch (a quarter of a batch or more: not the few
  messages a steady stream brings during one batch), it may grow for ``batch_backlog_delay_ms``:
  those messages are late already, and the per-batch costs (commit, clique rebuilds, ack) shared by
  more events drain the backlog sooner. A crash before the ack means redelivery, and handlers are idempotent.
- **One place decides a message's fate.** The sink returns an ``EventResult``; only this module
  turns it into ack, retry or dead letter. ``retry`` republishes a copy carrying
  ``x-stackmap-attempt`` + 1 to ``<queue>.retry`` (which holds it for a growing delay and then
  dead-letters it back to the main queue), then acks the original: the count lives in the message,
  not in this process. Past ``retry_limit`` attempts, a failed result, or a body that cannot be
  decoded, a copy goes to ``<queue>.dead`` with ``x-stackmap-reason`` and ``x-stackmap-detail``.
  Copies are published with publisher confirms before the original is acked, so none is lost.
  Unknown event types are acked and counted as ignored, never left unacked.
- **An API outage is not the event's fault either.** A result that says the API is away
  (``EventResult.unavailable``) is retried like any other, but for as long as the outage lasts, up to
  ``api_outage_max_s`` since its handler first found the API away (``x-stackmap-away-since``, kept in
  the message), not only ``retry_limit`` times: an API upgrade that takes half an hour must not
  dead-letter everything that happened meanwhile. Unlike a store outage, other events go on: one
  API (cinder, say) may be away while the others answer.
- **A store outage is nobody's fault.** When the store is unavailable (the dispatcher reports it as a
  retry whose message starts with ``store unavailable``), the listener does not burn the message's
  attempts: it keeps the message and everything after it unacked, waits with backoff while keeping
  the broker connection alive, and tries the same message again. Nothing is lost and order is kept.
- **Waiting events are handled together** where the sink can do that in one pass (``group_key`` and
  ``handle_many``): a run of keyed deliveries goes key by key, each delivery still with its own fate.
  Anything without a key is a barrier, so only events the sink declares independent are reordered.
- **Reconnects are kombu's job** (``ensure_connection`` with a bounded backoff): after a broker
  restart the listener redeclares its queues and resumes from the durable queue.
"""

from __future__ import annotations

import gc
import importlib
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.connection import Connection as Pipe
from typing import Any, Protocol, runtime_checkable

import amqp
import kombu
import kombu.exceptions

from daemons.event_manager import metrics as M
from handlers.base import EventResult
from handlers.envelope import BadMessage, Notification, parse
from stackmap.amqp_reads import BufferedReads, buffer_socket_reads
from stackmap.errors import ConfigError, SecretsUnavailable, StackmapError, StoreError
from stackmap.logging import configure_logging, get_logger
from stackmap.model import AMQPSection
from stackmap.secrets import SecretBox
from stackmap.settings import EventManagerSettings, Settings
from stackmap.store import Store, open_store

log = get_logger("stackmap.event_listener")

ATTEMPT_HEADER = "x-stackmap-attempt"
REASON_HEADER = "x-stackmap-reason"
DETAIL_HEADER = "x-stackmap-detail"
ENVIRONMENT_HEADER = "x-stackmap-environment"
EVENT_TYPE_HEADER = "x-stackmap-event-type"
DEAD_AT_HEADER = "x-stackmap-dead-at"
ORIGINAL_EXCHANGE_HEADER = "x-stackmap-original-exchange"
ORIGINAL_ROUTING_KEY_HEADER = "x-stackmap-original-routing-key"
LAST_ERROR_HEADER = "x-stackmap-last-error"
AWAY_SINCE_HEADER = "x-stackmap-away-since"  # when its handler first found the API away (epoch seconds)

# reasons of our own (BadMessage brings its own short labels: not_json, bad_envelope, ...)
REASON_HANDLER_FAILED = "handler_failed"
REASON_RETRY_LIMIT = "retry_limit"
REASON_AWAY_TOO_LONG = "unavailable_too_long"
REASON_SINK_ERROR = "sink_error"

STORE_OUTAGE_PREFIX = "store unavailable"
DEFAULT_SINK = "daemons.event_manager.listener:handlers_sink"

# process exit codes of a listener (the supervisor reads them)
EXIT_STOPPED = 0
EXIT_CRASHED = 1
EXIT_CONFIG = 2

DETAIL_LIMIT = 1000


# --------------------------------------------------------------------------------------------------
# what the listener needs from the handlers


@runtime_checkable
class EventSink(Protocol):
    """What a listener drives: the real one is ``Dispatcher(MapUpdater(store, box, env))``.

    ``handle`` never raises (a raise is treated as a failure and dead-lettered anyway) and its
    writes are committed when it returns, unless the sink also has a ``flush()`` method: then the
    listener calls ``flush()`` before acknowledging a batch, and ``flush`` raises ``StoreError`` if the
    writes could not be committed. Such a sink may hold the store's write lock until the flush: the
    listener settles a batch once it is ``batch_size`` long or ``batch_max_delay_ms`` old (with a backlog
    waiting, ``batch_backlog_delay_ms``). An optional
    ``abandon()`` drops the writes of a batch that will not be acknowledged (the broker connection was
    lost: the broker redelivers those messages). An optional ``will_wait(notification)`` says that
    handling it will wait (for the API): the listener settles the batch before it. An optional
    ``event_types()`` names the event types it handles (used only to keep metric labels bounded; a
    ``table`` dict attribute serves too). An optional
    ``coalesce_key(notification)`` returns a key when handling a *later* notification with the same
    key makes handling this one pointless (both re-read the same object): of the deliveries waiting
    together, only the last one per key is handled, the others are acknowledged as ``coalesced``. An
    optional ``read_ahead(notification)`` is called as each notification arrives, so the sink can start
    the slow reads its handling will need (the API) while earlier ones are being handled. An optional
    ``group_key(notification)`` with ``handle_many(notifications)``: of a run of waiting deliveries
    that all have a key (not None), those with the same key are handed over together, key after key,
    and ``handle_many`` returns one result per notification, in order, as handling them one after the
    other would (where the sink can, in one pass over the store); a store outage is reported for the
    first of them it reached and all after. So a sink gives keys only to events whose handling
    commutes with that of every other keyed event (a port update with an instance update, where
    what depends on both is redone at the flush), and None to every other event: a barrier.
    """

    def bindings(self) -> list[tuple[str, str]]: ...

    def handle(self, notification: Notification) -> EventResult: ...


SinkFactory = Callable[[str, Store, SecretBox, Settings], EventSink]


def handlers_sink(environment: str, store: Store, box: SecretBox, settings: Settings) -> EventSink:
    """The production sink: stackmap's handlers on this environment's map. ``settings`` are the
    listener's own (the daemon's ``--config`` included), not settings read again here."""
    from handlers.apply import MapUpdater
    from handlers.dispatch import Dispatcher

    opts = settings.event_manager
    return Dispatcher(MapUpdater(store, box, environment, trust_payloads=opts.trust_payloads,
                                 read_ahead_threads=opts.read_ahead_threads, api_timeout_s=opts.api_timeout_s),
                      batched=True)


def load_sink_factory(spec: str) -> SinkFactory:
    """``package.module:function`` -> the factory (picklable as a string across ``spawn``)."""
    module, _, attr = spec.partition(":")
    if not module or not attr:
        raise ConfigError(f"sink factory {spec!r} must look like package.module:function")
    factory = getattr(importlib.import_module(module), attr, None)
    if not callable(factory):
        raise ConfigError(f"sink factory {spec!r} is not callable")
    return factory


def _optional(sink: Any, name: str) -> Callable[..., Any] | None:
    """One of the sink's optional methods (see ``EventSink``), or None when it has none."""
    method = getattr(sink, name, None)
    return method if callable(method) else None


def _sink_flush(sink: EventSink) -> Callable[[], Any] | None:
    return _optional(sink, "flush") or _optional(getattr(sink, "updater", None), "flush")


def _sink_event_types(sink: EventSink) -> frozenset[str]:
    names = getattr(sink, "event_types", None)
    if callable(names):
        return frozenset(str(n) for n in names())
    table = getattr(sink, "table", None)
    return frozenset(str(k) for k in table) if isinstance(table, dict) else frozenset()


def is_store_outage(result: EventResult) -> bool:
    """The dispatcher's way of saying StoreUnavailable: ``EventResult.store_unavailable(...)``."""
    return bool(result.store_outage and not result.result)


# --------------------------------------------------------------------------------------------------
# names, broker, store


@dataclass(frozen=True)
class QueueNames:
    main: str
    retry: str
    dead: str  # both the dead-letter exchange (fanout) and its queue

    @classmethod
    def for_environment(cls, environment: str) -> QueueNames:
        base = f"stackmap.notifications.{environment}"
        return cls(base, f"{base}.retry", f"{base}.dead")


def broker_connection(env_doc: dict[str, Any], box: SecretBox, options: EventManagerSettings) -> kombu.Connection:
    """A kombu Connection (not yet connected) to the environment's broker.

    The password is revealed here and handed to kombu only; kombu masks it in ``as_uri()`` and
    stackmap's log redaction would scrub it from a URL, but it is never put in one to begin with.
    """
    common: dict[str, Any] = {
        "heartbeat": options.heartbeat_s,
        "connect_timeout": options.connect_timeout_s,
        "transport_options": {"confirm_publish": True},
    }
    if options.broker_url is not None:
        return kombu.Connection(options.broker_url.get_secret_value(), **common)
    raw = next((s for s in env_doc.get("configuration", []) if s.get("name") == "AMQP"), None)
    if raw is None:
        raise ConfigError(f"environment {env_doc.get('name')} has no AMQP section: nothing to listen to")
    section = AMQPSection.model_validate(raw)
    return kombu.Connection(
        hostname=section.host, port=int(section.port), userid=section.user, password=box.reveal(section.pwd),
        virtual_host=section.vhost, ssl=section.ssl, **common,
    )


def describe_broker(connection: kombu.Connection) -> str:
    """host:port/vhost, for logs and status reasons (no user, no password)."""
    return f"{connection.hostname}:{connection.port}/{connection.virtual_host}"


def open_listener_store(url: str, busy_timeout_s: float) -> Store:
    """The listener's store. SQLite waits for its write lock only briefly here, so that a store held
    by someone else is noticed quickly and handled as an outage (with backoff) instead of blocking
    the consumer, and its broker heartbeats, for the default 30 s per write."""
    # a commit that checkpoints would hold every event behind it
    return open_store(url, busy_timeout_s=busy_timeout_s, background_checkpoints=True)


# --------------------------------------------------------------------------------------------------
# status reporting to the supervisor


class Reporter(Protocol):
    def state(self, state: str, reason: str | None = None) -> None: ...

    def beat(self) -> None: ...


class NullReporter:
    """For a listener nobody supervises (tests, the foreground command)."""

    def state(self, state: str, reason: str | None = None) -> None:
        log.info("listener state", state=state, reason=reason)

    def beat(self) -> None:
        pass


class PipeReporter:
    """Sends ``(state, reason)`` to the supervisor on every change and at least every second, which
    doubles as the heartbeat that tells a live listener from a stalled one.

    It also notices when the supervisor is gone (killed with SIGKILL, say: it could not stop its
    listeners): ``on_orphaned`` is then called, so that no listener keeps consuming unsupervised.
    """

    def __init__(self, pipe: Pipe | None) -> None:
        self._pipe = pipe
        self._current: tuple[str, str | None] = ("starting", None)
        self._last = 0.0
        self._parent = os.getppid()
        self.on_orphaned: Callable[[], None] | None = None

    def _send(self) -> None:
        self._last = time.monotonic()
        if self._pipe is None:
            return
        try:
            self._pipe.send(self._current)
        except (OSError, ValueError):  # the supervisor is gone: it will not read any more
            self._pipe = None
            self._orphaned()

    def _orphaned(self) -> None:
        log.error("the event manager is gone; this listener stops")
        if self.on_orphaned is not None:
            self.on_orphaned()

    def state(self, state: str, reason: str | None = None) -> None:
        changed = (state, reason) != self._current
        self._current = (state, reason)
        if changed:
            log.info("listener state", state=state, reason=reason)
        self._send()

    def beat(self) -> None:
        if time.monotonic() - self._last >= 1.0:
            if self._pipe is not None and os.getppid() != self._parent:
                self._pipe = None
                self._orphaned()
            self._send()


# listener states, as reported
STARTING = "starting"
CONNECTING = "connecting"
CONSUMING = "consuming"
BROKER_UNREACHABLE = "broker_unreachable"
STORE_WAIT = "store_unavailable"
FAILED = "error"


# --------------------------------------------------------------------------------------------------
# the listener


class _DepthPoller:
    """Reads the depth of the listener's three queues every ``interval_s``, in a thread, on a
    connection of its own. On the consuming connection a passive declare waits for the broker's
    answer while the loop handles nothing (50-200 ms each time during a burst). A queue found
    missing (deleted behind the listener's back) is reported in ``missing``: the loop reconnects
    and declares it again."""

    def __init__(self, conn: kombu.Connection, names: QueueNames, environment: str, interval_s: float) -> None:
        self.conn = conn
        self.queues = (("main", names.main), ("retry", names.retry), ("dead", names.dead))
        self.environment = environment
        self.interval_s = interval_s
        self.missing: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"queue-depth-{environment}", daemon=True)

    def __enter__(self) -> _DepthPoller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        channel: Any = None
        while not self._stop.is_set():
            name = ""
            try:
                if channel is None:
                    self.conn.ensure_connection(max_retries=1)
                    channel = self.conn.channel()
                for label, name in self.queues:
                    ok = channel.queue_declare(name, passive=True)
                    M.QUEUE_DEPTH.labels(self.environment, label).set(ok.message_count)
            except amqp.exceptions.NotFound as exc:  # the broker closed the channel with it
                self.missing = f"queue {name} is gone ({exc})"
                channel = None
            except Exception as exc:  # the broker is away: the loop reconnects; this tries again later
                log.debug("queue depths not read", environment=self.environment, error=f"{type(exc).__name__}: {exc}")
                channel = None
            self._stop.wait(self.interval_s)


class _Copier:
    """Publishes the retry and dead-letter copies of a batch with publisher confirms, pipelined: all
    copies go out, then the listener waits once for the broker to confirm every one of them (a copy
    per round trip would make a flood of bad messages crawl). A nack or a missing confirm is a broker
    problem: it raises, the listener reconnects, and the unacked originals come back."""

    def __init__(self, conn: kombu.Connection, timeout_s: float) -> None:
        self.conn = conn
        self.timeout_s = timeout_s
        self.channel: Any = conn.channel()
        self.channel.confirm_select()
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        self.sent = 0
        self.pending: set[int] = set()
        self.nacked = 0

    def _on_ack(self, tag: int, multiple: bool) -> None:
        if multiple:
            self.pending = {t for t in self.pending if t > tag}
        else:
            self.pending.discard(tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked += 1
        self._on_ack(tag, multiple)

    def publish(self, message: amqp.Message, exchange: str, routing_key: str) -> None:
        self.channel.basic_publish(message, exchange=exchange, routing_key=routing_key)
        self.sent += 1
        self.pending.add(self.sent)

    def wait_confirms(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise kombu.exceptions.OperationalError(f"{len(self.pending)} copies not confirmed by the broker")
            with suppress(TimeoutError):
                self.conn.drain_events(timeout=min(left, 1.0))
        if self.nacked:
            self.nacked = 0
            raise kombu.exceptions.OperationalError("the broker refused (nacked) a copy")


@dataclass(slots=True)
class _Delivery:
    message: Any  # amqp.Message
    notification: Notification | None
    bad: Exception | None  # why the body could not be decoded
    label: str
    attempt: int
    result: str = ""
    reason: str = ""
    detail: str = ""
    committed_at: float = 0.0
    key: Hashable | None = None  # same key, later delivery: this one need not be handled (coalesce_key)
    read_ahead: bool = False  # its reads were started when it arrived (read_ahead)
    group: Hashable | None = None  # handled together with those of its run that share it (group_key)
    away_since: float | None = None  # set when its handler found the API away (AWAY_SINCE_HEADER)


class _Stopped(Exception):
    """Raised from kombu's connect loop to give up connecting because we are stopping."""


def _attempt_of(headers: dict[str, Any] | None) -> int:
    value = (headers or {}).get(ATTEMPT_HEADER, 0)
    try:
        return max(0, int(value))
    except (TypeError, ValueError):
        return 0


def _away_since(headers: dict[str, Any] | None, now: float) -> float:
    """When this message's handler first found the API away: its header, or now (the first time)."""
    value = (headers or {}).get(AWAY_SINCE_HEADER)
    try:
        since = float(value) if value is not None else now
    except (TypeError, ValueError):
        return now
    return since if since <= now else now  # a clock that went back must not stretch the outage


def _text(value: Any, limit: int = DETAIL_LIMIT) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


CommitHook = Callable[[list[tuple[Notification, float]]], None]

class Listener:
    """Consumes one environment's queue until ``stop()``; see the module docstring for the rules."""

    def __init__(self, environment: str, connection: kombu.Connection, sink: EventSink,
                 options: EventManagerSettings, *, reporter: Reporter | None = None,
                 on_committed: CommitHook | None = None, depth_poll_s: float = 5.0) -> None:
        self.environment = environment
        self.connection = connection
        self.sink = sink
        self.options = options
        self.reporter: Reporter = reporter or NullReporter()
        self.on_committed = on_committed
        self.names = QueueNames.for_environment(environment)
        self.bindings = sorted(set(sink.bindings()))
        self._flush = _sink_flush(sink)
        self._abandon: Callable[[], Any] | None = _optional(sink, "abandon")
        self._will_wait: Callable[[Notification], bool] | None = _optional(sink, "will_wait")
        self._coalesce_key: Callable[[Notification], Hashable | None] | None = _optional(sink, "coalesce_key")
        self._latest: dict[Hashable, _Delivery] = {}
        self._read_ahead: Callable[[Notification], None] | None = _optional(sink, "read_ahead")
        self._handle_many: Callable[[list[Notification]], list[EventResult]] | None = _optional(sink, "handle_many")
        self._group_key: Callable[[Notification], Hashable | None] | None = \
            _optional(sink, "group_key") if self._handle_many is not None else None
        self._known = _sink_event_types(sink)
        self._stop = threading.Event()
        self._inbox: deque[_Delivery] = deque()
        self._done: list[_Delivery] = []
        self._batch_started = 0.0
        self._outage_until = 0.0
        self._outage_delay = 0.0
        self._outage_reason = STORE_OUTAGE_PREFIX
        self._depth_poll_s = depth_poll_s
        self._last_heartbeat_check = 0.0
        self._channel: Any = None
        self._reader: BufferedReads | None = None
        self._copier: _Copier | None = None
        self._poller: _DepthPoller | None = None
        self.consuming = threading.Event()  # set while connected and consuming (tests, metrics)
        self._labels: dict[str, str] = {}
        env = environment
        self._m_received = {lbl: M.EVENTS_RECEIVED.labels(env, lbl) for lbl in (M.INVALID_EVENT_TYPE,)}
        self._m_handled: dict[tuple[str, str], Any] = {}
        self._m_seconds: dict[str, Any] = {}
        self._m_lag = M.EVENT_LAG_SECONDS.labels(env)
        self._m_store = M.STORE_UNAVAILABLE.labels(env)
        self._m_api_away = M.API_UNAVAILABLE.labels(env)
        self._m_reconnects = M.BROKER_RECONNECTS.labels(env)
        self._m_up = M.LISTENER_UP.labels(env)

    # -- control -----------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the listener to finish its batch and return from ``run`` (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Consume until stopped, reconnecting (with backoff) whenever the broker goes away."""
        failures = 0
        while not self.stopping:
            started = time.monotonic()
            try:
                self._session()
            except _Stopped:
                break
            except (*self.connection.connection_errors, *self.connection.channel_errors, OSError,
                    kombu.exceptions.KombuError) as exc:
                self._lost(exc)
            if self.stopping:
                break
            failures = 1 if time.monotonic() - started > 10 else failures + 1
            self._pause(min(0.5 * 2 ** (failures - 1), self.options.reconnect_delay_max_s))
        self.consuming.clear()
        self._m_up.set(0)
        log.info("listener stopped", environment=self.environment)

    def _lost(self, exc: BaseException) -> None:
        self.consuming.clear()
        self._m_up.set(0)
        self._m_reconnects.inc()
        # what was received but not acknowledged is the broker's again: it redelivers it
        self._inbox.clear()
        self._latest.clear()
        self._done.clear()
        if self._abandon is not None:  # their writes too: they are handled again when redelivered
            try:
                self._abandon()
            except Exception as undo_error:
                log.warning("abandoning the unacknowledged batch failed", environment=self.environment,
                            error=f"{type(undo_error).__name__}: {undo_error}")
        reason = f"broker connection lost: {type(exc).__name__}: {exc}"
        log.warning("broker connection lost; reconnecting", environment=self.environment, error=reason)
        self.reporter.state(BROKER_UNREACHABLE, reason)

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping:
            self.reporter.beat()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.5))

    # -- one connection's life -----------------------------------------------------------------------
    def _session(self) -> None:
        self.reporter.state(CONNECTING, f"connecting to {describe_broker(self.connection)}")
        with self.connection.clone() as conn:
            conn.ensure_connection(self._on_connection_error, None, 1, 2, self.options.reconnect_delay_max_s,
                                   callback=self._while_connecting)
            self._declare(conn)
            # Copies go out on a connection of their own (kombu's ConsumerProducerMixin does the same),
            # without heartbeats: it sits idle between dead letters, and nothing reads it then; a dead
            # one fails the next publish, which reconnects both.
            with conn.clone(transport_options={}, heartbeat=0) as producer_conn:
                producer_conn.ensure_connection(self._on_connection_error, None, 1, 2,
                                                self.options.reconnect_delay_max_s, callback=self._while_connecting)
                self._copier = _Copier(producer_conn, self.options.connect_timeout_s)
                try:
                    with conn.clone(transport_options={}, heartbeat=0) as depth_conn, \
                            _DepthPoller(depth_conn, self.names, self.environment, self._depth_poll_s) as poller:
                        self._poller = poller
                        self._consume(conn)
                finally:
                    self._copier = None
                    self._poller = None

    def _while_connecting(self) -> None:
        self.reporter.beat()
        if self.stopping:
            raise _Stopped()

    def _on_connection_error(self, exc: BaseException, interval: float) -> None:
        self._m_reconnects.inc()
        reason = f"cannot reach broker {describe_broker(self.connection)}: {type(exc).__name__}: {exc}"
        log.warning("broker unreachable; retrying", environment=self.environment, error=reason,
                    retry_in_s=round(interval, 1))
        self.reporter.state(BROKER_UNREACHABLE, reason)

    def _consume(self, conn: kombu.Connection) -> None:
        self._reader = buffer_socket_reads(conn)
        channel = conn.channel()
        channel.auto_decode = False  # bodies stay the bytes that were published: parsed once, copied as they are
        channel.basic_qos(0, self.options.prefetch, False)
        self._channel = channel
        # py-amqp's own consumer: the listener decodes bodies itself, so kombu's Message/Consumer layer
        # (serializers, accept lists) would only add work per message
        consumer_tag = channel.basic_consume(self.names.main, callback=self._on_message, no_ack=False)
        self.consuming.set()
        self._m_up.set(1)
        self.reporter.state(CONSUMING)
        log.info("listener consuming", environment=self.environment, queue=self.names.main,
                 broker=describe_broker(conn), bindings=len(self.bindings))
        try:
            while not self.stopping:
                self._pump(conn)
            # stopping: settle what is handled; leave the rest unacked for the broker to redeliver
            if self._done:
                self._complete()
            with suppress(*conn.connection_errors, *conn.channel_errors, OSError):
                channel.basic_cancel(consumer_tag)
        finally:
            self.consuming.clear()
            self._channel = None

    def _pump(self, conn: kombu.Connection) -> None:
        """One turn: wait for the broker (at most until something is due), then do what is due."""
        now = time.monotonic()
        if self._inbox and self._outage_until <= now:
            timeout = 0.0005  # work is waiting: only look whether more has come
        elif self._done:
            timeout = max(0.0005, self._batch_started + self.options.batch_max_delay_ms / 1000 - now)
        elif self._inbox:  # held while the store is away
            timeout = max(0.0005, min(1.0, self._outage_until - now))
        else:
            timeout = 1.0
        idle = False
        amqp_conn = conn.connection
        try:
            amqp_conn.drain_events(timeout=timeout)
            reader = self._reader
            if reader is not None:  # the frames already read ahead, without a timeout (a syscall each)
                for _ in range(96):
                    if not reader.frame_ready():
                        break
                    amqp_conn.blocking_read(None)
        except TimeoutError:
            idle = True
        if len(self._inbox) > 1:  # it arrived alone, but others came with it: it waits behind none of
            self._start_reads(self._inbox[0])  # them, yet its reads merge with theirs
        now = time.monotonic()
        if now - self._last_heartbeat_check >= 1.0:
            self._last_heartbeat_check = now
            conn.heartbeat_check()
            self.reporter.beat()
        self._work(now, idle)
        poller = self._poller
        if poller is not None and poller.missing:  # reconnect: the queues are declared again
            raise amqp.exceptions.RecoverableConnectionError(poller.missing)

    # -- declarations ------------------------------------------------------------------------------
    def _declare(self, conn: kombu.Connection) -> None:
        """Exchanges, the three queues and the bindings; idempotent, redone on every reconnect."""
        opts = self.options
        for exchange in sorted({e for e, _ in self.bindings}):
            self._declare_exchange(conn, exchange)
        with self._fresh_channel(conn) as ch:
            ch.exchange_declare(self.names.dead, "fanout", durable=True, auto_delete=False)
        dead_args = {"x-max-length": opts.dead_letter_max_length} if opts.dead_letter_max_length else {}
        self._declare_queue(conn, self.names.dead, dead_args)
        self._declare_queue(conn, self.names.retry, {
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": self.names.main})
        main_args: dict[str, Any] = {}
        if opts.queue_message_ttl_s:
            main_args["x-message-ttl"] = int(opts.queue_message_ttl_s * 1000)
        if opts.queue_max_length:
            main_args["x-max-length"] = int(opts.queue_max_length)
        if opts.queue_expires_s:
            main_args["x-expires"] = int(opts.queue_expires_s * 1000)
        self._declare_queue(conn, self.names.main, main_args)
        with self._fresh_channel(conn) as ch:
            ch.queue_bind(self.names.dead, self.names.dead, "")
            for exchange, key in self.bindings:
                ch.queue_bind(self.names.main, exchange, key)

    @contextmanager
    def _fresh_channel(self, conn: kombu.Connection) -> Iterator[Any]:
        """A channel for a few declarations: a refused one (406) closes it, never the consumer's."""
        ch = conn.channel()
        try:
            yield ch
        finally:
            with suppress(Exception):
                ch.close()

    def _declare_exchange(self, conn: kombu.Connection, name: str) -> None:
        try:
            with self._fresh_channel(conn) as ch:
                ch.exchange_declare(name, "topic", durable=False, auto_delete=False)
        except amqp.exceptions.PreconditionFailed:
            log.warning("exchange exists with other flags than oslo's; binding to it as it is",
                        environment=self.environment, exchange=name)
            with self._fresh_channel(conn) as ch:
                ch.exchange_declare(name, "topic", passive=True)

    def _declare_queue(self, conn: kombu.Connection, name: str, arguments: dict[str, Any]) -> None:
        try:
            with self._fresh_channel(conn) as ch:
                ch.queue_declare(name, durable=True, auto_delete=False, arguments=arguments or None)
        except amqp.exceptions.PreconditionFailed as exc:
            log.error("queue exists with other arguments (were the queue settings changed?); using it as it "
                      "is: delete it, or apply the change as a RabbitMQ policy", environment=self.environment,
                      queue=name, error=str(exc))
            with self._fresh_channel(conn) as ch:
                ch.queue_declare(name, passive=True)

    # -- messages ------------------------------------------------------------------------------------
    def _label(self, event_type: str) -> str:
        label = self._labels.get(event_type)
        if label is None:
            label = event_type if event_type in self._known else M.OTHER_EVENT_TYPE
            if len(self._labels) < 10_000:
                self._labels[event_type] = label
        return label

    def _on_message(self, message: Any) -> None:
        """kombu callback: decode and queue; handling happens in the loop, in delivery order."""
        attempt = _attempt_of(message.headers)
        notification: Notification | None = None
        bad: Exception | None = None
        try:
            notification = parse(message.body)
            label = self._label(notification.event_type)
        except Exception as exc:  # BadMessage, or e.g. RecursionError on absurdly nested JSON
            bad, label = exc, M.INVALID_EVENT_TYPE
        counter = self._m_received.get(label)
        if counter is None:
            counter = self._m_received[label] = M.EVENTS_RECEIVED.labels(self.environment, label)
        counter.inc()
        delivery = _Delivery(message, notification, bad, label, attempt)
        if notification is not None and self._coalesce_key is not None:
            try:
                delivery.key = self._coalesce_key(notification)
            except Exception as exc:  # a key is an optimisation: without one the event is simply handled
                log.warning("coalesce_key failed", environment=self.environment, error=f"{type(exc).__name__}: {exc}")
            if delivery.key is not None:
                self._latest[delivery.key] = delivery
        if notification is not None and self._group_key is not None:
            try:
                delivery.group = self._group_key(notification)
            except Exception as exc:  # an optimisation: without it the event is handled alone
                log.warning("group_key failed", environment=self.environment, error=f"{type(exc).__name__}: {exc}")
        # read ahead only when this one will wait behind others: alone, its handler reads at once
        # (the first of several that come in one read of the socket is read ahead by _pump)
        if self._inbox:
            self._start_reads(delivery)
        self._inbox.append(delivery)

    def _start_reads(self, delivery: _Delivery) -> None:
        if delivery.notification is None or self._read_ahead is None or delivery.read_ahead:
            return
        delivery.read_ahead = True
        try:
            self._read_ahead(delivery.notification)
        except Exception as exc:  # an optimisation: without it the handler reads for itself
            log.warning("read_ahead failed", environment=self.environment, error=f"{type(exc).__name__}: {exc}")

    def _work(self, now: float, idle: bool) -> None:
        """Handle what has arrived, in delivery order, then settle the batch when it is due.

        A turn handles for about half a second at most: with slow handlers a whole prefetch window
        could take minutes, and the loop must get back to the broker (heartbeats) and report in."""
        if self._inbox and self._outage_until <= now:
            until = now + 0.5
            while self._inbox and not self.stopping:
                delivery = self._inbox[0]
                if self._done and self._waits(delivery):
                    self._complete()  # the events before it are committed and acked, not kept waiting
                run = self._run_at_head()
                decided = self._decide_run(run) if len(run) > 1 else int(self._decide(delivery))
                for _ in range(decided):
                    if not self._done:
                        self._batch_started = now
                    self._done.append(self._inbox.popleft())
                if decided < len(run):
                    self._enter_outage()
                    break
                if self._outage_delay:
                    self._leave_outage()
                now = time.monotonic()
                # a batch's writes may hold the store's write lock until it is settled (see EventSink):
                # settled as soon as it is due, even in the middle of a busy turn
                if self._batch_due(now):
                    self._complete()
                if now >= until:
                    break
        if self._done and (idle or self._outage_until > now or self._batch_due(now)):
            self._complete()

    def _batch_due(self, now: float) -> bool:
        """The batch is full, or old enough to be settled (older when a backlog is waiting behind it).

        A backlog is a quarter of a batch or more. Any message at all waiting would do at a steady
        rate near capacity, where one nearly always is: every batch then waited the backlog's delay
        (at 1,000 events/s on the 100k map, p50 553 ms against 22-28 ms this way)."""
        if len(self._done) >= self.options.batch_size:
            return True
        limit_ms = self.options.batch_max_delay_ms
        if len(self._inbox) >= max(1, self.options.batch_size // 4):  # a backlog, not a steady stream's next few
            limit_ms = max(limit_ms, self.options.batch_backlog_delay_ms)
        return now - self._batch_started >= limit_ms / 1000

    def _waits(self, d: _Delivery) -> bool:
        if self._will_wait is None or d.notification is None:
            return False
        try:
            return bool(self._will_wait(d.notification))
        except Exception as exc:  # an optimisation: without it the batch is settled a little later
            log.warning("will_wait failed", environment=self.environment, error=f"{type(exc).__name__}: {exc}")
            return False

    def _run_at_head(self) -> list[_Delivery]:
        """The run of deliveries at the head of the inbox that all have a group key, as many as the
        open batch still has room for (just the head when it has none)."""
        room = max(1, self.options.batch_size - len(self._done))
        run: list[_Delivery] = []
        for d in self._inbox:
            if d.group is None or len(run) >= room:
                break
            run.append(d)
        return run or [self._inbox[0]]

    def _decide_run(self, run: list[_Delivery]) -> int:
        """Decide a run key by key (see ``EventSink``); returns the length of its decided prefix: all of
        it, or, when the store went away, up to the first delivery left undecided. Those decided after
        that one stay in the inbox too (they cannot be acknowledged before it) and are handled again."""
        groups: dict[Hashable, list[_Delivery]] = {}
        for d in run:
            groups.setdefault(d.group, []).append(d)
        decided: set[int] = set()
        for group in groups.values():
            count = self._decide_many(group) if len(group) > 1 else int(self._decide(group[0]))
            decided.update(id(d) for d in group[:count])
            if count < len(group):
                break
        for n, d in enumerate(run):
            if id(d) not in decided:
                return n
        return len(run)

    def _settled_before_handling(self, d: _Delivery) -> bool:
        """Decide the fate of a delivery that needs no handling (undecodable, or coalesced into a
        later one); False when it must be handled."""
        if d.notification is None:
            d.result = M.DEAD_LETTERED
            d.reason = d.bad.reason if isinstance(d.bad, BadMessage) else "undecodable"
            d.detail = _text(d.bad if isinstance(d.bad, BadMessage) else f"{type(d.bad).__name__}: {d.bad}")
            return True
        if d.key is not None:
            latest = self._latest.get(d.key)
            if latest is not None and latest is not d:
                # a later event for the same object is waiting, and the sink says handling it gives
                # the state this one would give (it re-reads the object): handling this one is waste
                d.result, d.committed_at = M.COALESCED, time.time()
                return True
        return False

    def _decide_many(self, group: list[_Delivery]) -> int:
        """``_decide`` for a group the sink handles together; returns how many, from the first, were
        decided (fewer than all when the store is unavailable: the rest are held)."""
        todo = [d for d in group if not self._settled_before_handling(d)]
        if not todo:
            return len(group)
        at = {id(d): n for n, d in enumerate(group)}
        assert self._handle_many is not None
        notifications = [d.notification for d in todo if d.notification is not None]
        start = time.perf_counter()
        try:
            results = self._handle_many(notifications)
            if len(results) != len(todo) or not all(isinstance(r, EventResult) for r in results):
                raise TypeError(f"handle_many() returned {len(results)} results for {len(todo)} notifications")
        except StoreError as exc:  # a sink that lets it through instead of returning retries
            results = [EventResult.store_unavailable(str(exc))] * len(todo)
        except Exception as exc:  # the sink broke its contract: each is handled alone, which says why
            log.error("sink raised", environment=self.environment, handled_together=len(todo),
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            for d in todo:
                if not self._decide(d):
                    return at[id(d)]
            return len(group)
        share = (time.perf_counter() - start) / len(todo)  # the group's time, shared out
        for d, result in zip(todo, results, strict=True):
            if not self._settle(d, result, share):
                return at[id(d)]
        return len(group)

    def _decide(self, d: _Delivery) -> bool:
        """Handle one delivery and decide its fate; False when the store is unavailable (hold it)."""
        if self._settled_before_handling(d):
            return True
        assert d.notification is not None
        start = time.perf_counter()
        try:
            result = self.sink.handle(d.notification)
            if not isinstance(result, EventResult):
                raise TypeError(f"handle() returned {type(result).__name__}, not an EventResult")
        except StoreError as exc:  # a sink that lets it through instead of returning a retry
            result = EventResult.store_unavailable(str(exc))
        except Exception as exc:  # the sink broke its contract; the message must not loop
            log.error("sink raised", environment=self.environment, event_type=d.notification.event_type,
                      error=f"{type(exc).__name__}: {exc}", exc_info=True)
            d.result, d.reason, d.detail = M.DEAD_LETTERED, REASON_SINK_ERROR, _text(f"{type(exc).__name__}: {exc}")
            return True
        return self._settle(d, result, time.perf_counter() - start)

    def _settle(self, d: _Delivery, result: EventResult, elapsed: float) -> bool:
        """The fate of a handled delivery, from its result; False for a store outage (hold it)."""
        if is_store_outage(result):
            self._outage_reason = result.message
            return False
        if d.key is not None and self._latest.get(d.key) is d:
            del self._latest[d.key]
        hist = self._m_seconds.get(d.label)
        if hist is None:
            hist = self._m_seconds[d.label] = M.HANDLING_SECONDS.labels(self.environment, d.label)
        hist.observe(elapsed)
        d.committed_at = time.time()
        if result.result:
            d.result = M.IGNORED if result.ignored else M.HANDLED
        elif result.away:  # the API is away: retried while the outage is shorter than api_outage_max_s
            self._m_api_away.inc()
            d.away_since = _away_since(d.message.headers, d.committed_at)
            away_for = d.committed_at - d.away_since
            if away_for < self.options.api_outage_max_s:
                d.result, d.detail = M.RETRIED, _text(result.message)
            else:
                d.result, d.reason = M.DEAD_LETTERED, REASON_AWAY_TOO_LONG
                d.detail = _text(f"gave up after {d.attempt + 1} attempts over {away_for:.0f} s: {result.message}")
        elif result.retry and d.attempt < self.options.retry_limit:
            d.result, d.detail = M.RETRIED, _text(result.message)
        elif result.retry:
            d.result, d.reason = M.DEAD_LETTERED, REASON_RETRY_LIMIT
            d.detail = _text(f"gave up after {d.attempt + 1} attempts: {result.message}")
        else:
            d.result, d.reason, d.detail = M.DEAD_LETTERED, REASON_HANDLER_FAILED, _text(result.message)
        return True

    def _enter_outage(self) -> None:
        self._m_store.inc()
        self._outage_delay = min(max(0.5, self._outage_delay * 2), self.options.store_retry_max_s)
        self._outage_until = time.monotonic() + self._outage_delay
        reason = self._outage_reason
        log.warning("store unavailable; holding messages and trying again", environment=self.environment,
                    held=len(self._inbox), retry_in_s=self._outage_delay, error=reason)
        self.reporter.state(STORE_WAIT, _text(reason, 300))

    def _leave_outage(self) -> None:
        if self._outage_delay:
            self._outage_delay = 0.0
            log.info("store available again; resuming", environment=self.environment)
            self.reporter.state(CONSUMING)

    def _complete(self) -> None:
        """Commit (flush), publish retry/dead-letter copies (confirmed), then ack the batch at once."""
        done, self._done = self._done, []
        if not done:
            return
        if self._flush is not None:
            try:
                self._flush()
            except Exception as exc:  # StoreError, or a bug: either way nothing of the batch is committed
                # handle it all again after a backoff (the store may be back; a bug stays visible, not a crash loop)
                self._inbox.extendleft(reversed(done))
                self._outage_reason = f"{STORE_OUTAGE_PREFIX}: {type(exc).__name__}: {exc}"
                self._enter_outage()
                return
            flushed = time.time()
            for d in done:
                d.committed_at = flushed
        copies = [d for d in done if d.result in (M.RETRIED, M.DEAD_LETTERED)]
        if copies:
            assert self._copier is not None
            for d in copies:
                self._settle_copy(d)
            self._copier.wait_confirms()  # every copy is safe before any original is acked
        self._account(done)
        self._channel.basic_ack(done[-1].message.delivery_tag, multiple=True)

    def _account(self, done: list[_Delivery]) -> None:
        env = self.environment
        committed: list[tuple[Notification, float]] = []
        for d in done:
            key = (d.label, d.result)
            counter = self._m_handled.get(key)
            if counter is None:
                counter = self._m_handled[key] = M.EVENTS_HANDLED.labels(env, d.label, d.result)
            counter.inc()
            if d.result == M.RETRIED:
                M.RETRIES.labels(env, d.label).inc()
            elif d.result == M.DEAD_LETTERED:
                M.DEAD_LETTERS.labels(env, d.reason).inc()
                log.warning("notification dead-lettered", environment=env, reason=d.reason, detail=d.detail,
                            event_type=d.notification.event_type if d.notification else None,
                            message_id=d.notification.message_id if d.notification else None,
                            attempt=d.attempt)
            if d.notification is not None and d.result in (M.HANDLED, M.IGNORED, M.COALESCED):
                committed.append((d.notification, d.committed_at))
                stamp = d.notification.sent_at
                if stamp is not None:
                    self._m_lag.observe(max(0.0, d.committed_at - stamp))
        if self.on_committed is not None and committed:
            self.on_committed(committed)

    def _settle_copy(self, d: _Delivery) -> None:
        """Publish the retry or dead-letter copy. A broker problem propagates (reconnect, and the batch
        is redelivered); anything else about this one message (a header the broker refuses...) must not
        stop the listener: the copy is tried once more with only our headers, then the message is dropped
        with an error in the log, counted as ``dropped``."""
        broker_errors = (*self.connection.connection_errors, *self.connection.channel_errors, OSError,
                         kombu.exceptions.OperationalError)
        for minimal in (False, True):
            try:
                if d.result == M.RETRIED:
                    self._retry(d, minimal)
                else:
                    self._dead_letter(d, minimal)
                return
            except broker_errors:
                raise
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
        log.error("cannot publish a copy of this message; dropping it", environment=self.environment,
                  intended=d.result, reason=d.reason, detail=d.detail, error=error)
        d.result = M.DROPPED

    def _copy_headers(self, d: _Delivery, minimal: bool = False) -> dict[str, Any]:
        headers = {} if minimal else dict(d.message.headers or {})
        if minimal and ATTEMPT_HEADER in (d.message.headers or {}):
            headers[ATTEMPT_HEADER] = d.attempt
        info = d.message.delivery_info or {}
        headers.setdefault(ORIGINAL_EXCHANGE_HEADER, info.get("exchange", ""))
        headers.setdefault(ORIGINAL_ROUTING_KEY_HEADER, info.get("routing_key", ""))
        return headers

    def _publish(self, d: _Delivery, exchange: str, routing_key: str, headers: dict[str, Any],
                 expiration: float | None = None) -> None:
        assert self._copier is not None
        props = d.message.properties or {}
        extra = {k: props[k] for k in ("message_id", "correlation_id", "priority", "timestamp", "content_encoding")
                 if props.get(k)}
        if expiration is not None:
            extra["expiration"] = str(max(1, int(expiration * 1000)))
        body = d.message.body
        if isinstance(body, str):  # py-amqp hands an empty body over as ''
            body = body.encode("utf-8")
        self._copier.publish(amqp.Message(
            body, content_type=props.get("content_type") or "application/octet-stream", delivery_mode=2,
            application_headers=headers, **extra), exchange, routing_key)

    def _retry(self, d: _Delivery, minimal: bool = False) -> None:
        attempt = d.attempt + 1
        delay = min(self.options.retry_delay_s * 2 ** (attempt - 1), self.options.retry_delay_max_s)
        headers = self._copy_headers(d, minimal)
        headers[ATTEMPT_HEADER] = attempt
        headers[LAST_ERROR_HEADER] = d.detail
        if d.away_since is not None:
            headers[AWAY_SINCE_HEADER] = d.away_since
        self._publish(d, "", self.names.retry, headers, expiration=delay)
        log.info("notification will be retried", environment=self.environment, attempt=attempt,
                 retry_in_s=round(delay, 3), event_type=d.notification.event_type if d.notification else None,
                 detail=d.detail)

    def _dead_letter(self, d: _Delivery, minimal: bool = False) -> None:
        headers = self._copy_headers(d, minimal)
        headers.update({
            REASON_HEADER: d.reason,
            DETAIL_HEADER: d.detail,
            ATTEMPT_HEADER: d.attempt,
            ENVIRONMENT_HEADER: self.environment,
            DEAD_AT_HEADER: datetime.now(UTC).isoformat(),
        })
        if d.notification is not None:
            headers[EVENT_TYPE_HEADER] = _text(d.notification.event_type, 255)
        self._publish(d, self.names.dead, "", headers)


# --------------------------------------------------------------------------------------------------
# running one listener (a supervised child process, or the foreground command)


def settle_heap() -> None:
    """Keep what startup built out of the garbage collector's full passes. Modules, settings, the
    sink and its store live as long as the listener, and a full collection that walked them (about
    100k objects: openstacksdk, keystoneauth, pydantic) held the GIL for 35-75 ms, every event
    waiting behind it."""
    gc.collect()
    gc.freeze()


def run_listener(environment: str, settings: Settings, sink_spec: str = DEFAULT_SINK, *,
                 reporter: Reporter | None = None, install_signals: bool = True,
                 ready: Callable[[Listener], None] | None = None) -> int:
    """Build the store, the sink and the broker connection for ``environment`` and consume until a
    signal; returns a process exit code (0 stopped, 1 failed, 2 configuration problem)."""
    reporter = reporter or NullReporter()
    options = settings.event_manager
    try:
        store = open_listener_store(settings.store_url, options.store_busy_timeout_s)
    except StoreError as exc:
        reporter.state(FAILED, f"cannot open the store: {exc}")
        return EXIT_CRASHED
    try:
        box = SecretBox(settings.secret_key_file)
        try:
            doc = store.get_environment(environment)
        except StoreError as exc:
            reporter.state(FAILED, f"cannot read the environment: {exc}")
            return EXIT_CRASHED
        if doc is None:
            reporter.state(FAILED, f"environment {environment} does not exist")
            return EXIT_CONFIG
        try:
            connection = broker_connection(doc, box, options)
            sink = load_sink_factory(sink_spec)(environment, store, box, settings)
        except (ConfigError, SecretsUnavailable) as exc:
            reporter.state(FAILED, str(exc))
            return EXIT_CONFIG
        except StoreError as exc:
            reporter.state(FAILED, f"store: {exc}")
            return EXIT_CRASHED
        except StackmapError as exc:
            reporter.state(FAILED, str(exc))
            return EXIT_CONFIG
        listener = Listener(environment, connection, sink, options, reporter=reporter)
        if install_signals:
            def _stop(_signum: int, _frame: Any) -> None:
                listener.stop()

            signal.signal(signal.SIGTERM, _stop)
            signal.signal(signal.SIGINT, _stop)
        if ready is not None:
            ready(listener)
        settle_heap()
        listener.run()
        return EXIT_STOPPED
    finally:
        with suppress(Exception):
            store.close()


def listener_process(environment: str, settings: Settings, sink_spec: str, pipe: Pipe | None) -> None:
    """Entry point of a supervised listener process (``multiprocessing`` spawn context)."""
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):  # only the supervisor talks to systemd
        os.environ.pop(var, None)
    configure_logging(settings.log_level, settings.log_format)
    import structlog

    structlog.contextvars.bind_contextvars(environment=environment, pid=os.getpid())
    reporter = PipeReporter(pipe)
    reporter.state(STARTING)

    def supervised(listener: Listener) -> None:
        reporter.on_orphaned = listener.stop

    try:
        code = run_listener(environment, settings, sink_spec, reporter=reporter, ready=supervised)
    except Exception as exc:
        log.error("listener crashed", error=f"{type(exc).__name__}: {exc}", exc_info=True)
        reporter.state(FAILED, _text(f"listener crashed: {type(exc).__name__}: {exc}", 300))
        code = EXIT_CRASHED
    sys.exit(code)
