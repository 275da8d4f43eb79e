"""Port events: the port itself, and the instance whose addresses and networks come from its ports."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import Change, raw_of
from handlers.base import EventResult, PayloadHandler
from handlers.network import place_network
from stackmap.discovery.api.fetchers import ApiInstances


def _on_instance(port: dict[str, Any]) -> bool:
    return str(port.get("device_owner") or "").startswith("compute:") and bool(port.get("device_id"))


class PortHandler(PayloadHandler):
    kind = "port"
    item_key = "port"
    id_key = "port_id"
    handles: ClassVar[dict[str, str]] = {
        "port.create.end": "upsert", "port.update.end": "upsert", "port.delete.end": "delete",
    }
    grouped = frozenset({"upsert"})  # the busiest events of a cloud: placed together (upsert_many)

    def after(self, item: dict[str, Any], change: Change) -> None:
        """Re-derive the instance the port belongs to, and the one it left, unless nothing an
        instance takes from its ports moved (a status flip, most port updates). That shortcut needs
        atomic events: then the stored port and its instance were last committed together."""
        stored = change.previous.get(str(item["id"]))
        old = raw_of(stored) if stored is not None else {}
        if stored is not None and self.updater.atomic and old.get("device_owner") == item.get("device_owner") \
                and all(old.get(f) == item.get(f) for f in ApiInstances.PORT_FIELDS):
            return
        device = item.get("device_id")
        if _on_instance(item):
            self.updater.refresh_instance_ports(str(device), change, add=item)
        if _on_instance(old) and old.get("device_id") != device:
            self.updater.refresh_instance_ports(str(old["device_id"]), change, drop=str(item["id"]))

    def missing_parent(self, item: dict[str, Any], exc: Exception) -> EventResult:
        """A port of a network the map has not seen: map the network first, then the port."""
        network_id = item.get("network_id")
        if network_id and place_network(self.updater, str(network_id)):
            return self.apply_item(item, "port (after mapping its network)")
        return EventResult.again(str(exc), str(item.get("id")))

    def after_delete(self, oid: str, before: dict[str, Any] | None, change: Any) -> None:
        if before and _on_instance(before):
            self.updater.refresh_instance_ports(str(before["device_id"]), change, drop=oid)
            self.updater.reclique(change)
