"""The scan manager's loop, driven round by round in this process against a fake cloud over HTTP.

Scans still run in real child processes (the manager's forkserver); only the loop is stepped by
hand (``run_once``), so each rule (bad input, cancel, timeout, lease recovery, store outages,
shutdown) is checked without timing a daemon from outside. ``tests/integration`` runs the daemon
as real processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from daemons.scan_manager import jobs
from daemons.scan_manager.manager import ScanManager
from stackmap.discovery.scan import ScanOptions
from stackmap.errors import StoreUnavailable
from stackmap.model import Message, Scan, utcnow
from stackmap.settings import load_settings
from stackmap.store import Doc, Store
from tests.fakecloud import FakeCloud, FakeCloudServer
from tests.scan_manager_rig import ENV, SMALL, TOKENS, served_environment


@dataclass
class Rig:
    cloud: FakeCloud
    server: FakeCloudServer
    store: Store
    url: str
    key: Path

    def manager(self, **knobs: Any) -> ScanManager:
        conf = {"poll_interval_s": 0.1, "lease_s": 5.0, "metrics_refresh_s": 3600.0, **knobs}
        settings = load_settings(store_url=self.url, secret_key_file=str(self.key), log_format="console",
                                 scan_manager=conf)
        return ScanManager(settings, store=self.store)

    def queue(self, options: ScanOptions | None = None, env: str = ENV) -> str:
        return str(jobs.submit(self.store, env, options or ScanOptions())["id"])

    def scan(self, scan_id: str) -> Doc:
        doc = self.store.get_scan(scan_id)
        assert doc is not None
        return doc


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with served_environment(tmp_path) as served:
        yield Rig(served.cloud, served.server, served.store, served.url, served.key)


def drive(manager: ScanManager, until: Callable[[], bool], timeout: float = 20.0) -> None:
    """Run the manager's rounds until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            wait = manager.run_once()
            if until():
                return
            time.sleep(min(wait, 0.05))
        raise AssertionError("condition not reached in time")
    except BaseException:
        manager.close()
        raise


def status_is(rig: Rig, scan_id: str, *statuses: str) -> Callable[[], bool]:
    return lambda: rig.scan(scan_id)["status"] in statuses


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_a_queued_scan_runs_in_a_child_and_its_outcome_is_recorded(rig: Rig, start_method: str) -> None:
    before = metric("stackmap_scan_manager_scans_total", environment=ENV, status="completed")
    scan_id = rig.queue()
    manager = rig.manager(worker_start_method=start_method)
    drive(manager, status_is(rig, scan_id, "completed"))
    doc = rig.scan(scan_id)
    assert doc["attempts"] == 1 and doc["owner"] == manager.owner and doc["lease_expires"] is None
    assert doc["summary"]["objects_by_type"]["instance"] == SMALL.instances
    assert doc["progress"]["phase"] == "done" and doc["worker_pid"] != os.getpid()
    env = rig.store.get_environment(ENV)
    assert env is not None and env["scanned"] is True and env["last_scanned"] is not None
    assert any("scan completed" in m["message"] for m in rig.store.find_messages(ENV))
    assert metric("stackmap_scan_manager_scans_total", environment=ENV, status="completed") == before + 1
    assert metric("stackmap_inventory_objects", environment=ENV, type="instance") == SMALL.instances
    manager.close()


def test_bad_requests_fail_with_a_reason_and_the_manager_goes_on(rig: Rig) -> None:
    manager = rig.manager()
    unknown = Scan(environment="nowhere").to_doc()
    contradictory = Scan(environment=ENV, object_id="x", resource_types=["instance"]).to_doc()
    rig.store.submit_scan(unknown)
    rig.store.submit_scan(contradictory)
    good = rig.queue()
    drive(manager, status_is(rig, good, "completed"))
    assert rig.scan(unknown["id"])["status"] == "failed"
    assert "unknown environment 'nowhere'" in rig.scan(unknown["id"])["error"]
    assert rig.scan(contradictory["id"])["status"] == "failed"
    assert "invalid scan request" in rig.scan(contradictory["id"])["error"]
    assert metric("stackmap_scan_manager_scans_total", environment="(unknown)", status="failed") >= 1
    manager.close()


def test_a_typed_scan_touches_only_its_types(rig: Rig) -> None:
    manager = rig.manager()
    first = rig.queue()
    drive(manager, status_is(rig, first, "completed"))
    server = rig.cloud.items("servers")[0]
    flavor = next(f for f in rig.store.find_objects(ENV, type="flavor"))
    rig.cloud.delete_servers([server["id"]])
    rig.cloud.delete("flavors", str(flavor["flavor_id"]))
    typed = rig.queue(ScanOptions(resource_types=["instance", "port"]))
    drive(manager, status_is(rig, typed, "completed"))
    assert rig.store.get_object(ENV, server["id"]) is None  # its type was synced
    assert rig.store.get_object(ENV, flavor["id"]) is not None  # other types left alone
    full = rig.queue()
    drive(manager, status_is(rig, full, "completed"))
    assert rig.store.get_object(ENV, flavor["id"]) is None  # the full scan removes it
    manager.close()


