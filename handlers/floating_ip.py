"""Floating IP events. A floating IP owns an internal port on its external network (device_owner
``network:floatingip``) that neutron creates and deletes without port events: kept in step here."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import Change
from handlers.base import PayloadHandler
from stackmap.discovery.api import resources as R
from stackmap.model import stable_id


class FloatingIpHandler(PayloadHandler):
    kind = "floating_ip"
    item_key = "floatingip"
    id_key = "floatingip_id"
    handles: ClassVar[dict[str, str]] = {
        "floatingip.create.end": "upsert", "floatingip.update.end": "upsert", "floatingip.delete.end": "delete",
    }

    def _stored_ports(self, fip_id: str, network_id: str | None) -> list[dict[str, Any]]:
        """The map's ports of this floating IP: among its external network's ports (no index by device)."""
        if not network_id:
            return []
        ports = self.updater.store.find_objects(self.updater.environment, parent_id=stable_id(network_id, "ports"))
        return [p for p in ports if p.get("device_id") == fip_id]

    def after(self, item: dict[str, Any], change: Change) -> None:
        if self.updater.trust_payloads:
            return
        fip_id = str(item["id"])
        current = self.updater.list_filtered(R.PORTS, self.updater.region(item), device_id=fip_id)
        current_ids = {str(p["id"]) for p in current}
        for port in self._stored_ports(fip_id, item.get("floating_network_id")):
            if port["id"] not in current_ids:
                change.deleted.extend(self.updater.remove(port["id"]).deleted)
        if current:
            again = self.updater.refresh("port", current)
            change.upserted.extend(again.upserted)
            change.written += again.written

    def after_delete(self, oid: str, before: dict[str, Any] | None, change: Change) -> None:
        if before is None:
            return
        for port in self._stored_ports(oid, before.get("floating_network_id")):
            change.deleted.extend(self.updater.remove(port["id"]).deleted)
        self.updater.reclique(change, touched=[str(before.get("floating_network_id") or "")])
