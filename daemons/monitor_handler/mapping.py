"""Which object or link a check result is about.

The primary mapping is structured: the check definition carries the environment, the object type
and id (or the link type, source and target) as metadata, so ids may contain any character.
Calipso's check names (``<type>_<id>``, ``link_<type>_<src>_<dst>``) are still understood, but only
where they are unambiguous: every way of splitting the name is tried against the map, and the name
is accepted only when exactly one split names something that exists. That is how the legacy names
stay usable without re-creating Calipso's bug of ids that break on ``_``.

Every answer is cached, because at thousands of results per second the map must not be asked again
for each one: hits are kept until the applier finds the target gone (``forget``); misses are kept a
short time so a flood of results for an unknown object costs one lookup, while an object added by a
scan becomes mappable soon after.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from daemons.monitor_handler.results import CheckResult
from stackmap.store import Store

UNMAPPED_REASONS = (
    "no_environment", "unknown_environment", "unknown_object", "unknown_link", "type_mismatch",
    "ambiguous", "incomplete_metadata", "unparsable_name",
)

# Calipso encoded ':' and '/' inside ids in check names as ---..<ord>..--- (monitoring_config_templates).
_CALIPSO_ESCAPE = re.compile(r"---\.\.(\d{1,3})\.\.---")


def decode_calipso_name(text: str) -> str:
    return _CALIPSO_ESCAPE.sub(lambda m: chr(int(m.group(1))), text)


@dataclass(frozen=True, slots=True)
class ObjectTarget:
    environment: str
    object_id: str
    object_type: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("object", self.environment, self.object_id)

    @property
    def display(self) -> str:
        return f"{self.object_type} {self.object_id}"


@dataclass(frozen=True, slots=True)
class LinkTarget:
    environment: str
    link_type: str
    source_id: str
    target_id: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("link", self.environment, self.link_type, self.source_id, self.target_id)

    @property
    def link_key(self) -> tuple[str, str, str]:
        return (self.link_type, self.source_id, self.target_id)

    @property
    def display(self) -> str:
        return f"link {self.link_type} {self.source_id} -> {self.target_id}"


Target = ObjectTarget | LinkTarget


class Unmapped(Exception):
    """A well-formed result that names nothing on the map; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class CheckMapper:
    """Resolves results to targets, with the caches described in the module docstring.

    ``environments`` restricts which environments results may write to (those this handler's broker
    serves); None accepts any environment the store knows. ``default_environment`` is used for
    results that do not name one (a broker serving exactly one environment).
    """

    def __init__(self, store: Store, *, environments: Collection[str] | None = None,
                 default_environment: str | None = None, negative_ttl_s: float = 30.0,
                 max_cached: int = 200_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.environments = frozenset(environments) if environments is not None else None
        self.default_environment = default_environment
        self.negative_ttl_s = negative_ttl_s
        self.max_cached = max_cached
        self._clock = clock
        self._hits: dict[tuple[Any, ...], Target] = {}
        self._misses: dict[tuple[Any, ...], tuple[float, Unmapped]] = {}
        self._known_envs: dict[str, tuple[float, bool]] = {}
        self._types: dict[str, tuple[float, list[str]]] = {}

    # -- public ------------------------------------------------------------------------------------
    def _cache_key(self, result: CheckResult) -> tuple[Any, ...]:
        meta = result.metadata
        # insertion order, not sorted: the same sender lays its JSON out the same way every time, and
        # another order only costs one more cache entry for the same target
        return (result.environment or self.default_environment, result.check_name,
                tuple(meta.items()) if meta else ())

    def resolve(self, result: CheckResult) -> Target:
        environment = result.environment or self.default_environment
        cache_key = self._cache_key(result)
        hit = self._hits.get(cache_key)
        if hit is not None:
            return hit
        miss = self._misses.get(cache_key)
        now = self._clock()
        if miss is not None:
            if miss[0] > now:
                raise miss[1]
            del self._misses[cache_key]
        try:
            target = self._resolve(environment, result)
        except Unmapped as exc:
            if len(self._misses) >= self.max_cached:
                self._misses.clear()
            self._misses[cache_key] = (now + self.negative_ttl_s, exc)
            raise
        if len(self._hits) >= self.max_cached:
            self._hits.clear()
        self._hits[cache_key] = target
        return target

    def forget_result(self, result: CheckResult) -> Target | None:
        """Drop the cached answer for ``result``'s check (its target was found gone); returns it."""
        target = self._hits.pop(self._cache_key(result), None)
        if target is not None:
            self.forget(target)
        return target

    def forget(self, target: Target) -> None:
        """The target disappeared from the map (deleted by a scan): stop answering with it."""
        for key in [k for k, v in self._hits.items() if v == target]:
            del self._hits[key]

    def unknown_count(self) -> int:
        """Distinct results currently known to name nothing (for the unknown-objects gauge)."""
        now = self._clock()
        return sum(1 for expires, _ in self._misses.values() if expires > now)

    # -- resolution --------------------------------------------------------------------------------
    def _resolve(self, environment: str | None, result: CheckResult) -> Target:
        if environment is None:
            raise Unmapped("no_environment", result.check_name)
        if not self._environment_ok(environment):
            raise Unmapped("unknown_environment", environment)
        meta = result.metadata
        if "link_type" in meta or "source_id" in meta or "target_id" in meta:
            return self._structured_link(environment, meta)
        if "object_id" in meta:
            return self._structured_object(environment, meta)
        if "object_type" in meta:
            raise Unmapped("incomplete_metadata", "object_type without object_id")
        return self._legacy(environment, decode_calipso_name(result.check_name))

    def _environment_ok(self, environment: str) -> bool:
        if self.environments is not None and environment not in self.environments:
            return False
        now = self._clock()
        cached = self._known_envs.get(environment)
        if cached is not None and cached[0] > now:
            return cached[1]
        known = self.store.get_environment(environment) is not None
        self._known_envs[environment] = (now + self.negative_ttl_s, known)
        return known

    def _structured_object(self, environment: str, meta: Any) -> ObjectTarget:
        object_id = meta["object_id"]
        doc = self.store.get_object(environment, object_id)
        if doc is None:
            raise Unmapped("unknown_object", object_id)
        wanted = meta.get("object_type")
        if wanted is not None and doc.get("type") != wanted:
            raise Unmapped("type_mismatch", f"{object_id} is a {doc.get('type')}, not a {wanted}")
        return ObjectTarget(environment, object_id, str(doc.get("type", "")))

    def _structured_link(self, environment: str, meta: Any) -> LinkTarget:
        missing = [k for k in ("link_type", "source_id", "target_id") if k not in meta]
        if missing:
            raise Unmapped("incomplete_metadata", "link metadata lacks " + ", ".join(missing))
        target = LinkTarget(environment, meta["link_type"], meta["source_id"], meta["target_id"])
        if not self.store.find_links(environment, link_type=target.link_type, source_id=target.source_id,
                                     target_id=target.target_id):
            raise Unmapped("unknown_link", target.display)
        return target

    def _legacy(self, environment: str, name: str) -> Target:
        if name.startswith("link_"):
            return self._legacy_link(environment, name[len("link_"):])
        candidates: list[ObjectTarget] = []
        for otype in self._object_types(environment):  # longest first, as Calipso matched them
            prefix = otype + "_"
            if not name.startswith(prefix) or len(name) == len(prefix):
                continue
            object_id = name[len(prefix):]
            doc = self.store.get_object(environment, object_id)
            if doc is not None and doc.get("type") == otype:
                candidates.append(ObjectTarget(environment, object_id, otype))
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise Unmapped("ambiguous", name)
        if "_" not in name:
            raise Unmapped("unparsable_name", name)
        raise Unmapped("unknown_object", name)

    def _legacy_link(self, environment: str, rest: str) -> LinkTarget:
        found: list[LinkTarget] = []
        cuts = [i for i, ch in enumerate(rest) if ch == "_"]
        for i in cuts:
            link_type = rest[:i]
            if "-" not in link_type:
                continue  # link types are '<source type>-<target type>'
            ends = rest[i + 1:]
            for j, ch in enumerate(ends):
                if ch != "_" or j == 0 or j == len(ends) - 1:
                    continue
                target = LinkTarget(environment, link_type, ends[:j], ends[j + 1:])
                if self.store.find_links(environment, link_type=link_type, source_id=target.source_id,
                                         target_id=target.target_id):
                    found.append(target)
        if len(found) == 1:
            return found[0]
        if found:
            raise Unmapped("ambiguous", "link_" + rest)
        raise Unmapped("unknown_link" if cuts else "unparsable_name", "link_" + rest)

    def _object_types(self, environment: str) -> list[str]:
        now = self._clock()
        cached = self._types.get(environment)
        if cached is not None and cached[0] > now:
            return cached[1]
        types = sorted(self.store.count_objects(environment), key=len, reverse=True)
        self._types[environment] = (now + self.negative_ttl_s, types)
        return types