def test_cancel_a_pending_scan_and_a_running_one(rig: Rig) -> None:
    manager = rig.manager()
    waiting = rig.queue()
    assert jobs.cancel(rig.store, waiting) == "aborted"
    assert rig.scan(waiting)["error"] == jobs.CANCELLED_REASON
    with pytest.raises(Exception, match="already finished"):
        jobs.cancel(rig.store, waiting)
    rig.server.slow(TOKENS, 30)
    running = rig.queue()
    drive(manager, lambda: rig.scan(running).get("worker_pid") is not None)
    pid = rig.scan(running)["worker_pid"]
    assert jobs.cancel(rig.store, running) == "running"
    drive(manager, status_is(rig, running, "aborted"), timeout=10)
    assert rig.scan(running)["error"] == jobs.CANCELLED_REASON
    assert not _alive(pid)
    manager.close()


def test_a_scan_past_its_timeout_is_stopped_and_failed(rig: Rig) -> None:
    rig.server.slow(TOKENS, 30)
    manager = rig.manager(scan_timeout_s=1.0)
    scan_id = rig.queue()
    drive(manager, status_is(rig, scan_id, "failed"), timeout=15)
    assert "timed out after 1 s" in rig.scan(scan_id)["error"]
    manager.close()


def test_a_crashed_scan_process_fails_the_scan(rig: Rig) -> None:
    rig.server.slow(TOKENS, 30)
    manager = rig.manager()
    scan_id = rig.queue()
    drive(manager, lambda: rig.scan(scan_id).get("worker_pid") is not None)
    os.kill(rig.scan(scan_id)["worker_pid"], 9)
    drive(manager, status_is(rig, scan_id, "failed"))
    assert "the scan process died (killed by SIGKILL)" in rig.scan(scan_id)["error"]
    manager.close()


