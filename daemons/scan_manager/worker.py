"""One scan in its own process: the child's entry point, and the manager's handle on it.

Why a child process: a timed-out or cancelled scan can be stopped for sure (a thread cannot be),
and a scan that crashes the interpreter (a C extension, memory) takes down only itself.

The child:
- exits at once when its manager is gone (it waits on multiprocessing's parent sentinel, a pipe
  only the manager holds open), so a ``kill -9`` of the manager leaves no orphan scanning on while
  another manager re-runs the scan;
- ignores SIGINT (a Ctrl-C in the manager's terminal reaches the whole process group; the manager
  decides what happens to the scan) and dies on SIGTERM (how the manager stops it);
- reports over a one-way pipe: ``("phase", name)``, ``("counted", what, n)``, then exactly one of
  ``("done", summary)`` or ``("error", reason)``.

Processes start through a ``forkserver`` by default: it imports the scan code once and forks each
scan from that clean, single-threaded process, so a scan starts in milliseconds instead of paying
the ~2 s of imports a ``spawn`` pays every time, with the same isolation (nothing of the manager's
threads, sockets or store connections leaks into the child). ``spawn`` remains a setting.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stackmap.logging import configure_logging, get_logger

if TYPE_CHECKING:
    from stackmap.settings import SshSettings

log = get_logger("stackmap.scan_manager.worker")

EXIT_ORPHANED = 75
PRELOAD = ["daemons.scan_manager.worker", "stackmap.discovery.scan", "stackmap.store.sqlite"]
Event = tuple[Any, ...]


@dataclass(frozen=True)
class WorkerConfig:
    """What a scan process needs from the manager's settings (picklable, no secrets: the key file's path)."""

    store_url: str
    secret_key_file: str
    log_level: str
    log_format: str
    ssh: SshSettings | None = None  # host-level discovery ([ssh] settings)


# -- in the child -----------------------------------------------------------------------------------

def _exit_with_parent() -> None:
    """Leave as soon as the manager that started us is gone (killed, crashed)."""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        multiprocessing.connection.wait([sentinel])
        os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class PipeProgress:
    """The scan's Progress, forwarded to the manager (which records it in the scan document)."""

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn

    def phase(self, name: str) -> None:
        self._conn.send(("phase", name))

    def counted(self, what: str, count: int) -> None:
        self._conn.send(("counted", what, count))


def run_scan(scan: dict[str, Any], config: WorkerConfig, conn: multiprocessing.connection.Connection) -> None:
    """Child entry point: run one scan and report its summary (or why it could not run)."""
    _exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(config.log_level, config.log_format)
    from daemons.scan_manager.jobs import scan_options
    from stackmap.discovery.scan import Scanner
    from stackmap.errors import StackmapError
    from stackmap.secrets import SecretBox
    from stackmap.store import open_store

    try:
        store = open_store(config.store_url)
    except StackmapError as exc:
        conn.send(("error", f"cannot open the store: {exc}"))
        return
    try:
        scanner = Scanner(store, SecretBox(Path(config.secret_key_file)), scan["environment"], scan_options(scan),
                          progress=PipeProgress(conn), ssh=config.ssh)
        summary = scanner.run()
        conn.send(("done", summary.as_dict()))
    except StackmapError as exc:
        conn.send(("error", str(exc)))
    except Exception as exc:  # a bug: report it as the scan's failure, with the traceback in the log
        log.error("scan process failed", scan_id=scan.get("id"), environment=scan.get("environment"),
                  exc_info=True)
        conn.send(("error", f"internal error: {type(exc).__name__}: {exc}"))
    finally:
        store.close()
        conn.close()


# -- in the manager ---------------------------------------------------------------------------------

_preloaded: set[str] = set()


def context(method: str) -> Any:
    """The multiprocessing context scans start in; a forkserver is told once what to preload."""
    ctx = multiprocessing.get_context(method)
    if method == "forkserver" and method not in _preloaded:
        ctx.set_forkserver_preload(PRELOAD)
        _preloaded.add(method)
    return ctx


def start_forkserver() -> None:
    """Launch the forkserver without waiting: it imports the scan code while the manager starts."""
    context("forkserver")
    from multiprocessing import forkserver

    forkserver.ensure_running()


def _ready() -> None:
    """Target of the warm-up process: starting it at all is the test."""


def warm_up(method: str, timeout_s: float = 60.0) -> None:
    """Start one no-op scan process before claiming anything.

    With a forkserver this waits for it to have imported the scan code, so the first real scan
    starts at once: a claim followed by seconds of imports could outlast a short lease.
    """
    process = context(method).Process(target=_ready, name="scan-warm-up", daemon=True)
    process.start()
    process.join(timeout_s)
    if process.is_alive():
        process.kill()
        process.join(5)


class Worker:
    """The manager's handle on one scan process."""

    def __init__(self, scan: dict[str, Any], config: WorkerConfig, method: str) -> None:
        ctx = context(method)
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self.process = ctx.Process(target=run_scan, args=(scan, config, child_conn),
                                   name=f"scan-{scan['id']}", daemon=True)
        self.process.start()
        child_conn.close()  # only the child holds the sending end: EOF tells us it is gone
        self.pid = self.process.pid
        self._eof = False

    def events(self) -> list[Event]:
        """Everything the child reported since the last call (never blocks)."""
        out: list[Event] = []
        while not self._eof:
            try:
                if not self._conn.poll(0):
                    break
                out.append(self._conn.recv())
            except (EOFError, OSError):
                self._eof = True
        return out

    @property
    def alive(self) -> bool:
        return self.process.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def join(self, timeout: float) -> None:
        self.process.join(timeout)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; always reaps the process."""
        if self.process.is_alive():
            self.process.terminate()
            deadline = time.monotonic() + grace_s
            while self.process.is_alive() and time.monotonic() < deadline:
                self.process.join(0.05)
            if self.process.is_alive():
                self.process.kill()
        self.process.join(5)
        self.close()

    def close(self) -> None:
        self._conn.close()
