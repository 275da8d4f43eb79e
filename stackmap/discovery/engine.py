"""The scan engine: walks scanners.json level by level, calling each fetcher once per level.

All collections the walk will need are read first, concurrently; then the hierarchy is assembled in
memory, each child getting its parent's paths. The engine writes nothing: it returns documents and
says whether the walk was complete, and the scan decides what to store and what may be deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from stackmap.discovery.api.fetchers import Doc, FetchContext, Fetcher, folder_id
from stackmap.discovery.api.resources import Resource
from stackmap.discovery.host.facts import HostFailure
from stackmap.discovery.scanners import ROOT_SCANNER, FolderSpec, ScannerEntry, ScannersConfig, condition_matches
from stackmap.model import utcnow


@dataclass
class WalkResult:
    objects: list[Doc] = field(default_factory=list)
    failed_types: set[str] = field(default_factory=set)
    warnings: list[str] = field(default_factory=list)
    # hosts whose objects of some types could not be read: those are kept, the rest is pruned as usual
    host_errors: list[HostFailure] = field(default_factory=list)
    unread_types: dict[str, str] = field(default_factory=dict)  # types nothing could be read for

    @property
    def complete(self) -> bool:
        return not self.failed_types

    def kept_subtrees(self) -> dict[str, set[str]]:
        """host id -> object types of that host that must not be pruned."""
        kept: dict[str, set[str]] = {}
        for failure in self.host_errors:
            kept.setdefault(failure.host, set()).update(failure.types)
        return kept


def environment_root(environment: str) -> Doc:
    """The environment as the walk's root; it is not an inventory object itself (as in Calipso)."""
    return {"id": environment, "type": "environment", "name": environment, "id_path": f"/{environment}",
            "name_path": f"/{environment}"}


class ScanPlan:
    """What the scanners configuration means for one environment: the entries of each scanner that
    apply to it, and which scanner produces each object type. Worked out once per environment rather
    than per walk, because an event handler walks a handful of objects at every event."""

    def __init__(self, config: ScannersConfig, env_doc: dict[str, Any]) -> None:
        self.config = config
        self.env_doc = env_doc
        self._entries: dict[str, list[ScannerEntry]] = {}
        self._placements: dict[str, tuple[str, list[str]] | None] = {}

    def entries(self, scanner: str) -> list[ScannerEntry]:
        """Shared: callers must not change the list."""
        found = self._entries.get(scanner)
        if found is None:
            found = self._entries[scanner] = [e for e in self.config.scanners[scanner]
                                              if condition_matches(e.environment_condition, self.env_doc)]
        return found

    def placement(self, object_type: str) -> tuple[str, list[str]] | None:
        """The scanner that produces ``object_type`` and the types of the objects it runs under."""
        if object_type not in self._placements:
            self._placements[object_type] = self._place(object_type)
        return self._placements[object_type]

    def _place(self, object_type: str) -> tuple[str, list[str]] | None:
        for name, entries in self.config.scanners.items():
            if any(e.type == object_type for e in entries):
                parent_types = [e.type for entries_ in self.config.scanners.values() for e in entries_
                                if e.children_scanner == name]
                return name, parent_types or ["environment"]
        return None


