"""Scan throughput: a whole scan (inventory, links, cliques) of a generated cloud over real HTTP.

    python bench/scan_bench.py [--objects 50000] [--compare N] [--page 1000] [--rescan] [--profile]

A ``FakeCloud`` of about ``--objects`` inventory objects is served by ``FakeCloudServer`` in a child
process (so the fake's own memory and JSON encoding count neither in this process's peak RSS nor
against its CPU), and scanned into a fresh SQLite store by the real ``Scanner``. It prints objects/s,
API calls (the scan's own count and the server's), peak RSS, total and per-phase times. A second,
different-sized cloud is then scanned to show that API calls depend on the object count only
through paging. Prints figures only; the targets (< 60 s and < 500 MB for 50,000 objects) are
checked by a person reading them, never by a timed test.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing as mp
import pstats
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/scan_bench.py` from the repo root, without installing
    sys.path.insert(0, str(ROOT))

from stackmap.discovery.scan import Scanner, ScanSummary  # noqa: E402
from stackmap.environments import add_environment  # noqa: E402
from stackmap.model import EnvironmentConfig  # noqa: E402
from stackmap.secrets import SecretBox  # noqa: E402
from stackmap.store import open_store  # noqa: E402
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer  # noqa: E402

ENV = "bench"


# --------------------------------------------------------------------------------------------------
# the fake cloud, in its own process


def _serve(size: CloudSize, max_limit: int, conn: Connection) -> None:
    """Child process: generate the cloud, serve it, answer 'stats' and 'stop' over the pipe."""
    cloud = FakeCloud(size)
    with FakeCloudServer(cloud, max_limit=max_limit) as server:
        conn.send({"url": server.url, "auth_url": server.auth_url, "user": cloud.user,
                   "password": cloud.password, "objects": len(cloud.expected_objects(ENV))
                   + len(cloud.expected_host_refs())})
        while True:
            command = conn.recv()
            if command == "stats":
                conn.send({"requests": dict(server.requests), "log": list(server.log)})
            elif command == "stop":
                break


@dataclass
class CloudProcess:
    process: Any
    conn: Connection
    info: dict[str, Any]

    @classmethod
    def start(cls, size: CloudSize, max_limit: int) -> CloudProcess:
        ctx = mp.get_context("fork")  # the child inherits the imports; nothing is threaded yet
        parent, child = ctx.Pipe()
        process = ctx.Process(target=_serve, args=(size, max_limit, child), daemon=True)
        process.start()
        return cls(process, parent, parent.recv())

    def stats(self) -> dict[str, Any]:
        self.conn.send("stats")
        result: dict[str, Any] = self.conn.recv()
        return result

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join(timeout=10)


# --------------------------------------------------------------------------------------------------
# one scan


@dataclass
class Run:
    size: CloudSize
    expected_objects: int
    summary: ScanSummary
    wall_s: float
    server_calls: int
    page_calls: int  # requests that carried a marker: the follow-up pages
    by_path: Counter[str]
    phase_rss: dict[str, float]
    peak_rss_mb: float  # of this process, read right after the first scan
    rescan: ScanSummary | None = None  # a second scan of the unchanged cloud, when asked for
    rescan_wall_s: float = 0.0


def scan_once(size: CloudSize, max_limit: int, profile: bool, rescan: bool = False) -> Run:
    cloud = CloudProcess.start(size, max_limit)
    try:
        with tempfile.TemporaryDirectory(prefix="scan-bench-") as tmp:
            store = open_store(f"sqlite:///{tmp}/bench.db")
            box = SecretBox(Path(tmp) / "key")
            add_environment(store, box, EnvironmentConfig.model_validate({
                "name": ENV, "configuration": [{"name": "OpenStack", "auth_url": cloud.info["auth_url"],
                                                "user": cloud.info["user"], "pwd": cloud.info["password"]}]}))
            memory = PhaseMemory()
            scanner = Scanner(store, box, ENV, progress=memory)
            profiler = cProfile.Profile() if profile else None
            start = time.perf_counter()
            with memory:
                if profiler is not None:
                    profiler.enable()
                summary = scanner.run()
                if profiler is not None:
                    profiler.disable()
            wall = time.perf_counter() - start
            rss = peak_rss_mb()
            stats = cloud.stats()  # before any rescan, so the counts are the first scan's
            second, second_wall = None, 0.0
            if rescan:
                start = time.perf_counter()
                second = Scanner(store, box, ENV).run()
                second_wall = time.perf_counter() - start
            store.close()
    finally:
        cloud.stop()
    if profiler is not None:
        print("\n  profile (top 30 by cumulative time, this process only):")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("cumulative").print_stats(30)
        print("  profile (top 20 by own time):")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(20)
    log = stats["log"]
    pages = sum(1 for _, target, _ in log if any(k == "marker" for k, _ in parse_qsl(urlsplit(target).query)))
    return Run(size, cloud.info["objects"], summary, wall, len(log), pages, Counter(stats["requests"]),
               memory.peaks, rss, second, second_wall)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class PhaseMemory:
    """A scan ``Progress`` that samples RSS every 20 ms and keeps the highest value per phase.

    getrusage only gives the peak of the whole process; this says which phase reached it.
    """

    def __init__(self) -> None:
        self.current = "setup"
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            rss = current_rss_mb()
            self.peaks[self.current] = max(self.peaks.get(self.current, 0.0), rss)

    def __enter__(self) -> PhaseMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def phase(self, name: str) -> None:
        self.current = name

    def counted(self, what: str, count: int) -> None:
        pass


def report(run: Run, label: str) -> None:
    s = run.summary
    objects = sum(s.objects_by_type.values())
    print(f"\n== {label}: {objects:,} objects (cloud has {run.expected_objects:,}; "
          f"{run.size.instances:,} instances x {len(run.size.regions)} region(s))")
    if objects != run.expected_objects:
        missing = run.expected_objects - objects
        print(f"  !! the scan stored {abs(missing):,} {'fewer' if missing > 0 else 'more'} objects than the cloud "
              "has (tests/unit/test_scan_fakecloud.py shows which)")
    print(f"  status               {s.status}" + (f"  errors: {s.errors[:3]}" if s.errors else ""))
    print(f"  total time           {run.wall_s:8.2f} s   (summary.duration_s {s.duration_s:.2f} s)")
    for phase in ("inventory", "links", "cliques"):
        print(f"  phase {phase:<14} {s.phase_seconds.get(phase, 0.0):8.2f} s   "
              f"(RSS up to {run.phase_rss.get(phase, 0.0):6.1f} MB)")
    rate = objects / run.wall_s if run.wall_s else float("inf")
    print(f"  throughput           {rate:10,.0f} objects/s")
    print(f"  written              {s.objects_written:,} objects, {s.links_written:,} links "
          f"({s.links:,}), {s.cliques_written:,} cliques ({s.cliques:,})")
    print(f"  API calls            {s.api_calls} (scan's count), {run.server_calls} (server's count), "
          f"of which {run.page_calls} follow-up pages")
    if run.rescan is not None:
        r = run.rescan
        phases = ", ".join(f"{p} {r.phase_seconds.get(p, 0.0):.2f} s" for p in ("inventory", "links", "cliques"))
        print(f"  rescan (unchanged)   {run.rescan_wall_s:8.2f} s ({phases}); status {r.status}, written "
              f"{r.objects_written}/{r.links_written}/{r.cliques_written} objects/links/cliques")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=50_000, help="inventory objects in the cloud (about)")
    parser.add_argument("--compare", type=int, default=None,
                        help="objects in the second cloud (default: a fifth of --objects, at least 500)")
    parser.add_argument("--page", type=int, default=1000, help="largest page the services return (max_limit)")
    parser.add_argument("--second-region", action="store_true", help="spread the cloud over two regions")
    parser.add_argument("--profile", action="store_true", help="cProfile the (first) scan and print the top")
    parser.add_argument("--rescan", action="store_true", help="also time a second scan of the unchanged cloud")
    args = parser.parse_args(argv)

    def sized(objects: int) -> CloudSize:
        return CloudSize.for_objects(objects, second_region=args.second_region)

    size = sized(args.objects)
    main_run = scan_once(size, args.page, args.profile, rescan=args.rescan)
    report(main_run, "main")
    print(f"  peak RSS             {main_run.peak_rss_mb:8.1f} MB after the first scan (this process; the fake "
          f"cloud runs in a child)")

    other = args.compare if args.compare is not None else max(500, args.objects // 5)
    other_run = scan_once(sized(other), args.page, False)
    report(other_run, "comparison")

    print("\n== API calls vs object count")
    for run in (main_run, other_run):
        objects = sum(run.summary.objects_by_type.values())
        print(f"  {objects:>8,} objects: {run.server_calls:4d} calls = {run.server_calls - run.page_calls:3d} "
              f"first pages/auth/discovery + {run.page_calls:3d} follow-up pages (page size {args.page})")
    same = main_run.server_calls - main_run.page_calls == other_run.server_calls - other_run.page_calls
    print("  calls without paging are " + ("the same for both sizes" if same else "DIFFERENT (calls grow per object)"))
    grew = {p: (other_run.by_path.get(p, 0), n) for p, n in main_run.by_path.items()
            if n != other_run.by_path.get(p, 0)}
    for path, (small, big) in sorted(grew.items()):
        print(f"    {path:<50} {small:3d} -> {big:3d}")
    ok = main_run.summary.status == "completed" and other_run.summary.status == "completed"
    return 0 if ok and same else 1


if __name__ == "__main__":
    sys.exit(main())
