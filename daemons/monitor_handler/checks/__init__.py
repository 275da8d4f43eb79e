"""Sensu check scripts for the object types stackmap monitors, written with ``sensu_plugin``.

Each module is runnable (``python3 -m daemons.monitor_handler.checks.<name> ARGS``, which is the
command ``stackmap monitoring config`` writes into check definitions) and keeps its decision in a
pure ``evaluate_*`` function over parsed command output, so the decision is tested on recorded
output and the command on this machine. Exit statuses are Sensu's: 0 OK, 1 Warning, 2 Critical,
3 Unknown (the check itself could not find out).
"""
