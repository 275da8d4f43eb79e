"""Cliques: the topology graph around each focal object, walked along a clique type's link types.

A clique type says, for one focal object type, which link types to follow and in what order (an
instance: its host, its ports, their networks, ...). Constraints keep the walk on the focal object's
own side of the cloud: an instance's clique follows only links whose ``attributes.network`` is one
of the instance's networks, so a router does not drag every network it touches into the picture.

The walk reads links through a ``LinkGraph`` so one implementation serves a full scan (all links in
memory, ``MemoryGraph``) and the rebuild of a few cliques after an event (``StoreGraph``, one or two
queries per step for the whole frontier). Unlike Calipso, a step that finds nothing does not end
the walk: a later step may still connect (e.g. an instance without a floating IP still has networks).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

from stackmap.errors import ConfigError
from stackmap.model import Clique, CliqueConstraint, CliqueType
from stackmap.paths import defaults_dir
from stackmap.store.base import Doc, Store

__all__ = [
    "ANY_ENVIRONMENT",
    "LinkGraph",
    "MemoryGraph",
    "StoreGraph",
    "build_cliques",
    "constraints_by_focal_type",
    "load_clique_constraints",
    "load_clique_types",
    "priority_score",
    "seed_defaults",
    "select_clique_types",
]

CLIQUE_TYPES_FILE = "clique_types.json"
CLIQUE_CONSTRAINTS_FILE = "clique_constraints.json"
ANY_ENVIRONMENT = "ANY"

# --------------------------------------------------------------------------------------------------
# configuration

_M = TypeVar("_M", bound=BaseModel)


def _load_list(path: str | Path | None, default_name: str, model: type[_M], what: str) -> list[Doc]:
    """Read a JSON list of documents and validate each through ``model``, naming the bad entry."""
    file = Path(path) if path is not None else defaults_dir() / default_name
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{file}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if not isinstance(entries, list):
        raise ConfigError(f"{file}: expected a list of {what} objects")
    docs: list[Doc] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries, start=1):
        label = f"entry {n}" + (f" ({entry['id']})" if isinstance(entry, dict) and "id" in entry else "")
        try:
            doc = model.model_validate(entry).model_dump(mode="python", exclude_none=True, by_alias=True)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'value'}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"{file}: {what} {label} is invalid: {problems}") from None
        if doc["id"] in seen:
            raise ConfigError(f"{file}: {what} id {doc['id']!r} is given twice")
        seen.add(doc["id"])
        docs.append(doc)
    return docs


def load_clique_types(path: str | Path | None = None) -> list[Doc]:
    """Clique type documents from ``clique_types.json`` (the shipped defaults when no path)."""
    return _load_list(path, CLIQUE_TYPES_FILE, CliqueType, "clique type")


def load_clique_constraints(path: str | Path | None = None) -> list[Doc]:
    """Clique constraint documents from ``clique_constraints.json`` (the shipped defaults when no path)."""
    return _load_list(path, CLIQUE_CONSTRAINTS_FILE, CliqueConstraint, "clique constraint")


def seed_defaults(store: Store, types_path: str | Path | None = None,
                  constraints_path: str | Path | None = None) -> dict[str, int]:
    """Write the shipped clique types and constraints the store does not have yet.

    Only missing ids are written: an operator who edited ``any-instance`` keeps the edit across
    upgrades and restarts. Returns how many of each were added.
    """
    added = {"clique_types": 0, "clique_constraints": 0}
    for doc in load_clique_types(types_path):
        if store.get_clique_type(doc["id"]) is None:
            store.upsert_clique_type(doc)
            added["clique_types"] += 1
    existing = {doc.get("id") for doc in store.list_clique_constraints()}
    for doc in load_clique_constraints(constraints_path):
        if doc["id"] not in existing:
            store.upsert_clique_constraint(doc)
            added["clique_constraints"] += 1
    return added


def constraints_by_focal_type(constraint_docs: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Constraint fields per focal type, merging several documents for one type in order."""
    result: dict[str, list[str]] = {}
    for doc in constraint_docs:
        fields = result.setdefault(str(doc["focal_point_type"]), [])
        fields.extend(f for f in doc.get("constraints") or () if f not in fields)
    return result


