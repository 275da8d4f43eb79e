"""The monitor handler: Sensu check results onto the objects and links they watch.

Two ways in, one way through. Sensu Core results arrive on RabbitMQ (``consumer.py``); Sensu Go
events arrive through a pipe handler command (``sensu_handler.py``). Both are parsed into one
``CheckResult`` (``results.py``), mapped to an object or link from structured check metadata
(``mapping.py``), and written by the ``StatusApplier`` (``applier.py``), which writes only the first
result and status changes. ``pipeline.py`` ties those steps together and counts every outcome.
"""
