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
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from stackmap.discovery.api import resources as R
from stackmap.discovery.api.client import ApiError, OpenStackClient
from stackmap.discovery.api.fetchers import RESERVED, Doc, FetchContext, folder_id, project_of
from stackmap.discovery.api.resources import Resource, ResourceCache
from stackmap.discovery.api.transport import CountingAdapter
from stackmap.discovery.cliques import StoreGraph, build_cliques, constraints_by_focal_type, select_clique_types
from stackmap.discovery.engine import Engine, environment_root
from stackmap.discovery.links import LinkFinder, StoreLookup, find_links, load_link_finders
from stackmap.discovery.scanners import ScannersConfig, load_scanners
from stackmap.environments import load_environment
from stackmap.errors import StackmapError
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.store import Store

TOMBSTONE_SECONDS = 600.0

# Where a scan files each kind of object: (the field naming its owner, the owner's folder name).
PLACEMENT: dict[str, tuple[str, str]] = {
    "instance": ("host", "instances"),
    "network": ("project_id", "networks"),
    "subnet": ("network_id", "subnets"),
    "port": ("network_id", "ports"),
    "router": ("project_id", "routers"),
    "floating_ip": ("project_id", "floating_ips"),
    "security_group": ("project_id", "security_groups"),
    "volume": ("project_id", "volumes"),
    "snapshot": ("volume_id", "snapshots"),
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
    deleted: list[str] = field(default_factory=list)
    renamed: list[str] = field(default_factory=list)  # objects whose name_path changed: labels and paths follow
    touched: set[str] = field(default_factory=set)  # ends of links added or removed: their cliques may change
    written: int = 0
    links_written: int = 0
    links_deleted: int = 0
    cliques_rebuilt: int = 0

    def describe(self) -> str:
        return (f"{len(self.upserted)} object(s) refreshed ({self.written} written), {len(self.deleted)} deleted, "
                f"links +{self.links_written}/-{self.links_deleted}, {self.cliques_rebuilt} clique(s) rebuilt")


class MissingParent(StackmapError):
    """The object's owner is not in the map yet (an event arrived before the one creating it)."""


class MapUpdater:
    """Applies the effect of events on one environment's map; one per listener process."""

    def __init__(self, store: Store, box: SecretBox, environment: str, *, adapter: CountingAdapter | None = None,
                 scanners: ScannersConfig | None = None, trust_payloads: bool = False) -> None:
        self.store = store
        self.trust_payloads = trust_payloads
        self.box = box
        self.environment = environment
        self.env: EnvironmentConfig = load_environment(store, environment)
        self.scanners = scanners or load_scanners()
        self.finders: list[LinkFinder] = load_link_finders()
        self._adapter = adapter
        self._client: OpenStackClient | None = None
        self._tombstones: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clique_setup: tuple[dict[str, Doc], dict[str, list[str]]] | None = None
        self._held: dict[str, set[str]] = {}
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

            self._client = OpenStackClient(section, self.box, adapter=self._adapter or make_adapter(self.env))
        return self._client

    def region(self, hint: Doc | None = None) -> str:
        if hint and hint.get("region"):
            return str(hint["region"])
        section = self.env.section("OpenStack")
        if section is not None and section.region:
            return str(section.region)
        regions = self.store.find_objects(self.environment, type="region", limit=1)
        return regions[0]["id"] if regions else "RegionOne"

    def show(self, kind: str, object_id: str, region: str | None = None) -> Doc | None:
        """The current API representation of one object, or None when the API says it is gone."""
        service, path, key = API_SHOW[kind]
        try:
            data = self.client.get_json(service, path.format(id=object_id), region or self.region())
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        item = data.get(key) if isinstance(data, dict) else None
        return item if isinstance(item, dict) else None

    def list_filtered(self, res: Resource, region: str, **params: str) -> list[Doc]:
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

    def stale(self, kind: str, item: Doc) -> bool:
        """Whether a payload is older than what the map holds (neutron revision numbers)."""
        revision = item.get("revision_number")
        if not isinstance(revision, int):
            return False
        stored = self.store.get_object(self.environment, str(item.get("id")))
        return stored is not None and isinstance(stored.get("revision_number"), int) and \
            stored["revision_number"] > revision

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
        for parent_id, ids in by_parent.items():
            parent = self.store.get_object(self.environment, parent_id)
            if parent is None:
                raise MissingParent(f"{kind} {', '.join(ids)}: its parent {parent_id} is not in the map yet")
            result = engine.walk([parent], scanner, only_ids=set(ids))
            placed_ids = [o["id"] for o in result.objects]
            before = {o["id"]: o for o in self.store.find_objects(self.environment, ids=placed_ids)}
            change.written += self.store.upsert_objects(self.environment, result.objects)
            change.upserted.extend(result.objects)
            for obj in result.objects:
                old = before.get(obj["id"])
                if old is not None and old.get("name_path") != obj["name_path"] and obj["id"] in ids:
                    change.renamed.append(obj["id"])
                    change.written += self._rename_descendants(old, obj)
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
        ctx = FetchContext(self.environment, cache, self.env.to_doc())
        return Engine(self.scanners, ctx), cache

    # -- links and cliques -------------------------------------------------------------------------
    def relink(self, change: Change, extra_holders: Iterable[Doc] = ()) -> None:
        """Recompute the links held by the changed objects; drop the ones they no longer hold."""
        holders = {h["id"]: h for h in [*change.upserted, *extra_holders]}
        if change.renamed:
            # link labels carry both ends' names: the other ends of a renamed object's links relink too
            ends = {e for lk in self.store.find_links(self.environment, touching=change.renamed)
                    for e in (lk["source_id"], lk["target_id"])} - set(holders)
            if ends:
                holders.update({o["id"]: o for o in self.store.find_objects(self.environment, ids=ends)})
        if not holders:
            return
        lookup = StoreLookup(self.store, self.environment)
        fresh = find_links(self.environment, list(holders.values()), lookup, self.finders)
        change.links_written += self.store.upsert_links(self.environment, fresh)
        fresh_keys = {(lk["link_type"], lk["source_id"], lk["target_id"]) for lk in fresh}
        change.touched |= {end for key in fresh_keys for end in key[1:]}
        held_types = {t for h in holders.values() for t in self._held.get(h["type"], ())}
        if held_types:
            current = self.store.find_links(self.environment, touching=list(holders), link_types=held_types)
            stale = {(lk["link_type"], lk["source_id"], lk["target_id"]) for lk in current
                     if self._held_by(lk, holders) and
                     (lk["link_type"], lk["source_id"], lk["target_id"]) not in fresh_keys}
            if stale:
                change.links_deleted += self.store.delete_links(self.environment, stale)
                change.touched |= {end for key in stale for end in key[1:]}

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
            chosen = select_clique_types(self.env.to_doc(), self.store.list_clique_types(self.environment))
            constraints = constraints_by_focal_type(self.store.list_clique_constraints())
            self._clique_setup = (chosen, constraints)
        return self._clique_setup

    def reclique(self, change: Change, touched: Iterable[str] = ()) -> None:
        """Rebuild only the cliques that contain a changed object, plus changed focal objects' own."""
        chosen, constraints = self._cliques()
        ids = {o["id"] for o in change.upserted} | set(touched) | change.touched
        if not ids:
            return
        focal_ids = {c["focal_point"] for c in self.store.find_cliques(self.environment, containing=list(ids))}
        focal_ids |= {o["id"] for o in change.upserted if o["type"] in chosen}
        focal_ids -= set(change.deleted)
        focal = self.store.find_objects(self.environment, ids=focal_ids) if focal_ids else []
        cliques = build_cliques(self.environment, focal, chosen, constraints, StoreGraph(self.store, self.environment))
        gone = focal_ids - {c["focal_point"] for c in cliques}
        self.store.replace_cliques(self.environment, cliques, focal_points=focal_ids | gone)
        change.cliques_rebuilt += len(cliques)

    # -- deletes -----------------------------------------------------------------------------------
    def remove(self, object_id: str) -> Change:
        """Delete an object with its subtree, links and own clique; rebuild the cliques it was in."""
        change = Change()
        self._bury([object_id])
        containing = {c["focal_point"] for c in self.store.find_cliques(self.environment, containing=[object_id])}
        neighbours = {e for lk in self.store.find_links(self.environment, touching=[object_id])
                      for e in (lk["source_id"], lk["target_id"])} - {object_id}
        deleted = self.store.delete_subtree(self.environment, object_id)
        self._bury(deleted)
        change.deleted = deleted
        if containing - set(deleted):
            self.reclique(change, touched=(containing - set(deleted)) | neighbours)
        return change

    # -- helpers for handlers ----------------------------------------------------------------------
    def stored(self, object_id: str) -> Doc | None:
        return self.store.get_object(self.environment, object_id)

    def children_raw(self, owner_id: str, folder: str) -> list[Doc]:
        return [raw_of(d) for d in self.store.find_objects(self.environment, parent_id=folder_id(owner_id, folder))]

    def root(self) -> Doc:
        return environment_root(self.environment)

    def instance_ports(self, instance_id: str) -> list[Doc]:
        """The stored ports of an instance, found through its instance-port links (indexed)."""
        ids = [lk["target_id"] for lk in self.store.find_links(self.environment, link_type="instance-port",
                                                                source_id=instance_id)]
        return self.store.find_objects(self.environment, ids=ids) if ids else []

    def refresh_instance_ports(self, instance_id: str, change: Change, add: Doc | None = None,
                               drop: str | None = None) -> None:
        """Re-derive a stored instance from its ports (network, addresses) after one of them changed."""
        stored = self.stored(instance_id)
        if stored is None or stored.get("type") != "instance":
            return
        ports = {p["id"]: raw_of(p) for p in self.instance_ports(instance_id)}
        if add is not None:
            ports[str(add["id"])] = add
        if drop is not None:
            ports.pop(drop, None)
        again = self.refresh("instance", [raw_of(stored)], seeds={R.PORTS: list(ports.values())},
                             region=stored.get("region"))
        change.upserted.extend(again.upserted)
        change.written += again.written

    def request_scan(self, resource_types: list[str], reason: str) -> str:
        """Ask the scan manager for a sync of some types (e.g. a host the map does not know yet)."""
        from stackmap.model import Scan

        scan = Scan(environment=self.environment, resource_types=resource_types)
        self.store.submit_scan(scan.to_doc())
        return f"{reason}; requested scan {scan.id} of {', '.join(resource_types)}"


class _NoClient:
    """Stands in for the API client when an update needs none; any use is a bug, said clearly."""

    def __getattr__(self, name: str) -> Any:
        raise StackmapError("this update needed the OpenStack API unexpectedly")
