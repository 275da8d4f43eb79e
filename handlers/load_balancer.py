"""Octavia load balancer events: re-read the load balancer (with its pools' members) from the API."""

from __future__ import annotations

from typing import ClassVar

from handlers.apply import MissingParent
from handlers.base import EventBase, EventResult
from handlers.envelope import Notification
from stackmap.discovery.api import resources as R


class LoadBalancerHandler(EventBase):
    object_type = "load_balancer"
    handles: ClassVar[dict[str, str]] = {
        "octavia.loadbalancer.create.end": "changed", "octavia.loadbalancer.update.end": "changed",
        "octavia.loadbalancer.delete.end": "deleted",
    }

    @staticmethod
    def lb_id(n: Notification) -> str | None:
        for key in ("loadbalancer_id", "id"):
            value = n.data.get(key)
            if isinstance(value, str) and value:
                return value
        inner = n.data.get("loadbalancer")
        return str(inner["id"]) if isinstance(inner, dict) and inner.get("id") else None

    def changed(self, n: Notification) -> EventResult:
        oid = self.lb_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no load balancer")
        if self.updater.tombstoned(oid):
            return EventResult.skip(f"load balancer {oid} was deleted; late {n.event_type} ignored", oid)
        item = self.updater.show("load_balancer", oid)
        if item is None:
            change = self.updater.remove(oid)
            return EventResult.done(f"{n.event_type}: gone from the API; {change.describe()}", oid)
        region = self.updater.region()
        pools = self.updater.list_filtered(R.LB_POOLS, region, loadbalancer_id=oid)
        for pool in pools:
            listed = pool.get("members") or []
            if listed and not all("address" in m for m in listed):
                # the pools list names members by id only, as in a scan: read their addresses too
                pool["members"] = self.updater.client.list(
                    "load-balancer", f"/lbaas/pools/{pool['id']}/members", "members", region, paged=False)
        try:
            change = self.updater.refresh("load_balancer", [item], seeds={R.LB_POOLS: pools}, region=region)
        except MissingParent as exc:
            return EventResult.again(str(exc), oid)
        self.updater.relink(change)
        self.updater.reclique(change)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, "load_balancer")

    def deleted(self, n: Notification) -> EventResult:
        oid = self.lb_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no load balancer")
        change = self.updater.remove(oid)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, "load_balancer")
