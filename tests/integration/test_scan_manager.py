"""The scan manager as real processes (``python -m daemons.scan_manager.main``) on a real SQLite
file, scanning a fake OpenStack served over HTTP on loopback.

- two managers and 20 queued scans: each scan runs exactly once;
- ``kill -9`` of a manager mid-scan: its scan process goes too, and the scan is taken back and
  re-run by the other manager within lease + poll time;
- a schedule every second runs at that cadence, and downtime gives one catch-up run;
- a scripted run (``stackmap scan --wait``, a typed scan, a bad request) shows on /metrics;
- SIGHUP reloads the settings; SIGTERM releases an unfinished scan back to the queue, in bounded time.

Startup dominates (each manager imports the scan code once, in its forkserver), so the tests
start as few managers as their claims need.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemons.scan_manager import jobs
from daemons.scan_manager.schedules import new_schedule, slot_scan_id
from stackmap.discovery.scan import ScanOptions
from stackmap.model import Scan, utcnow
from stackmap.store import Doc, Store
from tests.fakecloud import FakeCloud, FakeCloudServer
from tests.scan_manager_rig import ENV, SMALL, TOKENS, served_environment

LEASE_S = 4.0
POLL_S = 0.2
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ManagerProcess:
    """One ``stackmap-scan-manager`` process and its JSON log."""

    proc: subprocess.Popen[bytes]
    log_file: Path
    metrics_port: int

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_file.read_text().splitlines():
            with contextlib.suppress(ValueError):  # a line some library printed as text
                out.append(json.loads(line))
        return out

    def claimed(self) -> list[str]:
        return [e["scan_id"] for e in self.events() if e.get("event") == "scan claimed"]

    def wait_for(self, event: str, timeout: float = 20.0) -> None:
        wait_until(lambda: any(e.get("event") == event for e in self.events()), timeout,
                   f"manager never logged {event!r}:\n{self.log_file.read_text()[-3000:]}")

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}


@dataclass
class Rig:
    cloud: FakeCloud
    server: FakeCloudServer
    store: Store
    url: str
    key: Path
    tmp: Path
    managers: list[ManagerProcess] = field(default_factory=list)

    def env(self, **knobs: Any) -> dict[str, str]:
        env = dict(os.environ, STACKMAP_STORE_URL=self.url, STACKMAP_SECRET_KEY_FILE=str(self.key),
                   STACKMAP_LOG_FORMAT="json", STACKMAP_LOG_LEVEL="INFO", PYTHONPATH=str(ROOT))
        conf = {"poll_interval_s": POLL_S, "lease_s": LEASE_S, **knobs}
        env.update({f"STACKMAP_SCAN_MANAGER__{k.upper()}": str(v) for k, v in conf.items()})
        return env

    def start_manager(self, *args: str, **knobs: Any) -> ManagerProcess:
        port = free_port()
        log_file = self.tmp / f"manager{len(self.managers)}.log"
        with log_file.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "daemons.scan_manager.main", "--metrics-addr", f"127.0.0.1:{port}", *args],
                env=self.env(**knobs), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        manager = ManagerProcess(proc, log_file, port)
        self.managers.append(manager)
        return manager

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", "import sys; from stackmap.cli import main; main(sys.argv[1:])",
                               *args], env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=ROOT)

    def scan(self, scan_id: str) -> Doc:
        doc = self.store.get_scan(scan_id)
        assert doc is not None
        return doc


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout: float, message: str = "condition not reached") -> float:
    """Poll ``condition``; returns the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(message)


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with served_environment(tmp_path) as served:
        r = Rig(served.cloud, served.server, served.store, served.url, served.key, tmp_path)
        try:
            yield r
        finally:
            for manager in r.managers:
                if manager.proc.poll() is None:
                    manager.proc.kill()
                    manager.proc.wait(10)


