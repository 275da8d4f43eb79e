"""The event manager: follows each environment's OpenStack notification bus onto the map.

``supervisor.py`` keeps one listener process per environment that is scanned and has ``listen``
set, restarts the ones that die (with backoff) and writes each environment's ``operational`` status.
``listener.py`` is one such listener: its own durable queue per environment, bound to the service
exchanges listed in ``config/events.json``, acknowledging a message only once the store has the
change; retries and dead letters go through queues of their own, so nothing is lost or loops.
``metrics.py`` defines this daemon's Prometheus metrics once; ``main.py`` holds the two commands.

This package is imported by the command entry points before Prometheus' multiprocess mode is
chosen, so it imports nothing heavy itself.
"""
