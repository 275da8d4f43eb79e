"""Network events. A network's document summarizes its subnets, so subnets are seeded from the map."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import MapUpdater
from handlers.base import PayloadHandler
from stackmap.discovery.api import resources as R


def place_network(updater: MapUpdater, network_id: str) -> bool:
    """Targeted scan of one network the map lacks (read from the API with its subnets)."""
    item = updater.show("network", network_id)
    if item is None:
        return False
    region = updater.region()
    subnets = updater.list_filtered(R.SUBNETS, region, network_id=network_id)
    change = updater.refresh("network", [item], seeds={R.SUBNETS: subnets}, region=region)
    updater.relink(change)
    updater.reclique(change)
    return True


class NetworkHandler(PayloadHandler):
    kind = "network"
    item_key = "network"
    id_key = "network_id"
    handles: ClassVar[dict[str, str]] = {
        "network.create.end": "upsert", "network.update.end": "upsert", "network.delete.end": "delete",
    }

    def seeds(self, item: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
        return {R.SUBNETS: self.updater.children_raw(str(item["id"]), "subnets")}