# --------------------------------------------------------------------------------------------------
# choosing a clique type per focal type


def _fold(value: Any) -> str:
    return str(value).strip().casefold()


def _drivers(value: Any) -> set[str]:
    """Drivers as a set: the environment keeps type drivers as "vxlan,vlan", mechanism drivers as a list."""
    if value is None:
        return set()
    items = value.split(",") if isinstance(value, str) else value
    return {_fold(v) for v in items if str(v).strip()}


def priority_score(env_doc: Mapping[str, Any], clique_type: Mapping[str, Any]) -> int:
    """How well a clique type fits an environment; 0 means it does not apply.

    A type written for this environment by name wins outright (64). A generic type ("ANY" or no
    environment) earns points for each configuration feature it names and the environment has:
    distribution 32, distribution version 16, mechanism driver 8 (any of the environment's drivers,
    not only the first as Calipso did), type driver 4; ``environment_type`` only filters. Naming a
    feature the environment does not have disqualifies the type, and a type naming nothing scores 1,
    the fallback every more specific type beats.
    """
    type_env = clique_type.get("environment")
    if type_env not in (None, "", ANY_ENVIRONMENT):
        return 64 if type_env == env_doc.get("name") else 0

    wanted_env_type = clique_type.get("environment_type")
    if wanted_env_type and _fold(wanted_env_type) != _fold(env_doc.get("environment_type") or "OpenStack"):
        return 0
    score = 0
    for field, points in (("distribution", 32), ("distribution_version", 16)):
        wanted = clique_type.get(field)
        if wanted:
            if _fold(wanted) != _fold(env_doc.get(field) or ""):
                return 0
            score += points
    for field, points in (("mechanism_drivers", 8), ("type_drivers", 4)):
        wanted_set = _drivers(clique_type.get(field))
        if wanted_set:
            if not wanted_set & _drivers(env_doc.get(field)):
                return 0
            score += points
    return score or 1


def select_clique_types(
    env_doc: Mapping[str, Any], clique_types: Iterable[Mapping[str, Any]]
) -> dict[str, Doc]:
    """The best-scoring clique type per focal type for this environment (ties: lowest id wins,
    so the choice does not depend on the order the store returns types in)."""
    best: dict[str, tuple[int, str, Doc]] = {}
    for ctype in clique_types:
        score = priority_score(env_doc, ctype)
        if score <= 0:
            continue
        focal = str(ctype["focal_point_type"])
        type_id = str(ctype.get("id") or "")
        current = best.get(focal)
        if current is None or score > current[0] or (score == current[0] and type_id < current[1]):
            best[focal] = (score, type_id, dict(ctype))
    return {focal: doc for focal, (_, _, doc) in best.items()}


# --------------------------------------------------------------------------------------------------
# link graphs


class LinkGraph(Protocol):
    """Read access to links for the walk."""

    def links(self, link_type: str, sources: set[str], targets: set[str]) -> list[Doc]:
        """Links of ``link_type`` whose source is in ``sources`` or whose target is in ``targets``."""
        ...


class MemoryGraph:
    """Links indexed in memory once, for building every clique of an environment after a scan."""

    def __init__(self, links: Iterable[Mapping[str, Any]]) -> None:
        self._by_source: dict[tuple[str, str], list[Doc]] = defaultdict(list)
        self._by_target: dict[tuple[str, str], list[Doc]] = defaultdict(list)
        for link in links:
            doc = link if isinstance(link, dict) else dict(link)
            self._by_source[(doc["link_type"], doc["source_id"])].append(doc)
            self._by_target[(doc["link_type"], doc["target_id"])].append(doc)

    def links(self, link_type: str, sources: set[str], targets: set[str]) -> list[Doc]:
        found: dict[str, Doc] = {}
        by_source, by_target = self._by_source, self._by_target
        for node in sources:
            for link in by_source.get((link_type, node), ()):
                found[link["id"]] = link
        for node in targets:
            for link in by_target.get((link_type, node), ()):
                found[link["id"]] = link
        return list(found.values())


