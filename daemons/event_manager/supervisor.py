"""One listener process per listening environment, kept alive, and its status on the environment.

An environment gets a listener while it is ``scanned`` and has ``listen`` set. Each listener is a
separate process (``multiprocessing`` spawn context: a fresh interpreter, no inherited locks or
connections), so a listener that crashes, leaks or hangs on a wedged broker touches no other
environment, and the supervisor itself never talks to a broker. The supervisor:

- reads the environments every ``poll_interval_s`` and starts, stops (the environment no longer
  qualifies) or restarts (its configuration changed) listeners to match;
- restarts a listener that died, after a backoff that doubles per consecutive failure up to
  ``restart_delay_max_s`` (reset once a listener has been up for a minute), and kills and restarts
  one that has not reported for ``stall_timeout_s``;
- writes each environment's ``operational`` status: ``running`` while its listener consumes,
  ``error`` with the reason (broker unreachable, listener exited, configuration problem...),
  ``stopped`` when it no longer listens. It writes only changes, and retries a write the store
  refused on the next tick.

Listeners report ``(state, reason)`` over a one-way pipe at least once a second: that is both
their status and their heartbeat. Calipso's event manager is the counter-example (calipso_model.md
§4.2): no backoff, status through a Manager dict, and no stall detection.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from multiprocessing.context import SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from daemons.event_manager import listener as L
from daemons.event_manager import metrics as M
from stackmap.daemon import Daemon, serve_metrics
from stackmap.errors import StoreError
from stackmap.logging import get_logger
from stackmap.model import OperationalStatus
from stackmap.settings import Settings
from stackmap.store import Store

log = get_logger("stackmap.event_manager")

# fields of an environment document whose change does not concern its listener
VOLATILE_FIELDS = frozenset({"_id", "operational", "operational_reason", "last_scanned", "scanned", "listen",
                             "monitoring_setup_done"})
HEALTHY_AFTER_S = 60.0  # a listener up this long has recovered: the next failure restarts it quickly
STOP_TIMEOUT_S = 15.0  # SIGTERM, then SIGKILL after this long


def fingerprint(doc: dict[str, Any]) -> str:
    """What a running listener was built from; a change means it must restart to see it."""
    relevant = {k: v for k, v in doc.items() if k not in VOLATILE_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()


def qualifies(doc: dict[str, Any]) -> str | None:
    """None when the environment should have a listener, else why not (for its status)."""
    if not doc.get("listen"):
        return "listen is off"
    if not doc.get("scanned"):
        return "not scanned yet"
    return None


@dataclass
class _Child:
    process: BaseProcess
    pipe: Pipe
    started: float
    last_seen: float
    state: str = L.STARTING
    reason: str | None = None
    consuming_since: float | None = None
    stopping_since: float | None = None
    stop_reason: str | None = None  # why we stopped it (it does not count as a failure)
    killed_reason: str | None = None  # why we killed it (it does count)


@dataclass
class _Slot:
    """Everything the supervisor knows about one environment."""

    name: str
    wanted: bool = False
    removed: bool = False
    fingerprint: str = ""
    child: _Child | None = None
    failures: int = 0
    next_start: float = 0.0
    restarting: bool = False  # the next start follows an unexpected exit (counted as a restart)
    status: tuple[str, str | None] | None = None  # what should be written
    written: tuple[str, str | None] | None = None  # what was written last


class Supervisor:
    """Owns the listener processes; ``tick()`` is called about once a second by the daemon loop."""

    def __init__(self, store: Store, settings: Settings, *, sink_spec: str = L.DEFAULT_SINK,
                 context: SpawnContext | None = None, clock: Callable[[], float] = time.monotonic,
                 target: Callable[..., None] = L.listener_process) -> None:
        self.store = store
        self.settings = settings
        self.sink_spec = sink_spec
        self.ctx: SpawnContext = context or multiprocessing.get_context("spawn")
        self.clock = clock
        self.target = target
        self.slots: dict[str, _Slot] = {}
        self._next_poll = 0.0
        self._first_poll = True
        self._shutting_down = False
        self._multiprocess_metrics = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    @property
    def options(self) -> Any:
        return self.settings.event_manager

    # -- the loop ------------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        self._read_reports(now)
        self._reap(now)
        self._watch(now)
        if now >= self._next_poll:
            self._next_poll = now + self.options.poll_interval_s
            self.reconcile(now)
        self._start_due(now)
        self._write_statuses()

    def running(self) -> dict[str, int]:
        """Environment -> pid of its live listener (for logs and tests)."""
        return {s.name: s.child.process.pid or 0 for s in self.slots.values()
                if s.child is not None and s.child.process.is_alive()}

    # -- environments ------------------------------------------------------------------------------
    def reconcile(self, now: float) -> None:
        """Match the listeners to the stored environments."""
        try:
            docs = self.store.list_environments()
        except StoreError as exc:
            log.warning("cannot read environments; keeping the listeners as they are", error=str(exc))
            return
        seen = set()
        for doc in docs:
            name = str(doc.get("name"))
            seen.add(name)
            why_not = qualifies(doc)
            slot = self.slots.get(name)
            if why_not is not None:
                if slot is not None and slot.wanted:
                    slot.wanted = False
                    self._stop_child(slot, why_not, now)
                    if slot.child is None:
                        self._set_status(slot, OperationalStatus.STOPPED, why_not)
                elif self._first_poll and doc.get("operational") == OperationalStatus.RUNNING:
                    # left "running" by a manager that did not stop cleanly
                    slot = self.slots.setdefault(name, _Slot(name))
                    slot.written = (str(doc.get("operational")), doc.get("operational_reason"))
                    self._set_status(slot, OperationalStatus.STOPPED, why_not)
                continue
            if slot is None:
                slot = self.slots[name] = _Slot(name)
                slot.written = (str(doc.get("operational")), doc.get("operational_reason"))
            slot.removed = False
            print_ = fingerprint(doc)
            if not slot.wanted:
                slot.wanted, slot.fingerprint, slot.failures, slot.next_start = True, print_, 0, now
            elif print_ != slot.fingerprint:
                slot.fingerprint = print_
                slot.failures, slot.next_start = 0, now
                if slot.child is not None:
                    log.info("environment configuration changed; restarting its listener", environment=name)
                    self._stop_child(slot, "configuration changed", now)
        for name, slot in self.slots.items():
            if name not in seen and not slot.removed:
                slot.removed, slot.wanted = True, False
                self._stop_child(slot, "environment removed", now)
        self._first_poll = False

    # -- processes -----------------------------------------------------------------------------------
    def _start_due(self, now: float) -> None:
        for slot in self.slots.values():
            if slot.wanted and slot.child is None and now >= slot.next_start:
                self._spawn(slot, now)

    def _spawn(self, slot: _Slot, now: float) -> None:
        receiver, sender = self.ctx.Pipe(duplex=False)
        process = self.ctx.Process(target=self.target, name=f"stackmap-listener-{slot.name}",
                                   args=(slot.name, self.settings, self.sink_spec, sender))
        try:
            process.start()
        except OSError as exc:  # out of processes or memory: try again later, like a crash
            receiver.close()
            sender.close()
            self._failed(slot, now, f"cannot start a listener process: {exc}", healthy=False)
            return
        sender.close()
        slot.child = _Child(process, receiver, started=now, last_seen=now)
        if slot.restarting:
            M.LISTENER_RESTARTS.labels(slot.name).inc()
            slot.restarting = False
        M.LISTENER_UP.labels(slot.name).set(0)
        log.info("listener started", environment=slot.name, pid=process.pid)

    def _stop_child(self, slot: _Slot, reason: str, now: float) -> None:
        child = slot.child
        if child is None or child.stopping_since is not None:
            return
        child.stopping_since, child.stop_reason = now, reason
        log.info("stopping listener", environment=slot.name, pid=child.process.pid, reason=reason)
        if child.process.is_alive():
            child.process.terminate()

    def _read_reports(self, now: float) -> None:
        for slot in self.slots.values():
            child = slot.child
            if child is None:
                continue
            try:
                while child.pipe.poll():
                    state, reason = child.pipe.recv()
                    child.last_seen = now
                    if (state, reason) != (child.state, child.reason):
                        child.state, child.reason = state, reason
                        self._on_state(slot, child, now)
            except (EOFError, OSError):
                pass  # the process is gone; _reap sees it

    def _on_state(self, slot: _Slot, child: _Child, now: float) -> None:
        state, reason = child.state, child.reason
        if state == L.CONSUMING:
            child.consuming_since = child.consuming_since or now
            M.LISTENER_UP.labels(slot.name).set(1)
            self._set_status(slot, OperationalStatus.RUNNING, None)
        elif state == L.STORE_WAIT:
            self._set_status(slot, OperationalStatus.RUNNING, f"waiting for the store: {reason}")
        elif state in (L.BROKER_UNREACHABLE, L.FAILED):
            child.consuming_since = None
            M.LISTENER_UP.labels(slot.name).set(0)
            self._set_status(slot, OperationalStatus.ERROR, reason)

    def _watch(self, now: float) -> None:
        """Kill listeners that stopped reporting, and those that ignore SIGTERM for too long."""
        for slot in self.slots.values():
            child = slot.child
            if child is None or not child.process.is_alive():
                continue
            if child.stopping_since is not None:
                if now - child.stopping_since > STOP_TIMEOUT_S:
                    log.warning("listener did not stop in time; killing it", environment=slot.name,
                                pid=child.process.pid)
                    child.process.kill()
            elif now - child.last_seen > self.options.stall_timeout_s:
                child.killed_reason = f"listener stalled: no report for {now - child.last_seen:.0f} s; killed"
                log.error("listener stalled; killing it", environment=slot.name, pid=child.process.pid,
                          silent_s=round(now - child.last_seen))
                child.process.kill()

    def _reap(self, now: float) -> None:
        for slot in self.slots.values():
            child = slot.child
            if child is None or child.process.is_alive():
                continue
            child.process.join(0)
            self._read_reports(now)  # its last words (an error reason) may still be in the pipe
            child.pipe.close()
            code = child.process.exitcode
            pid = child.process.pid
            slot.child = None
            M.LISTENER_UP.labels(slot.name).set(0)
            if self._multiprocess_metrics and pid:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(pid)
            if child.stopping_since is not None and child.killed_reason is None:
                log.info("listener stopped", environment=slot.name, pid=pid, exit_code=code)
                in_error = slot.written is not None and slot.written[0] == OperationalStatus.ERROR.value
                if slot.wanted:
                    slot.next_start = now  # restarted on purpose (configuration or settings changed)
                elif not slot.removed and not (self._shutting_down and in_error):
                    self._set_status(slot, OperationalStatus.STOPPED, child.stop_reason)
                continue
            if code == L.EXIT_STOPPED and child.killed_reason is None and not slot.wanted:
                continue
            reason = child.killed_reason or (child.reason if child.state == L.FAILED and child.reason else None)
            if reason is None:
                reason = (f"listener exited with code {code}" if code is not None and code >= 0
                          else f"listener killed by signal {-(code or 0)}")
            healthy = child.consuming_since is not None and now - child.consuming_since >= HEALTHY_AFTER_S
            self._failed(slot, now, reason, healthy=healthy, config_error=code == L.EXIT_CONFIG)

    def _failed(self, slot: _Slot, now: float, reason: str, *, healthy: bool, config_error: bool = False) -> None:
        slot.failures = 1 if healthy else slot.failures + 1
        if config_error:
            delay = self.options.restart_delay_max_s  # or sooner, when the configuration changes
        else:
            delay = min(2.0 ** (slot.failures - 1), self.options.restart_delay_max_s)
        slot.next_start = now + delay
        slot.restarting = True
        log.error("listener failed; restarting it later", environment=slot.name, reason=reason,
                  restart_in_s=delay, failures=slot.failures)
        if not slot.removed:
            self._set_status(slot, OperationalStatus.ERROR, f"{reason} (restarting in {delay:.0f} s)")

    # -- status ------------------------------------------------------------------------------------
    def _set_status(self, slot: _Slot, status: OperationalStatus, reason: str | None) -> None:
        slot.status = (status.value, reason)

    def _write_statuses(self) -> None:
        for slot in self.slots.values():
            if slot.status is None or slot.status == slot.written or slot.removed:
                continue
            status, reason = slot.status
            try:
                self.store.update_environment(slot.name, {"operational": status, "operational_reason": reason})
            except StoreError as exc:
                log.warning("cannot write the environment's status; will try again", environment=slot.name,
                            error=str(exc))
                return
            slot.written = slot.status
            log.info("environment status", environment=slot.name, operational=status, reason=reason)

    # -- whole-daemon operations -------------------------------------------------------------------
    def apply_settings(self, settings: Settings) -> None:
        """New settings (SIGHUP): listeners start again with them if anything they use changed."""
        old = self.settings
        self.settings = settings
        if (old.event_manager, old.store_url, old.secret_key_file, old.log_level, old.log_format) == \
                (settings.event_manager, settings.store_url, settings.secret_key_file, settings.log_level,
                 settings.log_format):
            return
        now = self.clock()
        for slot in self.slots.values():
            if slot.child is not None:
                self._stop_child(slot, "settings changed", now)

    def shutdown(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Stop every listener (SIGTERM; SIGKILL after ``timeout_s``) and mark the environments stopped;
        an environment in error keeps its error."""
        self._shutting_down = True
        now = self.clock()
        children = [(slot, slot.child) for slot in self.slots.values() if slot.child is not None]
        for slot, _child in children:
            slot.wanted = False
            self._stop_child(slot, "event manager stopped", now)
        deadline = time.monotonic() + timeout_s
        for slot, child in children:
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                log.warning("listener did not stop in time; killing it", environment=slot.name)
                child.process.kill()
                child.process.join(5)
        self._reap(self.clock())
        for slot in self.slots.values():
            if slot.written is not None and slot.written[0] == OperationalStatus.RUNNING.value and not slot.removed:
                self._set_status(slot, OperationalStatus.STOPPED, "event manager stopped")
        self._write_statuses()