def test_a_bug_while_tending_a_scan_fails_that_scan_not_the_daemon(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = rig.manager()

    def broken(job: Any, event: Any) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(manager, "_on_event", broken)
    scan_id = rig.queue()
    drive(manager, status_is(rig, scan_id, "failed"))
    assert "scan manager error: KeyError" in rig.scan(scan_id)["error"]
    monkeypatch.undo()
    again = rig.queue()
    drive(manager, status_is(rig, again, "completed"))
    manager.close()


def _running_orphan(rig: Rig, attempts: int) -> str:
    doc = Scan(environment=ENV).to_doc()
    rig.store.submit_scan(doc)
    past = utcnow() - timedelta(seconds=30)
    rig.store.update_scan(doc["id"], {"status": "running", "owner": "ghost:1:abc", "lease_expires": past,
                                      "start_timestamp": past, "attempts": attempts})
    return str(doc["id"])


def test_an_expired_lease_is_taken_back_and_rerun(rig: Rig) -> None:
    scan_id = _running_orphan(rig, attempts=1)
    manager = rig.manager(max_attempts=2)
    drive(manager, status_is(rig, scan_id, "completed"))
    doc = rig.scan(scan_id)
    assert doc["attempts"] == 2 and doc["owner"] == manager.owner and "ghost:1:abc" in doc["recovered"]
    manager.close()


def test_an_expired_lease_past_the_attempt_limit_fails_with_the_reason(rig: Rig) -> None:
    scan_id = _running_orphan(rig, attempts=2)
    manager = rig.manager(max_attempts=2)
    drive(manager, status_is(rig, scan_id, "failed"))
    error = rig.scan(scan_id)["error"]
    assert "lease expired" in error and "ghost:1:abc" in error and "attempt 2 of 2" in error
    assert any(scan_id in m["message"] for m in rig.store.find_messages(ENV, level="error"))
    manager.close()


def test_a_scan_taken_over_by_another_manager_is_stopped_here(rig: Rig) -> None:
    rig.server.slow(TOKENS, 30)
    manager = rig.manager()
    scan_id = rig.queue()
    drive(manager, lambda: rig.scan(scan_id).get("worker_pid") is not None)
    pid = rig.scan(scan_id)["worker_pid"]
    rig.store.update_scan(scan_id, {"owner": "other:2:def"})
    drive(manager, lambda: manager.job is None, timeout=10)
    assert rig.scan(scan_id)["owner"] == "other:2:def" and rig.scan(scan_id)["status"] == "running"
    assert not _alive(pid)
    manager.close()


def test_stopping_releases_an_unfinished_scan_to_the_queue(rig: Rig) -> None:
    rig.server.slow(TOKENS, 30)
    manager = rig.manager(stop_grace_s=0.5)
    scan_id = rig.queue()
    drive(manager, lambda: rig.scan(scan_id).get("worker_pid") is not None)
    pid = rig.scan(scan_id)["worker_pid"]
    manager.stop_event.set()
    started = time.monotonic()
    manager.drain()
    assert time.monotonic() - started < 10
    doc = rig.scan(scan_id)
    assert (doc["status"], doc["owner"], doc["attempts"]) == ("pending", None, 0)
    assert not _alive(pid)
    manager.close()


class FlakyStore:
    """A store that is 'down' for the first ``failures`` calls of some operations."""

    def __init__(self, store: Store, failures: int,
                 methods: tuple[str, ...] = ("claim_next_scan", "find_scans", "list_environments")) -> None:
        self._store = store
        self.failures = failures
        self.methods = methods

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if name in self.methods and callable(attr):
            def flaky(*args: Any, **kwargs: Any) -> Any:
                if self.failures > 0:
                    self.failures -= 1
                    raise StoreUnavailable("store is down (test)")
                return attr(*args, **kwargs)
            return flaky
        return attr


def test_a_store_outage_is_retried_with_backoff(rig: Rig) -> None:
    before = metric("stackmap_scan_manager_problems_total", type="store_unavailable")
    manager = rig.manager()
    flaky = FlakyStore(rig.store, failures=3)
    manager.store = flaky  # type: ignore[assignment]
    manager.scheduler = None
    waits = [manager.run_once() for _ in range(3)]
    assert waits[0] > 0 and waits[1] >= waits[0] and waits[2] >= waits[1]  # backing off, never raising
    assert metric("stackmap_scan_manager_problems_total", type="store_unavailable") == before + 3
    scan_id = rig.queue()
    drive(manager, status_is(rig, scan_id, "completed"))
    manager.close()


def test_a_store_outage_between_claim_and_start_delays_the_scan_only(rig: Rig) -> None:
    manager = rig.manager()
    scan_id = rig.queue()
    manager.store = FlakyStore(rig.store, failures=1, methods=("update_scan",))  # type: ignore[assignment]
    manager.scheduler = None
    assert manager.run_once() > 0  # claimed, then the store failed before the attempt was recorded
    assert manager.job is not None and manager.job.worker is None
    drive(manager, status_is(rig, scan_id, "completed"))
    assert rig.scan(scan_id)["attempts"] == 1
    manager.close()


def test_due_schedules_are_queued_and_run(rig: Rig) -> None:
    from daemons.scan_manager.schedules import new_schedule

    sched = new_schedule(ENV, every="1h", now=utcnow())
    rig.store.upsert_scheduled_scan(sched.to_doc())
    rig.store.upsert_scheduled_scan({"id": "broken", "environment": ENV, "cron": "not a cron"})
    manager = rig.manager()
    drive(manager, lambda: any(s["status"] == "completed" for s in rig.store.find_scans(ENV)))
    scans = rig.store.find_scans(ENV)
    assert len(scans) == 1 and scans[0]["scheduled_scan_id"] == sched.id
    assert scans[0]["summary"]["objects_by_type"]["flavor"] == SMALL.flavors
    manager.close()


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie (a container's init may not reap at once)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(")")[-1].split()[0] == "Z":
                    return False
        except FileNotFoundError:
            return False
        time.sleep(0.05)
    return True


def test_messages_past_their_age_or_beyond_the_newest_count_are_pruned(rig: Rig) -> None:
    now = utcnow()
    rig.store.append_messages(
        [Message(id=f"old{n:03d}", environment=ENV, message="old", timestamp=now - timedelta(days=20, seconds=n)
                 ).to_doc() for n in range(100)]
        + [Message(id=f"new{n:03d}", environment=ENV, message="new", timestamp=now - timedelta(seconds=n)
                   ).to_doc() for n in range(150)])
    everything = rig.store.find_messages(limit=10_000)
    expected = [m["id"] for m in everything[:120] if m["timestamp"] >= now - timedelta(days=14)]
    before = metric("stackmap_scan_manager_messages_pruned_total")
    kept_all = rig.manager(messages_max_age_days=0, messages_max_count=0)  # both off: nothing goes
    kept_all.run_once()
    kept_all.close()
    assert len(rig.store.find_messages(limit=10_000)) == len(everything)
    manager = rig.manager(messages_max_age_days=14, messages_max_count=120)
    drive(manager, lambda: len(rig.store.find_messages(limit=10_000)) <= len(expected))
    manager.close()
    assert [m["id"] for m in rig.store.find_messages(limit=10_000)] == expected
    assert not [i for i in expected if i.startswith("old")] and len(expected) == 120
    assert metric("stackmap_scan_manager_messages_pruned_total") - before == len(everything) - len(expected)