def test_two_managers_run_each_of_20_queued_scans_exactly_once(rig: Rig) -> None:
    ids = [str(jobs.submit(rig.store, ENV, ScanOptions())["id"]) for _ in range(20)]
    a, b = rig.start_manager(), rig.start_manager()
    wait_until(lambda: all(rig.scan(i)["status"] == "completed" for i in ids), 45,
               f"not all scans completed: {[rig.scan(i)['status'] for i in ids]}")
    claims = a.claimed() + b.claimed()
    assert sorted(claims) == sorted(ids)  # every scan claimed once, by one of the two
    assert all(rig.scan(i)["attempts"] == 1 for i in ids)
    ran = [m for m in rig.store.find_messages(ENV, limit=1000) if str(m["message"]).startswith("scan completed")]
    assert len(ran) == 20  # each scan process ran (and wrote its message) once
    owners = {rig.scan(i)["owner"].rsplit(":", 2)[1] for i in ids}
    assert owners <= {str(a.proc.pid), str(b.proc.pid)}


def test_kill_9_mid_scan_the_other_manager_recovers_the_scan(rig: Rig) -> None:
    rig.server.slow(TOKENS, 60)  # the scan hangs in its first request until the fault is lifted
    managers = [rig.start_manager(), rig.start_manager()]
    for manager in managers:
        manager.wait_for("store open")
    scan_id = str(jobs.submit(rig.store, ENV, ScanOptions())["id"])
    wait_until(lambda: rig.scan(scan_id).get("worker_pid") is not None, 20, "scan never started")
    doc = rig.scan(scan_id)
    assert doc["status"] == "running"
    victim, rescuer = sorted(managers, key=lambda m: doc["owner"].split(":")[1] != str(m.proc.pid))
    worker_pid = doc["worker_pid"]
    helpers = children(victim.proc.pid)  # its forkserver (the scan process is the forkserver's child)
    assert helpers
    rig.server.faults.clear()
    os.kill(victim.proc.pid, signal.SIGKILL)
    victim.proc.wait(5)
    # the scan process notices its manager is gone and exits, and so does the forkserver: no orphans
    wait_until(lambda: not alive(worker_pid), 5, "the scan process outlived its killed manager")
    wait_until(lambda: not any(alive(pid) for pid in helpers), 5, "the forkserver outlived its manager")
    taken = wait_until(lambda: rig.scan(scan_id).get("owner") != doc["owner"], LEASE_S + POLL_S + 5,
                       "the scan was not taken back")
    assert taken <= LEASE_S + POLL_S + 2.0, taken  # lease + poll, plus slack for a loaded machine
    wait_until(lambda: rig.scan(scan_id)["status"] == "completed", 20, f"not re-run: {rig.scan(scan_id)}")
    final = rig.scan(scan_id)
    assert final["attempts"] == 2 and final["owner"].split(":")[1] == str(rescuer.proc.pid)
    assert "expired" in final["recovered"]


def test_a_schedule_every_second_keeps_its_cadence_and_catches_up_once(rig: Rig) -> None:
    sched = new_schedule(ENV, every="1s", resource_types=["flavor"], now=utcnow())
    rig.store.upsert_scheduled_scan(sched.to_doc())

    def scheduled() -> list[Doc]:
        return sorted((s for s in rig.store.find_scans(ENV) if s.get("scheduled_scan_id") == sched.id),
                      key=lambda s: s["submit_timestamp"])

    manager = rig.start_manager()
    manager.wait_for("store open")
    started = time.monotonic()
    wait_until(lambda: len(scheduled()) >= 4, 15, f"schedule did not run: {len(scheduled())}")
    elapsed = time.monotonic() - started
    runs = scheduled()
    gaps = [(b["submit_timestamp"] - a["submit_timestamp"]).total_seconds() for a, b in itertools.pairwise(runs)]
    # the first run catches up the slot that passed while the manager started; then one per second
    assert all(0.5 <= g <= 2.5 for g in gaps[1:]), gaps
    assert elapsed >= 2.0, elapsed  # four runs take three periods (after the catch-up), not a burst
    wait_until(lambda: all(s["status"] not in ("pending", "running") for s in scheduled()), 10)

    manager.proc.send_signal(signal.SIGTERM)
    assert manager.proc.wait(15) == 0
    for s in scheduled():
        if s["status"] == "pending":
            jobs.cancel(rig.store, s["id"])
    missed_from = rig.store.list_scheduled_scans()[0]["scheduled_timestamp"]
    time.sleep(2.5)  # two or three slots pass with no manager running
    before = len(scheduled())
    rig.start_manager()
    wait_until(lambda: len(scheduled()) > before, 15, "no catch-up run")
    # exactly one run for the missed slots: the first missed slot's scan, none for the others
    assert rig.store.get_scan(slot_scan_id(sched.id, missed_from)) is not None
    for k in (1, 2):
        assert rig.store.get_scan(slot_scan_id(sched.id, missed_from + timedelta(seconds=k))) is None


