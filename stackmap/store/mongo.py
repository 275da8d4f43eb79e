"""The production store: MongoDB, in Calipso's collections, so existing Calipso tooling can read it.

``mongodb://`` and ``mongodb+srv://`` URLs reach a real server through pymongo; ``mongomock://NAME``
gives an in-memory MongoDB (the ``mongomock`` package) for tests and benchmarks. Every document is
normalised on the way in (keys MongoDB refuses are encoded, datetimes become UTC at the millisecond
precision BSON keeps) and denormalised on the way out (keys decoded, ``_id`` dropped, datetimes made
timezone-aware), so what comes back equals what the SQLite adapter gives for the same input.

Atomicity comes from single-document operations (claiming a scan, compare-and-set on a scan) rather
than transactions, which a standalone server does not offer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import unquote

import pymongo
from pydantic import SecretStr
from pymongo import ASCENDING, DESCENDING, DeleteOne, ReplaceOne, ReturnDocument, UpdateMany
from pymongo.errors import (
    BulkWriteError,
    ConfigurationError,
    ConnectionFailure,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
)

from stackmap.errors import DuplicateError, NotFound, StoreError, StoreUnavailable
from stackmap.store.base import (
    HOST_KEY_REQUIRED,
    INVENTORY_REQUIRED,
    LINK_REQUIRED,
    MONITOR_FIELDS,
    MONITOR_LABELS,
    MONITOR_STATUS,
    Doc,
    LinkKey,
    Store,
    check_keys,
)

DEFAULT_DATABASE = "stackmap"
SERVER_SELECTION_TIMEOUT_MS = 5000
# Documents read or written per round trip: bounds the size of one ``$in`` query and one bulk write.
BATCH = 1000
_DUPLICATE_KEY = 11000
_NO_PATH: dict[str, list[Any]] = {"$in": [None, ""]}  # matches a missing, null or empty id_path

# Calipso's collection names, kept so its tooling and dashboards keep working on our data.
ENVIRONMENTS = "environments_config"
INVENTORY = "inventory"
LINKS = "links"
CLIQUES = "cliques"
CLIQUE_TYPES = "clique_types"
CLIQUE_CONSTRAINTS = "clique_constraints"
SCANS = "scans"
SCHEDULED_SCANS = "scheduled_scans"
MESSAGES = "messages"
HOST_KEYS = "host_keys"  # ours (Calipso had none): SSH host keys pinned on first use

_INDEXES: dict[str, list[tuple[list[tuple[str, int]], bool]]] = {
    INVENTORY: [
        ([("environment", ASCENDING), ("id", ASCENDING)], True),
        ([("environment", ASCENDING), ("type", ASCENDING)], False),
        ([("environment", ASCENDING), ("parent_id", ASCENDING)], False),
        ([("environment", ASCENDING), ("id_path", ASCENDING)], False),
        ([("environment", ASCENDING), ("host", ASCENDING), ("type", ASCENDING)], False),
    ],
    LINKS: [
        ([("environment", ASCENDING), ("link_type", ASCENDING), ("source_id", ASCENDING),
          ("target_id", ASCENDING)], True),
        ([("environment", ASCENDING), ("source_id", ASCENDING)], False),
        ([("environment", ASCENDING), ("target_id", ASCENDING)], False),
    ],
    CLIQUES: [
        ([("environment", ASCENDING), ("focal_point", ASCENDING)], True),
        ([("environment", ASCENDING), ("nodes", ASCENDING)], False),
    ],
    ENVIRONMENTS: [([("name", ASCENDING)], True)],
    SCANS: [
        ([("id", ASCENDING)], True),
        ([("status", ASCENDING), ("submit_timestamp", ASCENDING)], False),
    ],
    SCHEDULED_SCANS: [([("id", ASCENDING)], True)],
    MESSAGES: [
        ([("id", ASCENDING)], True),
        ([("environment", ASCENDING), ("timestamp", ASCENDING)], False),
        ([("timestamp", ASCENDING)], False),
    ],
    CLIQUE_TYPES: [([("id", ASCENDING)], True)],
    CLIQUE_CONSTRAINTS: [([("id", ASCENDING)], True)],
    HOST_KEYS: [([("environment", ASCENDING), ("host", ASCENDING)], True)],
}

# mongomock keeps its data per client object, so every MongoStore of one process shares one client
# (as processes share one server); it is not thread-safe either, so one lock serialises its use.
_mock_client: Any = None
_mock_guard = threading.Lock()
_mock_lock = threading.RLock()


def _shared_mock_client() -> Any:
    global _mock_client
    with _mock_guard:
        if _mock_client is None:
            try:
                import mongomock
            except ImportError:
                raise StoreError("mongomock:// URLs need the 'mongomock' package") from None
            _mock_client = mongomock.MongoClient()
        return _mock_client


# -- documents in and out ---------------------------------------------------------------------------

_DOT, _DOLLAR = "[dot]", "[dollar]"


def encode_key(key: Any) -> str:
    """MongoDB refuses '.' in keys and a leading '$'; Calipso stored '.' as '[dot]', so we do too."""
    if not isinstance(key, str):
        # the SQLite adapter goes through JSON, which turns these keys into text; do the same
        if key is None or isinstance(key, bool | int | float):
            return json.dumps(key)
        raise TypeError(f"keys must be str, int, float, bool or None, not {type(key).__name__}")
    if "." in key:
        key = key.replace(".", _DOT)
    if key.startswith("$"):
        key = _DOLLAR + key[1:]
    return key


def decode_key(key: str) -> str:
    if "[" not in key:
        return key
    if key.startswith(_DOLLAR):
        key = "$" + key[len(_DOLLAR):]
    return key.replace(_DOT, ".")


def _utc_ms(value: datetime) -> datetime:
    """BSON keeps milliseconds: truncating here makes a stored value compare equal to its source."""
    value = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond - value.microsecond % 1000)


def encode(value: Any) -> Any:
    """A value as MongoDB should store it, accepting exactly what the SQLite adapter's codec accepts."""
    if isinstance(value, Mapping):
        return {encode_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return encode(value.value)
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime):
        return _utc_ms(value)
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, set | frozenset):
        return [encode(v) for v in sorted(value)]
    if isinstance(value, SecretStr):
        raise TypeError("refusing to store an unsealed secret")
    raise TypeError(f"cannot store a value of type {type(value).__name__}")


