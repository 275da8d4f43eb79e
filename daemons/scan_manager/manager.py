"""The scan manager's loop: queue, leases, schedules, timeouts, cancellation, recovery.

What it fixes in Calipso's scan manager (reference §4.1, §7.2-7.4):
- claims are atomic (``Store.claim_next_scan``), so any number of managers can serve one queue and
  each request runs once;
- a claimed scan has a lease its manager renews while the scan runs; when a manager dies, any other
  (or its successor) finds the expired lease and takes the scan back with compare-and-set: re-queued
  up to ``max_attempts`` runs, then ``failed`` with the reason. Nothing stays ``running`` forever;
- scans run in child processes (``worker``), so a timeout or a cancel really stops one and a crash
  cannot take the manager down;
- schedules create the ``pending`` requests the loop claims (``schedules``);
- bad input (unknown environment, contradictory options, an invalid schedule) fails that one
  request or skips that schedule with a reason; a store that is away for a while is retried with
  backoff. Neither stops the daemon.

One manager runs one scan at a time; run more managers (on one or several hosts) for more. The loop
never blocks on a scan: each round it reads the child's reports, renews the lease, checks for a
cancel or the timeout, handles due schedules and, when idle, claims the next request.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from daemons.scan_manager import jobs, metrics
from daemons.scan_manager.schedules import Scheduler
from daemons.scan_manager.worker import Worker, WorkerConfig, warm_up
from stackmap.daemon import Daemon
from stackmap.errors import StoreError
from stackmap.logging import configure_logging, get_logger
from stackmap.model import Message, MessageLevel, ScanStatus, utcnow
from stackmap.settings import ScanManagerSettings, Settings
from stackmap.store import Doc, Store, open_store

log = get_logger("stackmap.scan_manager")

TICK_S = 0.2  # how often a running scan is looked after
PRUNE_CHUNK = 5_000  # messages deleted per store call: a writer waits for one such call at most
CHECK_S = 1.0  # how often a running scan's document is re-read (cancel requests)
PROGRESS_WRITE_S = 1.0  # at most this often, progress goes to the scan document
STATUS = ScanStatus


def owner_id() -> str:
    """This manager's name on the scans it claims: host, pid and a nonce (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class Outcome:
    """How a scan ended, before it is written to the store."""

    status: str
    error: str | None = None
    summary: dict[str, Any] | None = None
    message: str | None = None  # written to ``messages`` when the scan itself could not write one
    release: bool = False  # put back in the queue instead of ending it (manager stopping)


@dataclass
class Job:
    """The scan this manager is running."""

    scan: Doc
    attempts: int
    lease_expires: datetime
    started: float = field(default_factory=time.monotonic)
    worker: Worker | None = None
    phase: str = "starting"
    counts: dict[str, int] = field(default_factory=dict)
    outcome: Outcome | None = None
    next_check: float = 0.0
    next_renew: float = 0.0
    progress_written: float = 0.0
    progress_dirty: bool = True

    @property
    def id(self) -> str:
        return str(self.scan["id"])

    @property
    def environment(self) -> str:
        return str(self.scan["environment"])

    def progress(self) -> dict[str, Any]:
        top = sorted(self.counts.items(), key=lambda kv: -kv[1])[:30]
        return {"phase": self.phase, "counts": dict(top)}


