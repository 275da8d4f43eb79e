"""Octavia load balancer events: re-read the load balancer (with its pools' members) from the API."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.base import ApiHandler
from handlers.envelope import Notification
from stackmap.discovery.api import resources as R


class LoadBalancerHandler(ApiHandler):
    object_type = kind = "load_balancer"
    label = "load balancer"
    id_keys = ("loadbalancer_id", "id")
    handles: ClassVar[dict[str, str]] = {
        "octavia.loadbalancer.create.end": "changed", "octavia.loadbalancer.update.end": "changed",
        "octavia.loadbalancer.delete.end": "deleted",
    }

    def object_id(self, n: Notification) -> str | None:
        found = super().object_id(n)
        inner = n.data.get("loadbalancer")
        if found is None and isinstance(inner, dict) and inner.get("id"):
            found = str(inner["id"])
        return found

    def seeds(self, item: dict[str, Any], region: str) -> dict[Any, list[dict[str, Any]]]:
        pools = self.updater.list_filtered(R.LB_POOLS, region, loadbalancer_id=str(item["id"]))
        for pool in pools:
            listed = pool.get("members") or []
            if listed and not all("address" in m for m in listed):
                # the pools list names members by id only, as in a scan: read their addresses too
                pool["members"] = self.updater.client.list(
                    "load-balancer", f"/lbaas/pools/{pool['id']}/members", "members", region, paged=False)
        return {R.LB_POOLS: pools}
