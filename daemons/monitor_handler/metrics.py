"""The monitor handler's Prometheus metrics, defined once.

Labels come from fixed vocabularies only (transport, status label, outcome, ignore reason), never
from check names, object ids or environments, so the series count stays small however large the
cloud. Children for the known label values are bound once here, so the per-result path does a
dictionary lookup instead of a ``labels()`` call.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from daemons.monitor_handler.mapping import UNMAPPED_REASONS
from daemons.monitor_handler.results import BadResult, Status

IGNORE_REASONS = (*BadResult.REASONS, *UNMAPPED_REASONS, "stale", "error")
TRANSPORTS = ("rabbitmq", "pipe")
STATUS_LABELS = tuple(s.label for s in Status)

RESULTS_RECEIVED = Counter(
    "stackmap_monitor_handler_results_received_total", "Check results received, by transport.", ["transport"])
RESULTS_APPLIED = Counter(
    "stackmap_monitor_handler_results_applied_total",
    "Results that wrote a status (a first status or a change), by status.", ["status"])
RESULTS_UNCHANGED = Counter(
    "stackmap_monitor_handler_results_unchanged_total",
    "Results that repeated the stored status (last-seen refreshed in memory only), by status.", ["status"])
RESULTS_IGNORED = Counter(
    "stackmap_monitor_handler_results_ignored_total",
    "Results that changed nothing because they were bad, unmapped or stale, by reason.", ["reason"])
DERIVED_WRITES = Counter(
    "stackmap_monitor_handler_derived_link_writes_total", "Link statuses written because an endpoint changed.")
STORE_WRITES = Counter(
    "stackmap_monitor_handler_store_writes_total", "Documents written to the store, by kind.", ["kind"])
COMMITS = Counter(
    "stackmap_monitor_handler_batch_commits_total", "Batch commits, by result (ok / failed).", ["result"])
HANDLING_SECONDS = Histogram(
    "stackmap_monitor_handler_handling_seconds",
    "Time from a result's arrival to its batch being committed (and acknowledged).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
UNKNOWN_TARGETS = Gauge(
    "stackmap_monitor_handler_unknown_targets",
    "Distinct checks currently naming no known object or link (or no known environment).")
BROKER_CONNECTED = Gauge(
    "stackmap_monitor_handler_broker_connected", "1 while consuming from the broker, else 0.")

received = {t: RESULTS_RECEIVED.labels(t) for t in TRANSPORTS}
applied = {s: RESULTS_APPLIED.labels(s) for s in STATUS_LABELS}
unchanged = {s: RESULTS_UNCHANGED.labels(s) for s in STATUS_LABELS}
ignored = {r: RESULTS_IGNORED.labels(r) for r in IGNORE_REASONS}
store_writes = {k: STORE_WRITES.labels(k) for k in ("status", "message", "last_seen")}
commits = {r: COMMITS.labels(r) for r in ("ok", "failed")}


def count_ignored(reason: str, amount: int = 1) -> None:
    """Count an ignored result; an unexpected reason is folded into 'error' to keep labels fixed."""
    ignored.get(reason, ignored["error"]).inc(amount)
