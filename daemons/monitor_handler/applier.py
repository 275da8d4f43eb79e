"""Status writes: change detection, batching, derived link status.

Sensu re-runs every check every few seconds, and nearly every result repeats the last one. So the
applier keeps each target's current status in memory (read from the store the first time a target
is seen, so a restart neither rewrites nor re-announces anything) and writes only when a target gets
its first status or its status changes; each such change also appends one ``messages`` document.
A repeated status only moves the target's last-seen time in memory; those times reach the store in
chunks, at most once per flush interval per target (``status_last_seen``).

Writes are staged by ``stage`` and made by ``commit``, once per batch of results, so that the
consumer can acknowledge a whole batch after the store has it. Messages are written before the
status fields, with ids derived from (target, status, execution time): if the process dies between
the two writes, the redelivered result finds the old status, writes it again, and its message is
the same document, which the store skips as already present.

Results older than the stored status (late or reordered deliveries) are ignored, never applied.

The memory of a target is re-checked against the store every ``revalidate_s`` (at its next result):
a rescan replaces whole inventory documents, and a status it dropped is written back then, without
a message when it is the status already announced.

Where configured (``derived_link_types``, by default Calipso's ``vedge-host_pnic``), a link's status
follows its endpoints: OK when both are OK, Warning otherwise, recomputed when either changes.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from daemons.monitor_handler.mapping import LinkTarget, ObjectTarget, Target, Unmapped
from daemons.monitor_handler.results import STATUS_BY_LABEL, CheckResult, Status
from stackmap.model import MessageLevel, link_id
from stackmap.store import Store

MESSAGE_OUTPUT_LIMIT = 1024
SOURCE_SYSTEM = "Sensu"

_LEVELS = {
    Status.OK: MessageLevel.INFO,
    Status.WARNING: MessageLevel.WARNING,
    Status.CRITICAL: MessageLevel.ERROR,
    Status.UNKNOWN: MessageLevel.WARNING,
}


class Outcome(StrEnum):
    APPLIED = "applied"  # first status or a change: staged for writing
    UNCHANGED = "unchanged"  # same status as stored: last-seen refreshed in memory
    STALE = "stale"  # older than the stored status: ignored


@dataclass(slots=True)
class _State:
    """A target's status as stored; times in epoch seconds (compared once per result)."""

    status: int | None
    timestamp: float | None
    last_seen: float | None = None
    seen_dirty: bool = False
    loaded_at: float = 0.0


@dataclass(slots=True)
class CommitReport:
    status_writes: int = 0
    messages: int = 0
    derived_writes: int = 0
    gone: list[Target] = field(default_factory=list)


