"""Compare two maps of one environment: objects (ignoring scan times), links and cliques."""

from __future__ import annotations

from typing import Any

from stackmap.store import Store


def snapshot(store: Store, environment: str) -> dict[str, dict[Any, dict[str, Any]]]:
    objects = {o["id"]: {k: v for k, v in o.items() if k != "last_scanned"} for o in store.find_objects(environment)}
    links = {(lk["link_type"], lk["source_id"], lk["target_id"]): lk for lk in store.find_links(environment)}
    cliques = {c["focal_point"]: c for c in store.find_cliques(environment)}
    return {"objects": objects, "links": links, "cliques": cliques}


def differences(a: Store, b: Store, environment: str, limit: int = 10) -> list[str]:
    """Human-readable differences between two maps ([] when they are equal)."""
    left, right = snapshot(a, environment), snapshot(b, environment)
    out = []
    for kind in ("objects", "links", "cliques"):
        la, rb = left[kind], right[kind]
        for key in sorted(set(la) | set(rb), key=str):
            x, y = la.get(key), rb.get(key)
            if x == y:
                continue
            if x is None or y is None:
                only = x or y or {}
                what = {f: only.get(f) for f in ("type", "name", "device_owner", "device_id", "status") if f in only}
                out.append(f"{kind} {key}: only in {'second' if x is None else 'first'} map {what}")
            else:
                fields = sorted(f for f in set(x) | set(y) if x.get(f) != y.get(f))
                out.append(f"{kind} {key}: differs in {', '.join(fields)}: "
                           + "; ".join(f"{f}={x.get(f)!r:.80} vs {y.get(f)!r:.80}" for f in fields[:3]))
            if len(out) >= limit:
                return out
    return out
