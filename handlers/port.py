"""Port events: the port itself, and the instance whose addresses and networks come from its ports."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.base import EventResult, PayloadHandler
from handlers.network import place_network


class PortHandler(PayloadHandler):
    kind = "port"
    item_key = "port"
    id_key = "port_id"
    handles: ClassVar[dict[str, str]] = {
        "port.create.end": "upsert", "port.update.end": "upsert", "port.delete.end": "delete",
    }

    def after(self, item: dict[str, Any], change: Any) -> None:
        device = item.get("device_id")
        if str(item.get("device_owner") or "").startswith("compute:") and device:
            self.updater.refresh_instance_ports(str(device), change, add=item)

    def missing_parent(self, item: dict[str, Any], exc: Exception) -> EventResult:
        """A port of a network the map has not seen: map the network first, then the port."""
        network_id = item.get("network_id")
        if network_id and place_network(self.updater, str(network_id)):
            return self.apply_item(item, "port (after mapping its network)")
        return EventResult.again(str(exc), str(item.get("id")))

    def after_delete(self, oid: str, before: dict[str, Any] | None, change: Any) -> None:
        if before and str(before.get("device_owner") or "").startswith("compute:") and before.get("device_id"):
            self.updater.refresh_instance_ports(str(before["device_id"]), change, drop=oid)
            self.updater.reclique(change)