class StoreGraph:
    """Links read from the store, for rebuilding a few cliques after an event: one query per
    direction per step for the whole frontier, never one per node, and (``reads_per_step``) the
    cliques of one type walked together, so a step is one query for all of them."""

    reads_per_step = True

    def __init__(self, store: Store, environment: str) -> None:
        self.store = store
        self.environment = environment

    def links(self, link_type: str, sources: set[str], targets: set[str]) -> list[Doc]:
        found: dict[str, Doc] = {}
        if sources:
            for link in self.store.find_links(self.environment, link_types=[link_type], sources=sorted(sources)):
                found[link["id"]] = link
        if targets:
            for link in self.store.find_links(self.environment, link_types=[link_type], targets=sorted(targets)):
                found[link["id"]] = link
        return list(found.values())


# --------------------------------------------------------------------------------------------------
# the walk

WALK_TOGETHER_MAX = 500  # focal objects walked in lockstep: bounds one step's query and its answer


@functools.cache
def _norm_type(object_type: str) -> str:
    """Compare object types the way link type names spell them: ``floatingip-port`` joins a
    ``floating_ip`` to a ``port``, so underscores are not significant."""
    return object_type.replace("_", "")


@functools.cache
def _ends(link_type: str) -> tuple[str, str]:
    source, _, target = link_type.partition("-")
    return _norm_type(source), _norm_type(target)


@functools.cache
def _reversed(link_type: str) -> str:
    source, _, target = link_type.partition("-")
    return f"{target}-{source}"


def _followed(step: str, directed: bool) -> tuple[str, ...]:
    """The stored link types a step reads: its own, and when directed also the reversed name
    (a directed ``instance-host`` step walks ``host-instance`` links backwards)."""
    return (step, _reversed(step)) if directed and _reversed(step) != step else (step,)


def _step_links(step: str, directed: bool, by_type: Mapping[str, set[str]], graph: LinkGraph) -> list[Doc]:
    """The links one step may follow, before constraints.

    Undirected (the default): links of the step's type touching a node already reached at either
    end. Directed: the step is named in the walk's direction, so ``vnic-vedge`` leaves only from the
    vNICs reached so far, along ``vnic-vedge`` links forwards or ``vedge-vnic`` links backwards (the
    way Calipso's seed named steps like ``network-host_pnic``). Directed walks matter around hubs:
    an undirected ``host_pnic-network`` step taken once the instance's network is known would pull
    in the pNIC of every host on that network, and ``vconnector-vedge`` once the host's vEdge is
    known every bridge of the host.
    """
    source_type, target_type = _ends(step)
    if directed:
        sources = by_type.get(source_type, set())
        if not sources:
            return []
        found = graph.links(step, sources, set())
        for reverse in _followed(step, directed)[1:]:
            found += graph.links(reverse, set(), sources)
        return found
    sources, targets = by_type.get(source_type, set()), by_type.get(target_type, set())
    if not sources and not targets:
        return []
    return graph.links(step, sources, targets)


def _allowed(value: Any) -> set[Hashable]:
    if isinstance(value, list | tuple | set | frozenset):
        return {v for v in value if isinstance(v, Hashable)}
    return {value} if isinstance(value, Hashable) else set()


def _passes(link: Mapping[str, Any], limits: Sequence[tuple[str, set[Hashable]]]) -> bool:
    """A link passes unless it carries a constrained attribute with none of the allowed values."""
    if not limits:
        return True
    attributes = link.get("attributes")
    if not attributes:
        return True
    for field, allowed in limits:
        value = attributes.get(field)
        if value is None:
            continue
        if isinstance(value, list | tuple | set | frozenset):
            if not any(isinstance(v, Hashable) and v in allowed for v in value):
                return False
        elif not isinstance(value, Hashable) or value not in allowed:
            return False
    return True


