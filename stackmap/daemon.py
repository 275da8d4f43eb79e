"""What every stackmap daemon shares: signals, systemd notification and watchdog, the metrics endpoint.

A daemon's own loop stays small: it checks ``stopping`` between units of work, calls ``heartbeat``
from that loop (so systemd's watchdog proves the loop itself is alive, not some side thread), and
reloads its settings when ``reload_requested`` is set by SIGHUP.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import prometheus_client

from stackmap.logging import configure_logging, get_logger
from stackmap.settings import Settings, load_settings

log = get_logger("stackmap.daemon")


class SystemdNotifier:
    """sd_notify(3) over $NOTIFY_SOCKET; a no-op when not run by systemd with Type=notify."""

    def __init__(self) -> None:
        address = os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]
        self._address = address
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        watched = usec and usec.isdigit() and (not pid or pid == str(os.getpid()))
        self.watchdog_interval = int(usec) / 1e6 / 2 if watched and usec else None
        self._last_ping = 0.0

    def notify(self, state: str) -> bool:
        if not self._address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(state.encode())
            return True
        except OSError as exc:
            log.warning("systemd notification failed", error=str(exc))
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def watchdog(self) -> None:
        if self.watchdog_interval is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self.notify("WATCHDOG=1")
            self._last_ping = now


def serve_metrics(addr: str, registry: Any = None) -> tuple[Any, int]:
    """Expose /metrics on HOST:PORT (port 0 picks a free one); returns (server, bound port)."""
    host, _, port = addr.rpartition(":")
    server, _thread = prometheus_client.start_http_server(
        int(port), addr=host.strip("[]"), registry=registry or prometheus_client.REGISTRY)
    return server, int(server.server_port)


class Daemon:
    """Process-level plumbing for one daemon; subclasses implement ``run_once`` and ``interval``."""

    name = "daemon"

    def __init__(self, settings: Settings | None = None, *, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None) -> None:
        self._config_file = config_file
        self._overrides = overrides or {}
        self.settings = settings or load_settings(config_file, **self._overrides)
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.notifier = SystemdNotifier()
        self.metrics_server: Any = None
        self.metrics_port: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def stopping(self) -> bool:
        return self.stop_event.is_set()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: Any) -> None:
            log.info("stop requested", daemon=self.name, signal=signal.Signals(signum).name)
            self.stop_event.set()

        def reload(_signum: int, _frame: Any) -> None:
            self.reload_requested.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def reload_settings(self) -> None:
        """SIGHUP: read settings again; a bad file keeps the running settings and says why."""
        self.reload_requested.clear()
        try:
            self.settings = load_settings(self._config_file, **self._overrides)
        except Exception as exc:  # a broken file must not kill a running daemon
            log.error("settings reload failed; keeping the current settings", daemon=self.name, error=str(exc))
            return
        configure_logging(self.settings.log_level, self.settings.log_format)
        log.info("settings reloaded", daemon=self.name)
        self.on_reload()

    def on_reload(self) -> None:
        """Hook for a daemon to apply new settings."""

    def heartbeat(self) -> None:
        self.notifier.watchdog()

    def sleep(self, seconds: float) -> None:
        """Wait for the next round, waking early to stop, and keeping the watchdog fed meanwhile."""
        deadline = time.monotonic() + seconds
        while not self.stopping:
            self.heartbeat()
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.stop_event.wait(min(left, 1.0))

    def start_metrics(self, addr: str) -> None:
        self.metrics_server, self.metrics_port = serve_metrics(addr)
        log.info("metrics endpoint up", daemon=self.name, address=f"{addr.rpartition(':')[0]}:{self.metrics_port}")

    def main(self, run_once: Callable[[], float]) -> int:
        """Run ``run_once`` (which returns seconds to wait) until stopped; returns the exit status."""
        self.install_signal_handlers()
        self.notifier.ready(f"{self.name} running")
        log.info("daemon started", daemon=self.name, pid=os.getpid())
        try:
            while not self.stopping:
                if self.reload_requested.is_set():
                    self.reload_settings()
                self.heartbeat()
                wait = run_once()
                self.sleep(wait)
        finally:
            self.notifier.stopping()
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
            log.info("daemon stopped", daemon=self.name)
        return 0
