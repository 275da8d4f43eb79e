"""Server group events (Calipso listed them but never handled them): re-read the group from the API."""

from __future__ import annotations

from typing import ClassVar

from handlers.apply import MissingParent
from handlers.base import EventBase, EventResult
from handlers.envelope import Notification


class ServerGroupHandler(EventBase):
    object_type = "server_group"
    handles: ClassVar[dict[str, str]] = {
        "servergroup.create": "changed", "servergroup.update": "changed", "servergroup.delete": "deleted",
        "server_group.create": "changed", "server_group.update": "changed", "server_group.delete": "deleted",
        "server_group.add_member": "changed",
    }

    @staticmethod
    def group_id(n: Notification) -> str | None:
        for key in ("server_group_id", "uuid", "id"):
            value = n.data.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    def changed(self, n: Notification) -> EventResult:
        oid = self.group_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no server group")
        if self.updater.tombstoned(oid):
            return EventResult.skip(f"server group {oid} was deleted; late {n.event_type} ignored", oid)
        item = self.updater.show("server_group", oid)
        if item is None:
            change = self.updater.remove(oid)
            return EventResult.done(f"{n.event_type}: group gone from the API; {change.describe()}", oid)
        try:
            change = self.updater.refresh("server_group", [item])
        except MissingParent as exc:
            return EventResult.again(str(exc), oid)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, "server_group")

    def deleted(self, n: Notification) -> EventResult:
        oid = self.group_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no server group")
        change = self.updater.remove(oid)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, "server_group")