class _Walk:
    """One focal object's walk in progress: nodes in discovery order (focal first), the nodes
    reached so far by type, and the links taken."""

    __slots__ = ("by_type", "limits", "links", "nodes")

    def __init__(self, focal: Mapping[str, Any], limits: Sequence[tuple[str, set[Hashable]]]) -> None:
        focal_id = str(focal["id"])
        self.nodes: dict[str, None] = {focal_id: None}
        self.by_type: dict[str, set[str]] = defaultdict(set)
        self.by_type[_norm_type(str(focal["type"]))].add(focal_id)
        self.links: dict[str, Doc] = {}
        self.limits = limits

    def take(self, found: list[Doc], use_implicit: bool) -> None:
        """Follow the links one step found (all computed before any is taken, as a step is)."""
        if len(found) > 1:
            found.sort(key=lambda link: link["id"])  # same clique whatever order the graph returns
        nodes, links, by_type = self.nodes, self.links, self.by_type
        for link in found:
            lid = link["id"]
            if lid in links or (link.get("implicit") and not use_implicit) or not _passes(link, self.limits):
                continue
            links[lid] = link
            for end, end_type in ((link["source_id"], link.get("source_type")),
                                  (link["target_id"], link.get("target_type"))):
                if end not in nodes:
                    nodes[end] = None
                    by_type[_norm_type(end_type) if end_type else
                            _ends(link["link_type"])[0 if end == link["source_id"] else 1]].add(end)


def _walk_alone(walk: _Walk, clique_type: Mapping[str, Any], graph: LinkGraph) -> None:
    """Walk one focal object's steps in order, reading each step's links for its frontier."""
    use_implicit = bool(clique_type.get("use_implicit_links"))
    directed = bool(clique_type.get("directed"))
    for link_type in clique_type["link_types"]:
        found = _step_links(link_type, directed, walk.by_type, graph)
        if found:  # else nothing to follow from *yet*; later steps still run
            walk.take(found, use_implicit)


def _walk_together(walks: Sequence[_Walk], clique_type: Mapping[str, Any], graph: LinkGraph) -> None:
    """Walk several focal objects of one clique type step by step, reading each step's links once
    for all of them (a store query per step, not per step and clique), then giving each walk
    exactly the links its own frontier would have read: each ends as ``_walk_alone`` would leave it."""
    use_implicit = bool(clique_type.get("use_implicit_links"))
    directed = bool(clique_type.get("directed"))
    for step in clique_type["link_types"]:
        source_type, target_type = _ends(step)
        union: dict[str, set[str]] = defaultdict(set)
        for walk in walks:
            for node_type in (source_type, target_type):
                union[node_type] |= walk.by_type.get(node_type, set())
        found = _step_links(step, directed, union, graph)
        if not found:
            continue
        by_source: dict[tuple[str, str], list[Doc]] = defaultdict(list)
        by_target: dict[tuple[str, str], list[Doc]] = defaultdict(list)
        for link in found:
            by_source[(link["link_type"], link["source_id"])].append(link)
            by_target[(link["link_type"], link["target_id"])].append(link)
        reverses = _followed(step, directed)[1:]
        for walk in walks:
            mine: dict[str, Doc] = {}
            for node in walk.by_type.get(source_type, ()):
                for link in by_source.get((step, node), ()):
                    mine[link["id"]] = link
                for reverse in reverses:  # directed: the reversed type, backwards from the same nodes
                    for link in by_target.get((reverse, node), ()):
                        mine[link["id"]] = link
            if not directed:
                for node in walk.by_type.get(target_type, ()):
                    for link in by_target.get((step, node), ()):
                        mine[link["id"]] = link
            if mine:
                walk.take(list(mine.values()), use_implicit)


