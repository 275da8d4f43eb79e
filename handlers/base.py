"""EventBase and EventResult: what every notification handler is and returns.

A handler is a small class with a table ``event_type -> method``. It never touches the message: it
returns an ``EventResult`` and the consumer alone turns that into ack, retry or dead-letter (the
oslo.messaging dispatcher shape). ``retry`` means "try again later" (the map is not ready for this
event yet); a plain failure is not retried.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from handlers.envelope import Notification

if TYPE_CHECKING:
    from handlers.apply import MapUpdater


@dataclass
class EventResult:
    result: bool
    retry: bool = False
    message: str = ""
    related_object: str | None = None
    display_context: str | None = None
    ignored: bool = False  # no handler for this event type, or nothing to do: acked and counted
    store_outage: bool = False  # the store could not be reached: hold the message, spend no attempt
    # something the handler needs (the API) is away: retried for as long as an outage may last, not
    # only ``retry_limit`` times
    away: bool = False

    @classmethod
    def store_unavailable(cls, reason: str) -> EventResult:
        return cls(False, retry=True, message=f"store unavailable: {reason}", store_outage=True)

    @classmethod
    def unavailable(cls, reason: str) -> EventResult:
        return cls(False, retry=True, message=f"unavailable, to be retried: {reason}", away=True)

    @classmethod
    def done(cls, message: str, obj: str | None = None, context: str | None = None) -> EventResult:
        return cls(True, message=message, related_object=obj, display_context=context)

    @classmethod
    def skip(cls, message: str, obj: str | None = None) -> EventResult:
        return cls(True, message=message, related_object=obj, ignored=True)

    @classmethod
    def again(cls, message: str, obj: str | None = None) -> EventResult:
        return cls(False, retry=True, message=message, related_object=obj)

    @classmethod
    def failed(cls, message: str, obj: str | None = None) -> EventResult:
        return cls(False, message=message, related_object=obj)


class EventBase:
    """Base of the handlers: ``handles`` maps event types to method names of the subclass."""

    handles: ClassVar[dict[str, str]] = {}
    object_type: ClassVar[str] = ""
    # methods that have a ``<method>_many`` twin handling several events at once (``many_for``)
    grouped: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, updater: MapUpdater) -> None:
        self.updater = updater

    def method_for(self, event_type: str) -> Callable[[Notification], EventResult] | None:
        name = self.handles.get(event_type)
        return getattr(self, name) if name else None

    def many_for(self, event_type: str) -> Callable[[list[Notification]], list[EventResult]] | None:
        """The method that handles several events of this type at once, as handling them one after
        the other would, but in one pass over the store; None when there is none. It returns one
        result per event, and may raise (``MissingParent``...): the dispatcher then rolls it back and
        handles the events one at a time."""
        name = self.handles.get(event_type)
        return getattr(self, f"{name}_many") if name in self.grouped else None

    def coalesce_key(self, n: Notification) -> tuple[str, str] | None:
        """A key when handling a later event with the same key makes handling this one pointless
        (see ``Dispatcher.coalesce_key``); None, the default, always handles the event."""
        return None

    def reads(self, n: Notification) -> list[tuple[Any, ...]]:
        """The API reads handling this event will make, so they can start when it arrives
        (``MapUpdater.read_ahead``); none by default."""
        return []


class PayloadHandler(EventBase):
    """Neutron-style events whose payload *is* the API item (``{"port": {...}}``): place it as a scan
    would; deletes name the id (``{"port_id": ...}``). Subclasses set the kind and payload keys."""

    kind: ClassVar[str] = ""
    item_key: ClassVar[str] = ""
    id_key: ClassVar[str] = ""

    def coalesce_key(self, n: Notification) -> tuple[str, str] | None:
        # Only where the object is re-read from the API: a trusted payload is only as new as its own
        # revision, and a later event can carry an older one.
        if self.handles.get(n.event_type) != "upsert" or self.updater.trust_payloads:
            return None
        item = n.data.get(self.item_key)
        oid = item.get("id") if isinstance(item, dict) else None
        return (self.kind, oid) if isinstance(oid, str) and oid else None

    def reads(self, n: Notification) -> list[tuple[Any, ...]]:
        key = self.coalesce_key(n)  # the same events: upserts whose object is re-read
        return [self.updater.show_read(self.kind, key[1])] if key else []

    def upsert(self, n: Notification) -> EventResult:
        item = n.data.get(self.item_key)
        if not isinstance(item, dict) or not item.get("id"):
            return EventResult.failed(f"{n.event_type}: payload has no {self.item_key} object")
        if not self.updater.trust_payloads:
            # Payloads drift from the API in small ways (a field only one of them has): the API's own
            # representation keeps the map identical to a scan's. The payload only names the object.
            current = self.updater.show(self.kind, str(item["id"]))
            if current is None:  # as if its delete event came: what depended on it is repaired too
                change = self.remove(str(item["id"]))
                return EventResult.done(f"{n.event_type}: {self.kind} already gone from the API; "
                                        f"{change.describe()}", str(item["id"]))
            item = current
        return self.apply_item(item, n.event_type)

    def upsert_many(self, ns: list[Notification]) -> list[EventResult]:
        """``upsert`` for several events: their objects are placed together (one walk under all their
        parents, one read and one write of the store), then relinked and their cliques noted together. An
        object named twice splits the events there: the later ones are handled after the earlier
        ones are placed, as one at a time would."""
        results: list[EventResult | None] = [None] * len(ns)
        picked: dict[str, tuple[int, str, dict[str, Any]]] = {}  # id -> (index, event type, item)
        gone: dict[str, tuple[int, str]] = {}  # id -> (index, event type): no longer in the API
        rest = len(ns)
        for i, n in enumerate(ns):  # every read first: nothing is written while waiting for the API
            item = n.data.get(self.item_key)
            if not isinstance(item, dict) or not item.get("id"):
                results[i] = EventResult.failed(f"{n.event_type}: payload has no {self.item_key} object")
                continue
            oid = str(item["id"])
            if oid in picked or oid in gone:
                rest = i
                break
            if not self.updater.trust_payloads:  # as in upsert: the API's representation, not the payload's
                current = self.updater.show(self.kind, oid)
                if current is None:
                    gone[oid] = (i, n.event_type)
                    continue
                item = current
            picked[oid] = (i, n.event_type, item)
        for oid, (i, event_type) in gone.items():
            change = self.remove(oid)
            results[i] = EventResult.done(f"{event_type}: {self.kind} already gone from the API; "
                                          f"{change.describe()}", oid)
        self._apply_many(list(picked.values()), results)
        if rest < len(ns):
            results[rest:] = self.upsert_many(ns[rest:])
        return [r if r is not None else EventResult.failed("not handled") for r in results]

    def _apply_many(self, picked: list[tuple[int, str, dict[str, Any]]], results: list[EventResult | None]) -> None:
        """``apply_item`` for several objects of distinct ids; fills in their results."""
        from handlers.apply import Change

        stored = {o["id"]: o for o in self.updater.store.find_objects(
            self.updater.environment, ids=[str(item["id"]) for _, _, item in picked])} if picked else {}
        placing: list[tuple[int, str, dict[str, Any]]] = []
        for i, event_type, item in picked:
            stale = self._stale(item, event_type, stored.get(str(item["id"])))
            if stale is not None:
                results[i] = stale
            else:
                placing.append((i, event_type, item))
        if not placing:
            return
        items = [item for _, _, item in placing]
        seeds: dict[Any, dict[str, dict[str, Any]]] = {}
        for item in items:
            for res, seeded in self.seeds(item).items():
                seeds.setdefault(res, {}).update((str(s.get("id")), s) for s in seeded)
        change: Change = self.updater.refresh(self.kind, items, {res: list(by_id.values())
                                                                 for res, by_id in seeds.items()})
        holders: list[dict[str, Any]] = []
        for item in items:
            self.after(item, change)
            holders.extend(self.extra_holders(item, change))
        self.updater.relink(change, holders)
        self.updater.reclique(change)
        together = f" (with {len(items) - 1} other(s) in one pass)" if len(items) > 1 else ""
        for i, event_type, item in placing:
            results[i] = EventResult.done(f"{event_type}: {self.kind} {item['id']} placed{together}; "
                                          f"{change.describe()}", str(item["id"]), self.kind)

    def _stale(self, item: dict[str, Any], event_type: str, *stored: dict[str, Any] | None) -> EventResult | None:
        """Why this item need not be placed (its object was deleted, or the map holds its revision or
        a newer one), as the event's result; None when it must be. ``stored``: the map's copy, if
        already read."""
        oid = str(item["id"])
        if self.updater.tombstoned(oid):
            return EventResult.skip(f"{self.kind} {oid} was deleted; late {event_type} ignored", oid)
        seen = self.updater.revision_seen(item, *stored)
        if seen == "older":
            return EventResult.skip(f"{self.kind} {oid}: revision {item.get('revision_number')} is older than "
                                    "the map's; ignored", oid)
        if seen == "same" and self.updater.atomic:  # else the first try may have died half-way: redo it
            return EventResult.skip(f"{self.kind} {oid}: the map is at revision {item.get('revision_number')} "
                                    "already; duplicate ignored", oid)
        return None

    def apply_item(self, item: dict[str, Any], event_type: str) -> EventResult:
        from handlers.apply import Change, MissingParent

        oid = str(item["id"])
        stale = self._stale(item, event_type)
        if stale is not None:
            return stale
        try:
            change: Change = self.refresh(item)
        except MissingParent as exc:
            return self.missing_parent(item, exc)
        self.after(item, change)
        self.updater.relink(change, self.extra_holders(item, change))
        self.updater.reclique(change)
        return EventResult.done(f"{event_type}: {change.describe()}", oid, self.kind)

    def refresh(self, item: dict[str, Any]) -> Any:
        return self.updater.refresh(self.kind, [item], self.seeds(item))

    def seeds(self, item: dict[str, Any]) -> dict[Any, list[dict[str, Any]]]:
        return {}

    def after(self, item: dict[str, Any], change: Any) -> None:
        """Hook: refresh objects derived from this one (an instance from its port, a network from its subnet)."""

    def extra_holders(self, item: dict[str, Any], change: Any) -> list[dict[str, Any]]:
        return []

    def missing_parent(self, item: dict[str, Any], exc: Exception) -> EventResult:
        return EventResult.again(str(exc), str(item.get("id")))

    def delete(self, n: Notification) -> EventResult:
        oid = n.data.get(self.id_key)
        if not oid:
            item = n.data.get(self.item_key)
            oid = item.get("id") if isinstance(item, dict) else None
        if not oid:
            return EventResult.failed(f"{n.event_type}: payload has no {self.id_key}")
        change = self.remove(str(oid))
        if not change.deleted:
            return EventResult.skip(f"{self.kind} {oid} was not in the map", str(oid))
        return EventResult.done(f"{n.event_type}: {change.describe()}", str(oid), self.kind)

    def remove(self, oid: str) -> Any:
        """Remove the object from the map, and repair what depended on it (``after_delete``)."""
        before = self.updater.stored(oid)
        change = self.updater.remove(oid)
        self.after_delete(oid, before, change)
        return change

    def after_delete(self, oid: str, before: dict[str, Any] | None, change: Any) -> None:
        """Hook: repair what depended on the deleted object."""


class ApiHandler(EventBase):
    """Events whose payload only names the object (nova, cinder, octavia): the object is re-read from
    the API and placed as a scan would; the subclass says which kind, where the id is, what else a
    scan would read with it and what else depends on it."""

    kind: ClassVar[str] = ""
    label: ClassVar[str] = ""  # for messages: "load balancer"
    id_keys: ClassVar[tuple[str, ...]] = ("id",)

    def object_id(self, n: Notification) -> str | None:
        for key in self.id_keys:
            value = n.data.get(key)
            if isinstance(value, str) and value:
                return value
        return None

    def coalesce_key(self, n: Notification) -> tuple[str, str] | None:
        if self.handles.get(n.event_type) != "changed":
            return None
        oid = self.object_id(n)
        return (self.kind, oid) if oid else None

    def reads(self, n: Notification) -> list[tuple[Any, ...]]:
        key = self.coalesce_key(n)
        return [self.updater.show_read(self.kind, key[1])] if key else []

    def seeds(self, item: dict[str, Any], region: str) -> dict[Any, list[dict[str, Any]]]:
        """Other collections the kind's fetcher reads with it (an instance's ports, an LB's pools)."""
        return {}

    def after(self, item: dict[str, Any], before: dict[str, Any], change: Any) -> None:
        """Hook: refresh objects derived from this one."""

    def busy(self, item: dict[str, Any]) -> str | None:
        """Why to read the object again shortly (it is mapped as it is, but still changing), or None."""
        return None

    def changed(self, n: Notification) -> EventResult:
        from handlers.apply import MissingParent

        oid = self.object_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no {self.label}")
        if self.updater.tombstoned(oid):
            return EventResult.skip(f"{self.label} {oid} was deleted; late {n.event_type} ignored", oid)
        item = self.updater.show(self.kind, oid)
        if item is None:
            change = self.updater.remove(oid)
            return EventResult.done(f"{n.event_type}: {self.label} gone from the API; {change.describe()}", oid)
        region = self.updater.region()
        before = self.updater.stored(oid) or {}
        try:
            change = self.updater.refresh(self.kind, [item], seeds=self.seeds(item, region), region=region)
        except MissingParent as exc:
            return EventResult.again(str(exc), oid)
        self.after(item, before, change)
        self.updater.relink(change)
        self.updater.reclique(change)
        reason = self.busy(item)
        if reason:
            return EventResult.again(f"{self.label} {oid} is still {reason}; mapped, reading again", oid)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, self.kind)

    def deleted(self, n: Notification) -> EventResult:
        oid = self.object_id(n)
        if oid is None:
            return EventResult.failed(f"{n.event_type}: payload names no {self.label}")
        change = self.updater.remove(oid)
        if not change.deleted:
            return EventResult.skip(f"{self.label} {oid} was not in the map", oid)
        return EventResult.done(f"{n.event_type}: {change.describe()}", oid, self.kind)
