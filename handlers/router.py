"""Router events, including interfaces (router ports) added and removed."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import Change
from handlers.base import EventResult, PayloadHandler
from handlers.envelope import Notification
from handlers.port import PortHandler
from stackmap.discovery.api import resources as R


class RouterHandler(PayloadHandler):
    kind = "router"
    item_key = "router"
    id_key = "router_id"
    handles: ClassVar[dict[str, str]] = {
        "router.create.end": "upsert", "router.update.end": "upsert", "router.delete.end": "delete",
        "router.interface.create": "interface_added", "router.interface.delete": "interface_removed",
    }

    def after(self, item: dict[str, Any], change: Any) -> None:
        """Gateway ports come and go with the router's update, without port events: sync them."""
        if not self.updater.trust_payloads:
            self.sync_ports(str(item["id"]), change)

    def sync_ports(self, router_id: str, change: Change) -> None:
        region = self.updater.region()
        current = self.updater.list_filtered(R.PORTS, region, device_id=router_id)
        current_ids = {str(p["id"]) for p in current}
        linked = self.updater.find_links(link_type="router-network", source_id=router_id)
        stored_ids = {str(lk.get("attributes", {}).get("port_id")) for lk in linked
                      if lk.get("attributes", {}).get("port_id")}
        for gone in stored_ids - current_ids:
            removed = self.updater.remove(gone)
            change.deleted.extend(removed.deleted)
        if current:
            again = self.updater.refresh("port", current, region=region)
            change.upserted.extend(again.upserted)
            change.written += again.written

    def _router_again(self, router_id: str, event_type: str) -> EventResult:
        router = self.updater.show("router", router_id)
        if router is None:
            return EventResult.skip(f"router {router_id} is gone", router_id)
        return self.apply_item(router, event_type)

    def interface_added(self, n: Notification) -> EventResult:
        info = n.data.get("router_interface")
        if not isinstance(info, dict) or not info.get("port_id"):
            return EventResult.failed(f"{n.event_type}: payload has no router_interface.port_id")
        if not self.updater.trust_payloads and info.get("id"):
            return self._router_again(str(info["id"]), n.event_type)  # the router's revision moved too
        port = self.updater.show("port", str(info["port_id"]))
        if port is None:
            return EventResult.skip(f"interface port {info['port_id']} is already gone", str(info.get("id")))
        return PortHandler(self.updater).apply_item(port, n.event_type)

    def interface_removed(self, n: Notification) -> EventResult:
        info = n.data.get("router_interface")
        if not isinstance(info, dict) or not info.get("port_id"):
            return EventResult.failed(f"{n.event_type}: payload has no router_interface.port_id")
        change = self.updater.remove(str(info["port_id"]))
        if not self.updater.trust_payloads and info.get("id"):
            return self._router_again(str(info["id"]), n.event_type)
        router = self.updater.stored(str(info.get("id") or ""))
        if router is not None:
            self.updater.relink(change, [router])
            self.updater.reclique(change, touched=[router["id"]])
        return EventResult.done(f"{n.event_type}: {change.describe()}", str(info.get("id")), "router")
