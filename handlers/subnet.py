"""Subnet events: the subnet, and its network, whose document lists its subnets and CIDRs."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import Change, MapUpdater, raw_of
from handlers.base import EventResult, PayloadHandler
from handlers.network import place_network
from stackmap.discovery.api import resources as R


def refresh_network_subnets(updater: MapUpdater, network_id: str, change: Change, add: dict[str, Any] | None = None,
                            drop: str | None = None) -> None:
    stored = updater.stored(network_id)
    if stored is None:
        return
    # a subnet change bumps its network's revision: re-read the network unless payloads are trusted
    network = raw_of(stored) if updater.trust_payloads else updater.show("network", network_id)
    if network is None:
        return
    subnets = {s["id"]: s for s in updater.children_raw(network_id, "subnets")}
    if add is not None:
        subnets[str(add["id"])] = add
    if drop is not None:
        subnets.pop(drop, None)
    again = updater.refresh("network", [network], seeds={R.SUBNETS: list(subnets.values())},
                            region=stored.get("region"))
    change.upserted.extend(again.upserted)
    change.written += again.written


class SubnetHandler(PayloadHandler):
    kind = "subnet"
    item_key = "subnet"
    id_key = "subnet_id"
    handles: ClassVar[dict[str, str]] = {
        "subnet.create.end": "upsert", "subnet.update.end": "upsert", "subnet.delete.end": "delete",
    }

    def after(self, item: dict[str, Any], change: Any) -> None:
        if item.get("network_id"):
            refresh_network_subnets(self.updater, str(item["network_id"]), change, add=item)

    def missing_parent(self, item: dict[str, Any], exc: Exception) -> EventResult:
        network_id = item.get("network_id")
        if network_id and place_network(self.updater, str(network_id)):
            return self.apply_item(item, "subnet (after mapping its network)")
        return EventResult.again(str(exc), str(item.get("id")))

    def after_delete(self, oid: str, before: dict[str, Any] | None, change: Any) -> None:
        if before and before.get("network_id"):
            refresh_network_subnets(self.updater, str(before["network_id"]), change, drop=oid)
            self.updater.relink(change)
            self.updater.reclique(change)
