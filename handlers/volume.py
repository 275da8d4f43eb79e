"""Volume and snapshot events (cinder): re-read from the API, whose item the payload is not."""

from __future__ import annotations

from typing import ClassVar

from handlers.apply import Change, MissingParent
from handlers.base import EventBase, EventResult
from handlers.envelope import Notification
from stackmap.discovery.api import resources as R

# statuses cinder passes through; an ".end" event can arrive while the API still shows one of them
TRANSITIONAL = frozenset({"creating", "attaching", "detaching", "deleting", "extending", "downloading",
                          "uploading", "reserved", "backing-up", "restoring-backup", "retyping", "maintenance",
                          "awaiting-transfer", "unmanaging"})


class VolumeHandler(EventBase):
    object_type = "volume"
    handles: ClassVar[dict[str, str]] = {
        "volume.create.end": "volume_changed", "volume.update.end": "volume_changed",
        "volume.attach.end": "volume_changed", "volume.detach.end": "volume_changed",
        "volume.resize.end": "volume_changed", "volume.delete.end": "volume_deleted",
        "snapshot.create.end": "snapshot_changed", "snapshot.delete.end": "snapshot_deleted",
    }

    def _refresh(self, kind: str, oid: str, event_type: str) -> EventResult:
        if self.updater.tombstoned(oid):
            return EventResult.skip(f"{kind} {oid} was deleted; late {event_type} ignored", oid)
        item = self.updater.show(kind, oid)
        if item is None:
            change = self.updater.remove(oid)
            return EventResult.done(f"{event_type}: {kind} gone from the API; {change.describe()}", oid)
        before = self.updater.stored(oid) or {}
        try:
            change = self.updater.refresh(kind, [item])
        except MissingParent as exc:
            return EventResult.again(str(exc), oid)
        if kind == "volume":
            # a server lists its attached volumes: re-read the servers on either side of an (de)attach
            attachments = [*(before.get("attachments") or []), *(item.get("attachments") or [])]
            servers = {a.get("server_id") for a in attachments}
            for server_id in sorted(s for s in servers if s):
                self._refresh_server(str(server_id), change)
        self.updater.relink(change)
        self.updater.reclique(change)
        if str(item.get("status", "")).lower() in TRANSITIONAL:
            # mapped as it is now, and read again shortly: the state this event announces is not there yet
            return EventResult.again(f"{kind} {oid} is still {item['status']}; mapped, reading again", oid)
        return EventResult.done(f"{event_type}: {change.describe()}", oid, kind)

    def _refresh_server(self, server_id: str, change: Change) -> None:
        if self.updater.stored(server_id) is None:
            return
        server = self.updater.show("instance", server_id)
        if server is None or not server.get("OS-EXT-SRV-ATTR:host"):
            return
        region = self.updater.region()
        ports = self.updater.list_filtered(R.PORTS, region, device_id=server_id)
        again = self.updater.refresh("instance", [server], seeds={R.PORTS: ports}, region=region)
        change.upserted.extend(again.upserted)
        change.written += again.written

    def _remove(self, kind: str, oid: str, event_type: str) -> EventResult:
        change = self.updater.remove(oid)
        if not change.deleted:
            return EventResult.skip(f"{kind} {oid} was not in the map", oid)
        return EventResult.done(f"{event_type}: {change.describe()}", oid, kind)

    def _id(self, n: Notification, key: str) -> str | None:
        value = n.data.get(key) or n.data.get("id")
        return str(value) if value else None

    def volume_changed(self, n: Notification) -> EventResult:
        oid = self._id(n, "volume_id")
        return self._refresh("volume", oid, n.event_type) if oid else EventResult.failed("payload names no volume")

    def volume_deleted(self, n: Notification) -> EventResult:
        oid = self._id(n, "volume_id")
        return self._remove("volume", oid, n.event_type) if oid else EventResult.failed("payload names no volume")

    def snapshot_changed(self, n: Notification) -> EventResult:
        oid = self._id(n, "snapshot_id")
        return self._refresh("snapshot", oid, n.event_type) if oid else EventResult.failed("no snapshot named")

    def snapshot_deleted(self, n: Notification) -> EventResult:
        oid = self._id(n, "snapshot_id")
        return self._remove("snapshot", oid, n.event_type) if oid else EventResult.failed("no snapshot named")
