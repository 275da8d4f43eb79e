"""Store throughput: bulk upserts and finds of inventory objects.

    python bench/store_bench.py [--objects 100000] [--batch 5000] [--mongomock]

Prints figures only; targets (>= 50,000 object upserts/s in batches on SQLite) are checked by a
person reading them, never by a timed test.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stackmap.store import Store, open_store

ENV = "bench"


def make_objects(n: int) -> list[dict[str, Any]]:
    """A plausible cloud shape: hosts holding instances holding vnics."""
    now = datetime.now(UTC)
    docs: list[dict[str, Any]] = []
    hosts = max(1, n // 100)
    for h in range(hosts):
        docs.append({"environment": ENV, "type": "host", "id": f"host-{h}", "name": f"compute-{h}",
                     "parent_id": "az", "parent_type": "availability_zone", "id_path": f"/{ENV}/az/host-{h}",
                     "name_path": f"/{ENV}/az/compute-{h}", "show_in_tree": True, "last_scanned": now,
                     "host_type": ["Compute"], "services": {"nova-compute": {"available": True}}})
    i = 0
    while len(docs) < n:
        h = i % hosts
        iid = f"{i:08x}-0000-4000-8000-{i:012x}"
        docs.append({"environment": ENV, "type": "instance", "id": iid, "name": f"vm-{i}",
                     "parent_id": f"host-{h}", "parent_type": "host", "id_path": f"/{ENV}/az/host-{h}/{iid}",
                     "name_path": f"/{ENV}/az/compute-{h}/vm-{i}", "show_in_tree": True, "last_scanned": now,
                     "flavor": {"vcpus": 1, "ram": 512}, "network": [f"net-{i % 50}"],
                     "mac_address": f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"})
        i += 1
    return docs[:n]


def timed(label: str, count: int, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - start
    rate = count / elapsed if elapsed else float("inf")
    print(f"  {label:<38} {count:>8} in {elapsed:7.3f} s = {rate:>10,.0f}/s")
    return rate


def bench(store: Store, n: int, batch: int, finds: int) -> dict[str, float]:
    docs = make_objects(n)
    batches = [docs[k:k + batch] for k in range(0, n, batch)]
    figures: dict[str, float] = {}

    def upsert_all(items: list[list[dict[str, Any]]]) -> None:
        for chunk in items:
            store.upsert_objects(ENV, chunk)

    figures["insert"] = timed("upsert (new objects)", n, lambda: upsert_all(batches))
    figures["unchanged"] = timed("upsert (unchanged: writes nothing)", n, lambda: upsert_all(batches))
    changed = [[dict(d, name=d["name"] + "-r") for d in chunk] for chunk in batches]
    figures["update"] = timed("upsert (every object changed)", n, lambda: upsert_all(changed))
    rng = random.Random(7)
    ids = [d["id"] for d in rng.sample(docs, min(finds, n))]
    figures["get"] = timed("get_object by id", len(ids), lambda: [store.get_object(ENV, i) for i in ids])
    hosts = [d["id"] for d in docs if d["type"] == "host"][: max(1, finds // 100)]
    found = [0]

    def by_parent() -> None:
        for h in hosts:
            found[0] += len(store.find_objects(ENV, parent_id=h))

    start = time.perf_counter()
    by_parent()
    elapsed = time.perf_counter() - start
    figures["find_children"] = found[0] / elapsed if elapsed else float("inf")
    print(f"  {'find_objects by parent (objects/s)':<38} {found[0]:>8} in {elapsed:7.3f} s = "
          f"{figures['find_children']:>10,.0f}/s ({len(hosts)} queries)")
    figures["ids"] = timed("object_ids (whole environment)", n, lambda: store.object_ids(ENV))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=20_000)
    parser.add_argument("--finds", type=int, default=10_000)
    parser.add_argument("--mongomock", action="store_true", help="also run against mongomock (slow; reference)")
    parser.add_argument("--mongomock-objects", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        print(f"SQLite ({args.objects} objects, batches of {args.batch}):")
        with open_store(url) as store:
            figures = bench(store, args.objects, args.batch, args.finds)
        print(f"SQLite batched upserts: {figures['insert']:,.0f} objects/s (target >= 50,000)")
    if args.mongomock:
        print(f"mongomock ({args.mongomock_objects} objects, reference only):")
        with open_store("mongomock://bench") as store:
            bench(store, args.mongomock_objects, args.batch, min(args.finds, 2_000))


if __name__ == "__main__":
    main()