def message_id(target: Target, status: int, when: datetime) -> str:
    """Deterministic, so a replayed change re-creates the same message instead of a second one."""
    text = "\x1f".join((*target.key, str(status), when.isoformat()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


class StatusApplier:
    """See the module docstring. Not thread-safe: one consumer loop (or one pipe handler) owns it."""

    def __init__(self, store: Store, *, derived_link_types: Collection[str] = (), last_seen_flush_s: float = 300.0,
                 flush_chunk: int = 500, revalidate_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.revalidate_s = revalidate_s
        self.derived_link_types = frozenset(derived_link_types)
        self.last_seen_flush_s = last_seen_flush_s
        self.flush_chunk = flush_chunk
        self._clock = clock
        self._states: dict[tuple[str, ...], _State] = {}
        self._targets: dict[tuple[str, ...], Target] = {}
        self._pending: dict[tuple[str, ...], tuple[Target, dict[str, Any]]] = {}
        self._pending_derived: set[tuple[str, ...]] = set()
        self._messages: list[dict[str, Any]] = []
        self._next_flush = clock() + last_seen_flush_s
        self._flush_queue: list[tuple[str, ...]] = []

    # -- staging -----------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return len(self._pending)

    def stage(self, result: CheckResult, target: Target) -> Outcome:
        """Decide what ``result`` changes; raises Unmapped if the target has left the map."""
        key = target.key
        state = self._states.get(key)
        if state is None:
            state = self._load(target)
        elif self._clock() - state.loaded_at > self.revalidate_s and key not in self._pending:
            known = state.status
            state = self._load(target)
            if state.status is None and known == result.status:
                self._restore(target, state, result)
                return Outcome.UNCHANGED
        executed = result.executed
        if state.timestamp is not None and executed < state.timestamp:
            return Outcome.STALE
        if state.status == result.status:
            if state.last_seen is None or executed > state.last_seen:
                state.last_seen = executed
                state.seen_dirty = True
            return Outcome.UNCHANGED
        previous = state.status
        state.status = int(result.status)
        state.timestamp = state.last_seen = executed
        state.seen_dirty = False
        when = result.executed_at
        changes = {
            "status": result.status.label,
            "status_value": int(result.status),
            "status_text": result.output,
            "status_timestamp": when,
            "status_last_seen": when,
        }
        self._stage_write(target, changes)
        self._messages.append(self._message(target, result.status, previous, when,
                                            f"check {result.check_name}" + (f" on {result.client}" if result.client
                                                                            else ""), result.output))
        if isinstance(target, ObjectTarget) and self.derived_link_types:
            self._derive_links(target, when)
        return Outcome.APPLIED

    def _restore(self, target: Target, state: _State, result: CheckResult) -> None:
        """Write back a status the store lost (a rescan replaced the document); no message: nothing changed."""
        state.status = int(result.status)
        state.timestamp = state.last_seen = result.executed
        when = result.executed_at
        self._stage_write(target, {"status": result.status.label, "status_value": int(result.status),
                                   "status_text": result.output, "status_timestamp": when,
                                   "status_last_seen": when})

    def _stage_write(self, target: Target, changes: dict[str, Any]) -> None:
        staged = self._pending.get(target.key)
        if staged is None:
            self._pending[target.key] = (target, changes)
        else:
            staged[1].update(changes)

    def _message(self, target: Target, status: Status, previous: int | None, when: datetime, what: str,
                 output: str) -> dict[str, Any]:
        before = Status(previous).label if previous is not None else "no status"
        text = f"{target.display}: {before} -> {status.label} ({what})"
        if output:
            text += ": " + output[:MESSAGE_OUTPUT_LIMIT]
        if isinstance(target, ObjectTarget):
            related, related_type = target.object_id, target.object_type
        else:
            related, related_type = link_id(*target.link_key), "link"
        # the ``Message`` model's document, built directly: validating a model per status change cost
        # more than the change's store write (tests hold this dict to the model's shape)
        return {
            "id": message_id(target, int(status), when), "environment": target.environment,
            "source_system": SOURCE_SYSTEM, "level": _LEVELS[status].value, "message": text,
            "related_object": related, "related_object_type": related_type, "display_context": related,
            "timestamp": when, "received_timestamp": datetime.now(UTC), "viewed": False,
        }

    # -- derived link status -----------------------------------------------------------------------
    def _derive_links(self, changed: ObjectTarget, when: datetime) -> None:
        links = self.store.find_links(changed.environment, touching=[changed.object_id],
                                      link_types=sorted(self.derived_link_types))
        for doc in links:
            link = LinkTarget(changed.environment, doc["link_type"], doc["source_id"], doc["target_id"])
            ends = [self._endpoint_status(changed.environment, end) for end in (link.source_id, link.target_id)]
            if None in ends:
                continue  # derive only once both ends have reported
            derived = Status.OK if ends == [Status.OK, Status.OK] else Status.WARNING
            state = self._states.get(link.key)
            if state is None:
                state = self._state_from_doc(doc)
                self._states[link.key] = state
                self._targets[link.key] = link
            if state.status == derived:
                continue
            previous = state.status
            state.status = int(derived)
            state.timestamp = state.last_seen = when.timestamp()
            labels = [Status(e).label for e in ends if e is not None]
            text = f"derived from its endpoints: {link.source_id} {labels[0]}, {link.target_id} {labels[1]}"
            self._stage_write(link, {"status": derived.label, "status_value": int(derived), "status_text": text,
                                     "status_timestamp": when, "status_last_seen": when})
            self._pending_derived.add(link.key)
            self._messages.append(self._message(link, derived, previous, when, "derived from endpoints", ""))

    def _endpoint_status(self, environment: str, object_id: str) -> int | None:
        key = ("object", environment, object_id)
        state = self._states.get(key)
        if state is None:
            doc = self.store.get_object(environment, object_id)
            if doc is None:
                return None
            state = self._state_from_doc(doc)
            self._states[key] = state
            self._targets[key] = ObjectTarget(environment, object_id, str(doc.get("type", "")))
        return state.status

    # -- loading -----------------------------------------------------------------------------------
    def _load(self, target: Target) -> _State:
        if isinstance(target, ObjectTarget):
            doc = self.store.get_object(target.environment, target.object_id)
            if doc is None:
                raise Unmapped("unknown_object", target.object_id)
        else:
            docs = self.store.find_links(target.environment, link_type=target.link_type,
                                         source_id=target.source_id, target_id=target.target_id)
            if not docs:
                raise Unmapped("unknown_link", target.display)
            doc = docs[0]
        state = self._state_from_doc(doc)
        self._states[target.key] = state
        self._targets[target.key] = target
        return state

    def _state_from_doc(self, doc: dict[str, Any]) -> _State:
        value = doc.get("status_value")
        if not isinstance(value, int) or isinstance(value, bool):
            value = STATUS_BY_LABEL.get(doc.get("status", ""))
            value = int(value) if value is not None else None
        stamp = doc.get("status_timestamp")
        seen = doc.get("status_last_seen")
        return _State(value, stamp.timestamp() if isinstance(stamp, datetime) else None,
                      seen.timestamp() if isinstance(seen, datetime) else None, loaded_at=self._clock())

    # -- committing --------------------------------------------------------------------------------
    def commit(self) -> CommitReport:
        """Write what was staged: messages first, then status fields (see the module docstring).

        On a store error every staged target's cached state is dropped (it is re-read on its next
        result) and the error propagates, so that the caller requeues the batch.
        """
        report = CommitReport()
        if not self._pending and not self._messages:
            return report
        pending, messages, derived = self._pending, self._messages, self._pending_derived
        self._pending, self._messages, self._pending_derived = {}, [], set()
        try:
            if messages:
                report.messages = self.store.append_messages(messages)
            written = self._write_all([(target, changes) for target, changes in pending.values()])
            for key, (target, _changes) in pending.items():
                if key in written:
                    if key in derived:
                        report.derived_writes += 1
                    else:
                        report.status_writes += 1
                else:
                    report.gone.append(target)
                    self.forget(target)
        except Exception:
            for key in pending:
                self._states.pop(key, None)
            raise
        return report

    def discard(self) -> None:
        """Drop staged writes that will not be committed (the batch is being redelivered)."""
        for key in self._pending:
            self._states.pop(key, None)
        self._pending, self._messages, self._pending_derived = {}, [], set()

    def forget(self, target: Target) -> None:
        self._states.pop(target.key, None)
        self._targets.pop(target.key, None)

    def _write_all(self, writes: Iterable[tuple[Target, dict[str, Any]]]) -> set[tuple[str, ...]]:
        """One store write per environment and kind (objects, links) for a whole batch: a status
        change costs a row update, not a transaction. Returns the keys of the targets that exist."""
        objects: dict[str, dict[str, dict[str, Any]]] = {}
        links: dict[str, dict[tuple[str, str, str], dict[str, Any]]] = {}
        for target, changes in writes:
            if isinstance(target, ObjectTarget):
                objects.setdefault(target.environment, {})[target.object_id] = changes
            else:
                links.setdefault(target.environment, {})[target.link_key] = changes
        found: set[tuple[str, ...]] = set()
        for env, by_id in objects.items():
            found.update(("object", env, oid) for oid in self.store.update_objects(env, by_id))
        for env, by_key in links.items():
            found.update(LinkTarget(env, *key).key for key in self.store.update_links(env, by_key))
        return found

    # -- last-seen flushing ------------------------------------------------------------------------
    def flush_last_seen(self, *, force: bool = False) -> int:
        """Write due last-seen times, at most ``flush_chunk`` per call so a flush never stalls the
        consumer; returns how many were written. ``force`` writes them all (at shutdown)."""
        if not self._flush_queue:
            if not force and self._clock() < self._next_flush:
                return 0
            self._next_flush = self._clock() + self.last_seen_flush_s
            self._flush_queue = [key for key, state in self._states.items() if state.seen_dirty]
        written = 0
        while self._flush_queue and (force or written < self.flush_chunk):
            chunk: list[tuple[_State, Target]] = []
            while self._flush_queue and len(chunk) < self.flush_chunk:
                key = self._flush_queue.pop()
                state, target = self._states.get(key), self._targets.get(key)
                if state is not None and target is not None and state.seen_dirty and state.last_seen is not None:
                    chunk.append((state, target))
            found = self._write_all(
                (target, {"status_last_seen": datetime.fromtimestamp(state.last_seen or 0, UTC)})
                for state, target in chunk)
            for state, target in chunk:
                if target.key in found:
                    state.seen_dirty = False
                    written += 1
                else:
                    self.forget(target)
        return written

    def dirty_last_seen(self) -> int:
        return sum(1 for state in self._states.values() if state.seen_dirty)

    def known_targets(self) -> Iterable[Target]:
        return self._targets.values()
