"""The event manager's Prometheus metrics, defined once.

Labels are a fixed, low-cardinality vocabulary: ``environment`` (one per configured cloud),
``event_type`` (only event types the handlers know; anything else is ``other``, an undecodable
message ``invalid``: a hostile or buggy publisher must not be able to create series), ``result``
(``handled``, ``ignored``, ``retried``, ``dead_lettered``, ``dropped``), ``reason`` (the short, stable labels of
``BadMessage`` and the listener's own: ``handler_failed``, ``retry_limit``, ``sink_error``) and
``queue`` (``main``, ``retry``, ``dead``). Never an object or message id.

The event manager runs its listeners in child processes, so it uses prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by the command before this module is
imported): counters of a listener that died stay counted, and gauges declare how processes combine.
``stackmap-event-listener`` (one listener in the foreground) uses the ordinary in-process registry.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# results of one delivery
HANDLED = "handled"
IGNORED = "ignored"
COALESCED = "coalesced"  # superseded by a later event for the same object in the same window
RETRIED = "retried"
DEAD_LETTERED = "dead_lettered"
DROPPED = "dropped"  # not even a dead-letter copy could be published (logged as an error)

OTHER_EVENT_TYPE = "other"
INVALID_EVENT_TYPE = "invalid"

EVENTS_RECEIVED = Counter(
    "stackmap_events_received_total",
    "Notifications delivered to a listener (redeliveries count again)",
    ["environment", "event_type"],
)
EVENTS_HANDLED = Counter(
    "stackmap_events_handled_total",
    "Notifications whose outcome is settled (committed, then acknowledged), by result",
    ["environment", "event_type", "result"],
)
HANDLING_SECONDS = Histogram(
    "stackmap_event_handling_seconds",
    "Time the handlers took for one notification",
    ["environment", "event_type"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENT_LAG_SECONDS = Histogram(
    "stackmap_event_lag_seconds",
    "From the notification's own timestamp to the commit of its change (includes clock skew)",
    ["environment"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
RETRIES = Counter(
    "stackmap_event_retries_total",
    "Notifications sent back for a later attempt (the handler said: not yet)",
    ["environment", "event_type"],
)
DEAD_LETTERS = Counter(
    "stackmap_event_dead_letters_total",
    "Notifications moved to the dead-letter queue, by reason",
    ["environment", "reason"],
)
API_UNAVAILABLE = Counter(
    "stackmap_event_api_unavailable_total",
    "Events whose handling found an OpenStack API away (no answer, 5xx...) and that were retried or, "
    "past api_outage_max_s, dead-lettered",
    ["environment"],
)
STORE_UNAVAILABLE = Counter(
    "stackmap_event_store_unavailable_total",
    "Times a listener found the store unavailable and held its messages to try again",
    ["environment"],
)
BROKER_RECONNECTS = Counter(
    "stackmap_event_broker_reconnects_total",
    "Times a listener lost or could not get its broker connection",
    ["environment"],
)
LISTENER_RESTARTS = Counter(
    "stackmap_event_listener_restarts_total",
    "Listener processes started again after one died or stalled",
    ["environment"],
)
LISTENER_UP = Gauge(
    "stackmap_listener_up",
    "1 while the environment's listener is connected and consuming, else 0",
    ["environment"],
    multiprocess_mode="livemax",
)
QUEUE_DEPTH = Gauge(
    "stackmap_event_queue_depth",
    "Messages ready in the environment's queues (polled by its listener)",
    ["environment", "queue"],
    multiprocess_mode="livemax",
)