class EventManager(Daemon):
    """The ``stackmap-event-manager`` service: the Supervisor driven by the shared daemon loop
    (signals, readiness, watchdog fed from this loop, SIGHUP reload, /metrics)."""

    name = "event-manager"

    def __init__(self, settings: Settings, *, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, sink_spec: str = L.DEFAULT_SINK) -> None:
        super().__init__(settings, config_file=config_file, overrides=overrides)
        # a store held by someone else must not stall this loop (and systemd's watchdog) for long
        self.store = L.open_listener_store(settings.store_url, settings.event_manager.store_busy_timeout_s)
        self.supervisor = Supervisor(self.store, settings, sink_spec=sink_spec)
        self._metrics_addr = settings.event_manager.metrics_addr

    def on_reload(self) -> None:
        # the metrics address is not reloaded: the endpoint keeps its port
        self.settings.event_manager = self.settings.event_manager.model_copy(
            update={"metrics_addr": self._metrics_addr})
        if self.settings.store_url != self.supervisor.settings.store_url:
            old = self.store
            self.store = L.open_listener_store(self.settings.store_url,
                                               self.settings.event_manager.store_busy_timeout_s)
            self.supervisor.store = self.store
            old.close()
        self.supervisor.apply_settings(self.settings)

    def start_metrics(self, addr: str) -> None:
        """/metrics over every process's values when listeners run in child processes."""
        registry: Any = None
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
        self.metrics_server, self.metrics_port = serve_metrics(addr, registry)
        log.info("metrics endpoint up", daemon=self.name,
                 address=f"{addr.rpartition(':')[0]}:{self.metrics_port}")

    def _tick(self) -> float:
        self.supervisor.tick()
        return 1.0

    def run(self) -> int:
        try:
            self.start_metrics(self._metrics_addr)
        except OSError as exc:
            log.error("cannot serve metrics", address=self._metrics_addr, error=str(exc))
            return 1
        try:
            self.supervisor.tick()  # first look at the environments before telling systemd we are ready
            return self.main(self._tick)
        finally:
            self.supervisor.shutdown()
            self.store.close()
