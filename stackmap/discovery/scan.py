"""One scan of an environment: inventory, then links, then cliques, into the store.

The rules that keep the map honest live here:
- a second scan of an unchanged cloud writes nothing (upserts skip equal documents, cliques are
  compared before they are replaced);
- objects and links a scan did not see are removed only after a *complete* walk of that scope; a
  scan with any failed collection deletes nothing;
- results and errors go to the ``messages`` collection as well as to the caller.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from stackmap.discovery.api.client import ApiError, OpenStackClient
from stackmap.discovery.api.fetchers import Doc, FetchContext
from stackmap.discovery.api.resources import Resource, ResourceCache
from stackmap.discovery.api.transport import CountingAdapter, RecordingAdapter, ReplayAdapter
from stackmap.discovery.cliques import MemoryGraph, build_cliques, seed_defaults, select_clique_types
from stackmap.discovery.db.facts import DbFacts
from stackmap.discovery.engine import Engine, WalkResult, environment_root
from stackmap.discovery.host.facts import FactsSource
from stackmap.discovery.host.ssh import HostsUnavailable, SshRunner, open_runner
from stackmap.discovery.links import MemoryLookup, find_links, link_types_of, load_link_finders
from stackmap.discovery.scanners import ROOT_SCANNER, ScannersConfig, load_scanners
from stackmap.environments import load_environment
from stackmap.errors import NotFound, StackmapError
from stackmap.logging import get_logger
from stackmap.model import EnvironmentConfig, Message, MessageLevel, ScanStatus, utcnow
from stackmap.secrets import SecretBox
from stackmap.settings import SshSettings
from stackmap.store import Store
from stackmap.store.base import link_key
from stackmap.store.codec import dumps

log = get_logger("stackmap.scan")


@dataclass
class ScanOptions:
    inventory_only: bool = False
    links_only: bool = False
    cliques_only: bool = False
    clear: bool = False
    object_id: str | None = None
    resource_types: list[str] | None = None
    scanners_file: str | None = None

    def __post_init__(self) -> None:
        if sum((self.inventory_only, self.links_only, self.cliques_only)) > 1:
            raise StackmapError("choose at most one of --inventory-only, --links-only, --cliques-only")
        if self.resource_types is not None and self.object_id is not None:
            raise StackmapError("a scan is limited either to resource types or to one object, not both")

    @property
    def full(self) -> bool:
        """A scan of the whole environment (the only kind that may mark it scanned)."""
        return (self.object_id is None and not self.resource_types and not self.links_only
                and not self.cliques_only)


@dataclass
class ScanSummary:
    environment: str
    status: str = ScanStatus.RUNNING.value
    duration_s: float = 0.0
    objects_by_type: dict[str, int] = field(default_factory=dict)
    objects_written: int = 0
    objects_deleted: int = 0
    links: int = 0
    links_written: int = 0
    links_deleted: int = 0
    cliques: int = 0
    cliques_written: int = 0
    cliques_deleted: int = 0
    api_calls: int = 0
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    phase_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Progress(Protocol):
    """What a scan reports while it runs (the CLI draws it; daemons log it)."""

    def phase(self, name: str) -> None: ...

    def counted(self, what: str, count: int) -> None: ...


class _Quiet:
    def phase(self, name: str) -> None:
        pass

    def counted(self, what: str, count: int) -> None:
        pass


def make_adapter(env: EnvironmentConfig, record_to: Path | None = None) -> CountingAdapter:
    """The HTTP adapter of a scan: replay a recording, record the cloud, or just count calls."""
    section = env.section("OpenStack")
    if record_to is not None:
        return RecordingAdapter(pool_maxsize=16)
    if section is not None and section.recording:
        directory = Path(section.recording)
        if not directory.is_absolute():
            from stackmap import paths

            directory = paths.defaults_dir() / directory
        return ReplayAdapter.load(directory)
    return CountingAdapter(pool_maxsize=16)


class Scanner:
    """Runs one scan; construct per scan (it holds the scan's client and counters)."""

    def __init__(self, store: Store, box: SecretBox, environment: str, options: ScanOptions | None = None, *,
                 progress: Progress | None = None, adapter: CountingAdapter | None = None,
                 scanners: ScannersConfig | None = None, ssh: SshSettings | None = None,
                 hosts: FactsSource | None = None) -> None:
        self.store = store
        self.ssh = ssh or SshSettings()
        self.hosts = hosts  # a given source of host facts (tests, tools) instead of the CLI section's SSH
        self.box = box
        self.options = options or ScanOptions()
        self.progress = progress or _Quiet()
        self.env = load_environment(store, environment)
        self.summary = ScanSummary(environment=environment)
        self.adapter = adapter if adapter is not None else make_adapter(self.env)
        self._scanners = scanners
        self._objects: list[Doc] | None = None
        self._links_now: list[Doc] | None = None

    # -- entry point -------------------------------------------------------------------------------
    def run(self) -> ScanSummary:
        started = time.perf_counter()
        opts, env_name = self.options, self.env.name
        log.info("scan started", environment=env_name, object_id=opts.object_id)
        complete = True
        try:
            scanners = self._scanners or load_scanners(opts.scanners_file)
            if opts.clear and not opts.object_id:
                self._clear()
            do_inventory = not (opts.links_only or opts.cliques_only)
            do_links = not (opts.inventory_only or opts.cliques_only)
            do_cliques = not (opts.inventory_only or opts.links_only)
            if do_inventory:
                complete = self._timed("inventory", lambda: self._inventory(scanners))
            if do_links:
                self._timed("links", lambda: self._links(prune=complete))
            if do_cliques:
                self._timed("cliques", self._cliques)
            status = ScanStatus.COMPLETED if complete and not self.summary.errors else ScanStatus.COMPLETED_WITH_ERRORS
        except StackmapError as exc:
            self.summary.errors.append(str(exc))
            status = ScanStatus.FAILED
        finally:
            self.summary.api_calls = self.adapter.calls
            self.summary.duration_s = round(time.perf_counter() - started, 3)
            # Close the scan's keep-alive connections now: a long-lived process runs scan after scan,
            # and idle connections left to the garbage collector pile up in the API services (an
            # eventlet API worker serves ~100 connections, then accepts no more until they time out).
            self.adapter.close()
        self.summary.status = status.value
        self._finish(status)
        return self.summary

    def _timed(self, phase: str, work: Callable[[], Any]) -> Any:
        self.progress.phase(phase)
        start = time.perf_counter()
        try:
            return work()
        finally:
            self.summary.phase_seconds[phase] = round(time.perf_counter() - start, 3)

    def _clear(self) -> None:
        ids = self.store.object_ids(self.env.name)
        self.store.delete_objects(self.env.name, ids)
        self.store.delete_links(self.env.name, self.store.link_keys(self.env.name))
        self.store.replace_cliques(self.env.name, [])

    # -- inventory ---------------------------------------------------------------------------------
    def client(self) -> OpenStackClient:
        section = self.env.section("OpenStack")
        if section is None:
            raise StackmapError(f"environment {self.env.name} has no OpenStack configuration section")
        return OpenStackClient(section, self.box, adapter=self.adapter)

    def _host_source(self) -> SshRunner | HostsUnavailable | None:
        """Host-level commands for the fetchers, when the environment has a CLI section. A runner
        that cannot even be set up (no known_hosts file, an unusable key) still answers, with that
        reason as every host's error, so the fetchers keep the hosts' previous data."""
        section = self.env.section("CLI")
        if section is None:
            return None
        source = open_runner(section, self.box, self.ssh, store=self.store, environment=self.env.name)
        if isinstance(source, HostsUnavailable):
            self.summary.errors.append(f"host-level discovery: {source.reason}")
        return source

    def _inventory(self, scanners: ScannersConfig) -> bool:
        if self.hosts is not None:
            return self._inventory_with(scanners, self.hosts)
        hosts = self._host_source()
        try:
            return self._inventory_with(scanners, hosts)
        finally:
            if hosts is not None:
                hosts.close()

    def _inventory_with(self, scanners: ScannersConfig, hosts: FactsSource | None) -> bool:
        env_name = self.env.name
        client = self.client()
        try:
            client.authenticate()
            regions = client.regions()
        except ApiError as exc:
            raise StackmapError(str(exc)) from None
        cache = ResourceCache(client, regions)
        db = DbFacts.for_environment(self.env, self.box)
        ctx = FetchContext(env_name, cache, self.env.to_doc(), hosts=hosts, db=db)
        engine = Engine(scanners, ctx, on_level=self.progress.counted)
        try:
            if self.options.resource_types:
                return self._inventory_of_types(engine, cache, self.options.resource_types)
            return self._inventory_walk(scanners, engine, cache)
        finally:
            if db is not None:
                db.close()

    def _db_failures(self, engine: Engine) -> None:
        """What the databases could not give, as scan errors (their fetchers' types are already failed)."""
        db = engine.ctx.db
        for failure in db.failures if db is not None else []:
            self.summary.errors.append(f"mysql {failure.facts}: {failure.message}")

    def _inventory_walk(self, scanners: ScannersConfig, engine: Engine, cache: ResourceCache) -> bool:
        env_name = self.env.name
        start_scanner, parents, only, prune_under = self._starting_point(scanners, engine)
        self._remember_owners(engine.ctx, parents)

        def fetched(res: Resource, region: str, count: int) -> None:
            if count >= 0:
                self.progress.counted(f"api:{res.name}", count)

        try:
            cache.prefetch(engine.resources_needed(start_scanner), on_done=fetched)
        except ApiError as exc:
            raise StackmapError(str(exc)) from None
        for name, region in cache.skipped:
            self.summary.warnings.append(f"{name}: service not in the catalog of region {region}; skipped")
        result = engine.walk(parents, start_scanner, only_ids=only)
        for failure in cache.failures:  # after the walk: fetchers may read extra collections on the way
            self.summary.errors.append(f"{failure.resource} ({failure.region}): {failure.message}")
        self._db_failures(engine)
        self.summary.warnings.extend(result.warnings[:50])
        self._report_hosts(result)
        complete = result.complete and not cache.failures
        self.summary.objects_written = self.store.upsert_objects(env_name, result.objects)
        if complete:
            seen = {o["id"] for o in result.objects}
            if prune_under is None:
                existing = self.store.object_ids(env_name)
            else:
                existing = {o["id"] for o in self.store.find_objects(env_name, under=prune_under)}
                existing -= {p["id"] for p in parents}
            gone = existing - seen
            keep = self._types_of_skipped_services(engine, cache, start_scanner)
            if gone and keep:
                # a service absent from the catalog (cinder, octavia) says nothing about its objects
                gone = {o["id"] for o in self.store.find_objects(env_name, ids=gone) if o["type"] not in keep}
            unread = self._unread(gone, result)
            gone -= unread
            if gone:
                self._delete(gone)
            if prune_under is None and not unread:
                self._objects = result.objects  # the store now holds exactly these: reuse them for links
        elif result.failed_types:
            self.summary.errors.append(
                "incomplete scan (could not read: " + ", ".join(sorted(result.failed_types)) + "): nothing deleted")
        self.summary.objects_by_type = dict(Counter(o["type"] for o in result.objects))
        return complete

    def _remember_owners(self, ctx: FetchContext, parents: list[Doc]) -> None:
        """A walk starting below the root (one type, one object) still needs what its first parents
        belong to: host fetchers find a folder's host, and the host's region, through them."""
        wanted = {str(i) for p in parents for i in (p.get("parent_id"), p.get("host")) if i}
        wanted -= {p["id"] for p in parents}
        if not wanted:
            return
        owners = self.store.find_objects(self.env.name, ids=wanted)
        hosts = {str(o["host"]) for o in owners if o.get("host")} - {o["id"] for o in owners}
        if hosts:
            owners += self.store.find_objects(self.env.name, ids=hosts)
        for owner in owners:
            ctx.objects.setdefault(owner["id"], owner)

    def _report_hosts(self, result: WalkResult) -> None:
        for failure in result.host_errors:
            message = f"host {failure.host}: {failure.message} (kept its previous {', '.join(failure.types)})"
            if message not in self.summary.errors:
                self.summary.errors.append(message)
        by_reason: dict[str, list[str]] = {}
        for otype, reason in sorted(result.unread_types.items()):
            by_reason.setdefault(reason, []).append(otype)
        for reason, types in by_reason.items():  # one line per reason: an API-only map is not a fault
            self.summary.warnings.append(f"not read ({reason}), previous objects kept: {', '.join(types)}")

    def _unread(self, gone: set[str], result: WalkResult) -> set[str]:
        """Of the objects a walk did not see, those it could not have seen: objects of a type no host
        could be asked for, a failed host's objects of the failed types, and everything under them.
        They stay as the last scan that could read them left them (no ghosts removed, none made)."""
        kept_by_host = result.kept_subtrees()
        if not gone or not (kept_by_host or result.unread_types):
            return set()
        docs = self.store.find_objects(self.env.name, ids=gone)
        roots = [d for d in docs if d["type"] in result.unread_types
                 or d["type"] in kept_by_host.get(str(d.get("host")), ())]
        prefixes = tuple(f"{d['id_path']}/" for d in roots if d.get("id_path"))
        return {d["id"] for d in roots} | {d["id"] for d in docs if prefixes and
                                           str(d.get("id_path") or "").startswith(prefixes)}

    def _delete(self, ids: set[str]) -> None:
        """Delete objects, counting the links and cliques that go with them."""
        env_name = self.env.name
        links_before = len(self.store.link_keys(env_name))
        focal = sum(1 for c in self.store.find_cliques(env_name, containing=ids) if c["focal_point"] in ids)
        self.summary.objects_deleted += self.store.delete_objects(env_name, ids)
        self.summary.links_deleted += links_before - len(self.store.link_keys(env_name))
        self.summary.cliques_deleted += focal

    @staticmethod
    def _types_of_skipped_services(engine: Engine, cache: ResourceCache, start: str) -> set[str]:
        """Object types (and everything under them) whose fetchers read a collection that was skipped."""
        skipped = {name for name, _region in cache.skipped}
        if not skipped:
            return set()
        keep: set[str] = set()
        todo = [(start, False)]
        seen: set[tuple[str, bool]] = set()
        while todo:
            scanner, inherited = todo.pop()
            if (scanner, inherited) in seen:
                continue
            seen.add((scanner, inherited))
            for entry in engine.config.scanners[scanner]:
                uses_skipped = isinstance(entry.fetcher, str) and any(
                    r.name in skipped for r in engine.fetcher(entry.fetcher).resources)
                kept = inherited or uses_skipped
                if kept:
                    keep.add(entry.type)
                if entry.children_scanner:
                    todo.append((entry.children_scanner, kept))
        return keep

    def _inventory_of_types(self, engine: Engine, cache: ResourceCache, types: list[str]) -> bool:
        """Sync only some resource types: each is re-read under its stored parents; no other type is
        written or deleted, and objects of a type are pruned only if that type's walk was complete."""
        env_name = self.env.name
        plans = []
        for otype in types:
            placement = engine.placement(otype)
            if placement is None:
                raise StackmapError(f"no scanner entry produces objects of type {otype!r}")
            scanner, parent_types = placement
            parents = [environment_root(env_name)] if parent_types == ["environment"] else [
                p for ptype in parent_types for p in self.store.find_objects(env_name, type=ptype)]
            plans.append((otype, scanner, parents))
            self._remember_owners(engine.ctx, parents)
        needed = [r for otype, scanner, _ in plans for r in engine.resources_needed(scanner, only_type=otype)]
        try:
            cache.prefetch(needed)
        except ApiError as exc:
            raise StackmapError(str(exc)) from None
        for failure in cache.failures:
            self.summary.errors.append(f"{failure.resource} ({failure.region}): {failure.message}")
        complete = not cache.failures
        counts: Counter[str] = Counter()
        for otype, scanner, parents in plans:
            result = engine.walk(parents, scanner, only_type=otype)
            self.summary.warnings.extend(result.warnings[:20])
            self._report_hosts(result)
            self.summary.objects_written += self.store.upsert_objects(env_name, result.objects)
            counts[otype] += len(result.objects)
            if result.complete and not cache.failures:
                gone = self.store.object_ids(env_name, [otype]) - {o["id"] for o in result.objects}
                gone -= self._unread(gone, result)
                if gone:
                    self._delete(gone)
            else:
                complete = False
        self._db_failures(engine)
        self.summary.objects_by_type = dict(counts)
        return complete

    def _starting_point(self, scanners: ScannersConfig, engine: Engine
                        ) -> tuple[str, list[Doc], set[str] | None, str | None]:
        """Where the walk starts: the environment root, or one object's parent (to refresh that object)."""
        env_name = self.env.name
        root = environment_root(env_name)
        object_id = self.options.object_id
        if object_id is None:
            return ROOT_SCANNER, [root], None, None
        target = self.store.get_object(env_name, object_id)
        if target is None:
            raise NotFound(f"no object {object_id!r} in environment {env_name} to rescan")
        parent = root if target.get("parent_type") == "environment" else \
            self.store.get_object(env_name, target.get("parent_id") or "")
        if parent is None:
            raise NotFound(f"the parent of {object_id!r} is not in the store; run a full scan")
        for name, entries in scanners.scanners.items():
            if any(e.type == target["type"] for e in entries):
                return name, [parent], {object_id}, target["id"]
        raise StackmapError(f"no scanner entry produces objects of type {target['type']!r}")

    # -- links -------------------------------------------------------------------------------------
    def _links(self, prune: bool) -> None:
        env_name = self.env.name
        finders = load_link_finders()
        objects = self._objects if self._objects is not None else self.store.find_objects(env_name)
        self._objects = None  # not needed past this point: keep the scan's peak memory down
        links = find_links(env_name, objects, MemoryLookup(objects), finders)
        del objects
        self.summary.links_written = self.store.upsert_links(env_name, links)
        self.summary.links = len(links)
        self.progress.counted("links", len(links))
        if prune:
            owned = link_types_of(finders)
            new_keys = {link_key(lk) for lk in links}
            gone = self.store.link_keys(env_name, owned) - new_keys
            if gone:
                self.summary.links_deleted += self.store.delete_links(env_name, gone)
            self._links_now = links  # exactly what the store holds for these types

    def _foreign_links(self) -> bool:
        """Whether the store holds links no finder of ours made (e.g. host-level ones from another
        source): then the clique walk must read them from the store."""
        owned = set(link_types_of(load_link_finders()))
        return any(key[0] not in owned for key in self.store.link_keys(self.env.name))

    # -- cliques -----------------------------------------------------------------------------------
    def _cliques(self) -> None:
        env_name = self.env.name
        seed_defaults(self.store)
        chosen = select_clique_types(self.env.to_doc(), self.store.list_clique_types(env_name))
        constraints = {c["focal_point_type"]: list(c.get("constraints") or [])
                       for c in self.store.list_clique_constraints()}
        focal: list[Doc] = []
        for focal_type in chosen:
            focal.extend(self.store.find_objects(env_name, type=focal_type))
        links = self._links_now if self._links_now is not None and not self._foreign_links() else \
            self.store.find_links(env_name)
        self._links_now = None
        graph = MemoryGraph(links)
        cliques = build_cliques(env_name, focal, chosen, constraints, graph)
        self.summary.cliques = len(cliques)
        self.progress.counted("cliques", len(cliques))
        # Where the store keeps no copies of links in cliques, a link's new content (its state, its
        # monitoring) is no change of the clique: only its nodes and which links it holds are, and
        # the stored cliques are read with the ids of their links only (attaching every link of the
        # environment was a tenth of a rescan's time at 100,000 objects).
        copies = self.store.keeps_link_copies

        def shape(clique: Doc) -> Doc:
            return clique if copies else dict(
                clique, links_detailed=[lk.get("id") for lk in clique.get("links_detailed") or ()])

        existing = {c["focal_point"]: dumps(c) for c in self.store.find_cliques(env_name, link_ids_only=not copies)}
        fresh = {c["focal_point"]: c for c in cliques}
        changed = [c for fp, c in fresh.items() if existing.get(fp) != dumps(shape(dict(c, environment=env_name)))]
        removed = set(existing) - set(fresh)
        if changed or removed:
            self.store.replace_cliques(env_name, changed, focal_points={c["focal_point"] for c in changed} | removed)
        self.summary.cliques_written = len(changed)
        self.summary.cliques_deleted = len(removed)

    # -- wrap-up -----------------------------------------------------------------------------------
    def _finish(self, status: ScanStatus) -> None:
        env_name, s = self.env.name, self.summary
        if status is ScanStatus.COMPLETED and self.options.full:
            self.store.update_environment(env_name, {"scanned": True, "last_scanned": utcnow()})
        level = {ScanStatus.COMPLETED: MessageLevel.INFO, ScanStatus.COMPLETED_WITH_ERRORS: MessageLevel.WARNING}.get(
            status, MessageLevel.ERROR)
        text = (f"scan {status.value}: {sum(s.objects_by_type.values())} objects ({s.objects_written} written, "
                f"{s.objects_deleted} deleted), {s.links} links, {s.cliques} cliques, {s.api_calls} API calls "
                f"in {s.duration_s:.1f} s")
        if s.errors:
            text += "; errors: " + " | ".join(s.errors[:10])
        self.store.append_messages([Message(environment=env_name, source_system="stackmap", level=level,
                                            message=text, related_object=self.options.object_id,
                                            display_context="scan").to_doc()])
        log.info("scan finished", environment=env_name, status=status.value, objects=sum(s.objects_by_type.values()),
                 written=s.objects_written, deleted=s.objects_deleted, links=s.links, cliques=s.cliques,
                 api_calls=s.api_calls, duration_s=s.duration_s, errors=len(s.errors))
