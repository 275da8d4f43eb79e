"""Probe the openstacksdk calls stackmap's scanner relies on against the rig (cloud 'rig').

Run with the PATH python3 (pyenv, openstacksdk 4.x), not the rig's /usr/bin/python3:
    python3 tests/e2e/sdk_probe.py [--json OUT] [--prefer NAME_PREFIX]
Prints, per call: OK/FAIL, item count, seconds, and one sample item (None/empty fields dropped,
long values cut). Exit status 1 if any call fails.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import openstack


def calls(conn):
    c, n, i, b, lb, img = (conn.compute, conn.network, conn.identity, conn.block_storage,
                           conn.load_balancer, conn.image)
    return [
        ("identity.regions()", lambda: i.regions()),
        ("identity.projects()", lambda: i.projects()),
        ("compute.services()", lambda: c.services()),
        ("compute.hypervisors(details=True)", lambda: c.hypervisors(details=True)),
        ("compute.availability_zones(details=True)", lambda: c.availability_zones(details=True)),
        ("compute.aggregates()", lambda: c.aggregates()),
        ("compute.flavors()", lambda: c.flavors()),
        ("compute.servers(details=True, all_projects=True)", lambda: c.servers(details=True, all_projects=True)),
        ("image.images()", lambda: img.images()),
        ("network.networks()", lambda: n.networks()),
        ("network.subnets()", lambda: n.subnets()),
        ("network.ports()", lambda: n.ports()),
        ("network.routers()", lambda: n.routers()),
        ("network.ips()", lambda: n.ips()),
        ("network.security_groups()", lambda: n.security_groups()),
        ("network.agents()", lambda: n.agents()),
        ("block_storage.volumes(details=True, all_projects=True)", lambda: b.volumes(details=True, all_projects=True)),
        ("block_storage.snapshots(details=True, all_projects=True)",
         lambda: b.snapshots(details=True, all_projects=True)),
        ("load_balancer.load_balancers()", lambda: lb.load_balancers()),
    ]


def _short(v, width=48):
    if isinstance(v, dict):
        return {k: _short(x, width) for k, x in v.items() if x not in (None, "", [], {})}
    if isinstance(v, list):
        return [_short(x, width) for x in v[:2]] + ([f"...+{len(v) - 2}"] if len(v) > 2 else [])
    if isinstance(v, str) and len(v) > width:
        return v[: width - 3] + "..."
    return v


def sample(item) -> dict:
    d = item.to_dict(computed=False) if hasattr(item, "to_dict") else dict(item)
    d.pop("location", None)
    return _short({k: v for k, v in d.items() if v not in (None, "", [], {})})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cloud", default="rig")
    ap.add_argument("--json", help="write the full result list here")
    ap.add_argument("--prefer", default="rignotes-", help="show an item whose name starts with this")
    a = ap.parse_args()
    conn = openstack.connect(cloud=a.cloud)
    out, bad = [], 0
    for name, fn in calls(conn):
        t = time.monotonic()
        try:
            items = list(fn())
            pick = next((x for x in items if str(getattr(x, "name", "") or "").startswith(a.prefer)),
                        items[0] if items else None)
            rec = {"call": name, "ok": True, "count": len(items), "secs": round(time.monotonic() - t, 2),
                   "sample": sample(pick) if pick is not None else None}
        except Exception as e:
            bad += 1
            rec = {"call": name, "ok": False, "secs": round(time.monotonic() - t, 2),
                   "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
        out.append(rec)
        status = "OK  " if rec["ok"] else "FAIL"
        count = f"n={rec['count']}" if rec["ok"] else ""
        print(f"{status} {name:<58} {count} {rec['secs']:5.2f}s")
        print("     " + json.dumps(rec.get("sample") if rec["ok"] else rec["error"], default=str))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1, default=str)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