def build_cliques(
    environment: str,
    focal_objects: Iterable[Mapping[str, Any]],
    chosen: Mapping[str, Mapping[str, Any]],
    constraints: Mapping[str, Sequence[str]],
    graph: LinkGraph,
) -> list[Doc]:
    """One clique document per focal object whose type has a chosen clique type.

    ``chosen`` comes from ``select_clique_types``, ``constraints`` from ``constraints_by_focal_type``.
    The focal object's value of each constraint field is kept in the clique (so a reader sees why a
    link was left out); a focal object without that field is not constrained on it.
    """
    together = bool(getattr(graph, "reads_per_step", False))
    planned: list[tuple[Mapping[str, Any], str, Mapping[str, Any], dict[str, Any], _Walk]] = []
    for focal in focal_objects:
        focal_type = str(focal.get("type") or "")
        clique_type = chosen.get(focal_type)
        if clique_type is None:
            continue
        recorded: dict[str, Any] = {}
        limits: list[tuple[str, set[Hashable]]] = []
        for field in constraints.get(focal_type, ()):
            value = focal.get(field)
            if value is None:
                continue
            recorded[field] = list(value) if isinstance(value, list | tuple | set | frozenset) else value
            limits.append((field, _allowed(value)))
        walk = _Walk(focal, limits)
        planned.append((focal, focal_type, clique_type, recorded, walk))
        if not together:
            _walk_alone(walk, clique_type, graph)
    if together:
        by_type: dict[str, list[_Walk]] = defaultdict(list)
        types: dict[str, Mapping[str, Any]] = {}
        for _, _, clique_type, _, walk in planned:
            by_type[str(clique_type["id"])].append(walk)
            types[str(clique_type["id"])] = clique_type
        for type_id, walks in by_type.items():
            for at in range(0, len(walks), WALK_TOGETHER_MAX):
                _walk_together(walks[at:at + WALK_TOGETHER_MAX], types[type_id], graph)
    cliques: list[Doc] = []
    for focal, focal_type, clique_type, recorded, walk in planned:
        nodes, links = list(walk.nodes), walk.links
        doc = Clique(
            environment=environment,
            focal_point=str(focal["id"]),
            focal_point_type=focal_type,
            clique_type=str(clique_type["id"]),
            links=list(links),
            nodes=nodes,
            constraints=recorded,
        ).to_doc()
        # Link documents are attached after validation, and shared rather than copied: they are
        # already valid links, and validating or copying ~100k of them would dominate a full rebuild.
        # Callers treat clique documents as read-only (the store serializes them).
        doc["links_detailed"] = list(links.values())
        cliques.append(doc)
    return cliques


# --------------------------------------------------------------------------------------------------
# which stored cliques a change of links can alter


def clique_affected(
    clique: Mapping[str, Any],
    clique_type: Mapping[str, Any],
    added: Iterable[Mapping[str, Any]],
    removed: Iterable[str],
) -> bool:
    """Whether rebuilding ``clique`` could give anything else after these link changes.

    A clique is a function of its focal object and the links its walk reaches. A link that went away
    (or whose content changed: ``removed`` holds its id too) matters only to a clique that included
    it. A new link matters only if, at a step that follows its type, one of its ends was already in
    the walk's frontier. The frontier at that step is at most the focal object plus the ends of the
    clique's links whose type is followed at an earlier step, so an end outside that set proves the
    clique unaffected; this is what keeps a new port on a busy network from rebuilding the clique of
    every other instance on that network. A directed step follows its reversed link type too, so a
    new ``host-instance`` link is weighed at an ``instance-host`` step.
    """
    own = set(clique.get("links") or ())
    if own.intersection(removed):
        return True
    steps = list(clique_type.get("link_types") or ())
    directed = bool(clique_type.get("directed"))
    first: dict[str, int] = {}
    last_step: dict[str, int] = {}
    for index, step in enumerate(steps):
        for link_type in _followed(step, directed):
            first.setdefault(link_type, index)
            last_step[link_type] = index
    reached: dict[int, set[str]] | None = None
    for link in added:
        link_type = str(link["link_type"])
        if link_type not in first:
            continue
        last = last_step[link_type]
        if reached is None:
            reached = defaultdict(set)
            for known in clique.get("links_detailed") or ():
                at = first.get(str(known.get("link_type")))
                if at is not None:
                    reached[at].update((str(known["source_id"]), str(known["target_id"])))
        frontier = {str(clique.get("focal_point"))}
        for index, ends in reached.items():
            if index < last:
                frontier |= ends
        if str(link["source_id"]) in frontier or str(link["target_id"]) in frontier:
            return True
    return False
