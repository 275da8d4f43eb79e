"""The Store port: the operations the domain needs, in documents (plain dicts).

Two adapters implement it (``sqlite.py``, the embedded default; ``mongo.py``, production) and one
contract suite (``tests/contract``) holds both to the same behaviour. The port deliberately offers
domain operations, not a query language, so each adapter can make each one fast and atomic.

Conventions every adapter keeps:
- documents go in and come out as dicts with the Calipso field names; datetimes are timezone-aware UTC;
- an environment's objects are keyed by ``(environment, id)``, links by
  ``(environment, link_type, source_id, target_id)``, cliques by ``(environment, focal_point)``;
- ``upsert_*`` writes only what changed (an object's ``last_scanned`` alone is not a change), and
  returns how many documents it wrote, so an unchanged rescan writes nothing;
- removing objects also removes the links that touch them and the cliques focused on them;
- the monitoring fields (``MONITOR_FIELDS``) belong to the monitor handler: an upsert from a scan or
  an event neither removes nor compares them, so a rescan keeps every object's check status. The
  ``status`` label is shared with the OpenStack APIs (a port's or an instance's own status): where the
  API gives one, the upserted value is the document's ``status``; where it does not (vEdges, pNICs,
  vServices, links...), the monitor's label is kept across rescans like the other fields.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

Doc = dict[str, Any]
LinkKey = tuple[str, str, str]  # (link_type, source_id, target_id)


def link_key(link: Mapping[str, Any]) -> LinkKey:
    """What identifies a link document: its type and its two ends."""
    return (str(link["link_type"]), str(link["source_id"]), str(link["target_id"]))


MONITOR_FIELDS = frozenset({"status_value", "status_text", "status_timestamp", "status_last_seen"})
MONITOR_STATUS = "status"  # the label, shared with API statuses (see the module docstring)
MONITOR_LABELS = ("OK", "Warning", "Critical", "Unknown")  # never an OpenStack API status


class Store(abc.ABC):
    """Abstract store; see the module docstring for the conventions."""

    # Whether clique documents hold copies of their links (Calipso's ``links_detailed``) that must be
    # rewritten when a link changes. A store that attaches them when a clique is read has none.
    keeps_link_copies: bool = True

    url: str

    # -- lifecycle ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data lives, for ``stackmap info`` (never includes credentials)."""

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        """Make the writes inside commit together, or not at all when the block raises; yields
        whether that holds. Nested blocks are savepoints: an inner failure undoes only the inner
        writes. An adapter that cannot (this default; MongoDB without a replica set) yields False
        and every write commits on its own, as outside a block: callers that rely on atomicity (the
        event handlers skip relinking an object a retried event finds unchanged) must check."""
        yield False

    # -- environments_config -----------------------------------------------------------------------
    @abc.abstractmethod
    def add_environment(self, doc: Mapping[str, Any]) -> None:
        """Insert a new environment; DuplicateError if the name exists."""

    @abc.abstractmethod
    def replace_environment(self, doc: Mapping[str, Any]) -> None:
        """Replace an existing environment document whole; NotFound if it does not exist."""

    @abc.abstractmethod
    def update_environment(self, name: str, changes: Mapping[str, Any]) -> bool:
        """Set top-level fields of an environment; False if it does not exist."""

    @abc.abstractmethod
    def get_environment(self, name: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_environments(self) -> list[Doc]: ...

    @abc.abstractmethod
    def remove_environment(self, name: str) -> bool:
        """Remove an environment and every document that belongs to it; False if unknown."""

    # -- inventory ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_objects(self, environment: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Insert or update objects by (environment, id); returns how many were written."""

    @abc.abstractmethod
    def get_object(self, environment: str, object_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def find_objects(
        self,
        environment: str,
        *,
        type: str | None = None,
        parent_id: str | None = None,
        ids: Iterable[str] | None = None,
        under: str | None = None,
        hosts: Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[Doc]:
        """Objects matching every given filter, ordered by id_path; ``under`` is an object id: that
        object and its whole subtree (none if the object does not exist); ``hosts``: objects whose
        ``host`` field is one of these (a few hosts' pNICs or oteps, through an index, where reading
        every one of a large cloud to pick them would cost as much as the cloud is large)."""

    @abc.abstractmethod
    def update_object(self, environment: str, object_id: str, changes: Mapping[str, Any]) -> bool:
        """Set top-level fields of one object (status from monitoring, a rename...); False if unknown."""

    def update_objects(self, environment: str, changes: Mapping[str, Mapping[str, Any]]) -> set[str]:
        """``update_object`` for many objects at once (id -> fields), as one write where the backend can:
        the monitor handler commits a whole batch of status changes this way. Returns the ids found."""
        return {oid for oid, fields in changes.items() if self.update_object(environment, oid, fields)}

    @abc.abstractmethod
    def object_ids(self, environment: str, types: Iterable[str] | None = None) -> set[str]:
        """Ids of the environment's objects (of the given types), for finding what a scan did not see."""

    @abc.abstractmethod
    def count_objects(self, environment: str) -> dict[str, int]:
        """Object count by type."""

    @abc.abstractmethod
    def delete_objects(self, environment: str, ids: Iterable[str]) -> int:
        """Delete objects by id, with their links and the cliques focused on them; returns objects deleted."""

    @abc.abstractmethod
    def delete_subtree(self, environment: str, object_id: str) -> list[str]:
        """Delete an object and every descendant (by id_path); returns the ids deleted."""

    # -- links -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_links(self, environment: str, docs: Iterable[Mapping[str, Any]]) -> int:
        """Insert or update links by their key; returns how many were written."""

    @abc.abstractmethod
    def find_links(
        self,
        environment: str,
        *,
        link_type: str | None = None,
        source_id: str | None = None,
        target_id: str | None = None,
        touching: Iterable[str] | None = None,
        link_types: Iterable[str] | None = None,
        sources: Iterable[str] | None = None,
        targets: Iterable[str] | None = None,
        keys: Iterable[LinkKey] | None = None,
    ) -> list[Doc]:
        """Links matching every filter. ``touching``: either end among the ids; ``sources``/``targets``:
        the source (target) among the ids, which is how a clique walk queries a whole frontier at once;
        ``keys``: exactly these (link_type, source_id, target_id) (the other filters would match their
        cross product)."""

    @abc.abstractmethod
    def update_link(self, environment: str, key: LinkKey, changes: Mapping[str, Any]) -> bool:
        """Set top-level fields of one link (e.g. its monitored status); False if unknown."""

    def update_links(self, environment: str, changes: Mapping[LinkKey, Mapping[str, Any]]) -> set[LinkKey]:
        """``update_link`` for many links at once, as one write where the backend can; returns the keys found."""
        return {key for key, fields in changes.items() if self.update_link(environment, key, fields)}

    @abc.abstractmethod
    def link_keys(self, environment: str, link_types: Iterable[str] | None = None) -> set[LinkKey]: ...

    @abc.abstractmethod
    def delete_links(self, environment: str, keys: Iterable[LinkKey]) -> int: ...

    # -- cliques -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def replace_cliques(
        self, environment: str, docs: Iterable[Mapping[str, Any]], focal_points: Iterable[str] | None = None
    ) -> int:
        """Atomically replace cliques: all of the environment's (``focal_points`` None) or only those of
        the given focal points. Returns how many cliques were written."""

    @abc.abstractmethod
    def find_cliques(
        self, environment: str, *, focal_point: str | None = None, containing: Iterable[str] | None = None,
        holding: Iterable[tuple[str, str]] | None = None, link_ids_only: bool = False,
    ) -> list[Doc]:
        """Cliques by focal point, or those whose nodes include any of ``containing``, or both ends of
        one of the ``holding`` pairs (the only cliques that can hold a link between them).
        ``link_ids_only``: ``links_detailed`` lists the ids of the links the clique names instead of
        the links, which a store that attaches them on read then need not read (a rescan compares
        only which links each clique holds)."""

    @abc.abstractmethod
    def patch_clique_links(self, environment: str, keys: Iterable[LinkKey], skip: Iterable[str] = ()) -> int:
        """Bring the copies of these links in the cliques' ``links_detailed`` up to date with the
        links as stored (cliques of the ``skip`` focal points, about to be rebuilt, may be left as
        they are); returns how many copies were rewritten. A link whose state flips (a port going
        down) is copied into every clique a walk reached it from (``keeps_link_copies``)."""

    # -- clique types and constraints ----------------------------------------------------------------
    @abc.abstractmethod
    def upsert_clique_type(self, doc: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def get_clique_type(self, type_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def list_clique_types(self, environment: str | None = None) -> list[Doc]:
        """All clique types, or those for an environment name plus the ``ANY`` ones."""

    @abc.abstractmethod
    def remove_clique_type(self, type_id: str) -> bool: ...

    @abc.abstractmethod
    def upsert_clique_constraint(self, doc: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def list_clique_constraints(self) -> list[Doc]: ...

    # -- scans -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def submit_scan(self, doc: Mapping[str, Any]) -> str:
        """Store a scan request (it must carry an ``id``); returns that id."""

    @abc.abstractmethod
    def get_scan(self, scan_id: str) -> Doc | None: ...

    @abc.abstractmethod
    def find_scans(
        self, environment: str | None = None, status: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Doc]:
        """Scans newest first."""

    @abc.abstractmethod
    def claim_next_scan(self, owner: str, lease_until: datetime, now: datetime) -> Doc | None:
        """Atomically take the oldest pending scan: exactly one of several concurrent callers gets it.
        The scan becomes running, owned by ``owner`` with its lease ending at ``lease_until``."""

    @abc.abstractmethod
    def update_scan(
        self, scan_id: str, changes: Mapping[str, Any], *, expect_status: str | None = None,
        expect_owner: str | None = None,
    ) -> bool:
        """Set fields of a scan, only if it is still in ``expect_status`` / owned by ``expect_owner``
        when given (compare-and-set). Returns whether it was updated."""

    # -- scheduled scans ---------------------------------------------------------------------------
    @abc.abstractmethod
    def upsert_scheduled_scan(self, doc: Mapping[str, Any]) -> None: ...

    @abc.abstractmethod
    def update_scheduled_scan(self, schedule_id: str, changes: Mapping[str, Any],
                              expect: Mapping[str, Any] | None = None) -> bool:
        """Set fields of a schedule only if its current values equal ``expect`` (compare-and-set), so
        that of several scan managers exactly one turns a due schedule into a scan."""

    @abc.abstractmethod
    def list_scheduled_scans(self, environment: str | None = None) -> list[Doc]: ...

    @abc.abstractmethod
    def remove_scheduled_scan(self, schedule_id: str) -> bool: ...

    # -- host keys ---------------------------------------------------------------------------------
    # SSH host keys pinned on first use (``host_key_policy = "pin"``), keyed by (environment, host)
    # where ``host`` is the address as known_hosts names it (``addr`` or ``[addr]:port``).
    @abc.abstractmethod
    def get_host_key(self, environment: str, host: str) -> Doc | None: ...

    @abc.abstractmethod
    def pin_host_key(self, doc: Mapping[str, Any]) -> Doc:
        """Record a host key unless one is recorded for that (environment, host) already; returns the
        recorded document, so that of two scans meeting a new host at once both check the same key."""

    @abc.abstractmethod
    def list_host_keys(self, environment: str) -> list[Doc]:
        """An environment's pinned keys, by host."""

    @abc.abstractmethod
    def remove_host_key(self, environment: str, host: str) -> bool:
        """Forget a pinned key (the host was legitimately re-keyed); False if none was recorded."""

    # -- messages ----------------------------------------------------------------------------------
    @abc.abstractmethod
    def append_messages(self, docs: Iterable[Mapping[str, Any]]) -> int: ...

    @abc.abstractmethod
    def find_messages(
        self,
        environment: str | None = None,
        *,
        level: str | None = None,
        source_system: str | None = None,
        related_object: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[Doc]:
        """Messages newest first."""

    @abc.abstractmethod
    def prune_messages(self, *, older_than: datetime | None = None, keep: int | None = None,
                       limit: int = 10_000) -> int:
        """Delete messages stamped before ``older_than`` and all but the newest ``keep`` (of every
        environment), the oldest first and at most ``limit`` of them, so that a big backlog is
        deleted over several calls and writers wait for one call at most; returns how many went."""


INVENTORY_REQUIRED = ("id", "type")
LINK_REQUIRED = ("link_type", "source_id", "target_id")
HOST_KEY_REQUIRED = ("environment", "host", "key_type", "key")


def check_keys(doc: Mapping[str, Any], required: tuple[str, ...], what: str) -> None:
    """Refuse a document without its key fields before anything is written."""
    for key in required:
        value = doc.get(key)
        if not isinstance(value, str) or not value:
            raise ValueError(f"{what} document without a valid {key!r}: {str(dict(doc))[:200]}")