def test_metrics_after_a_scripted_run(rig: Rig) -> None:
    started = time.time()
    manager = rig.start_manager()
    out = rig.cli("scan", ENV, "--wait", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "completed"
    typed_id = str(jobs.submit(rig.store, ENV, ScanOptions(resource_types=["instance", "port"]))["id"])
    bad = Scan(environment="no-such-env").to_doc()
    rig.store.submit_scan(bad)
    wait_until(lambda: rig.scan(typed_id)["status"] == "completed" and rig.scan(bad["id"])["status"] == "failed",
               20)

    def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return manager.metrics()

    wait_until(lambda: scraped().get(("stackmap_scan_manager_queue_depth", ())) == 0.0, 5)
    m = scraped()
    assert m[("stackmap_scan_manager_scans_total", (("environment", ENV), ("status", "completed")))] == 2
    assert m[("stackmap_scan_manager_scans_total", (("environment", "(unknown)"), ("status", "failed")))] == 1
    assert m[("stackmap_scan_duration_seconds_count", (("environment", ENV), ("status", "completed")))] == 2
    assert m[("stackmap_inventory_objects", (("environment", ENV), ("type", "instance")))] == SMALL.instances
    assert m[("stackmap_scan_manager_running_scans", ())] == 0
    last = m[("stackmap_scan_manager_last_success_timestamp_seconds", (("environment", ENV),))]
    assert started <= last <= time.time()
    assert m[("stackmap_scan_manager_problems_total", (("type", "unknown_environment"),))] >= 1
    assert not any("no-such-env" in str(labels) for (_name, labels) in m)  # bad input adds no label values


def test_sighup_reloads_and_sigterm_releases_the_running_scan(rig: Rig, tmp_path: Path) -> None:
    config = tmp_path / "stackmap.toml"
    config.write_text("[scan_manager]\nstop_grace_s = 1.0\n")
    rig.server.slow(TOKENS, 60)
    manager = rig.start_manager("--config", str(config))
    scan_id = str(jobs.submit(rig.store, ENV, ScanOptions())["id"])
    wait_until(lambda: rig.scan(scan_id).get("worker_pid") is not None, 20, "scan never started")
    worker_pid = rig.scan(scan_id)["worker_pid"]
    config.write_text("[scan_manager]\nstop_grace_s = 0.5\nscan_timeout_s = 900\n")
    manager.proc.send_signal(signal.SIGHUP)
    manager.wait_for("settings reloaded", 10)
    assert any(e.get("event") == "scan manager settings applied" and e.get("scan_timeout_s") == 900
               for e in manager.events())
    stopping = time.monotonic()
    manager.proc.send_signal(signal.SIGTERM)
    assert manager.proc.wait(15) == 0
    assert time.monotonic() - stopping < 10  # grace (0.5 s) + stopping the scan process, not the scan's length
    doc = rig.scan(scan_id)
    assert (doc["status"], doc["owner"], doc["attempts"]) == ("pending", None, 0)
    assert not alive(worker_pid)  # (a released scan runs again: tests/unit/test_scan_manager.py)
