"""Every Prometheus metric the scan manager exposes, defined once.

Labels are a fixed, low-cardinality vocabulary: ``environment``, ``status`` and ``type`` (an
object type, or the kind of a problem). Never a scan, schedule or object id. A request naming an
environment that does not exist is counted under ``environment="(unknown)"``, so that bad input
cannot grow the label set.

Only the manager process updates these: scans run in child processes that report back to it, so
there is no multiprocess mode to set up.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

UNKNOWN_ENVIRONMENT = "(unknown)"

SCANS = Counter(
    "stackmap_scan_manager_scans", "Scans this manager finished, by environment and final status.",
    ["environment", "status"])
SCAN_DURATION = Histogram(
    "stackmap_scan_duration_seconds", "Wall time of a scan run by the scan manager, claim to end.",
    ["environment", "status"],
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))
QUEUE_DEPTH = Gauge(
    "stackmap_scan_manager_queue_depth", "Scan requests waiting in the queue (status pending).")
RUNNING = Gauge(
    "stackmap_scan_manager_running_scans", "Scans this manager is running right now.")
LAST_SUCCESS = Gauge(
    "stackmap_scan_manager_last_success_timestamp_seconds",
    "When the last scan of an environment completed without errors (Unix time).", ["environment"])
INVENTORY_OBJECTS = Gauge(
    "stackmap_inventory_objects", "Objects in the map, by environment and object type.", ["environment", "type"])
SCHEDULED = Counter(
    "stackmap_scan_manager_scheduled_scans", "Scan requests this manager created from schedules.",
    ["environment"])
RECOVERED = Counter(
    "stackmap_scan_manager_lease_recoveries",
    "Running scans whose lease expired (their manager died), by what became of them (pending: re-queued).",
    ["status"])
MESSAGES_PRUNED = Counter(
    "stackmap_scan_manager_messages_pruned", "Messages deleted for being older than messages_max_age_days "
    "or beyond the newest messages_max_count.")
PROBLEMS = Counter(
    "stackmap_scan_manager_problems",
    "Things that went wrong without stopping the manager, by kind (store_unavailable, invalid_schedule, "
    "unknown_environment, invalid_request, lost_lease, worker_crashed, internal).", ["type"])
