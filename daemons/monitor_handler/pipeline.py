"""The one code path every result takes after it arrives: parse, map, stage, and count the outcome.

Both transports (the RabbitMQ consumer and the Sensu pipe handler) feed bodies or decoded events
here and call ``commit`` when their batch is complete, so they cannot differ in how a result is
understood, where it is written, or how it is counted. Bad input and unmapped checks become an
outcome (a reason), counted and logged. Anything else that raises out of ``handle_*`` (the store
failing while a target's status is read, or a bug) propagates: the transport decides, because only
it knows whether the result can be retried (see the consumer's redelivery rule).
Logging of ignored results is rate-limited per reason, because a misconfigured client re-sends the
same bad result every few seconds and the journal must not drown in it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from daemons.monitor_handler import metrics
from daemons.monitor_handler.applier import CommitReport, Outcome, StatusApplier
from daemons.monitor_handler.mapping import CheckMapper, Unmapped
from daemons.monitor_handler.results import (
    DEFAULT_MAX_BYTES,
    DEFAULT_TEXT_LIMIT,
    BadResult,
    CheckResult,
    parse_body,
    parse_document,
)
from stackmap.logging import get_logger

log = get_logger("stackmap.monitor_handler")


class _LogLimiter:
    """At most one log line per key per interval; says how many were suppressed in between."""

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()

    def allow(self, key: str) -> tuple[bool, int]:
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] += 1
            return False, 0
        self._next[key] = now + self.interval_s
        return True, self._suppressed.pop(key, 0)


class ResultPipeline:
    """Parse -> map -> stage for each result; ``commit`` writes a batch. ``counts`` mirrors the metrics
    for this instance (the metrics are process-wide), which is what tests and the benchmark read."""

    def __init__(self, mapper: CheckMapper, applier: StatusApplier, *, transport: str = "rabbitmq",
                 text_limit: int = DEFAULT_TEXT_LIMIT, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.mapper = mapper
        self.applier = applier
        self.transport = transport
        self.text_limit = text_limit
        self.max_bytes = max_bytes
        self.counts: Counter[str] = Counter()
        # per-result outcomes are tallied here and added to the Prometheus counters once per batch:
        # a counter increment takes a lock, a Counter key increment does not
        self._tally: Counter[tuple[str, str]] = Counter()
        self._limiter = _LogLimiter()

    # -- per result --------------------------------------------------------------------------------
    def handle_body(self, body: bytes | str) -> str:
        """Handle one message body; returns the outcome ('applied', 'unchanged' or the ignore reason)."""
        self.counts["received"] += 1
        try:
            result = parse_body(body, text_limit=self.text_limit, max_bytes=self.max_bytes)
        except BadResult as exc:
            return self._ignored(exc.reason, detail=exc.detail, size=len(body))
        return self._handle(result)

    def handle_document(self, document: Mapping[str, Any]) -> str:
        """Handle an already-decoded event (the pipe handler's)."""
        self.counts["received"] += 1
        try:
            result = parse_document(document, text_limit=self.text_limit)
        except BadResult as exc:
            return self._ignored(exc.reason, detail=exc.detail)
        return self._handle(result)

    def count_error(self, **context: Any) -> str:
        """Count a result whose handling raised and that will not be retried."""
        return self._ignored("error", **context)

    def ignore(self, reason: str, **context: Any) -> str:
        """Count input refused before parsing (e.g. an undecodable message) as received and ignored."""
        self.counts["received"] += 1
        return self._ignored(reason, **context)

    def _handle(self, result: CheckResult) -> str:
        try:
            target = self.mapper.resolve(result)
            outcome = self.applier.stage(result, target)
        except Unmapped as exc:
            if exc.reason in ("unknown_object", "unknown_link"):
                # the target may have been deleted since it was mapped
                self._forget_mapping(result)
            return self._ignored(exc.reason, check=result.check_name, environment=result.environment,
                                 client=result.client, detail=exc.detail)
        if outcome is Outcome.STALE:
            return self._ignored("stale", check=result.check_name)
        if outcome is Outcome.APPLIED:
            self._tally["applied", result.status.label] += 1
            self.counts["applied"] += 1
            return "applied"
        self._tally["unchanged", result.status.label] += 1
        self.counts["unchanged"] += 1
        return "unchanged"

    def _forget_mapping(self, result: CheckResult) -> None:
        target = self.mapper.forget_result(result)
        if target is not None:
            self.applier.forget(target)

    def _ignored(self, reason: str, **context: Any) -> str:
        self._tally["ignored", reason] += 1
        self.counts["ignored"] += 1
        self.counts["ignored:" + reason] += 1
        allowed, suppressed = self._limiter.allow(reason)
        if allowed:
            fields = {k: v for k, v in context.items() if v not in (None, "")}
            if suppressed:
                fields["suppressed_since_last"] = suppressed
            log.warning("check result ignored", reason=reason, transport=self.transport, **fields)
        return reason

    # -- per batch ---------------------------------------------------------------------------------
    def flush_metrics(self) -> None:
        """Add the tallied outcomes to the Prometheus counters."""
        tally, self._tally = self._tally, Counter()
        received = 0
        for (kind, label), n in tally.items():
            received += n
            if kind == "applied":
                metrics.applied[label].inc(n)
            elif kind == "unchanged":
                metrics.unchanged[label].inc(n)
            else:
                metrics.count_ignored(label, n)
        if received:
            metrics.received[self.transport].inc(received)

    def commit(self) -> CommitReport:
        """Write the staged batch; raises on a store error (after counting it) so the caller requeues."""
        self.flush_metrics()
        try:
            report = self.applier.commit()
        except Exception:
            metrics.commits["failed"].inc()
            raise
        metrics.commits["ok"].inc()
        if report.status_writes or report.derived_writes:
            metrics.store_writes["status"].inc(report.status_writes + report.derived_writes)
        if report.derived_writes:
            metrics.DERIVED_WRITES.inc(report.derived_writes)
        if report.messages:
            metrics.store_writes["message"].inc(report.messages)
        for target in report.gone:
            self.mapper.forget(target)
            metrics.count_ignored("unknown_object")
            log.warning("monitored target disappeared before its status was written", target=target.display,
                        environment=target.environment)
        self.counts["status_writes"] += report.status_writes
        self.counts["derived_writes"] += report.derived_writes
        self.counts["messages"] += report.messages
        metrics.UNKNOWN_TARGETS.set(self.mapper.unknown_count())
        return report

    def discard(self) -> None:
        self.applier.discard()

    def flush_last_seen(self, *, force: bool = False) -> int:
        written = self.applier.flush_last_seen(force=force)
        if written:
            metrics.store_writes["last_seen"].inc(written)
            self.counts["last_seen_writes"] += written
        return written
