"""Claiming a scan is atomic: several workers racing over one queue each get distinct scans."""

from __future__ import annotations

import multiprocessing
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from stackmap.model import Scan
from stackmap.store import open_store

T0 = datetime(2026, 1, 1, tzinfo=UTC)
N_SCANS = 40


def _fill(url: str) -> None:
    with open_store(url) as store:
        for n in range(N_SCANS):
            store.submit_scan(Scan(id=f"s{n:03d}", environment="lab",
                                   submit_timestamp=T0 + timedelta(seconds=n)).to_doc())


def _claim_all(url: str, owner: str, start: multiprocessing.synchronize.Event | threading.Event) -> list[str]:
    got = []
    with open_store(url) as store:
        start.wait(10)
        while (scan := store.claim_next_scan(owner, T0 + timedelta(hours=1), T0)) is not None:
            got.append(scan["id"])
    return got


def _worker(url: str, owner: str, start: multiprocessing.synchronize.Event, out: multiprocessing.Queue) -> None:
    out.put((owner, _claim_all(url, owner, start)))


def _check(url: str, results: dict[str, list[str]]) -> None:
    claimed = [sid for ids in results.values() for sid in ids]
    assert sorted(claimed) == [f"s{n:03d}" for n in range(N_SCANS)], "every scan claimed exactly once"
    with open_store(url) as store:
        owners = {s["id"]: s["owner"] for s in store.find_scans(status=["running"])}
    assert len(owners) == N_SCANS
    for owner, ids in results.items():
        assert all(owners[sid] == owner for sid in ids)


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_race_for_sqlite_queue(tmp_path: Path, processes: int) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    _fill(url)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, f"w{i}", start, out)) for i in range(processes)]
    for proc in procs:
        proc.start()
    start.set()
    results = dict(out.get(timeout=60) for _ in procs)
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    _check(url, results)


def test_threads_race_for_mongo_queue(store_url: str) -> None:
    if store_url.startswith("sqlite"):
        pytest.skip("covered with real processes above")
    _fill(store_url)
    start = threading.Event()
    results: dict[str, list[str]] = {}

    def run(owner: str) -> None:
        results[owner] = _claim_all(store_url, owner, start)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    start.set()
    for t in threads:
        t.join(60)
    _check(store_url, results)
