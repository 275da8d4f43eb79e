"""Incremental map updates: what every handler does once it knows which object an event concerns.

Correctness rule: after an event the map must equal what a fresh scan would produce. So objects are
never built by hand here: the *same fetchers* a scan uses run over a small, closed set of items (the
payload, one API read, or what the store already holds), under the object's stored parent, and
their output goes through the same placement code (ids, parents, paths). Then only the links held by
the changed objects are recomputed, and only the cliques that contain them are rebuilt.

Ordering: neutron payloads carry ``revision_number`` (an older revision never overwrites a newer
one); deletes leave a short-lived tombstone so a late create/update cannot resurrect the object;
nova and cinder objects are re-read from the API, which is always current.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

from stackmap.discovery.api import resources as R
from stackmap.discovery.api.client import ApiError, OpenStackClient
from stackmap.discovery.api.fetchers import FILED_BY, RESERVED, Doc, FetchContext, folder_id, project_of
from stackmap.discovery.api.resources import Resource, ResourceCache
from stackmap.discovery.api.transport import CountingAdapter
from stackmap.discovery.cliques import (
    StoreGraph,
    build_cliques,
    clique_affected,
    constraints_by_focal_type,
    select_clique_types,
)
from stackmap.discovery.engine import Engine, ScanPlan, environment_root
from stackmap.discovery.links import (
    LinkFinder,
    OnlyLookup,
    StoreLookup,
    find_links,
    link_state,
    load_link_finders,
)
from stackmap.discovery.scanners import ScannersConfig, load_scanners
from stackmap.environments import load_environment
from stackmap.errors import StackmapError
from stackmap.logging import get_logger
from stackmap.model import EnvironmentConfig, link_id
from stackmap.secrets import SecretBox
from stackmap.store import Store
from stackmap.store.base import MONITOR_FIELDS, MONITOR_STATUS, link_key
from stackmap.store.codec import dumps, loads

log = get_logger("stackmap.events")

TOMBSTONE_SECONDS = 600.0
READ_AHEAD_THREADS = 16
READ_AHEAD_TTL_S = 30.0  # a read not taken by then is older than we want to trust
READ_AHEAD_MAX = 20_000
REGION_TTL_S = 60.0
API_TIMEOUT_S = 10.0
API_PAUSE_S = 5.0  # after an API gave no answer, its reads fail at once for this long
# ("show", kind, id, region) or ("list", resource, region, sorted filter params)
Read = tuple[Any, ...]
_NOT_READ = object()

# Where a scan files each kind of object: (the field naming its owner, the owner's folder name).
PLACEMENT: dict[str, tuple[str, str]] = {
    "instance": ("host", "instances"),
    "network": ("project_id", "networks"),
    "subnet": FILED_BY["subnet"],
    "port": FILED_BY["port"],
    "router": ("project_id", "routers"),
    "floating_ip": ("project_id", "floating_ips"),
    "security_group": ("project_id", "security_groups"),
    "volume": ("project_id", "volumes"),
    "snapshot": FILED_BY["snapshot"],
    "server_group": ("project_id", "server_groups"),
    "load_balancer": ("project_id", "load_balancers"),
}
# The collection each kind's fetcher reads its items from.
SOURCE: dict[str, Resource] = {
    "instance": R.SERVERS, "network": R.NETWORKS, "subnet": R.SUBNETS, "port": R.PORTS, "router": R.ROUTERS,
    "floating_ip": R.FLOATING_IPS, "security_group": R.SECURITY_GROUPS, "volume": R.VOLUMES,
    "snapshot": R.SNAPSHOTS, "server_group": R.SERVER_GROUPS, "load_balancer": R.LOAD_BALANCERS,
}
# How a kind is read back from the API: (service, path template, key of the item).
API_SHOW: dict[str, tuple[str, str, str]] = {
    "instance": ("compute", "/servers/{id}", "server"),
    "network": ("network", "/networks/{id}", "network"),
    "subnet": ("network", "/subnets/{id}", "subnet"),
    "port": ("network", "/ports/{id}", "port"),
    "router": ("network", "/routers/{id}", "router"),
    "floating_ip": ("network", "/floatingips/{id}", "floatingip"),
    "security_group": ("network", "/security-groups/{id}", "security_group"),
    "volume": ("block-storage", "/volumes/{id}", "volume"),
    "snapshot": ("block-storage", "/snapshots/{id}", "snapshot"),
    "server_group": ("compute", "/os-server-groups/{id}", "server_group"),
    "load_balancer": ("load-balancer", "/lbaas/loadbalancers/{id}", "loadbalancer"),
}
# Reads of waiting events merged into one filtered listing (neutron's filters take several values,
# ``?id=a&id=b``; nova's and cinder's do not): an object shown by id, and an instance's ports.
MERGED_SHOWS: dict[str, Resource] = {kind: res for kind, res in SOURCE.items() if res.service == "network"}
MERGED_LISTS = {(R.PORTS.name, "device_id")}
MERGE_MAX = 50  # values per request: ~2 KB of query string, well under API servers' request-line limits
MERGE_JOBS = 4  # merged requests in flight per listing; reads arriving meanwhile wait and merge
MergeKey = tuple[Resource, str, str]  # (listing, region, the field filtered on)
KIND_PREFIX = {"floating_ip": "floating_ip", "security_group": "security_group", "server_group": "server_group"}


def raw_of(doc: Doc) -> Doc:
    """The API item a stored document was built from (inverse of the fetchers' ``clean``)."""
    kind = KIND_PREFIX.get(doc.get("type", ""), doc.get("type", ""))
    raw = {k: v for k, v in doc.items() if k not in RESERVED}
    for key in RESERVED:
        prefixed = f"{kind}_{key}"
        if prefixed in raw:
            raw[key] = raw.pop(prefixed)
    return raw


@dataclass
class Change:
    """What one update did, for the handler's result and the messages collection."""

    upserted: list[Doc] = field(default_factory=list)
    previous: dict[str, Doc] = field(default_factory=dict)  # the upserted objects that existed, as they were
    deleted: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)  # objects whose name_path changed: labels and paths follow
    # objects that went up or down: the state of every link touching them, whoever holds it, follows
    restated: list[str] = field(default_factory=list)
    links_added: list[Doc] = field(default_factory=list)  # new links, and changed ones (as they are now)
    links_gone: set[tuple[str, str, str]] = field(default_factory=set)  # keys of links removed, and of changed ones
    # links whose content changed where no clique walk looks (a state, a label): their cliques keep
    # their shape, and only the copies in their links_detailed are replaced (see ``_walked_alike``)
    links_patched: dict[tuple[str, str, str], Doc] = field(default_factory=dict)
    focal_changed: set[str] = field(default_factory=set)  # objects whose own clique must be rebuilt
    written: int = 0
    links_written: int = 0
    links_deleted: int = 0
    cliques_rebuilt: int = 0
    clique_links_patched: int = 0  # copies of links replaced in cliques not rebuilt (``_patch_cliques``)
    deferred: bool = False  # links and cliques are redone when the batch is committed (``begin_batch``)

    def describe(self) -> str:
        done = f"{len(self.upserted)} object(s) refreshed ({self.written} written), {len(self.deleted)} deleted, "
        if self.deferred:
            return done + "links and cliques redone at the batch's commit"
        text = f"links +{self.links_written}/-{self.links_deleted}, {self.cliques_rebuilt} clique(s) rebuilt"
        if self.clique_links_patched:  # a store that keeps copies of links in cliques (MongoDB)
            text += f", {self.clique_links_patched} link copies patched in others"
        return done + text