class Engine:
    def __init__(self, config: ScannersConfig, ctx: FetchContext,
                 on_level: Callable[[str, int], None] | None = None, plan: ScanPlan | None = None) -> None:
        self.config = config
        self.ctx = ctx
        self.on_level = on_level
        self.plan = plan if plan is not None else ScanPlan(config, ctx.env_doc)
        self._fetchers: dict[str, Fetcher] = {}

    def _entries(self, scanner: str) -> list[ScannerEntry]:
        return self.plan.entries(scanner)

    def fetcher(self, name: str) -> Fetcher:
        if name not in self._fetchers:
            self._fetchers[name] = Fetcher.registry[name]()
        return self._fetchers[name]

    def entries_from(self, start: str = ROOT_SCANNER, descend: bool = True) -> Iterator[ScannerEntry]:
        """The entries of ``start`` that apply to this environment and, with ``descend``, those of
        every scanner below them (each scanner once)."""
        seen: set[str] = set()
        todo = [start]
        while todo:
            scanner = todo.pop()
            if scanner in seen:
                continue
            seen.add(scanner)
            for entry in self._entries(scanner):
                yield entry
                if descend and entry.children_scanner:
                    todo.append(entry.children_scanner)

    def resources_needed(self, start: str = ROOT_SCANNER, only_type: str | None = None) -> list[Resource]:
        """Every collection the walk from ``start`` may read, so they can be fetched concurrently up front."""
        found: dict[str, Resource] = {}
        for entry in self.entries_from(start, descend=only_type is None):
            if only_type is not None and entry.type != only_type:
                continue
            if isinstance(entry.fetcher, str):
                for res in self.fetcher(entry.fetcher).resources:
                    found[res.name] = res
        return list(found.values())

    def placement(self, object_type: str) -> tuple[str, list[str]] | None:
        return self.plan.placement(object_type)

    def walk(self, parents: list[Doc], start: str = ROOT_SCANNER, now: datetime | None = None,
             only_ids: set[str] | None = None, only_type: str | None = None) -> WalkResult:
        """Walk from ``start`` with the given parents.

        ``only_ids`` keeps just those objects at the first level (rescanning one object's subtree);
        ``only_type`` runs just that entry of the first level and does not descend (a sync of one
        resource type, which must leave every other type alone).
        """
        result = WalkResult()
        stamp = now or utcnow()
        seen: set[str] = {p["id"] for p in parents}
        self.ctx.host_failures.clear()
        self.ctx.unread_types.clear()
        self.ctx.objects.update({p["id"]: p for p in parents})
        level: list[tuple[str, list[Doc]]] = [(start, parents)]
        first = True
        while level:
            following: list[tuple[str, list[Doc]]] = []
            for scanner, scanner_parents in level:
                for entry in self._entries(scanner):
                    if first and only_type is not None and entry.type != only_type:
                        continue
                    children = self._children(entry, scanner_parents, result)
                    if first and only_ids is not None:
                        children = [c for c in children if c["id"] in only_ids]
                    placed = self._place(entry, children, scanner_parents, stamp, seen, result)
                    result.objects.extend(placed)
                    if self.on_level is not None:
                        self.on_level(entry.type, len(placed))
                    if entry.children_scanner and placed and only_type is None:
                        following.append((entry.children_scanner, placed))
            level = following
            first = False
        result.host_errors = list(self.ctx.host_failures)
        result.unread_types = dict(self.ctx.unread_types)
        return result

    def _children(self, entry: ScannerEntry, parents: list[Doc], result: WalkResult) -> list[Doc]:
        if isinstance(entry.fetcher, FolderSpec):
            spec = entry.fetcher
            if self.ctx.hosts is None and self._host_only(entry.children_scanner):
                # nothing under it can be read without host access: no empty folder on every host, and
                # the folders (with what a scan with host access put in them) are kept as they are
                self.ctx.report_unread([entry.type], "no CLI access to the hosts")
                return []
            return [{"id": folder_id(p["id"], spec.types_name), "name": spec.types_name,
                     "text": spec.text or spec.types_name, "parent_id": p["id"]}
                    for p in parents if p.get("type") == spec.parent_type]
        fetcher = self.fetcher(entry.fetcher)
        children = fetcher.fetch(parents, self.ctx)
        if fetcher.failed(self.ctx):
            result.failed_types.add(entry.type)
        return children

    def _host_only(self, scanner: str | None) -> bool:
        """Whether every fetcher of a scanner reads hosts (so its folder is pointless without them)."""
        if scanner is None:
            return False
        fetchers = [e.fetcher for e in self._entries(scanner) if isinstance(e.fetcher, str)]
        return bool(fetchers) and all(self.fetcher(name).needs_hosts for name in fetchers)

    def _place(self, entry: ScannerEntry, children: list[Doc], parents: list[Doc], stamp: datetime,
               seen: set[str], result: WalkResult) -> list[Doc]:
        by_id = {p["id"]: p for p in parents}
        placed = []
        env = self.ctx.environment
        for child in children:
            parent = by_id.get(child.get("parent_id", ""))
            oid = child.get("id")
            if parent is None or not oid:
                result.warnings.append(f"{entry.type} {oid!r}: fetcher gave no known parent; skipped")
                continue
            if oid in seen:
                result.warnings.append(f"{entry.type} {oid!r}: id already used by another object; skipped")
                continue
            seen.add(oid)
            name = str(child.get("name") or oid)
            child.update(
                environment=env, type=entry.type, id=str(oid), name=name, object_name=name,
                parent_type=parent["type"], id_path=f"{parent['id_path']}/{oid}",
                name_path=f"{parent['name_path']}/{name}", show_in_tree=True, last_scanned=stamp,
            )
            placed.append(child)
            self.ctx.objects[child["id"]] = child
        return placed