def decode(value: Any) -> Any:
    """Undo ``encode``; mongomock hands back naive datetimes, pymongo aware ones: both become UTC."""
    if isinstance(value, dict):
        return {decode_key(k): decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return value


def _from_db(raw: Mapping[str, Any]) -> Doc:
    return {decode_key(k): decode(v) for k, v in raw.items() if k != "_id"}


def _canon(value: Any) -> Any:
    """A comparable form that, like the SQLite adapter's JSON text, tells 1, 1.0 and True apart and
    ignores key order, so "changed" means the same thing in both adapters."""
    if isinstance(value, Mapping):
        return ("d", tuple(sorted((k, _canon(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return ("l", tuple(_canon(v) for v in value))
    if isinstance(value, bool):
        return ("b", value)
    if isinstance(value, int):
        return ("i", int(value))
    if isinstance(value, float):
        return ("f", repr(value))
    if isinstance(value, str):
        return ("s", value)
    if value is None:
        return ("n",)
    if isinstance(value, datetime):
        return ("t", _utc_ms(value))
    return ("o", type(value).__name__, repr(value))


def _limit(limit: int | None) -> int | None:
    """SQLite's ``LIMIT`` semantics: negative means none, zero means nothing (Mongo's 0 means none)."""
    if limit is None:
        return None
    limit = int(limit)
    return None if limit < 0 else limit


def _chunks(items: Sequence[Any], size: int = BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _redact(url: str) -> tuple[str, list[str]]:
    """``scheme://hosts`` without credentials, path or options (options may hold secrets too), and
    the password, to scrub from any message a driver error might echo."""
    scheme, _, rest = url.partition("://")  # by hand: urlsplit raises on some URLs pymongo reports better
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    userinfo, _, hosts = netloc.rpartition("@")
    password = userinfo.partition(":")[2]
    secrets = [s for s in dict.fromkeys((password, unquote(password))) if s]
    return f"{scheme}://{hosts}", secrets


class MongoStore(Store):
    """The Store port on MongoDB; indexes are created on open so that a fresh database, or one that
    Calipso left, is ready for the queries below without a separate migration step."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._mock = url.startswith("mongomock://")
        self._secrets: list[str] = []
        self._lock: AbstractContextManager[Any]
        if self._mock:
            name = url[len("mongomock://"):].strip("/") or DEFAULT_DATABASE
            self._client: Any = _shared_mock_client()
            self._lock = _mock_lock
            self._owns_client = False
            self._db: Any = self._client[name]
            self._where = f"in-memory MongoDB (mongomock) mongomock://{name}"
        else:
            server, self._secrets = _redact(url)
            self._where = f"MongoDB {server}"
            self._lock = nullcontext()
            self._owns_client = True
            try:
                self._client = pymongo.MongoClient(
                    url, serverSelectionTimeoutMS=SERVER_SELECTION_TIMEOUT_MS, tz_aware=True, tzinfo=UTC
                )
                self._db = self._client.get_default_database(default=DEFAULT_DATABASE)
            except (ConfigurationError, ValueError, TypeError) as exc:  # a bad URL or option
                raise StoreError(self._scrub(f"cannot use {self._where}: {exc}")) from None
            self._where = f"MongoDB {server}/{self._db.name}"
        try:
            self._create_indexes()
        except BaseException:
            self.close()
            raise

    # -- plumbing ----------------------------------------------------------------------------------
    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def _op(self) -> Iterator[None]:
        """Run one store operation: serialised under mongomock, with driver errors turned into the
        store errors the CLI and daemons know how to report (and retry, for StoreUnavailable)."""
        with self._lock:
            try:
                yield
            except ConnectionFailure as exc:
                # pymongo appends its whole topology description: the first reason is what helps
                message = str(exc).split(", Topology Description:")[0].splitlines()[0][:300] if str(exc) else ""
                message = message or type(exc).__name__
                raise StoreUnavailable(self._scrub(f"{self._where} is unreachable: {message}")) from None
            except OperationFailure as exc:
                if exc.code in (13, 18):  # Unauthorized, AuthenticationFailed
                    raise StoreError(f"{self._where}: not authorized ({exc.code})") from None
                raise StoreError(self._scrub(f"{self._where}: {str(exc)[:300]}")) from None
            except PyMongoError as exc:
                raise StoreError(self._scrub(f"{self._where}: {str(exc)[:300]}")) from None

    def _create_indexes(self) -> None:
        with self._op():
            for collection, indexes in _INDEXES.items():
                for keys, unique in indexes:
                    self._db[collection].create_index(keys, unique=unique)

    def _docs(self, cursor: Iterable[Mapping[str, Any]]) -> list[Doc]:
        return [_from_db(raw) for raw in cursor]

    def _one(self, collection: str, query: Mapping[str, Any]) -> Doc | None:
        with self._op():
            raw = self._db[collection].find_one(query)
        return _from_db(raw) if raw is not None else None

    def _replace_many(self, collection: str, pairs: list[tuple[Doc, Doc]]) -> None:
        """Upsert whole documents; mongomock's bulk_write cannot take current pymongo's ReplaceOne."""
        if not pairs:
            return
        coll = self._db[collection]
        if self._mock:
            for query, doc in pairs:
                coll.replace_one(query, doc, upsert=True)
            return
        for chunk in _chunks(pairs):
            coll.bulk_write([ReplaceOne(query, doc, upsert=True) for query, doc in chunk], ordered=False)

    def _set_fields(self, collection: str, query: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
        """``$set`` of top-level fields; encoded keys keep a dotted name from meaning a nested path."""
        coll = self._db[collection]
        with self._op():
            if not changes:
                return coll.find_one(query, {"_id": 1}) is not None
            return bool(coll.update_one(query, {"$set": encode(changes)}).matched_count)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def describe(self) -> str:
        return self._where

    # -- environments_config -----------------------------------------------------------------------
    def add_environment(self, doc: Mapping[str, Any]) -> None:
        name = doc["name"]
        with self._op():
            try:
                self._db[ENVIRONMENTS].insert_one(encode(doc))
            except DuplicateKeyError:
                raise DuplicateError(f"environment {name!r} exists already") from None

    def replace_environment(self, doc: Mapping[str, Any]) -> None:
        with self._op():
            result = self._db[ENVIRONMENTS].replace_one({"name": doc["name"]}, encode(doc))
        if result.matched_count == 0:
            raise NotFound(f"unknown environment {doc['name']!r}")

    def update_environment(self, name: str, changes: Mapping[str, Any]) -> bool:
        return self._set_fields(ENVIRONMENTS, {"name": name}, changes)

    def get_environment(self, name: str) -> Doc | None:
        return self._one(ENVIRONMENTS, {"name": name})

    def list_environments(self) -> list[Doc]:
        with self._op():
            return self._docs(self._db[ENVIRONMENTS].find().sort("name", ASCENDING))

    def remove_environment(self, name: str) -> bool:
        with self._op():
            if self._db[ENVIRONMENTS].delete_one({"name": name}).deleted_count == 0:
                return False
            for collection in (INVENTORY, LINKS, CLIQUES, SCANS, SCHEDULED_SCANS, MESSAGES, HOST_KEYS):
                self._db[collection].delete_many({"environment": name})
            return True

    # -- inventory ---------------------------------------------------------------------------------
    def _upsert(
        self, collection: str, environment: str, docs: list[Doc], key_fields: tuple[str, ...], ignore: str | None
    ) -> int:
        """Write only the documents that differ from what is stored, counting writes as the SQLite
        adapter does (each insert or real change, in input order, repeats included)."""
        written = 0
        for batch in _chunks(docs):
            query: Doc = {"environment": environment}
            for field in key_fields:
                query[field] = {"$in": sorted({doc[field] for doc in batch})}
            with self._op():
                existing: dict[tuple[Any, ...], Doc] = {}
                for raw in self._db[collection].find(query):
                    existing[tuple(raw[f] for f in key_fields)] = raw
            seen: dict[tuple[Any, ...], Any] = {}
            pending: dict[tuple[Any, ...], Doc] = {}
            for doc in batch:
                key = tuple(doc[f] for f in key_fields)
                doc = {k: v for k, v in doc.items() if k not in MONITOR_FIELDS}
                old = existing.get(key, {})
                # the monitor's fields, and its status label where the document brings no status of its own
                kept = {k: v for k, v in old.items()
                        if k in MONITOR_FIELDS or (k == MONITOR_STATUS and k not in doc)}
                canon = _canon({k: v for k, v in doc.items() if k != ignore})
                before = seen[key] if key in seen else (_canon(
                    {k: v for k, v in old.items() if k not in kept and k not in (ignore, "_id")}) if old else None)
                if before != canon:
                    seen[key] = canon
                    pending[key] = {**doc, **kept}
                    written += 1
            with self._op():
                self._replace_many(collection, [
                    ({"environment": environment, **dict(zip(key_fields, key, strict=True))}, doc)
                    for key, doc in pending.items()
                ])
        return written

    def upsert_objects(self, environment: str, docs: Iterable[Mapping[str, Any]]) -> int:
        bodies = []
        for doc in docs:
            check_keys(doc, INVENTORY_REQUIRED, "inventory")
            body = dict(doc)
            body["environment"] = environment
            if body.get("last_scanned", 0) is None:
                del body["last_scanned"]  # as in SQLite, a null last_scanned is not kept
            bodies.append(encode(body))
        return self._upsert(INVENTORY, environment, bodies, ("id",), "last_scanned")

    def get_object(self, environment: str, object_id: str) -> Doc | None:
        return self._one(INVENTORY, {"environment": environment, "id": object_id})

    @staticmethod
    def _under(prefix: str) -> Doc:
        """The id_path itself or anything below it: a range rather than a regex so that an index
        serves it, and '0' (the character after '/') ends the range exactly like SQLite's query."""
        itself: Doc = {"id_path": prefix} if prefix else {"id_path": _NO_PATH}
        return {"$or": [itself, {"id_path": {"$gte": prefix + "/", "$lt": prefix + "0"}}]}

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
        query: Doc = {"environment": environment}
        if type is not None:
            query["type"] = type
        if hosts is not None:
            query["host"] = {"$in": list(hosts)}
        if parent_id is not None:
            query["parent_id"] = parent_id
        if ids is not None:
            query["id"] = {"$in": list(ids)}
        prefix = None
        if under is not None:
            root = self._one(INVENTORY, {"environment": environment, "id": under})
            if root is None:
                return []
            prefix = str(root.get("id_path") or "").rstrip("/")
            query.update(self._under(prefix))
        count = _limit(limit)
        # SQLite sorts an object without id_path as if it were '' (then by id), MongoDB sorts a missing
        # or null one before '': fetch those objects first, by id, then the others by (id_path, id).
        parts: list[tuple[Doc, list[tuple[str, int]]]] = [
            ({"id_path": _NO_PATH}, [("id", ASCENDING)]),
            ({"id_path": {"$nin": _NO_PATH["$in"]}}, [("id_path", ASCENDING), ("id", ASCENDING)]),
        ]
        if prefix:
            del parts[0]  # nothing without an id_path is under a non-empty one
        found: list[Doc] = []
        with self._op():
            for condition, order in parts:
                if count is not None and len(found) >= count:
                    break
                cursor = self._db[INVENTORY].find({"$and": [query, condition]}).sort(order)
                if count is not None:
                    cursor = cursor.limit(count - len(found))
                found += self._docs(cursor)
        return found

    def update_object(self, environment: str, object_id: str, changes: Mapping[str, Any]) -> bool:
        fields = {k: v for k, v in changes.items() if k not in ("id", "environment")}
        return self._set_with_label(INVENTORY, {"environment": environment, "id": object_id}, fields)

    def _set_with_label(self, collection: str, query: Doc, fields: Doc) -> bool:
        """Set fields; the monitor's status label only where the document has no status of its own
        (none yet, or an earlier monitor label): an API's status stays the document's."""
        label_given = MONITOR_STATUS in fields
        label = fields.pop(MONITOR_STATUS, None)
        found = self._set_fields(collection, query, fields)
        if found and label_given:
            guarded = {**query, "$or": [{MONITOR_STATUS: {"$exists": False}},
                                        {MONITOR_STATUS: {"$in": list(MONITOR_LABELS)}}]}
            self._set_fields(collection, guarded, {MONITOR_STATUS: label})
        return found

    def object_ids(self, environment: str, types: Iterable[str] | None = None) -> set[str]:
        query: Doc = {"environment": environment}
        if types is not None:
            query["type"] = {"$in": list(types)}
        with self._op():
            return {raw["id"] for raw in self._db[INVENTORY].find(query, {"id": 1, "_id": 0})}

    def count_objects(self, environment: str) -> dict[str, int]:
        with self._op():
            rows = list(self._db[INVENTORY].aggregate([
                {"$match": {"environment": environment}},
                {"$group": {"_id": "$type", "n": {"$sum": 1}}},
            ]))
        return {row["_id"]: row["n"] for row in sorted(rows, key=lambda row: row["_id"])}

    def _delete_ids(self, environment: str, ids: list[str]) -> int:
        deleted = 0
        for chunk in _chunks(ids):
            members = {"$in": list(chunk)}
            with self._op():
                deleted += self._db[INVENTORY].delete_many({"environment": environment, "id": members}).deleted_count
                self._db[LINKS].delete_many(
                    {"environment": environment, "$or": [{"source_id": members}, {"target_id": members}]}
                )
                self._db[CLIQUES].delete_many({"environment": environment, "focal_point": members})
        return deleted

    def delete_objects(self, environment: str, ids: Iterable[str]) -> int:
        return self._delete_ids(environment, list(dict.fromkeys(ids)))

    def delete_subtree(self, environment: str, object_id: str) -> list[str]:
        root = self._one(INVENTORY, {"environment": environment, "id": object_id})
        if root is None:
            return []
        prefix = str(root.get("id_path") or "").rstrip("/")
        ids = [object_id]
        if prefix:
            query = {
                "environment": environment,
                "id_path": {"$gte": prefix + "/", "$lt": prefix + "0"},
                "id": {"$ne": object_id},
            }
            with self._op():
                cursor = self._db[INVENTORY].find(query, {"id": 1, "_id": 0})
                ids += [raw["id"] for raw in cursor.sort([("id_path", ASCENDING), ("id", ASCENDING)])]
        self._delete_ids(environment, ids)
        return ids

    # -- links -------------------------------------------------------------------------------------
    def upsert_links(self, environment: str, docs: Iterable[Mapping[str, Any]]) -> int:
        bodies = []
        for doc in docs:
            check_keys(doc, LINK_REQUIRED, "link")
            body = dict(doc)
            body["environment"] = environment
            bodies.append(encode(body))
        return self._upsert(LINKS, environment, bodies, LINK_REQUIRED, None)

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
        query: Doc = {"environment": environment}
        conditions: list[Doc] = []
        for field, value in (("link_type", link_type), ("source_id", source_id), ("target_id", target_id)):
            if value is not None:
                conditions.append({field: value})
        for field, values in (("link_type", link_types), ("source_id", sources), ("target_id", targets)):
            if values is not None:
                conditions.append({field: {"$in": list(values)}})
        if touching is not None:
            members = {"$in": list(touching)}
            conditions.append({"$or": [{"source_id": members}, {"target_id": members}]})
        if keys is not None:
            wanted = [{"link_type": t, "source_id": s, "target_id": d} for t, s, d in {tuple(key) for key in keys}]
            conditions.append({"$or": wanted} if wanted else {"link_type": {"$in": []}})
        if conditions:
            query["$and"] = conditions
        order = [("link_type", ASCENDING), ("source_id", ASCENDING), ("target_id", ASCENDING)]
        with self._op():
            return self._docs(self._db[LINKS].find(query).sort(order))

    def update_link(self, environment: str, key: LinkKey, changes: Mapping[str, Any]) -> bool:
        fields = {k: v for k, v in changes.items() if k not in ("environment", "link_type", "source_id", "target_id")}
        query = {"environment": environment, "link_type": key[0], "source_id": key[1], "target_id": key[2]}
        return self._set_with_label(LINKS, query, fields)

    def link_keys(self, environment: str, link_types: Iterable[str] | None = None) -> set[LinkKey]:
        query: Doc = {"environment": environment}
        if link_types is not None:
            query["link_type"] = {"$in": list(link_types)}
        projection = {"link_type": 1, "source_id": 1, "target_id": 1, "_id": 0}
        with self._op():
            return {(r["link_type"], r["source_id"], r["target_id"]) for r in self._db[LINKS].find(query, projection)}

    def delete_links(self, environment: str, keys: Iterable[LinkKey]) -> int:
        deleted = 0
        for chunk in _chunks(list(keys)):
            ops = [
                DeleteOne({"environment": environment, "link_type": lt, "source_id": src, "target_id": dst})
                for lt, src, dst in chunk
            ]
            with self._op():
                deleted += self._db[LINKS].bulk_write(ops, ordered=True).deleted_count
        return deleted

    # -- cliques -----------------------------------------------------------------------------------
    def replace_cliques(
        self, environment: str, docs: Iterable[Mapping[str, Any]], focal_points: Iterable[str] | None = None
    ) -> int:
        bodies: dict[str, Doc] = {}
        for doc in docs:
            check_keys(doc, ("focal_point",), "clique")
            body = dict(doc)
            body["environment"] = environment
            if body["focal_point"] in bodies:
                raise DuplicateError(f"two cliques for focal point {body['focal_point']!r}")
            bodies[body["focal_point"]] = encode(body)
        # Upsert first, prune after: a reader never sees a clique missing that exists both before and
        # after, and a failure half-way leaves the old cliques rather than none.
        stale: Doc = (
            {"$nin": list(bodies)} if focal_points is None else {"$in": sorted(set(focal_points) - set(bodies))}
        )
        with self._op():
            self._replace_many(CLIQUES, [
                ({"environment": environment, "focal_point": focal}, body) for focal, body in bodies.items()
            ])
            self._db[CLIQUES].delete_many({"environment": environment, "focal_point": stale})
        return len(bodies)

    def find_cliques(
        self, environment: str, *, focal_point: str | None = None, containing: Iterable[str] | None = None,
        holding: Iterable[tuple[str, str]] | None = None, link_ids_only: bool = False,
    ) -> list[Doc]:
        query: Doc = {"environment": environment}
        if focal_point is not None:
            query["focal_point"] = focal_point
        if containing is not None:
            # a clique always contains its focal point, even when its stored ``nodes`` omit it
            members = {"$in": list(containing)}
            query["$or"] = [{"nodes": members}, {"focal_point": members}]
        if holding is not None:
            pairs: list[Doc] = [{"$and": [{"$or": [{"nodes": end}, {"focal_point": end}]} for end in pair]}
                                for pair in holding]
            nothing: Doc = {"focal_point": {"$in": []}}
            query.setdefault("$and", []).append({"$or": pairs} if pairs else nothing)
        with self._op():
            docs = self._docs(self._db[CLIQUES].find(query).sort("focal_point", ASCENDING))
        if link_ids_only:  # (the copies are in the documents: nothing to save but the caller's work)
            for doc in docs:
                doc["links_detailed"] = [lk.get("id") for lk in doc.get("links_detailed") or ()]
        return docs

    def patch_clique_links(self, environment: str, keys: Iterable[LinkKey], skip: Iterable[str] = ()) -> int:
        # The positional operator replaces the array element the filter matched: a link is in a
        # clique's links_detailed at most once. Its ends narrow the search through the nodes index.
        skipped = sorted(set(skip))
        ops = []
        for link in self.find_links(environment, keys=keys):
            ends: list[Doc] = [{"$or": [{"nodes": end}, {"focal_point": end}]}
                               for end in (link["source_id"], link["target_id"])]
            ops.append(UpdateMany(
                {"environment": environment, "$and": ends, "focal_point": {"$nin": skipped},
                 "links_detailed.id": link["id"]},
                {"$set": {"links_detailed.$": encode(link)}}))
        patched = 0
        for at in range(0, len(ops), BATCH):
            with self._op():
                patched += self._db[CLIQUES].bulk_write(ops[at:at + BATCH], ordered=False).modified_count
        return patched

    # -- clique types and constraints ----------------------------------------------------------------
    def upsert_clique_type(self, doc: Mapping[str, Any]) -> None:
        check_keys(doc, ("id", "focal_point_type"), "clique type")
        with self._op():
            self._db[CLIQUE_TYPES].replace_one({"id": doc["id"]}, encode(doc), upsert=True)

    def get_clique_type(self, type_id: str) -> Doc | None:
        return self._one(CLIQUE_TYPES, {"id": type_id})

    def list_clique_types(self, environment: str | None = None) -> list[Doc]:
        query: Doc = {}
        if environment is not None:
            # a type without an environment is for any environment, as in the SQLite adapter
            query["$or"] = [{"environment": {"$in": [environment, "ANY"]}}, {"environment": {"$exists": False}}]
        with self._op():
            return self._docs(self._db[CLIQUE_TYPES].find(query).sort("id", ASCENDING))

    def remove_clique_type(self, type_id: str) -> bool:
        with self._op():
            return self._db[CLIQUE_TYPES].delete_one({"id": type_id}).deleted_count > 0

    def upsert_clique_constraint(self, doc: Mapping[str, Any]) -> None:
        check_keys(doc, ("id", "focal_point_type"), "clique constraint")
        with self._op():
            self._db[CLIQUE_CONSTRAINTS].replace_one({"id": doc["id"]}, encode(doc), upsert=True)

    def list_clique_constraints(self) -> list[Doc]:
        with self._op():
            return self._docs(self._db[CLIQUE_CONSTRAINTS].find().sort("id", ASCENDING))

    # -- scans -------------------------------------------------------------------------------------
    def submit_scan(self, doc: Mapping[str, Any]) -> str:
        check_keys(doc, ("id", "environment", "status"), "scan")
        if not isinstance(doc.get("submit_timestamp"), datetime):
            raise ValueError("scan document needs a submit_timestamp datetime")
        with self._op():
            try:
                self._db[SCANS].insert_one(encode(doc))
            except DuplicateKeyError:
                raise DuplicateError(f"scan {doc['id']!r} exists already") from None
        return str(doc["id"])

    def get_scan(self, scan_id: str) -> Doc | None:
        return self._one(SCANS, {"id": scan_id})

    def find_scans(
        self, environment: str | None = None, status: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Doc]:
        query: Doc = {}
        if environment is not None:
            query["environment"] = environment
        if status is not None:
            query["status"] = {"$in": list(status)}
        count = _limit(limit)
        if count == 0:
            return []
        with self._op():
            cursor = self._db[SCANS].find(query).sort([("submit_timestamp", DESCENDING), ("id", ASCENDING)])
            if count is not None:
                cursor = cursor.limit(count)
            return self._docs(cursor)

    def claim_next_scan(self, owner: str, lease_until: datetime, now: datetime) -> Doc | None:
        changes = {"status": "running", "owner": owner, "lease_expires": lease_until, "start_timestamp": now}
        with self._op():
            raw = self._db[SCANS].find_one_and_update(
                {"status": "pending"},
                {"$set": encode(changes)},
                sort=[("submit_timestamp", ASCENDING), ("id", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
        return _from_db(raw) if raw is not None else None

    def update_scan(
        self, scan_id: str, changes: Mapping[str, Any], *, expect_status: str | None = None,
        expect_owner: str | None = None,
    ) -> bool:
        query: Doc = {"id": scan_id}
        if expect_status is not None:
            query["status"] = expect_status
        if expect_owner is not None:
            query["owner"] = expect_owner
        return self._set_fields(SCANS, query, changes)

    # -- scheduled scans ---------------------------------------------------------------------------
    def update_scheduled_scan(self, schedule_id: str, changes: Mapping[str, Any],
                              expect: Mapping[str, Any] | None = None) -> bool:
        query: Doc = {"id": schedule_id}
        for field, value in (expect or {}).items():
            query[field] = encode(value)
        return self._set_fields(SCHEDULED_SCANS, query, changes)

    def upsert_scheduled_scan(self, doc: Mapping[str, Any]) -> None:
        check_keys(doc, ("id", "environment"), "scheduled scan")
        with self._op():
            self._db[SCHEDULED_SCANS].replace_one({"id": doc["id"]}, encode(doc), upsert=True)

    def list_scheduled_scans(self, environment: str | None = None) -> list[Doc]:
        query: Doc = {} if environment is None else {"environment": environment}
        with self._op():
            cursor = self._db[SCHEDULED_SCANS].find(query)
            return self._docs(cursor.sort([("environment", ASCENDING), ("id", ASCENDING)]))

    def remove_scheduled_scan(self, schedule_id: str) -> bool:
        with self._op():
            return self._db[SCHEDULED_SCANS].delete_one({"id": schedule_id}).deleted_count > 0

    # -- host keys ---------------------------------------------------------------------------------
    def get_host_key(self, environment: str, host: str) -> Doc | None:
        return self._one(HOST_KEYS, {"environment": environment, "host": host})

    def pin_host_key(self, doc: Mapping[str, Any]) -> Doc:
        check_keys(doc, HOST_KEY_REQUIRED, "host key")
        query = {"environment": doc["environment"], "host": doc["host"]}
        with self._op():
            try:
                raw = self._db[HOST_KEYS].find_one_and_update(
                    query, {"$setOnInsert": encode(doc)}, upsert=True, return_document=ReturnDocument.AFTER)
            except DuplicateKeyError:  # a concurrent first pin won the insert: its key stands
                raw = self._db[HOST_KEYS].find_one(query)
        return _from_db(raw)

    def list_host_keys(self, environment: str) -> list[Doc]:
        with self._op():
            return self._docs(self._db[HOST_KEYS].find({"environment": environment}).sort("host", ASCENDING))

    def remove_host_key(self, environment: str, host: str) -> bool:
        with self._op():
            return self._db[HOST_KEYS].delete_one({"environment": environment, "host": host}).deleted_count > 0

    # -- messages ----------------------------------------------------------------------------------
    def append_messages(self, docs: Iterable[Mapping[str, Any]]) -> int:
        bodies = []
        for doc in docs:
            check_keys(doc, ("id",), "message")
            if not isinstance(doc.get("timestamp"), datetime):
                raise ValueError("message document needs a timestamp datetime")
            bodies.append(encode(doc))
        for chunk in _chunks(bodies):
            with self._op():
                try:
                    # the driver assigns ObjectIds in list order: they are the insertion order that
                    # breaks timestamp ties in find_messages
                    self._db[MESSAGES].insert_many(list(chunk), ordered=False)
                except BulkWriteError as exc:
                    # a message already stored is skipped, like SQLite's INSERT OR IGNORE
                    errors = exc.details.get("writeErrors", [])
                    if exc.details.get("writeConcernErrors") or any(
                        err.get("code") != _DUPLICATE_KEY for err in errors
                    ):
                        raise
        return len(bodies)

    def prune_messages(self, *, older_than: datetime | None = None, keep: int | None = None,
                       limit: int = 10_000) -> int:
        removed = 0
        newest_first = [("timestamp", DESCENDING), ("_id", DESCENDING)]  # find_messages' order
        with self._op():
            coll = self._db[MESSAGES]
            if keep is not None:
                # the oldest of those beyond the newest `keep`: skip those, take the rest from the far end
                beyond = coll.count_documents({}) - max(0, int(keep))
                if beyond > 0:
                    ids = [d["_id"] for d in coll.find({}, {"_id": 1}).sort(newest_first)
                           .skip(max(0, int(keep)) + max(0, beyond - limit)).limit(limit)]
                    removed += coll.delete_many({"_id": {"$in": ids}}).deleted_count
            if older_than is not None and removed < limit:
                ids = [d["_id"] for d in coll.find({"timestamp": {"$lt": _utc_ms(older_than)}}, {"_id": 1})
                       .sort([("timestamp", ASCENDING), ("_id", ASCENDING)]).limit(limit - removed)]
                if ids:
                    removed += coll.delete_many({"_id": {"$in": ids}}).deleted_count
        return removed

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
        query: Doc = {}
        for field, value in (("environment", environment), ("level", level),
                             ("source_system", source_system), ("related_object", related_object)):
            if value is not None:
                query[field] = value
        if since is not None:
            query["timestamp"] = {"$gte": _utc_ms(since)}
        count = _limit(limit)
        if count == 0:
            return []
        with self._op():
            cursor = self._db[MESSAGES].find(query).sort([("timestamp", DESCENDING), ("_id", DESCENDING)])
            if count is not None:
                cursor = cursor.limit(count)
            return self._docs(cursor)


__all__ = ["MongoStore", "decode", "decode_key", "encode", "encode_key"]
