"""The scan manager (``stackmap-scan-manager``): runs requested and scheduled scans.

- ``manager``: the daemon loop: claims queued scans atomically, runs each in a child process under
  a renewed lease, enforces timeouts and cancellation, recovers scans whose manager died;
- ``worker``: the child process that runs one scan, and the parent's handle on it;
- ``schedules``: cadences (Calipso frequencies, intervals, cron) and turning due schedules into
  exactly one scan request each; the shipped per-resource sync intervals;
- ``jobs``: scan requests as the CLI and the daemon share them (submit, cancel, options);
- ``metrics``: every Prometheus metric this daemon exposes;
- ``main``: the console script.
"""