class ScanManager(Daemon):
    """The ``stackmap-scan-manager`` daemon."""

    name = "scan_manager"

    def __init__(self, settings: Settings | None = None, *, config_file: str | None = None,
                 overrides: dict[str, Any] | None = None, store: Store | None = None) -> None:
        super().__init__(settings, config_file=config_file, overrides=overrides)
        self.owner = owner_id()
        self.store: Store | None = store
        self._own_store = store is None
        self.job: Job | None = None
        self.scheduler: Scheduler | None = None
        self._next_poll = 0.0
        self._next_refresh = 0.0
        self._next_prune = 0.0
        self._store_failures = 0
        self._known_environments: set[str] = set()
        self._object_labels: set[tuple[str, str]] = set()
        self._reopen = False

    @property
    def conf(self) -> ScanManagerSettings:
        return self.settings.scan_manager

    # -- process lifecycle ---------------------------------------------------------------------------
    def serve(self) -> int:
        """Run until SIGTERM/SIGINT; then finish or release the running scan within ``stop_grace_s``."""
        configure_logging(self.settings.log_level, self.settings.log_format)
        self.install_signal_handlers()
        try:
            self.start_metrics(self.conf.metrics_addr)
        except OSError as exc:
            log.error("cannot serve metrics", address=self.conf.metrics_addr, error=str(exc))
            return 1
        self.notifier.status("starting scan processes")
        try:
            warm_up(self.conf.worker_start_method)
        except Exception as exc:  # each scan will then fail with the reason; the loop still serves
            log.error("cannot start scan processes", method=self.conf.worker_start_method, error=str(exc))
        self.notifier.ready("scan manager running")
        log.info("daemon started", daemon=self.name, pid=os.getpid(), owner=self.owner,
                 poll_interval_s=self.conf.poll_interval_s, lease_s=self.conf.lease_s,
                 scan_timeout_s=self.conf.scan_timeout_s, max_attempts=self.conf.max_attempts)
        try:
            while not self.stopping:
                if self.reload_requested.is_set():
                    self.reload_settings()
                self.heartbeat()
                self.sleep(self.run_once())
            self.notifier.stopping()
            self.drain()
        finally:
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
            self.close()
            log.info("daemon stopped", daemon=self.name)
        return 0

    def on_reload(self) -> None:
        """SIGHUP: intervals, lease, timeout and limits apply from the next round; a new store URL
        is opened once no scan is running; the metrics address needs a restart."""
        log.info("scan manager settings applied", poll_interval_s=self.conf.poll_interval_s,
                 lease_s=self.conf.lease_s, scan_timeout_s=self.conf.scan_timeout_s,
                 max_attempts=self.conf.max_attempts)
        self._next_poll = 0.0
        if self.store is not None and self._own_store and self.store.url != self.settings.store_url:
            self._reopen = True

    def close(self) -> None:
        if self.job is not None and self.job.worker is not None:
            self.job.worker.stop()
        if self.store is not None and self._own_store:
            self.store.close()
            self.store = None

    # -- one round ---------------------------------------------------------------------------------------
    def run_once(self) -> float:
        """One round of the loop; returns how long to wait before the next."""
        try:
            store = self._ensure_store()
            if self.job is not None:
                self._tend_safely(store, self.job)
            now_m = time.monotonic()
            if now_m >= self._next_poll:
                self._next_poll = now_m + self.conf.poll_interval_s
                self._poll(store)
            if now_m >= self._next_refresh:
                self._next_refresh = now_m + self.conf.metrics_refresh_s
                self._refresh_object_metrics(store)
            if now_m >= self._next_prune:
                more = self._prune_messages(store)
                self._next_prune = time.monotonic() + (self.conf.poll_interval_s if more
                                                       else self.conf.messages_prune_interval_s)
            if self.job is None and not self.stopping and self._claim(store) and self.job is None:
                return 0.0  # claimed a request that ended at once (bad input): look for the next
            self._store_failures = 0
        except StoreError as exc:
            return self._store_trouble(exc)
        except Exception:  # a bug must not end the daemon: log it, count it, go on
            metrics.PROBLEMS.labels("internal").inc()
            log.error("scan manager round failed", exc_info=True)
            return self.conf.poll_interval_s
        if self.job is not None:
            return TICK_S
        return max(0.0, min(self._next_poll - time.monotonic(), self.conf.poll_interval_s))

    def _tend_safely(self, store: Store, job: Job) -> None:
        """``_tend``, with a bug in it ending this scan (failed, with the error) rather than
        repeating every round with the scan never timing out."""
        try:
            self._tend(store, job)
        except StoreError:
            raise
        except Exception as exc:
            metrics.PROBLEMS.labels("internal").inc()
            log.error("error while looking after a scan; stopping it", scan_id=job.id, exc_info=True)
            reason = f"scan manager error: {type(exc).__name__}: {exc}"
            try:
                self._stop(store, job, Outcome(STATUS.FAILED.value, reason, message=f"scan {job.id} failed: {reason}"))
            except StoreError:
                raise
            except Exception:
                log.error("could not record the failed scan; dropping it", scan_id=job.id, exc_info=True)
                self._drop(job, "internal")

    def _ensure_store(self) -> Store:
        if self._reopen and self.job is None and self.store is not None:
            log.info("store changed; reopening", store=self.settings.store_url.split("://")[0])
            self.store.close()
            self.store = None
            self._reopen = False
        if self.store is None:
            self.store = open_store(self.settings.store_url)
            self.scheduler = None
            log.info("store open", store=self.store.describe())
        if self.scheduler is None:
            self.scheduler = Scheduler(self.store, on_created=lambda env: metrics.SCHEDULED.labels(env).inc(),
                                       on_problem=lambda kind: metrics.PROBLEMS.labels(kind).inc())
            self._load_last_success(self.store)
        return self.store

    def _store_trouble(self, exc: StoreError) -> float:
        """Log, count and back off; a running scan whose lease can no longer be renewed is stopped
        (someone will take it back once the store returns)."""
        self._store_failures += 1
        metrics.PROBLEMS.labels("store_unavailable").inc()
        wait = min(self.conf.poll_interval_s * 2 ** min(self._store_failures - 1, 10), self.conf.store_retry_max_s)
        log.warning("store unavailable; retrying", error=str(exc), failures=self._store_failures, retry_in_s=wait)
        job = self.job
        if job is not None:
            if job.outcome is None and utcnow() >= job.lease_expires:
                log.warning("lease of the running scan expired while the store was away; stopping it",
                            scan_id=job.id, environment=job.environment)
                self._drop(job, "lost_lease")
            return min(wait, TICK_S * 5)
        return wait

    def _poll(self, store: Store) -> None:
        """Once per poll interval: take back abandoned scans, queue due schedules, gauge the queue."""
        now = utcnow()
        self._known_environments = {e["name"] for e in store.list_environments()}
        self._recover_expired(store, now)
        if self.conf.schedules and self.scheduler is not None:
            self.scheduler.run_due(now, self._known_environments)
        metrics.QUEUE_DEPTH.set(len(store.find_scans(status=[STATUS.PENDING.value])))

    # -- claiming and starting ---------------------------------------------------------------------------
    def _claim(self, store: Store) -> bool:
        now = utcnow()
        lease = now + timedelta(seconds=self.conf.lease_s)
        doc = store.claim_next_scan(self.owner, lease, now)
        if doc is None:
            return False
        attempts = int(doc.get("attempts") or 0) + 1
        job = Job(scan=doc, attempts=attempts, lease_expires=lease)
        self.job = job
        metrics.RUNNING.set(1)
        log.info("scan claimed", scan_id=job.id, environment=job.environment, attempt=attempts,
                 kind=jobs.scan_kind(doc))
        self._start(store, job)
        return True

    def _start(self, store: Store, job: Job) -> None:
        """Record the attempt, then start the scan process (or end a request that cannot run).

        Idempotent until the process exists: a store error half-way leaves the job to be started
        again at the next round, under the same lease.
        """
        store.update_scan(job.id, {"attempts": job.attempts, "worker_host": socket.gethostname(),
                                   "progress": job.progress()},
                          expect_status=STATUS.RUNNING.value, expect_owner=self.owner)
        rejected = self._rejected(job.scan)
        if rejected is not None:
            job.outcome = rejected
            self._finish(store, job)
            return
        try:
            job.worker = Worker(job.scan, WorkerConfig(self.settings.store_url, str(self.settings.secret_key_file),
                                                       self.settings.log_level, self.settings.log_format,
                                                       self.settings.ssh),
                                self.conf.worker_start_method)
        except Exception as exc:  # no process could be started (resources, a broken forkserver)
            metrics.PROBLEMS.labels("worker_crashed").inc()
            job.outcome = Outcome(STATUS.FAILED.value, f"could not start the scan process: {exc}",
                                  message=f"scan {job.id} failed: could not start the scan process: {exc}")
            self._finish(store, job)
            return
        log.info("scan started", scan_id=job.id, environment=job.environment, pid=job.worker.pid)

    def _rejected(self, doc: Doc) -> Outcome | None:
        """Why a claimed request cannot run at all (it then fails with that reason), or None."""
        env = doc.get("environment")
        if doc.get("cancel_requested"):
            return Outcome(STATUS.ABORTED.value, jobs.CANCELLED_REASON)
        if not isinstance(env, str) or (env not in self._known_environments and (
                self.store is None or self.store.get_environment(env) is None)):
            metrics.PROBLEMS.labels("unknown_environment").inc()
            reason = f"unknown environment {env!r}"
            return Outcome(STATUS.FAILED.value, reason, message=f"scan {doc['id']} failed: {reason}")
        return None  # contradictory options are found by the scan process (which has the scan code loaded)

    # -- looking after the running scan ------------------------------------------------------------------
    def _tend(self, store: Store, job: Job) -> None:
        """Read the child's reports; finish, stop, or renew the lease, as the situation asks."""
        if job.worker is None and job.outcome is None:
            self._start(store, job)  # the store failed between the claim and the start
            if self.job is not job or job.worker is None:
                return
        worker = job.worker
        if worker is not None and job.outcome is None:
            for event in worker.events():
                self._on_event(job, event)
            if job.outcome is None and not worker.alive:
                for event in worker.events():  # whatever it sent just before exiting
                    self._on_event(job, event)
                if job.outcome is None:
                    metrics.PROBLEMS.labels("worker_crashed").inc()
                    reason = f"the scan process died ({_exit_text(worker.exitcode)})"
                    job.outcome = Outcome(STATUS.FAILED.value, reason, message=f"scan {job.id} failed: {reason}")
        if job.outcome is not None:
            self._finish(store, job)
            return
        now_m = time.monotonic()
        if now_m - job.started > self.conf.scan_timeout_s:
            reason = f"timed out after {self.conf.scan_timeout_s:g} s"
            self._stop(store, job, Outcome(STATUS.FAILED.value, reason, message=f"scan {job.id} failed: {reason}"))
            return
        if now_m >= job.next_check:
            job.next_check = now_m + CHECK_S
            doc = store.get_scan(job.id)
            if doc is None or doc.get("owner") != self.owner or doc.get("status") != STATUS.RUNNING.value:
                log.warning("running scan was taken from this manager; stopping it", scan_id=job.id,
                            environment=job.environment, owner=(doc or {}).get("owner"))
                self._drop(job, "lost_lease")
                return
            if doc.get("cancel_requested"):
                self._stop(store, job, Outcome(STATUS.ABORTED.value, jobs.CANCELLED_REASON,
                                               message=f"scan {job.id} aborted: {jobs.CANCELLED_REASON}"))
                return
        self._renew(store, job)

    def _renew(self, store: Store, job: Job, force: bool = False) -> None:
        now_m = time.monotonic()
        progress_due = job.progress_dirty and now_m - job.progress_written >= PROGRESS_WRITE_S
        if not (force or now_m >= job.next_renew or progress_due):
            return
        lease = utcnow() + timedelta(seconds=self.conf.lease_s)
        changes: dict[str, Any] = {"lease_expires": lease, "progress": job.progress()}
        if job.worker is not None:
            changes["worker_pid"] = job.worker.pid
        if store.update_scan(job.id, changes, expect_status=STATUS.RUNNING.value, expect_owner=self.owner):
            job.lease_expires = lease
            job.next_renew = now_m + self.conf.lease_s / 3
            job.progress_written, job.progress_dirty = now_m, False
        else:
            log.warning("lease renewal refused: another manager took the scan; stopping it", scan_id=job.id,
                        environment=job.environment)
            self._drop(job, "lost_lease")

    def _on_event(self, job: Job, event: tuple[Any, ...]) -> None:
        kind = event[0] if event else None
        if kind == "phase":
            job.phase = str(event[1])
        elif kind == "counted":
            what = str(event[1])
            job.counts[what] = job.counts.get(what, 0) + int(event[2])
        elif kind == "done":
            summary = dict(event[1])
            errors = [str(e) for e in summary.get("errors") or []]
            job.outcome = Outcome(str(summary.get("status") or STATUS.FAILED.value),
                                  "; ".join(errors[:5]) or None, summary)
            job.phase = "done"
        elif kind == "error":
            reason = str(event[1])
            if reason.startswith("unknown environment"):
                metrics.PROBLEMS.labels("unknown_environment").inc()
            elif reason.startswith(jobs.INVALID_REQUEST):
                metrics.PROBLEMS.labels("invalid_request").inc()
            job.outcome = Outcome(STATUS.FAILED.value, reason, message=f"scan {job.id} failed: {reason}")
        job.progress_dirty = True

    def _stop(self, store: Store, job: Job, outcome: Outcome) -> None:
        """Stop the scan process, then record ``outcome``."""
        if job.worker is not None:
            job.worker.stop()
        job.outcome = outcome
        self._finish(store, job)

    def _drop(self, job: Job, problem: str) -> None:
        """Stop the scan process and forget the scan without writing it (it is not ours any more)."""
        metrics.PROBLEMS.labels(problem).inc()
        if job.worker is not None:
            job.worker.stop()
        self.job = None
        metrics.RUNNING.set(0)

    # -- the end of a scan ----------------------------------------------------------------------------------
    def _finish(self, store: Store, job: Job) -> None:
        """Write the outcome (compare-and-set on our ownership), the message, the metrics.

        A store error leaves the job as it is, to be written at the next round.
        """
        outcome = job.outcome
        assert outcome is not None
        if job.worker is not None:
            job.worker.join(2)
            if job.worker.alive:
                job.worker.stop()
        now = utcnow()
        if outcome.release:
            changes: dict[str, Any] = {"status": STATUS.PENDING.value, "owner": None, "lease_expires": None,
                                       "start_timestamp": None, "progress": None, "worker_pid": None,
                                       "attempts": max(0, job.attempts - 1)}
        else:
            changes = {"status": outcome.status, "end_timestamp": now, "lease_expires": None,
                       "error": outcome.error, "attempts": job.attempts,
                       "progress": dict(job.progress(), phase="done")}
            if outcome.summary is not None:
                changes["summary"] = outcome.summary
        written = store.update_scan(job.id, changes, expect_status=STATUS.RUNNING.value, expect_owner=self.owner)
        if outcome.message and written and not outcome.release:
            level = MessageLevel.WARNING if outcome.status == STATUS.ABORTED.value else MessageLevel.ERROR
            store.append_messages([Message(environment=job.environment, source_system="stackmap", level=level,
                                           message=outcome.message, display_context="scan").to_doc()])
        self.job = None
        metrics.RUNNING.set(0)
        duration = time.monotonic() - job.started
        if not written:
            log.warning("scan outcome not recorded: the scan is no longer ours", scan_id=job.id,
                        environment=job.environment, status=outcome.status)
            metrics.PROBLEMS.labels("lost_lease").inc()
            return
        if outcome.release:
            log.info("scan released back to the queue", scan_id=job.id, environment=job.environment)
            return
        env_label = job.environment if job.environment in self._known_environments else metrics.UNKNOWN_ENVIRONMENT
        metrics.SCANS.labels(env_label, outcome.status).inc()
        metrics.SCAN_DURATION.labels(env_label, outcome.status).observe(duration)
        if outcome.status == STATUS.COMPLETED.value:
            metrics.LAST_SUCCESS.labels(env_label).set(now.timestamp())
        if env_label != metrics.UNKNOWN_ENVIRONMENT and outcome.summary is not None:
            self._gauge_objects(store, job.environment)
        log.info("scan finished", scan_id=job.id, environment=job.environment, status=outcome.status,
                 duration_s=round(duration, 3), attempt=job.attempts, error=outcome.error)

    # -- shutdown -----------------------------------------------------------------------------------------
    def drain(self) -> None:
        """On stop: let the running scan finish for up to ``stop_grace_s``, else stop it and put it
        back in the queue (another manager, or this one restarted, runs it again)."""
        job = self.job
        if job is None:
            return
        if job.worker is None and job.outcome is None:
            job.outcome = Outcome(STATUS.PENDING.value, release=True)  # claimed but not started: give it back
        deadline = time.monotonic() + self.conf.stop_grace_s
        log.info("stopping: waiting for the running scan", scan_id=job.id, grace_s=self.conf.stop_grace_s)
        while self.job is job and time.monotonic() < deadline:
            self.heartbeat()
            try:
                self._tend_safely(self._ensure_store(), job)
            except StoreError as exc:
                self._store_trouble(exc)
            except Exception:
                log.error("error while draining", exc_info=True)
                break
            if self.job is job:
                time.sleep(TICK_S)
        if self.job is not job:
            return
        if job.worker is not None:
            job.worker.stop()
        if job.outcome is None:
            job.outcome = Outcome(STATUS.PENDING.value, release=True)
        try:
            self._finish(self._ensure_store(), job)
        except StoreError as exc:
            log.warning("could not release the scan; its lease will expire and another manager takes it",
                        scan_id=job.id, error=str(exc))
            self.job = None

    # -- recovery of abandoned scans -------------------------------------------------------------------------
    def _recover_expired(self, store: Store, now: datetime) -> None:
        """Take back running scans whose lease expired: their manager died or lost the store."""
        for doc in store.find_scans(status=[STATUS.RUNNING.value]):
            lease = doc.get("lease_expires")
            if not isinstance(lease, datetime) or lease >= now:
                continue  # alive, or a foreground CLI scan (no lease)
            if self.job is not None and doc["id"] == self.job.id:
                continue
            owner = doc.get("owner")
            attempts = int(doc.get("attempts") or 1)
            if doc.get("cancel_requested"):
                status, reason = STATUS.ABORTED.value, f"{jobs.CANCELLED_REASON} (its manager {owner} stopped)"
                changes: dict[str, Any] = {"status": status, "end_timestamp": now, "lease_expires": None,
                                           "error": reason}
            elif attempts < self.conf.max_attempts:
                status, reason = STATUS.PENDING.value, None
                changes = {"status": status, "owner": None, "lease_expires": None, "start_timestamp": None,
                           "progress": None, "worker_pid": None,
                           "recovered": f"lease of {owner} expired at {lease.isoformat()} during attempt "
                                        f"{attempts} of {self.conf.max_attempts}; re-queued"}
            else:
                status = STATUS.FAILED.value
                reason = (f"lease expired at {lease.isoformat()}: its scan manager {owner} stopped renewing it "
                          f"(killed or cut off) during attempt {attempts} of {self.conf.max_attempts}")
                changes = {"status": status, "end_timestamp": now, "lease_expires": None, "error": reason}
            if not store.update_scan(doc["id"], changes, expect_status=STATUS.RUNNING.value, expect_owner=owner):
                continue  # renewed or taken back by someone else meanwhile
            metrics.RECOVERED.labels(status).inc()
            log.warning("scan with an expired lease taken back", scan_id=doc["id"], environment=doc.get("environment"),
                        previous_owner=owner, attempt=attempts, status=status)
            if reason is not None:
                env_label = doc.get("environment") if doc.get("environment") in self._known_environments \
                    else metrics.UNKNOWN_ENVIRONMENT
                metrics.SCANS.labels(env_label, status).inc()
                store.append_messages([Message(environment=doc.get("environment"), source_system="stackmap",
                                               level=MessageLevel.ERROR, message=f"scan {doc['id']} {status}: {reason}",
                                               display_context="scan").to_doc()])

    # -- metrics that come from the store ------------------------------------------------------------------
    def _gauge_objects(self, store: Store, environment: str) -> None:
        counts = store.count_objects(environment)
        for (env, otype) in [k for k in self._object_labels if k[0] == environment and k[1] not in counts]:
            metrics.INVENTORY_OBJECTS.remove(env, otype)
            self._object_labels.discard((env, otype))
        for otype, count in counts.items():
            metrics.INVENTORY_OBJECTS.labels(environment, otype).set(count)
            self._object_labels.add((environment, otype))

    def _refresh_object_metrics(self, store: Store) -> None:
        """Object counts change through the event manager too: re-read them now and then."""
        names = {e["name"] for e in store.list_environments()}
        for env, otype in [k for k in self._object_labels if k[0] not in names]:
            metrics.INVENTORY_OBJECTS.remove(env, otype)
            self._object_labels.discard((env, otype))
        for name in sorted(names):
            self._gauge_objects(store, name)

    def _prune_messages(self, store: Store) -> bool:
        """Delete the messages past their age or count, for at most about half a second (the loop
        also looks after a running scan); True when some are left to delete at the next round."""
        conf = self.conf
        older_than = utcnow() - timedelta(days=conf.messages_max_age_days) if conf.messages_max_age_days else None
        keep = conf.messages_max_count or None
        if older_than is None and keep is None:
            return False
        removed, more = 0, False
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            gone = store.prune_messages(older_than=older_than, keep=keep, limit=PRUNE_CHUNK)
            removed += gone
            more = gone == PRUNE_CHUNK
            if not more:
                break
        if removed:
            metrics.MESSAGES_PRUNED.inc(removed)
            log.info("old messages deleted", deleted=removed, more_to_delete=more,
                     max_age_days=conf.messages_max_age_days, max_count=conf.messages_max_count)
        return more

    def _load_last_success(self, store: Store) -> None:
        """Start the last-success gauge from the store, so a restart does not reset it to nothing."""
        for env in store.list_environments():
            done = store.find_scans(env["name"], status=[STATUS.COMPLETED.value], limit=1)
            ended = done[0].get("end_timestamp") if done else None
            if isinstance(ended, datetime):
                metrics.LAST_SUCCESS.labels(env["name"]).set(ended.timestamp())


def _exit_text(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
