"""Instance events, legacy (``compute.instance.*``) and versioned (``instance.*``).

Nova's payloads are not its API's representation, so the instance is re-read from the API (one GET
for the server, one for its ports): the map then holds exactly what a scan would, whatever order the
events came in. A server the API no longer has is removed.
"""

from __future__ import annotations

from typing import Any, ClassVar

from handlers.apply import Change, MissingParent
from handlers.base import EventBase, EventResult
from handlers.envelope import Notification
from stackmap.discovery.api import resources as R

DELETED = {"compute.instance.delete.end", "instance.delete.end"}
NOT_YET = {"building", "scheduling", "networking", "spawning", "block_device_mapping"}


def instance_id(n: Notification) -> str | None:
    data = n.data
    for key in ("instance_id", "uuid", "id"):
        value = data.get(key)
        if isinstance(value, str) and value:
            return value
    return None


class InstanceHandler(EventBase):
    object_type = "instance"
    grouped = frozenset({"changed"})  # placed together (changed_many)
    handles: ClassVar[dict[str, str]] = {
        **{e: "changed" for e in (
            "compute.instance.create.end", "compute.instance.rebuild.end", "compute.instance.update",
            "compute.instance.shutdown.start", "compute.instance.shutdown.end", "compute.instance.power_off.end",
            "compute.instance.power_on.end", "compute.instance.resize.confirm.end",
            "compute.instance.live_migration.post.dest.end", "instance.create.end", "instance.update",
            "instance.shutdown.end", "instance.power_off.end", "instance.power_on.end", "instance.rebuild.end",
            "instance.resize_confirm.end", "instance.live_migration_post_dest.end",
            "compute.instance.volume.attach", "compute.instance.volume.detach", "instance.volume_attach.end",
            "instance.volume_detach.end")},
        **{e: "deleted" for e in DELETED},
    }

    def coalesce_key(self, n: Notification) -> tuple[str, str] | None:
        """Every ``changed`` event re-reads the server, so of several waiting for one instance only the
        last needs handling; except volume (de)attaches, whose own check that the API caught up
        (``api_lags``) a later event would not repeat."""
        if self.handles.get(n.event_type) != "changed" or "volume" in n.event_type:
            return None
        oid = instance_id(n)
        return ("instance", oid) if oid else None

    def reads(self, n: Notification) -> list[tuple[Any, ...]]:
        if self.handles.get(n.event_type) != "changed":
            return []
        oid = instance_id(n)
        if not oid:
            return []
        return [self.updater.show_read("instance", oid), self.updater.list_read(R.PORTS, device_id=oid)]

    @staticmethod
    def api_lags(n: Notification, server: dict[str, Any]) -> str | None:
        """Nova notifies a volume (de)attach before its API shows it: read again later, not now."""
        volume = n.data.get("volume_id")
        if not volume or "volume" not in n.event_type:
            return None
        attached = {v.get("id") for v in server.get("os-extended-volumes:volumes_attached") or []}
        if "detach" in n.event_type and volume in attached:
            return f"the API still shows volume {volume} attached; retrying"
        if "attach" in n.event_type and "detach" not in n.event_type and volume not in attached:
            return f"the API does not show volume {volume} attached yet; retrying"
        return None

    def deleted(self, n: Notification) -> EventResult:
        oid = instance_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no instance")
        change = self.updater.remove(oid)
        self._refresh_groups_of(oid, change)
        if not change.deleted:
            return EventResult.skip(f"instance {oid} was not in the map", oid)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, "instance")

    def _refresh_groups_of(self, instance_id: str, change: Change) -> None:
        """Nova drops a deleted server from its server groups without a notification of their own."""
        groups = [g for g in self.updater.store.find_objects(self.updater.environment, type="server_group")
                  if instance_id in (g.get("members") or ())]
        for group in groups:
            item = self.updater.show("server_group", str(group["id"]))
            if item is None:
                change.deleted.extend(self.updater.remove(str(group["id"])).deleted)
            else:
                again = self.updater.refresh("server_group", [item])
                change.upserted.extend(again.upserted)
                change.written += again.written

    def changed(self, n: Notification) -> EventResult:
        picked = self._read(n)
        if isinstance(picked, EventResult):
            return picked
        if isinstance(picked, str):
            return self._gone(n, picked)
        region = self.updater.region()
        ports = self.updater.list_filtered(R.PORTS, region, device_id=picked["id"])
        try:
            change = self.updater.refresh("instance", [picked], seeds={R.PORTS: ports}, region=region)
        except MissingParent as exc:
            return EventResult.again(self.updater.request_scan(["host", "instances_folder"], str(exc)), picked["id"])
        self._relink(change, ports)
        return self._result(n, picked, change.describe())

    def changed_many(self, ns: list[Notification]) -> list[EventResult]:
        """``changed`` for several events: their servers are placed together (one walk under all their
        hosts, one read and one write of the store) and relinked together. An instance named twice splits the
        events there, as in ``PayloadHandler.upsert_many``; a missing host raises ``MissingParent``
        (the dispatcher then handles the events one at a time)."""
        results: list[EventResult | None] = [None] * len(ns)
        picked: dict[str, tuple[int, dict[str, Any]]] = {}
        gone: dict[str, int] = {}
        rest = len(ns)
        for i, n in enumerate(ns):  # every read first: nothing is written while waiting for the API
            oid = instance_id(n)
            if oid is not None and (oid in picked or oid in gone):
                rest = i
                break
            server = self._read(n)
            if isinstance(server, EventResult):
                results[i] = server
            elif isinstance(server, str):
                gone[server] = i
            else:
                picked[str(server["id"])] = (i, server)
        region = self.updater.region()
        ports = [p for oid in picked for p in self.updater.list_filtered(R.PORTS, region, device_id=oid)]
        for oid, i in gone.items():
            results[i] = self._gone(ns[i], oid)
        if picked:
            change = self.updater.refresh("instance", [server for _, server in picked.values()],
                                          seeds={R.PORTS: ports}, region=region)
            self._relink(change, ports)
            together = f" (with {len(picked) - 1} other(s) in one pass)" if len(picked) > 1 else ""
            for i, server in picked.values():
                results[i] = self._result(ns[i], server, f"instance {server['id']} placed{together}; "
                                                         f"{change.describe()}")
        if rest < len(ns):
            results[rest:] = self.changed_many(ns[rest:])
        return [r if r is not None else EventResult.failed("not handled") for r in results]

    def _read(self, n: Notification) -> dict[str, Any] | EventResult | str:
        """The server an event is about, as the API has it now; its id when the API no longer has it
        (to remove); or the event's result when there is nothing to do (not on a host yet, the API
        not caught up...). Writes nothing."""
        oid = instance_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no instance")
        state = str(n.data.get("state") or "").lower()
        if n.event_type.endswith("update") and state in NOT_YET and self.updater.stored(oid) is None:
            return EventResult.skip(f"instance {oid} is still {state}", oid)
        if self.updater.tombstoned(oid):
            return EventResult.skip(f"instance {oid} was deleted; late {n.event_type} ignored", oid)
        server = self.updater.show("instance", oid)
        if server is None or str(server.get("status", "")).upper() == "DELETED":
            return oid
        if not server.get("OS-EXT-SRV-ATTR:host"):
            return EventResult.skip(f"instance {oid} is not on a host yet", oid)
        lagging = self.api_lags(n, server)
        if lagging:
            return EventResult.again(lagging, oid)
        return server

    def _gone(self, n: Notification, oid: str) -> EventResult:
        change = self.updater.remove(oid)
        return EventResult.done(f"{n.event_type}: instance gone from the API; {change.describe()}", oid)

    def _relink(self, change: Change, ports: list[dict[str, Any]]) -> None:
        self.updater.relink(change, extra_ids=[str(p["id"]) for p in ports])
        self.updater.reclique(change)

    @staticmethod
    def _result(n: Notification, server: dict[str, Any], described: str) -> EventResult:
        oid = str(server["id"])
        task = server.get("OS-EXT-STS:task_state")
        if task and n.event_type.endswith(".end"):
            # mapped as it is now; nova is still busy with it, so read again shortly
            return EventResult.again(f"instance {oid} is still {task}; mapped, reading again", oid)
        return EventResult.done(f"{n.event_type}: {described}", oid, "instance")
