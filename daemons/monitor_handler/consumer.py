"""Sensu Core results from RabbitMQ, through kombu's ConsumerMixin.

Shape (see the style anchors): this class holds routing and hooks only; connecting, reconnecting
and backoff are kombu's (``ensure_connection`` with ``connect_max_retries``), and one place here
turns outcomes into acknowledgements:

- Sensu Core publishes results to the direct exchange ``results``. The handler binds its *own*
  durable queue to it, so it receives a copy of every result without competing with a Sensu server
  for the ``results`` queue. The queue is bounded (message TTL, max length with drop-head): results
  are only worth their newest value, and a stopped handler must not fill the broker.
- Messages are acknowledged in batches, with one ``multiple`` ack *after* the store has committed
  the batch. A store failure nacks the batch back to the queue (with a growing pause), and the
  staged writes are dropped, so the redelivered results are judged against what the store holds.
- Poison messages (not JSON, not a result, too large) are copied to the dead-letter exchange with
  their reason and acknowledged: they are never requeued, so they cannot loop. Well-formed results
  for unknown objects are simply acknowledged and counted: they recur every check interval and
  would flood a dead-letter queue.
- A result whose handling raises (the store failing while a status is read, or a bug) puts the
  batch back like a failed commit; if that result was already a redelivery, it is dead-lettered
  instead (reason ``error``), so one bad message cannot stall the queue.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from kombu import Connection, Consumer, Exchange, Queue
from kombu.mixins import ConsumerProducerMixin

from daemons.monitor_handler import metrics
from daemons.monitor_handler.pipeline import ResultPipeline
from daemons.monitor_handler.results import BadResult
from stackmap.amqp_reads import buffer_socket_reads
from stackmap.errors import StoreError
from stackmap.logging import get_logger

log = get_logger("stackmap.monitor_handler.consumer")

POISON_REASONS = frozenset(BadResult.REASONS) | {"undecodable"}
TICK_S = 0.05
MAX_BACKOFF_S = 30.0


class StopConsuming(Exception):
    """Raised from kombu's retry callback to abandon connecting when the daemon is stopping."""


class RawConsumer(Consumer):
    """A kombu Consumer that hands the transport's own message object to ``on_message``.

    kombu wraps every delivery in its ``Message`` (content-type checks, decoder lookup) before
    calling ``on_message``; this consumer parses bodies itself, and at thousands of results a second
    that wrapper cost more than the parsing. Both message kinds have what is used here: ``body``,
    ``channel`` and ``delivery_tag``.
    """

    def _receive_callback(self, message: Any) -> Any:
        return self.on_message(message)  # type: ignore[misc]