class MissingParent(StackmapError):
    """The object's owner is not in the map yet (an event arrived before the one creating it)."""


class MapUpdater:
    """Applies the effect of events on one environment's map; one per listener process."""

    def __init__(self, store: Store, box: SecretBox, environment: str, *, adapter: CountingAdapter | None = None,
                 scanners: ScannersConfig | None = None, trust_payloads: bool = False,
                 read_ahead_threads: int = READ_AHEAD_THREADS, api_timeout_s: float = API_TIMEOUT_S,
                 api_pause_s: float = API_PAUSE_S) -> None:
        self.store = store
        self.api_timeout_s = api_timeout_s
        self.api_pause_s = api_pause_s
        # (service, region) -> (when it last gave no answer, what was said): see _asking
        self._unanswered: dict[tuple[str, str], tuple[float, str]] = {}
        self.trust_payloads = trust_payloads
        self.read_ahead_threads = read_ahead_threads
        self.box = box
        self.environment = environment
        self.env: EnvironmentConfig = load_environment(store, environment)
        self.scanners = scanners or load_scanners()
        self._env_doc = self.env.to_doc()
        self._plan = ScanPlan(self.scanners, self._env_doc)
        self.finders: list[LinkFinder] = load_link_finders()
        self._adapter = adapter
        self._client: OpenStackClient | None = None
        self._tombstones: dict[str, float] = {}
        self._default_region: tuple[float, str] | None = None
        self._lock = threading.Lock()
        self._clique_setup: tuple[dict[str, Doc], dict[str, list[str]]] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[Read, tuple[float, Future[Any]]] = {}
        self._merging: dict[MergeKey, list[tuple[str, Future[Any]]]] = {}
        self._merge_jobs: dict[MergeKey, int] = {}
        self._held: dict[str, set[str]] = {}
        # Set by the dispatcher: whether the event being handled commits all-or-nothing (then an
        # object it finds unchanged has its links as its last committed change left them).
        self.atomic = False
        # While a batch is open, what its events did to the cliques, redone once by flush_batch().
        self._pending: Change | None = None
        self._pending_touched: set[str] = set()
        # ...and the objects whose links, and the instances whose ports, it recomputes at the flush
        self._relink_later: dict[str, None] = {}
        self._moved_later: set[str] = set()  # renamed or restated: links others hold to them are redone
        self._instances_later: dict[str, None] = {}
        for finder in self.finders:
            for holder in finder.holder_types:
                self._held.setdefault(holder, set()).add(finder.link_type)

    # -- API access ----------------------------------------------------------------------------------
    @property
    def client(self) -> OpenStackClient:
        if self._client is None:
            section = self.env.section("OpenStack")
            if section is None:
                raise StackmapError(f"environment {self.environment} has no OpenStack section")
            from stackmap.discovery.scan import make_adapter

            self._client = OpenStackClient(section, self.box, adapter=self._adapter or make_adapter(self.env),
                                           timeout=self.api_timeout_s)
        return self._client

    @contextmanager
    def _asking(self, service: str, region: str | None) -> Iterator[None]:
        """Around every API read: an API that just gave no answer (refused, unreachable, timed out) is
        not asked again for ``api_pause_s``. Otherwise every waiting event would wait out its own
        timeout (a blackholed endpoint), one after the other, and the listener would miss its
        heartbeats; this way they are all retried at once, and the API is asked again soon after."""
        key = (service, region or "")
        last = self._unanswered.get(key)
        if last is not None:
            ago = time.monotonic() - last[0]
            if ago < self.api_pause_s:
                raise ApiError(f"{last[1]} ({ago:.1f} s ago; not asked again for {self.api_pause_s - ago:.1f} s)",
                               unanswered=True)
        try:
            yield
        except ApiError as exc:
            if exc.unanswered:
                with self._lock:
                    self._unanswered[key] = (time.monotonic(), str(exc))
            raise
        if last is not None:
            with self._lock:
                self._unanswered.pop(key, None)

    def region(self, hint: Doc | None = None) -> str:
        if hint and hint.get("region"):
            return str(hint["region"])
        section = self.env.section("OpenStack")
        if section is not None and section.region:
            return str(section.region)
        # the map's first region: asked of the store at most every REGION_TTL_S, not at every read
        now = time.monotonic()
        cached = self._default_region
        if cached is None or now - cached[0] > REGION_TTL_S:
            regions = self.store.find_objects(self.environment, type="region", limit=1)
            cached = self._default_region = (now, regions[0]["id"] if regions else "RegionOne")
        return cached[1]

    # -- reading ahead: API reads of waiting events, made concurrently ---------------------------------
    def read_ahead(self, reads: Iterable[Read]) -> None:
        """Start API reads that handlers are going to make, on a small pool of threads, so that the
        reads of a batch of waiting events overlap instead of following one another (against a real
        cloud a read takes 10-50 ms). A read started when its event was received reflects a state at
        least as new as the event; a later event for the same object starts a newer read, which
        replaces it. ``show``/``list_filtered`` take a started read, or read directly."""
        if self.read_ahead_threads <= 0:
            return
        now = time.monotonic()
        for read in reads:
            merged = _merged_into(read)
            future: Future[Any]
            if merged is None:
                future = self._reader().submit(self._read_now, read)
            else:
                key, value = merged
                future = Future()
                with self._lock:
                    self._merging.setdefault(key, []).append((value, future))
                    start = self._merge_jobs.get(key, 0) < MERGE_JOBS
                    if start:
                        self._merge_jobs[key] = self._merge_jobs.get(key, 0) + 1
                if start:
                    self._reader().submit(self._read_merged, key)
            with self._lock:
                self._ahead[read] = (now, future)
                if len(self._ahead) > READ_AHEAD_MAX:  # nobody is taking them: drop the oldest half
                    for key in sorted(self._ahead, key=lambda k: self._ahead[k][0])[:READ_AHEAD_MAX // 2]:
                        del self._ahead[key]

    def _reader(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.read_ahead_threads, thread_name_prefix="read-ahead")
        return self._pool

    def _read_merged(self, key: MergeKey) -> None:
        """Answer the waiting reads of one listing, up to MERGE_MAX per request, until none is left.
        What a read gets is what its own request would have: the item or None (gone) for a show, the
        matching items for a list."""
        res, region, field = key
        while True:
            with self._lock:
                waiting = self._merging.get(key) or []
                taken, waiting[:] = waiting[:MERGE_MAX], waiting[MERGE_MAX:]
                if not taken:
                    self._merge_jobs[key] -= 1
                    return
            values = sorted({value for value, _ in taken})
            try:
                items = self._list_now(res, region, {field: values})
            except Exception as exc:  # each read raises it where it is taken, as its own request would
                for _, future in taken:
                    future.set_exception(exc)
                continue
            found: dict[str, list[Doc]] = {}
            for item in items:
                found.setdefault(str(item.get(field)), []).append(item)
            for value, future in taken:
                matching = found.get(value, [])
                future.set_result(matching if field != "id" else (matching[0] if matching else None))

    def _read_now(self, read: Read) -> Any:
        if read[0] == "show":
            return self._show_now(read[1], read[2], read[3])
        res, region, params = read[1], read[2], read[3]
        return self._list_now(res, region, dict(params))

    def reads_ready(self, reads: Iterable[Read]) -> bool:
        """Whether every one of these reads has been read ahead and has its answer already."""
        with self._lock:
            entries = [self._ahead.get(read) for read in reads]
        return all(entry is not None and entry[1].done() for entry in entries)

    def _taken(self, read: Read) -> Any:
        with self._lock:
            entry = self._ahead.pop(read, None)
        if entry is None or time.monotonic() - entry[0] > READ_AHEAD_TTL_S:
            return _NOT_READ
        return entry[1].result()  # an API error is raised here as a direct read would raise it

    def show_read(self, kind: str, object_id: str) -> Read:
        return ("show", kind, object_id, self.region())

    def list_read(self, res: Resource, **params: str) -> Read:
        return ("list", res, self.region(), tuple(sorted(params.items())))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:  # merged reads whose request will never be made now: nobody may wait on them
            for waiting in self._merging.values():
                for _, future in waiting:
                    future.set_exception(StackmapError("the map updater was closed"))
                waiting.clear()

    def show(self, kind: str, object_id: str, region: str | None = None) -> Doc | None:
        """The current API representation of one object, or None when the API says it is gone."""
        region = region or self.region()
        got = self._taken(("show", kind, object_id, region))
        return self._show_now(kind, object_id, region) if got is _NOT_READ else cast("Doc | None", got)

    def _show_now(self, kind: str, object_id: str, region: str | None) -> Doc | None:
        service, path, key = API_SHOW[kind]
        region = region or self.region()
        try:
            # at the microversion the scan lists the kind with: the item must have the scan's shape
            with self._asking(service, region):
                data = self.client.get_json(service, path.format(id=object_id), region,
                                            microversion=SOURCE[kind].microversion)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        item = data.get(key) if isinstance(data, dict) else None
        return item if isinstance(item, dict) else None

    def list_filtered(self, res: Resource, region: str, **params: str) -> list[Doc]:
        got = self._taken(("list", res, region, tuple(sorted(params.items()))))
        return self._list_now(res, region, params) if got is _NOT_READ else cast("list[Doc]", got)

    def _list_now(self, res: Resource, region: str, params: dict[str, Any]) -> list[Doc]:
        with self._asking(res.service, region):
            return self.client.list(res.service, res.path, res.key, region, params={**dict(res.params), **params},
                                    microversion=res.microversion, paged=res.paged)

    # -- tombstones and versions -------------------------------------------------------------------
    def tombstoned(self, object_id: str) -> bool:
        with self._lock:
            stamp = self._tombstones.get(object_id)
            if stamp is None:
                return False
            if time.monotonic() - stamp > TOMBSTONE_SECONDS:
                del self._tombstones[object_id]
                return False
            return True

    def _bury(self, ids: Iterable[str]) -> None:
        now = time.monotonic()
        with self._lock:
            for oid in ids:
                self._tombstones[oid] = now
            if len(self._tombstones) > 100_000:  # bounded memory under a delete storm
                cutoff = now - TOMBSTONE_SECONDS
                self._tombstones = {k: v for k, v in self._tombstones.items() if v > cutoff}

    def revision_seen(self, item: Doc, stored: object = _NOT_READ) -> str | None:
        """How a neutron item's ``revision_number`` compares with the map's copy (``stored``, read here
        unless given): "older" (a late delivery: ignore it), "same" (a duplicate: neutron bumps the
        revision on every change of the resource, so the map already holds this state) or None
        (newer, unknown, or no revisions)."""
        revision = item.get("revision_number")
        if not isinstance(revision, int):
            return None
        if stored is _NOT_READ:
            stored = self.store.get_object(self.environment, str(item.get("id")))
        stored = cast("Doc | None", stored)
        held = stored.get("revision_number") if stored is not None else None
        if not isinstance(held, int) or held < revision:
            return None
        return "older" if held > revision else "same"

    # -- the core: refresh objects through the scan's own fetchers ----------------------------------
    def refresh(self, kind: str, items: list[Doc], seeds: dict[Resource, list[Doc]] | None = None,
                region: str | None = None) -> Change:
        """Place ``items`` (API items of ``kind``) in the map exactly as a scan would, and relink."""
        change = Change()
        items = [i for i in items if not self.tombstoned(str(i.get("id")))]
        if not items:
            return change
        region = region or self.region(items[0])
        owner_field, folder = PLACEMENT[kind]
        engine, _cache = self._engine(region, {SOURCE[kind]: items, **(seeds or {})})
        placement = engine.placement(kind)
        if placement is None:
            raise StackmapError(f"no scanner entry produces {kind} objects")
        scanner = placement[0]
        by_parent: dict[str, list[str]] = {}
        for item in items:
            owner = project_of(item) if owner_field == "project_id" else item.get(owner_field)
            if kind == "instance":
                owner = item.get("OS-EXT-SRV-ATTR:host")
            if not owner:
                raise StackmapError(f"{kind} {item.get('id')} names no {owner_field}; cannot place it")
            by_parent.setdefault(folder_id(str(owner), folder), []).append(str(item["id"]))
        # one walk under all the parents, one read and one write of the store, however many items
        parents = {p["id"]: p for p in self.store.find_objects(self.environment, ids=sorted(by_parent))}
        for parent_id, ids in by_parent.items():
            if parent_id not in parents:
                raise MissingParent(f"{kind} {', '.join(ids)}: its parent {parent_id} is not in the map yet")
        wanted = {oid for ids in by_parent.values() for oid in ids}
        result = engine.walk([parents[pid] for pid in by_parent], scanner, only_ids=wanted)
        placed_ids = [o["id"] for o in result.objects]
        before = {o["id"]: o for o in self.store.find_objects(self.environment, ids=placed_ids)}
        change.previous.update(before)
        change.written += self.store.upsert_objects(self.environment, result.objects)
        change.upserted.extend(result.objects)
        chosen, constraints = self._cliques()
        for obj in result.objects:
            old = before.get(obj["id"])
            if obj["type"] in chosen and (old is None or any(
                    old.get(f) != obj.get(f) for f in constraints.get(obj["type"], ()))):
                change.focal_changed.add(obj["id"])  # a new focal object, or its clique's constraints moved
            if old is not None and old.get("name_path") != obj["name_path"] and obj["id"] in wanted:
                change.renamed.append(obj["id"])
                change.written += self._rename_descendants(old, obj)
            if old is not None and link_state(old) != link_state(obj):
                change.restated.append(obj["id"])
        return change

    def _rename_descendants(self, old: Doc, new: Doc) -> int:
        """A renamed object's descendants carry its name in their name_path, as a scan would write them."""
        old_prefix, new_prefix = old["name_path"] + "/", new["name_path"] + "/"
        moved = []
        for desc in self.store.find_objects(self.environment, under=new["id"]):
            if desc["id"] != new["id"] and str(desc.get("name_path", "")).startswith(old_prefix):
                moved.append(dict(desc, name_path=new_prefix + desc["name_path"][len(old_prefix):]))
        return self.store.upsert_objects(self.environment, moved) if moved else 0

    def _engine(self, region: str, seeds: dict[Resource, list[Doc]]) -> tuple[Engine, ResourceCache]:
        """An engine over a closed cache: the fetchers see only the seeded items, never list the API."""
        cache = ResourceCache(cast(OpenStackClient, _NoClient()), [region], closed=True)
        for res, items in seeds.items():
            cache.data[(res.name, region if res.per_region else "*")] = list(items)
        ctx = FetchContext(self.environment, cache, self._env_doc)
        return Engine(self.scanners, ctx, plan=self._plan), cache

    # -- links and cliques -------------------------------------------------------------------------
    def relink(self, change: Change, extra_holders: Iterable[Doc] = (), extra_ids: Iterable[str] = ()) -> None:
        """Recompute the links held by the changed objects (and ``extra_holders``, or the stored objects
        ``extra_ids`` name); write only those that are new or differ, drop the ones they no longer
        hold, and note both in ``change`` for ``reclique``.
        Inside a batch (``begin_batch``) this only notes the objects: ``flush_batch`` relinks them
        (and reads them then: objects named by id are not read here)."""
        holders = {h["id"]: h for h in [*change.upserted, *extra_holders]}
        more = [i for i in extra_ids if i not in holders]
        if not holders and not more:
            return
        if self.atomic and not change.written and not change.deleted:
            # The event wrote nothing, and every earlier change of these objects committed with its
            # links: they are still what relinking would write. (Without atomic events a retry of an
            # event whose first try died between object and links would find nothing to do here.)
            return
        if self._pending is not None:
            change.deferred = True
            self._relink_later.update(dict.fromkeys([*holders, *more]))
            self._moved_later.update(change.renamed, change.restated)
            return
        if more:
            holders.update((o["id"], o) for o in self.store.find_objects(self.environment, ids=more))
        self._relink_now(change, holders)

    def _relink_now(self, change: Change, holders: dict[str, Doc], from_store: bool = False) -> None:
        """``relink`` itself. ``from_store``: the holders were just read from the store, so the finders'
        lookups can take them from there (otherwise they may be placed copies, not yet as stored)."""
        lookup = StoreLookup(self.store, self.environment, known=holders.values() if from_store else ())
        fresh = find_links(self.environment, list(holders.values()), lookup, self.finders)
        moved = {*change.renamed, *change.restated}
        if moved:
            # Link labels carry both ends' names, and a link's state its ends' states: the links of a
            # renamed or restated object that other objects hold (a floating IP's link to a port that
            # went down) are recomputed too. Those holders only refresh these links: they are not all
            # the producers of what they hold (a router's links to its networks come from its ports),
            # so nothing is deleted on their account.
            # Only the other ends that hold one of those links are read, and only the finders of
            # those links' types run for them.
            held: dict[str, set[str]] = {}  # other end -> the types of those links it holds
            for lk in self.store.find_links(self.environment, touching=sorted(moved)):
                for end, end_type in ((lk["source_id"], lk.get("source_type")),
                                      (lk["target_id"], lk.get("target_type"))):
                    if end not in holders and lk["link_type"] in self._held.get(str(end_type), ()):
                        held.setdefault(end, set()).add(lk["link_type"])
            if held:
                others = self.store.find_objects(self.environment, ids=sorted(held))
                link_types = set().union(*held.values())
                finders = [f for f in self.finders if f.link_type in link_types]
                found = find_links(self.environment, others, lookup, [f for f in finders if not f.finds_ends])
                if ends := [f for f in finders if f.finds_ends]:
                    # a finder whose finds are link ends needs to find only the moved objects (a load
                    # balancer's member ports, instead of every port of its member networks)
                    only = OnlyLookup(lookup, [holders[m] for m in moved if m in holders])
                    found += find_links(self.environment, others, only, ends)
                fresh_keys_so_far = {link_key(lk) for lk in fresh}
                fresh += [lk for lk in found
                          if (lk["source_id"] in moved or lk["target_id"] in moved)
                          and link_key(lk) not in fresh_keys_so_far]
        held_types = {t for h in holders.values() for t in self._held.get(h["type"], ())}
        current = {link_key(lk): lk for lk in self.store.find_links(
            self.environment, touching=list(holders), link_types=held_types)} if held_types else {}
        missing = {link_key(lk) for lk in fresh} - set(current)
        if missing:  # links of renamed or restated objects held by others: compare them with what is stored too
            # read by key: a source's other links of those types can be many (a tunnel pNIC carries
            # every network of its host's instances)
            current.update({link_key(lk): lk for lk in self.store.find_links(self.environment, keys=sorted(missing))})
        differing = []
        for link in fresh:
            key = link_key(link)
            stored = current.get(key)
            if stored is None or _link_differs(link, stored):
                differing.append(link)
                if stored is None:
                    change.links_added.append(link)
                elif _walked_alike(link, stored):
                    change.links_patched[key] = link
                else:
                    change.links_gone.add(key)
                    change.links_added.append(link)
        if differing:
            change.links_written += self.store.upsert_links(self.environment, differing)
        fresh_keys = {link_key(lk) for lk in fresh}
        stale = {key for key, lk in current.items() if key not in fresh_keys and self._held_by(lk, holders)}
        if stale:
            change.links_deleted += self.store.delete_links(self.environment, stale)
            change.links_gone |= stale

    def _held_by(self, link: Doc, holders: dict[str, Doc]) -> bool:
        """A link belongs to a holder when the holder's type holds that link type and it is one end."""
        for end in (link["source_id"], link["target_id"]):
            holder = holders.get(end)
            if holder is not None and link["link_type"] in self._held.get(holder["type"], ()):
                return True
        return False

    def _cliques(self) -> tuple[dict[str, Doc], dict[str, list[str]]]:
        if self._clique_setup is None:
            from stackmap.discovery.cliques import seed_defaults

            seed_defaults(self.store)
            chosen = select_clique_types(self._env_doc, self.store.list_clique_types(self.environment))
            constraints = constraints_by_focal_type(self.store.list_clique_constraints())
            self._clique_setup = (chosen, constraints)
        return self._clique_setup

    def reclique(self, change: Change, touched: Iterable[str] = ()) -> None:
        """Rebuild only the cliques a change can alter: the own clique of a new focal object (or one
        whose constraint fields moved), those that included a link that went away or changed, those
        a new link can extend (``clique_affected``), and every clique containing a ``touched`` id.
        Inside a batch (``begin_batch``) this only notes the change: ``flush_batch`` rebuilds."""
        if self._pending is not None:
            self._note(change, touched)
            return
        self._reclique_now(change, set(touched))

    # -- batches: cliques rebuilt once for all the events of a batch ----------------------------------
    def begin_batch(self) -> None:
        """From now on, note what events do to links and cliques instead of redoing them at each event.

        Links: the objects each event wrote are noted, and relinked together at the flush from the
        state the batch leaves, which is what relinking them one event at a time ends in (each
        relink reads the store as it is then, and the last one of an object wins). Where a handler
        reads links in the middle of a batch it asks ``find_links``, which relinks what is noted first.

        Why it is the same map: the cliques to rebuild are found, at the flush, from the clique table
        as it was before the batch. A clique that an event of the batch extended is reached from a
        node it already had by the first link of that extension, which is among the batch's added
        links; a link both added and removed within the batch was never in a stored clique. And each
        rebuild reads the store as the batch leaves it, so a clique is rebuilt once, from the end state."""
        if self._pending is None:
            self._pending = Change()
            self._pending_touched = set()

    def _note(self, change: Change, touched: Iterable[str]) -> None:
        pending = self._pending
        assert pending is not None
        pending.focal_changed |= change.focal_changed
        pending.links_added.extend(change.links_added)
        pending.links_gone |= change.links_gone
        pending.links_patched.update(change.links_patched)
        pending.deleted.extend(change.deleted)
        self._pending_touched.update(t for t in touched if t)

    def flush_batch(self) -> int:
        """Relink the objects the batch's events changed, re-derive the instances whose ports they
        changed, and rebuild the cliques all that altered; returns how many cliques were rebuilt."""
        if self._pending is None:
            return 0
        self._relink_noted(keep=False)
        instances, self._instances_later = list(self._instances_later), {}
        if instances:
            self._rederive_instances(instances)
        self._relink_noted(keep=False)
        return self._flush_cliques()

    def _rederive_instances(self, instance_ids: list[str]) -> None:
        """``_rederive_instance`` for many instances at once: one read of their ports, and one
        refresh per host (so that a host gone in this batch leaves the others' instances alone)."""
        for region, raws, ports in self._instances_by_host(instance_ids):
            try:
                again = self.refresh("instance", raws, seeds={R.PORTS: ports}, region=region)
            except MissingParent as exc:  # their host went away in this batch: the instances with it
                log.info("instances not re-derived from their ports", instances=[r.get("id") for r in raws],
                         reason=str(exc))
                continue
            if again.written:
                self._relink_later.update(dict.fromkeys(o["id"] for o in again.upserted))
                self._moved_later.update(again.renamed, again.restated)
            self._note(again, ())

    def _relink_noted(self, keep: bool) -> None:
        """Relink the objects noted by the batch's events. ``keep``: in the middle of an event, whose
        savepoint may yet be rolled back with these writes: the flush relinks them again then."""
        ids, moved = list(self._relink_later), sorted(self._moved_later)
        if not keep:
            self._relink_later, self._moved_later = {}, set()
        if not ids:
            return
        holders = {o["id"]: o for o in self.store.find_objects(self.environment, ids=ids)}  # gone ones: skipped
        change = Change(restated=[m for m in moved if m in holders])  # (relinked alike: see _relink_now)
        self._relink_now(change, holders, from_store=True)
        self._note(change, ())

    def find_links(self, **filters: Any) -> list[Doc]:
        """The environment's links as the events handled so far leave them (relinking what a batch
        has noted first): what a handler that reads links must ask."""
        if self._pending is not None and self._relink_later:
            self._relink_noted(keep=True)
        return self.store.find_links(self.environment, **filters)

    def _flush_cliques(self) -> int:
        pending, touched = self._pending, self._pending_touched
        self._pending, self._pending_touched = None, set()
        if pending is None:
            return 0
        unique = {link_key(lk): lk for lk in pending.links_added}  # a link noted twice is checked once
        pending.links_added = list(unique.values())
        self._reclique_now(pending, touched)
        return pending.cliques_rebuilt

    def discard_batch(self) -> None:
        """The batch's writes were rolled back: its events will be handled again and noted again."""
        self._pending, self._pending_touched = None, set()
        self._relink_later, self._moved_later, self._instances_later = {}, set(), {}

    def _reclique_now(self, change: Change, touched: set[str]) -> None:
        chosen, constraints = self._cliques()
        focal_ids = set(change.focal_changed)
        if touched:
            focal_ids |= {c["focal_point"] for c in self.store.find_cliques(self.environment,
                                                                            containing=list(touched))}
        by_end: dict[str, list[Doc]] = {}
        for lk in change.links_added:
            for end in (str(lk["source_id"]), str(lk["target_id"])):
                by_end.setdefault(end, []).append(lk)
        gone_ids = {link_id(*key) for key in change.links_gone}
        # a clique a new link can extend has one of its ends; one that held a link that went away, both
        candidates: dict[str, Doc] = {}
        if by_end:
            candidates.update((c["focal_point"], c) for c in self.store.find_cliques(
                self.environment, containing=list(by_end)))
        if change.links_gone:
            candidates.update((c["focal_point"], c) for c in self.store.find_cliques(
                self.environment, holding=sorted({key[1:] for key in change.links_gone})))
        for clique in candidates.values():
            if clique["focal_point"] in focal_ids:
                continue
            clique_type = chosen.get(str(clique.get("focal_point_type")))
            # only new links with an end in the clique can extend it (a batch brings many others)
            members = {*(clique.get("nodes") or ()), clique["focal_point"]}
            near = {id(lk): lk for node in by_end.keys() & members for lk in by_end[node]}
            if clique_type is None or clique_affected(clique, clique_type, near.values(), gone_ids):
                focal_ids.add(clique["focal_point"])
        focal_ids -= set(change.deleted)
        self._patch_cliques(change, focal_ids)
        if not focal_ids:
            return
        focal = self.store.find_objects(self.environment, ids=focal_ids)
        cliques = build_cliques(self.environment, focal, chosen, constraints, StoreGraph(self.store, self.environment))
        gone = focal_ids - {c["focal_point"] for c in cliques}
        self.store.replace_cliques(self.environment, cliques, focal_points=focal_ids | gone)
        change.cliques_rebuilt += len(cliques)

    def _patch_cliques(self, change: Change, rebuilt: set[str]) -> None:
        """Replace, in the cliques that hold them, the copies of links whose change no walk sees:
        such a clique would be walked again to the same nodes and links (cheaper than a walk, and
        a port's status flip touches every clique its links are in). Cliques rebuilt anyway, and
        links that also went away or changed shape, are left to the rebuild."""
        keys = [key for key in change.links_patched if key not in change.links_gone]
        if not keys:
            return
        change.clique_links_patched += self.store.patch_clique_links(
            self.environment, keys, skip=rebuilt | set(change.deleted))

    # -- deletes -----------------------------------------------------------------------------------
    def remove(self, object_id: str) -> Change:
        """Delete an object with its subtree, links and own clique; rebuild the cliques it was in."""
        change = Change()
        self._bury([object_id])
        subtree = {o["id"] for o in self.store.find_objects(self.environment, under=object_id)} | {object_id}
        containing = {c["focal_point"] for c in self.store.find_cliques(self.environment, containing=list(subtree))}
        deleted = self.store.delete_subtree(self.environment, object_id)
        self._bury(deleted)
        change.deleted = deleted
        if containing - set(deleted):
            # only a clique that held the object can have held its links: rebuild exactly those
            change.focal_changed |= containing - set(deleted)
            self.reclique(change)
        return change

    # -- helpers for handlers ----------------------------------------------------------------------
    def stored(self, object_id: str) -> Doc | None:
        return self.store.get_object(self.environment, object_id)

    def children_raw(self, owner_id: str, folder: str) -> list[Doc]:
        return [raw_of(d) for d in self.store.find_objects(self.environment, parent_id=folder_id(owner_id, folder))]

    def root(self) -> Doc:
        return environment_root(self.environment)

    def refresh_instance_ports(self, instance_id: str, change: Change, add: Doc | None = None,
                               drop: str | None = None) -> None:
        """Re-derive a stored instance from its ports (network, addresses) after one of them changed.
        Inside a batch, once at the flush, from its ports as the batch leaves them."""
        if self._pending is not None:
            self._instances_later[instance_id] = None
            return
        self._rederive_instance(instance_id, change, add, drop)

    def _rederive_instance(self, instance_id: str, change: Change, add: Doc | None = None,
                           drop: str | None = None) -> None:
        for region, raws, ports in self._instances_by_host([instance_id], add, drop):
            again = self.refresh("instance", raws, seeds={R.PORTS: ports}, region=region)
            change.upserted.extend(again.upserted)
            change.written += again.written

    def _instances_by_host(self, instance_ids: list[str], add: Doc | None = None, drop: str | None = None
                           ) -> list[tuple[str | None, list[Doc], list[Doc]]]:
        """The stored instances among ``instance_ids``, as API items grouped by (region, host) as a
        scan places them, each group with their stored ports (found through the instance-port links,
        indexed), ``add`` put in and ``drop`` left out: (region, instances, ports) per group."""
        stored = [o for o in self.store.find_objects(self.environment, ids=instance_ids) if o.get("type") == "instance"]
        if not stored:
            return []
        port_ids = [lk["target_id"] for lk in self.find_links(link_type="instance-port",
                                                              sources=[o["id"] for o in stored])]
        ports = {p["id"]: raw_of(p) for p in self.store.find_objects(self.environment, ids=port_ids)} \
            if port_ids else {}
        if add is not None:
            ports[str(add["id"])] = add
        if drop is not None:
            ports.pop(drop, None)
        by_host: dict[tuple[str, str], list[Doc]] = {}
        for instance in stored:
            raw = raw_of(instance)
            by_host.setdefault((str(instance.get("region") or ""), str(raw.get("OS-EXT-SRV-ATTR:host") or "")),
                               []).append(raw)
        return [(region or None, raws, list(ports.values())) for (region, _host), raws in by_host.items()]

    def request_scan(self, resource_types: list[str], reason: str) -> str:
        """Ask the scan manager for a sync of some types (e.g. a host the map does not know yet)."""
        from stackmap.model import Scan

        scan = Scan(environment=self.environment, resource_types=resource_types)
        self.store.submit_scan(scan.to_doc())
        return f"{reason}; requested scan {scan.id} of {', '.join(resource_types)}"


def _merged_into(read: Read) -> tuple[MergeKey, str] | None:
    """The merged listing that can answer this read, and the value the read filters it on; or None."""
    if read[0] == "show":
        res = MERGED_SHOWS.get(read[1])
        return ((res, read[3], "id"), str(read[2])) if res is not None else None
    res, region, params = read[1], read[2], read[3]
    if len(params) == 1 and (res.name, params[0][0]) in MERGED_LISTS:
        return (res, region, params[0][0]), str(params[0][1])
    return None


def _link_differs(fresh: Doc, stored: Doc) -> bool:
    """Whether writing ``fresh`` would change the stored link (the monitor's fields are not the
    finder's: they are neither compared nor overwritten)."""
    normal = loads(dumps(fresh))  # the shapes a stored document comes back in (lists, not tuples)
    for key, value in normal.items():
        if key not in MONITOR_FIELDS and stored.get(key) != value:
            return True
    return any(key not in normal and key not in MONITOR_FIELDS and key not in _STORE_ADDED for key in stored)


_STORE_ADDED = frozenset({"environment", MONITOR_STATUS, "_id"})
# What a clique walk reads from a link besides its key (``cliques._Walk.take``, ``cliques._passes``)
_WALKED = ("implicit", "attributes", "source_type", "target_type")


def _walked_alike(fresh: Doc, stored: Doc) -> bool:
    """Whether every clique walk takes ``fresh`` exactly where it took ``stored``."""
    normal = loads(dumps({k: fresh.get(k) for k in _WALKED}))
    return all(normal.get(k) == stored.get(k) for k in _WALKED)


class _NoClient:
    """Stands in for the API client when an update needs none; any use is a bug, said clearly."""

    def __getattr__(self, name: str) -> Any:
        raise StackmapError("this update needed the OpenStack API unexpectedly")
