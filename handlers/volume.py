"""Volume and snapshot events (cinder): re-read from the API, whose item the payload is not."""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import Change
from handlers.base import ApiHandler
from stackmap.discovery.api import resources as R

# statuses cinder passes through; an ".end" event can arrive while the API still shows one of them
TRANSITIONAL = frozenset({"creating", "attaching", "detaching", "deleting", "extending", "downloading",
                          "uploading", "reserved", "backing-up", "restoring-backup", "retyping", "maintenance",
                          "awaiting-transfer", "unmanaging"})


class _CinderHandler(ApiHandler):
    def busy(self, item: dict[str, Any]) -> str | None:
        # mapped as it is now, and read again shortly: the state the event announces is not there yet
        status = str(item.get("status", ""))
        return status if status.lower() in TRANSITIONAL else None


class VolumeHandler(_CinderHandler):
    object_type = kind = "volume"
    label = "volume"
    id_keys = ("volume_id", "id")
    handles: ClassVar[dict[str, str]] = {
        "volume.create.end": "changed", "volume.update.end": "changed", "volume.attach.end": "changed",
        "volume.detach.end": "changed", "volume.resize.end": "changed", "volume.delete.end": "deleted",
    }

    def after(self, item: dict[str, Any], before: dict[str, Any], change: Change) -> None:
        """A server lists its attached volumes: re-read the servers on either side of an (de)attach."""
        attachments = [*(before.get("attachments") or []), *(item.get("attachments") or [])]
        for server_id in sorted({str(a["server_id"]) for a in attachments if a.get("server_id")}):
            if self.updater.stored(server_id) is None:
                continue
            server = self.updater.show("instance", server_id)
            if server is None or not server.get("OS-EXT-SRV-ATTR:host"):
                continue
            region = self.updater.region()
            ports = self.updater.list_filtered(R.PORTS, region, device_id=server_id)
            again = self.updater.refresh("instance", [server], seeds={R.PORTS: ports}, region=region)
            change.upserted.extend(again.upserted)
            change.written += again.written


class SnapshotHandler(_CinderHandler):
    object_type = kind = "snapshot"
    label = "snapshot"
    id_keys = ("snapshot_id", "id")
    handles: ClassVar[dict[str, str]] = {"snapshot.create.end": "changed", "snapshot.delete.end": "deleted"}