class ResultConsumer(ConsumerProducerMixin):
    """Consumes one broker's results into a ``ResultPipeline``; see the module docstring."""

    connect_max_retries: int | None = None  # type: ignore[assignment]  # kombu types it None; None = forever

    def __init__(self, connection: Connection, pipeline: ResultPipeline, *, exchange: str = "results",
                 queue: str = "stackmap.monitor.results", dead_letter_exchange: str = "stackmap.monitor.dead",
                 message_ttl_s: float = 600.0, max_length: int = 200_000, prefetch: int = 2000,
                 batch_size: int = 500, batch_timeout_s: float = 0.2, connect_max_retries: int | None = None,
                 stop_event: threading.Event | None = None, on_tick: Callable[[], None] | None = None,
                 on_ready: Callable[[], None] | None = None, latencies: list[float] | None = None) -> None:
        self.connection = connection
        self.pipeline = pipeline
        self.prefetch = prefetch
        self.batch_size = batch_size
        self.batch_timeout_s = batch_timeout_s
        self.connect_max_retries = connect_max_retries
        self.stop_event = stop_event or threading.Event()
        self.on_tick = on_tick
        self.on_ready = on_ready
        self.latencies = latencies
        # Sensu Core declares the results exchange as a transient direct exchange; declaring it with
        # the same properties is what lets us create it if Sensu has not yet, and bind to it if it has.
        self.exchange = Exchange(exchange, type="direct", durable=False)
        self.queue = Queue(queue, self.exchange, routing_key="", durable=True, queue_arguments={
            "x-message-ttl": int(message_ttl_s * 1000),
            "x-max-length": max_length,
            "x-overflow": "drop-head",
        })
        self.dead_exchange = Exchange(dead_letter_exchange, type="fanout", durable=True)
        self.dead_queue = Queue(dead_letter_exchange, self.dead_exchange, durable=True,
                                queue_arguments={"x-max-length": 10_000, "x-overflow": "drop-head"})
        self._arrivals: list[float] = []
        self._messages: list[Any] = []
        self._next_tick = 0.0
        self._failures = 0
        self._connection_errors = tuple(connection.connection_errors)
        self._active: Any = None
        self.batches = 0

    @property
    def pending_results(self) -> int:
        """Results received but not yet committed and acknowledged."""
        return len(self._arrivals)

    # -- kombu's template ----------------------------------------------------------------------------
    @property
    def should_stop(self) -> bool:  # type: ignore[override]
        return self.stop_event.is_set()

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        self.dead_queue(channel).declare()
        return [RawConsumer(channel, queues=[self.queue], on_message=self._on_message, prefetch_count=self.prefetch,
                            no_ack=False)]

    @contextmanager
    def establish_connection(self) -> Iterator[Connection]:
        """kombu's, plus a retry callback, so a stop request ends a wait for an unreachable broker."""
        with self.create_connection() as conn:
            conn.ensure_connection(self.on_connection_error, self.connect_max_retries, callback=self._while_waiting)
            yield conn

    def _while_waiting(self) -> None:
        self._tick(force=True)
        if self.should_stop:
            raise StopConsuming()

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        metrics.BROKER_CONNECTED.set(0)
        log.warning("broker unreachable; retrying", broker=self.connection.as_uri(), error=str(exc),
                    retry_in_s=interval)

    def on_connection_revived(self) -> None:
        # whatever was staged but not acknowledged will be redelivered by the broker
        self._reset_batch()

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        self._active = connection
        buffer_socket_reads(connection, self.drain_timeout_s)
        metrics.BROKER_CONNECTED.set(1)
        log.info("consuming check results", broker=connection.as_uri(), queue=self.queue.name,
                 exchange=self.exchange.name)
        if self.on_ready is not None:
            self.on_ready()

    def on_consume_end(self, connection: Any, channel: Any) -> None:
        if self._arrivals and self.should_stop:
            self._commit()  # finish the batch in hand before the connection closes
        metrics.BROKER_CONNECTED.set(0)
        super().on_consume_end(connection, channel)

    def on_iteration(self) -> None:
        self._tick()

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        # only reached for consumers with a decoder; ours takes raw bodies, but keep the policy explicit
        self.pipeline.ignore("undecodable", error=str(exc)[:200])
        message.ack()

    # -- per message -----------------------------------------------------------------------------------
    def _on_message(self, message: Any) -> None:
        arrived = time.perf_counter()
        try:
            outcome = self.pipeline.handle_body(message.body)
            if outcome in POISON_REASONS:
                self._dead_letter(message, outcome)
                # settled now, so that a requeued batch cannot dead-letter it twice
                message.channel.basic_ack(message.delivery_tag)
            else:
                self._messages.append(message)
        except self._connection_errors:
            raise
        except Exception as exc:  # nothing a message holds may stop the consumer
            self._handling_failed(message, exc)
            return
        self._arrivals.append(arrived)
        if len(self._arrivals) >= self.batch_size:
            self._commit()

    def _handling_failed(self, message: Any, exc: Exception) -> None:
        info = getattr(message, "delivery_info", None) or {}
        if info.get("redelivered") and not isinstance(exc, StoreError):  # a store outage is not the message's fault
            log.error("handling a redelivered result failed again; dead-lettering it", error=str(exc),
                      error_type=type(exc).__name__)
            self.pipeline.count_error()
            self._dead_letter(message, "error")
            message.channel.basic_ack(message.delivery_tag)
            return
        self._messages.append(message)
        self._fail_batch(f"handling a result failed: {type(exc).__name__}: {exc}")

    def _dead_letter(self, message: Any, reason: str) -> None:
        try:
            self.producer.publish(
                message.body, exchange=self.dead_exchange, routing_key=reason, declare=[self.dead_queue],
                headers={"x-stackmap-reason": reason, "x-stackmap-queue": self.queue.name},
                content_type=_property(message, "content_type") or "application/octet-stream",
                content_encoding=_property(message, "content_encoding") or "binary",
                retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
            )
        except Exception as exc:  # losing a poison copy is better than looping on it
            log.warning("could not dead-letter a bad message; dropping it", reason=reason, error=str(exc))

    # -- per batch -------------------------------------------------------------------------------------
    def _tick(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        if self._arrivals and now - self._arrivals[0] >= self.batch_timeout_s:
            self._commit()
        try:
            self.pipeline.flush_last_seen()
        except Exception as exc:
            log.warning("last-seen flush failed; will retry", error=str(exc))
        if self.on_tick is not None:
            self.on_tick()

    def _commit(self) -> None:
        messages, arrivals = self._messages, self._arrivals
        try:
            self.pipeline.commit()
        except self._connection_errors:
            raise
        except Exception as exc:
            self._fail_batch(f"store commit failed: {exc}")
            return
        self._failures = 0
        self._arrivals, self._messages = [], []
        if messages:
            last = messages[-1]
            last.channel.basic_ack(last.delivery_tag, multiple=True)
        self.batches += 1
        done = time.perf_counter()
        observe = metrics.HANDLING_SECONDS.observe
        for arrived in arrivals:
            observe(done - arrived)
        if self.latencies is not None:
            self.latencies.extend(done - arrived for arrived in arrivals)

    def _fail_batch(self, why: str) -> None:
        """Put the whole unacknowledged batch back on the queue and pause, longer each time in a row."""
        messages = self._messages
        self._failures += 1
        pause = min(MAX_BACKOFF_S, 0.5 * 2 ** (self._failures - 1))
        log.error("batch failed; requeueing it", results=len(messages), error=why, retry_in_s=pause)
        self._reset_batch()
        # py-amqp has no basic.nack: reject each message of the batch back onto the queue
        for message in messages:
            message.channel.basic_reject(message.delivery_tag, requeue=True)
        self._pause(pause)

    def _reset_batch(self) -> None:
        self.pipeline.discard()
        self._arrivals, self._messages = [], []

    def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.should_stop and time.monotonic() < deadline:
            if self.on_tick is not None:
                self.on_tick()
            if self._active is not None:
                with suppress(Exception):  # keep AMQP heartbeats going while we wait
                    self._active.heartbeat_check()
            self.stop_event.wait(min(1.0, max(0.0, deadline - time.monotonic())))

    @property
    def drain_timeout_s(self) -> float:
        return min(0.1, self.batch_timeout_s)

    def run_until_stopped(self) -> None:
        """Consume until ``stop_event`` is set; short drain timeouts keep batches and stops prompt."""
        with suppress(StopConsuming):
            self.run(safety_interval=self.drain_timeout_s)


def _property(message: Any, name: str) -> Any:
    props = getattr(message, "properties", None)
    return props.get(name) if isinstance(props, dict) else getattr(message, name, None)
