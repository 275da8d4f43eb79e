"""The embedded store: one SQLite file in WAL mode, shared by the CLI and the daemons of one host.

Each collection is a table with the columns its queries filter on plus the whole document as
JSON text. Writes run in ``BEGIN IMMEDIATE`` transactions so concurrent processes serialize on
SQLite's own lock (that is what makes claiming a scan atomic across processes), and readers never
block writers thanks to WAL.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from stackmap.errors import DuplicateError, NotFound, StoreError, StoreUnavailable
from stackmap.model import link_id
from stackmap.store.base import (
    HOST_KEY_REQUIRED,
    INVENTORY_REQUIRED,
    LINK_REQUIRED,
    MONITOR_FIELDS,
    MONITOR_STATUS,
    Doc,
    LinkKey,
    Store,
    check_keys,
    link_key,
)
from stackmap.store.codec import dumps, iso, loads, parse_iso

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS environments_config (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inventory (
    environment TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, parent_id TEXT,
    id_path TEXT NOT NULL DEFAULT '', last_scanned TEXT, doc TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS inventory_key ON inventory (environment, id);
CREATE INDEX IF NOT EXISTS inventory_type ON inventory (environment, type);
CREATE INDEX IF NOT EXISTS inventory_parent ON inventory (environment, parent_id);
DROP INDEX IF EXISTS inventory_path;
CREATE TABLE IF NOT EXISTS links (
    environment TEXT NOT NULL, link_type TEXT NOT NULL, source_id TEXT NOT NULL, target_id TEXT NOT NULL,
    doc TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS links_key ON links (environment, link_type, source_id, target_id);
CREATE INDEX IF NOT EXISTS links_source ON links (environment, source_id);
CREATE INDEX IF NOT EXISTS links_target ON links (environment, target_id);
CREATE TABLE IF NOT EXISTS cliques (
    environment TEXT NOT NULL, focal_point TEXT NOT NULL, doc TEXT NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS cliques_key ON cliques (environment, focal_point);
CREATE TABLE IF NOT EXISTS clique_nodes (
    environment TEXT NOT NULL, node_id TEXT NOT NULL, focal_point TEXT NOT NULL,
    PRIMARY KEY (environment, node_id, focal_point)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS clique_nodes_focal ON clique_nodes (environment, focal_point);
CREATE TABLE IF NOT EXISTS clique_types (id TEXT PRIMARY KEY, environment TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS clique_constraints (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS scans (
    id TEXT PRIMARY KEY, environment TEXT NOT NULL, status TEXT NOT NULL, submit_timestamp TEXT NOT NULL,
    owner TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS scans_queue ON scans (status, submit_timestamp);
CREATE INDEX IF NOT EXISTS scans_env ON scans (environment, submit_timestamp);
CREATE TABLE IF NOT EXISTS scheduled_scans (id TEXT PRIMARY KEY, environment TEXT NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, environment TEXT, level TEXT,
    source_system TEXT, related_object TEXT, timestamp TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS messages_env ON messages (environment, timestamp);
CREATE INDEX IF NOT EXISTS messages_time ON messages (timestamp);
CREATE TABLE IF NOT EXISTS host_keys (
    environment TEXT NOT NULL, host TEXT NOT NULL, doc TEXT NOT NULL, PRIMARY KEY (environment, host));
"""

_IDS = "(SELECT value FROM json_each(?))"
# An object and its whole subtree, by walking parent_id through the parent index: no index on the
# long id_path strings is needed (it made every bulk upsert a third slower). Params: env, id, env.
_SUBTREE = ("WITH RECURSIVE subtree(id) AS (SELECT id FROM inventory WHERE environment = ? AND id = ? "
            "UNION SELECT i.id FROM inventory i JOIN subtree s ON i.parent_id = s.id WHERE i.environment = ?) ")


def _host_of(doc: Mapping[str, Any]) -> str | None:
    host = doc.get("host")
    return host if isinstance(host, str) else None


def _idlist(ids: Iterable[str]) -> str:
    return orjson.dumps(list(ids)).decode()


def _monitor_only(fields: Mapping[str, Any]) -> bool:
    """Whether a change touches only the monitor's column (its fields and its status label)."""
    return all(key in MONITOR_FIELDS or key == MONITOR_STATUS for key in fields)


def path_from_url(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise StoreError(f"not a SQLite store URL: {url}")
    return Path(url[len("sqlite:///"):] or "stackmap.db")


class SqliteStore(Store):
    keeps_link_copies = False  # a clique's links_detailed are attached from the links table when it is read

    def __init__(self, url: str, *, busy_timeout_s: float = 30.0) -> None:
        self.url = url
        self.path = path_from_url(url)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            # Scans write tens of thousands of rows at once: a larger page cache and fewer, larger WAL
            # checkpoints keep bulk upserts fast without weakening durability (WAL + NORMAL).
            self._conn.execute("PRAGMA cache_size=-65536")
            self._conn.execute("PRAGMA wal_autocheckpoint=20000")
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
            self._conn.execute("PRAGMA foreign_keys=OFF")
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from None
        self._lock = threading.RLock()
        self._checkpointer: tuple[threading.Thread, threading.Event] | None = None
        self._frames: list[bool] = []  # open transaction()/write blocks, and whether each has begun
        with self._write() as cur:
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    cur.execute(stmt)
            cur.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
            # columns added since a file was created: monitoring status lives beside the document it
            # annotates; a clique's links are named by their keys and attached when it is read; an
            # object's host (host-layer objects, instances) is a column, and indexed
            for table, column in (("inventory", "monitor"), ("links", "monitor"), ("cliques", "link_keys"),
                                  ("inventory", "host")):
                columns = {row[1] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()}
                if column not in columns:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")
                    if column == "host":
                        cur.execute("UPDATE inventory SET host = json_extract(doc, '$.host') "
                                    "WHERE json_type(doc, '$.host') = 'text'")
            cur.execute("CREATE INDEX IF NOT EXISTS inventory_on_host ON inventory (environment, host, type)")

    # -- plumbing ----------------------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction, taking SQLite's write lock up front (no upgrade deadlocks); inside
        ``transaction()`` a savepoint, so one failed call undoes only its own writes."""
        with self._lock, self._frame(lazy=False) as cur:
            yield cur

    @contextmanager
    def _frame(self, lazy: bool) -> Iterator[sqlite3.Cursor]:
        """A transaction (outermost) or a savepoint (nested). A lazy one begins only when a write
        inside it does (``_begin``): a ``transaction()`` whose first writes come after slow work (an
        event handler reading the API first) must not hold the write lock during that work."""
        depth = len(self._frames)
        self._frames.append(False)
        cur = self._conn.cursor()
        try:
            if not lazy:
                self._begin(cur)
            try:
                yield cur
            except BaseException:
                if self._frames[depth]:
                    self._undo(cur, depth)
                raise
            if self._frames[depth]:
                self._done(cur, depth)
        finally:
            del self._frames[depth:]
            cur.close()

    def _begin(self, cur: sqlite3.Cursor) -> None:
        """Begin every open frame not begun yet, outermost first."""
        for depth, begun in enumerate(self._frames):
            if begun:
                continue
            try:
                cur.execute(f"SAVEPOINT s{depth}" if depth else "BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite store {self.path} is busy or unavailable: {exc}") from None
            self._frames[depth] = True

    def _undo(self, cur: sqlite3.Cursor, depth: int) -> None:
        if not self._conn.in_transaction:
            return  # SQLite already rolled it back (an I/O error, a full disk)
        with suppress(sqlite3.Error):  # the error being raised says more than a failed rollback would
            if depth:
                cur.execute(f"ROLLBACK TO s{depth}")
                cur.execute(f"RELEASE s{depth}")
            else:
                cur.execute("ROLLBACK")

    def _done(self, cur: sqlite3.Cursor, depth: int) -> None:
        if not self._conn.in_transaction:
            # SQLite rolled the whole transaction back under us after an error it reported to a
            # caller that went on: committing now would pretend the writes before it had landed
            raise StoreUnavailable(f"SQLite store {self.path}: the transaction was rolled back by SQLite")
        try:
            cur.execute(f"RELEASE s{depth}" if depth else "COMMIT")
        except sqlite3.OperationalError as exc:
            self._undo(cur, depth)
            raise StoreUnavailable(f"SQLite store {self.path}: cannot commit: {exc}") from None

    @contextmanager
    def transaction(self) -> Iterator[bool]:
        # Lazy: SQLite's write lock is taken by the first write inside, not here. The Python lock is
        # taken to open and to close the block, not held across it: another thread's write in
        # between joins the open transaction (it is the same connection) instead of waiting.
        with self._lock:
            frame = self._frame(lazy=True)
            frame.__enter__()
        try:
            yield True
        except BaseException as exc:
            with self._lock:
                frame.__exit__(type(exc), exc, exc.__traceback__)
            raise
        else:
            with self._lock:
                frame.__exit__(None, None, None)

    @contextmanager
    def _snapshot(self) -> Iterator[None]:
        """Several reads that must see one state: outside a transaction each statement sees the
        latest commit, and another process (the scan manager, a listener) may commit in between.
        A deferred transaction takes no write lock."""
        with self._lock:
            if self._conn.in_transaction:
                yield
                return
            try:
                self._conn.execute("BEGIN")
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None
            try:
                yield
            finally:
                with suppress(sqlite3.Error):
                    self._conn.execute("COMMIT")

    def _read(self, sql: str, params: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(params)).fetchall()
            except sqlite3.OperationalError as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def _docs(self, sql: str, params: Iterable[Any] = ()) -> list[Doc]:
        return [loads(row[0]) for row in self._read(sql, params)]

    def close(self) -> None:
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer[1].set()
            checkpointer[0].join(5)
        with self._lock:
            self._conn.close()

    def checkpoint_in_background(self, interval_s: float = 0.5) -> None:
        """Take WAL checkpoints off this connection's commits, for a writer whose every commit is
        waited on (an event listener). The commit that takes the WAL past its autocheckpoint size
        otherwise copies all of it into the database, and syncs it, before returning: with the many
        small commits of a listener that stalled it for 150-250 ms every few seconds. Instead, a
        thread with its own connection checkpoints every ``interval_s``, passively: it neither waits
        for nor blocks a writer, and SQLite lets this connection go on writing meanwhile."""
        if self._checkpointer is not None:
            return
        with self._lock:
            self._conn.execute("PRAGMA wal_autocheckpoint=0")
        stop = threading.Event()
        thread = threading.Thread(target=self._checkpoint_until, args=(stop, interval_s),
                                  name="sqlite-checkpoint", daemon=True)
        self._checkpointer = (thread, stop)
        thread.start()

    def _checkpoint_until(self, stop: threading.Event, interval_s: float) -> None:
        try:
            conn = sqlite3.connect(self.path, timeout=0, isolation_level=None, check_same_thread=False)
        except sqlite3.Error:
            return  # the store's own connection reports what is wrong with the file
        try:
            stopping = False
            while not stopping:  # a last turn once stopped: what the writer committed last is copied too
                stopping = stop.wait(interval_s)
                with suppress(sqlite3.Error):  # busy now: the next turn copies what this one could not
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        finally:
            conn.close()

    def describe(self) -> str:
        return f"SQLite file {self.path.resolve()}"

    # -- environments_config -----------------------------------------------------------------------
    def add_environment(self, doc: Mapping[str, Any]) -> None:
        name = doc["name"]
        with self._write() as cur:
            try:
                cur.execute("INSERT INTO environments_config (name, doc) VALUES (?, ?)", (name, dumps(doc)))
            except sqlite3.IntegrityError:
                raise DuplicateError(f"environment {name!r} exists already") from None

    def replace_environment(self, doc: Mapping[str, Any]) -> None:
        with self._write() as cur:
            cur.execute("UPDATE environments_config SET doc = ? WHERE name = ?", (dumps(doc), doc["name"]))
            if cur.rowcount == 0:
                raise NotFound(f"unknown environment {doc['name']!r}")

    def update_environment(self, name: str, changes: Mapping[str, Any]) -> bool:
        with self._write() as cur:
            row = cur.execute("SELECT doc FROM environments_config WHERE name = ?", (name,)).fetchone()
            if row is None:
                return False
            doc = loads(row[0])
            doc.update(changes)
            cur.execute("UPDATE environments_config SET doc = ? WHERE name = ?", (dumps(doc), name))
            return True

    def get_environment(self, name: str) -> Doc | None:
        docs = self._docs("SELECT doc FROM environments_config WHERE name = ?", (name,))
        return docs[0] if docs else None

    def list_environments(self) -> list[Doc]:
        return self._docs("SELECT doc FROM environments_config ORDER BY name")

    def remove_environment(self, name: str) -> bool:
        with self._write() as cur:
            cur.execute("DELETE FROM environments_config WHERE name = ?", (name,))
            if cur.rowcount == 0:
                return False
            for table in ("inventory", "links", "cliques", "clique_nodes", "scans", "scheduled_scans", "messages",
                          "host_keys"):
                cur.execute(f"DELETE FROM {table} WHERE environment = ?", (name,))
            return True

    # -- inventory ---------------------------------------------------------------------------------
    def upsert_objects(self, environment: str, docs: Iterable[Mapping[str, Any]]) -> int:
        rows = []
        for doc in docs:
            # The hot path of every scan: one pass builds the row, the body leaves last_scanned out so
            # that an object whose only difference is its scan time compares equal and is not written.
            body = {key: value for key, value in doc.items() if key != "last_scanned" and key not in MONITOR_FIELDS}
            body["environment"] = environment
            oid, otype = body.get("id"), body.get("type")
            if not (oid and otype and isinstance(oid, str) and isinstance(otype, str)):
                check_keys(doc, INVENTORY_REQUIRED, "inventory")
            scanned = doc.get("last_scanned")
            rows.append((environment, oid, otype, body.get("parent_id"), body.get("id_path") or "",
                         iso(scanned) if scanned is not None else None, dumps(body), _host_of(body)))
        if not rows:
            return 0
        with self._write() as cur:
            before = self._conn.total_changes
            cur.executemany(
                "INSERT INTO inventory (environment, id, type, parent_id, id_path, last_scanned, doc, host) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (environment, id) DO UPDATE SET "
                "type = excluded.type, parent_id = excluded.parent_id, id_path = excluded.id_path, "
                "last_scanned = excluded.last_scanned, doc = excluded.doc, host = excluded.host "
                "WHERE inventory.doc != excluded.doc",
                rows,
            )
            return self._conn.total_changes - before

    @staticmethod
    def _object(row: tuple[Any, ...]) -> Doc:
        doc: Doc = loads(row[0])
        if row[1] is not None:
            doc["last_scanned"] = parse_iso(row[1])
        if len(row) > 2 and row[2] is not None:
            doc = {**loads(row[2]), **doc}  # the document's own (API) status wins over the monitor's label
        return doc

    def get_object(self, environment: str, object_id: str) -> Doc | None:
        rows = self._read(
            "SELECT doc, last_scanned, monitor FROM inventory WHERE environment = ? AND id = ?",
            (environment, object_id))
        return self._object(rows[0]) if rows else None

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
        where, params = ["environment = ?"], [environment]
        if type is not None:
            where.append("type = ?")
            params.append(type)
        if parent_id is not None:
            where.append("parent_id = ?")
            params.append(parent_id)
        if ids is not None:
            where.append(f"id IN {_IDS}")
            params.append(_idlist(ids))
        if hosts is not None:
            where.append(f"host IN {_IDS}")
            params.append(_idlist(hosts))
        prefix = ""
        if under is not None:
            prefix = _SUBTREE
            where.append("id IN (SELECT id FROM subtree)")
            params = [environment, under, environment, *params]
        # a few hosts' objects through the host index: without statistics the planner would take the
        # type index and read every object of the type (every pNIC of the cloud) to pick them
        table = "inventory INDEXED BY inventory_on_host" if hosts is not None and ids is None else "inventory"
        sql = f"{prefix}SELECT doc, last_scanned, monitor FROM {table} WHERE {' AND '.join(where)} " \
              "ORDER BY id_path, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [self._object(row) for row in self._read(sql, params)]

    def update_object(self, environment: str, object_id: str, changes: Mapping[str, Any]) -> bool:
        return bool(self.update_objects(environment, {object_id: changes}))

    def update_objects(self, environment: str, changes: Mapping[str, Mapping[str, Any]]) -> set[str]:
        if not changes:
            return set()
        found: set[str] = set()
        with self._write() as cur:
            if all(_monitor_only(fields) for fields in changes.values()):
                # the monitor's own column only: the document is neither decoded nor rewritten
                rows = cur.execute(f"SELECT id, monitor FROM inventory WHERE environment = ? AND id IN {_IDS}",
                                   (environment, _idlist(changes))).fetchall()
                params = []
                for oid, raw_monitor in rows:
                    monitor: Doc = loads(raw_monitor) if raw_monitor is not None else {}
                    monitor.update(changes[oid])
                    params.append((dumps(monitor), environment, oid))
                    found.add(oid)
                cur.executemany("UPDATE inventory SET monitor = ? WHERE environment = ? AND id = ?", params)
                return found
            rows = cur.execute(
                f"SELECT id, doc, last_scanned, monitor FROM inventory WHERE environment = ? AND id IN {_IDS}",
                (environment, _idlist(changes))).fetchall()
            full = []
            for oid, raw_doc, raw_scanned, raw_monitor in rows:
                fields = changes[oid]
                doc: Doc = loads(raw_doc)
                mon: Doc = loads(raw_monitor) if raw_monitor is not None else {}
                scanned = parse_iso(raw_scanned) if raw_scanned is not None else None
                scanned = fields.get("last_scanned", scanned)
                self._split(doc, mon, {k: v for k, v in fields.items() if k != "last_scanned"})
                doc["id"] = oid
                full.append((doc["type"], doc.get("parent_id"), doc.get("id_path") or "",
                             iso(scanned) if scanned is not None else None, dumps(doc),
                             dumps(mon) if mon else None, _host_of(doc), environment, oid))
                found.add(oid)
            cur.executemany(
                "UPDATE inventory SET type = ?, parent_id = ?, id_path = ?, last_scanned = ?, doc = ?, monitor = ?, "
                "host = ? WHERE environment = ? AND id = ?", full)
        return found

    def object_ids(self, environment: str, types: Iterable[str] | None = None) -> set[str]:
        if types is None:
            rows = self._read("SELECT id FROM inventory WHERE environment = ?", (environment,))
        else:
            rows = self._read(
                f"SELECT id FROM inventory WHERE environment = ? AND type IN {_IDS}", (environment, _idlist(types))
            )
        return {row[0] for row in rows}

    def count_objects(self, environment: str) -> dict[str, int]:
        rows = self._read(
            "SELECT type, COUNT(*) FROM inventory WHERE environment = ? GROUP BY type ORDER BY type", (environment,)
        )
        return {row[0]: row[1] for row in rows}

    def _delete_ids(self, cur: sqlite3.Cursor, environment: str, id_json: str) -> int:
        cur.execute(f"DELETE FROM inventory WHERE environment = ? AND id IN {_IDS}", (environment, id_json))
        deleted = cur.rowcount
        cur.execute(
            f"DELETE FROM links WHERE environment = ? AND (source_id IN {_IDS} OR target_id IN {_IDS})",
            (environment, id_json, id_json),
        )
        cur.execute(f"DELETE FROM cliques WHERE environment = ? AND focal_point IN {_IDS}", (environment, id_json))
        cur.execute(
            f"DELETE FROM clique_nodes WHERE environment = ? AND focal_point IN {_IDS}", (environment, id_json)
        )
        return deleted

    def delete_objects(self, environment: str, ids: Iterable[str]) -> int:
        id_json = _idlist(ids)
        with self._write() as cur:
            return self._delete_ids(cur, environment, id_json)

    def delete_subtree(self, environment: str, object_id: str) -> list[str]:
        with self._write() as cur:
            ids = [r[0] for r in cur.execute(_SUBTREE + "SELECT id FROM subtree",
                                             (environment, object_id, environment)).fetchall()]
            if ids:
                self._delete_ids(cur, environment, _idlist(ids))
            return ids

    # -- links -------------------------------------------------------------------------------------
    def upsert_links(self, environment: str, docs: Iterable[Mapping[str, Any]]) -> int:
        rows = []
        for doc in docs:
            check_keys(doc, LINK_REQUIRED, "link")
            body = {key: value for key, value in doc.items() if key not in MONITOR_FIELDS}
            body["environment"] = environment
            rows.append((environment, body["link_type"], body["source_id"], body["target_id"], dumps(body)))
        if not rows:
            return 0
        with self._write() as cur:
            before = self._conn.total_changes
            cur.executemany(
                "INSERT INTO links (environment, link_type, source_id, target_id, doc) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (environment, link_type, source_id, target_id) DO UPDATE SET doc = excluded.doc "
                "WHERE links.doc != excluded.doc",
                rows,
            )
            return self._conn.total_changes - before

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
        where, params = ["environment = ?"], [environment]
        for column, value in (("link_type", link_type), ("source_id", source_id), ("target_id", target_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        for column, values in (("link_type", link_types), ("source_id", sources), ("target_id", targets)):
            if values is not None:
                where.append(f"{column} IN {_IDS}")
                params.append(_idlist(values))
        if keys is not None:
            # one lookup of the key index per key, led by the keys (CROSS JOIN fixes that order)
            conds = " AND ".join(f"l.{cond}" for cond in where)
            return [self._link(row) for row in self._read(
                f"SELECT l.doc, l.monitor FROM json_each(?) k CROSS JOIN links l WHERE {conds} "
                "AND l.link_type = json_extract(k.value, '$[0]') AND l.source_id = json_extract(k.value, '$[1]') "
                "AND l.target_id = json_extract(k.value, '$[2]') ORDER BY l.link_type, l.source_id, l.target_id",
                [orjson.dumps(sorted({tuple(key) for key in keys})).decode(), *params])]
        if touching is not None:
            # Two lookups by the end indexes, not "source IN .. OR target IN ..": with a link_type
            # condition too, SQLite's planner walks every link of those types (100k on a big map).
            id_json = _idlist(touching)
            conds = " AND ".join(where)
            return [self._link(row[:2]) for row in self._read(
                f"SELECT doc, monitor, link_type, source_id, target_id FROM links INDEXED BY links_source "
                f"WHERE {conds} AND source_id IN {_IDS} "
                f"UNION SELECT doc, monitor, link_type, source_id, target_id FROM links INDEXED BY links_target "
                f"WHERE {conds} AND target_id IN {_IDS} ORDER BY 3, 4, 5",
                [*params, id_json, *params, id_json])]
        return [self._link(row) for row in self._read(
            f"SELECT doc, monitor FROM links WHERE {' AND '.join(where)} ORDER BY link_type, source_id, target_id",
            params)]

    @staticmethod
    def _link(row: tuple[Any, ...]) -> Doc:
        doc: Doc = loads(row[0])
        if row[1] is not None:
            doc = {**loads(row[1]), **doc}
        return doc

    @staticmethod
    def _split(doc: Doc, monitor: Doc, changes: Mapping[str, Any]) -> None:
        """Route field changes: the monitor's fields (and its status label) to its column, the rest to
        the document; the label goes to the document only where the document has its own status."""
        for key, value in changes.items():
            if key in MONITOR_FIELDS or key == MONITOR_STATUS:
                monitor[key] = value  # a document's own status still shows on reads: it is merged on top
            else:
                doc[key] = value

    def update_link(self, environment: str, key: LinkKey, changes: Mapping[str, Any]) -> bool:
        return bool(self.update_links(environment, {key: changes}))

    def update_links(self, environment: str, changes: Mapping[LinkKey, Mapping[str, Any]]) -> set[LinkKey]:
        if not changes:
            return set()
        where = "environment = ? AND link_type = ? AND source_id = ? AND target_id = ?"
        found: set[LinkKey] = set()
        with self._write() as cur:
            for key, fields in changes.items():
                if _monitor_only(fields):
                    row = cur.execute(f"SELECT monitor FROM links WHERE {where}", (environment, *key)).fetchone()
                    if row is None:
                        continue
                    monitor: Doc = loads(row[0]) if row[0] is not None else {}
                    monitor.update(fields)
                    cur.execute(f"UPDATE links SET monitor = ? WHERE {where}", (dumps(monitor), environment, *key))
                else:
                    row = cur.execute(f"SELECT doc, monitor FROM links WHERE {where}", (environment, *key)).fetchone()
                    if row is None:
                        continue
                    doc = loads(row[0])
                    mon: Doc = loads(row[1]) if row[1] is not None else {}
                    self._split(doc, mon, fields)
                    doc.update(link_type=key[0], source_id=key[1], target_id=key[2])
                    cur.execute(f"UPDATE links SET doc = ?, monitor = ? WHERE {where}",
                                (dumps(doc), dumps(mon) if mon else None, environment, *key))
                found.add(key)
        return found

    def link_keys(self, environment: str, link_types: Iterable[str] | None = None) -> set[LinkKey]:
        if link_types is None:
            rows = self._read("SELECT link_type, source_id, target_id FROM links WHERE environment = ?",
                              (environment,))
        else:
            rows = self._read(
                f"SELECT link_type, source_id, target_id FROM links WHERE environment = ? AND link_type IN {_IDS}",
                (environment, _idlist(link_types)),
            )
        return {(r[0], r[1], r[2]) for r in rows}

    def delete_links(self, environment: str, keys: Iterable[LinkKey]) -> int:
        rows = [(environment, *key) for key in keys]
        if not rows:
            return 0
        with self._write() as cur:
            before = self._conn.total_changes
            cur.executemany(
                "DELETE FROM links WHERE environment = ? AND link_type = ? AND source_id = ? AND target_id = ?",
                rows,
            )
            return self._conn.total_changes - before

    # -- cliques -----------------------------------------------------------------------------------
    def replace_cliques(
        self, environment: str, docs: Iterable[Mapping[str, Any]], focal_points: Iterable[str] | None = None
    ) -> int:
        clique_rows, node_rows = [], []
        focal_seen: set[str] = set()
        for doc in docs:
            check_keys(doc, ("focal_point",), "clique")
            if doc["focal_point"] in focal_seen:
                raise DuplicateError(f"two cliques for focal point {doc['focal_point']!r} in one replacement")
            focal_seen.add(doc["focal_point"])
            body = dict(doc)
            body["environment"] = environment
            focal = body["focal_point"]
            # Calipso's links_detailed are copies of stored links: only their keys are kept, and the
            # links are attached as they are when the clique is read (a link's change rewrites no clique)
            keys = [link_key(lk) for lk in body.pop("links_detailed", None) or ()]
            clique_rows.append((environment, focal, dumps(body), orjson.dumps(keys).decode()))
            nodes = set(body.get("nodes") or ()) | {focal}
            node_rows += [(environment, node, focal) for node in nodes]
        with self._write() as cur:
            if focal_points is None:
                cur.execute("DELETE FROM cliques WHERE environment = ?", (environment,))
                cur.execute("DELETE FROM clique_nodes WHERE environment = ?", (environment,))
            else:
                gone = _idlist(set(focal_points) | {row[1] for row in clique_rows})
                cur.execute(f"DELETE FROM cliques WHERE environment = ? AND focal_point IN {_IDS}",
                            (environment, gone))
                # A rebuilt clique mostly has the nodes it had (and a patched one exactly those): only
                # the node rows that differ are written, each a random place in a large index.
                had = set(cur.execute(
                    f"SELECT environment, node_id, focal_point FROM clique_nodes WHERE environment = ? "
                    f"AND focal_point IN {_IDS}", (environment, gone)).fetchall())
                wanted = set(node_rows)
                cur.executemany("DELETE FROM clique_nodes WHERE environment = ? AND node_id = ? AND focal_point = ?",
                                sorted(had - wanted))
                node_rows = sorted(wanted - had)
            cur.executemany("INSERT INTO cliques (environment, focal_point, doc, link_keys) VALUES (?, ?, ?, ?)",
                            clique_rows)
            cur.executemany(
                "INSERT OR IGNORE INTO clique_nodes (environment, node_id, focal_point) VALUES (?, ?, ?)", node_rows
            )
        return len(clique_rows)

    def find_cliques(
        self, environment: str, *, focal_point: str | None = None, containing: Iterable[str] | None = None,
        holding: Iterable[tuple[str, str]] | None = None, link_ids_only: bool = False,
    ) -> list[Doc]:
        where, params = ["c.environment = ?"], [environment]
        if focal_point is not None:
            where.append("c.focal_point = ?")
            params.append(focal_point)
        if containing is not None:
            where.append(
                f"c.focal_point IN (SELECT focal_point FROM clique_nodes WHERE environment = ? AND node_id IN {_IDS})"
            )
            params += [environment, _idlist(containing)]
        if holding is not None:
            # CROSS JOIN fixes the loop order (left table outermost): the pairs, then each end through
            # an index; left to itself the planner scans an environment's clique_nodes for the first
            where.append(
                "c.focal_point IN (SELECT a.focal_point FROM json_each(?) p CROSS JOIN clique_nodes a "
                "CROSS JOIN clique_nodes b WHERE a.environment = ? AND a.node_id = json_extract(p.value, '$[0]') "
                "AND b.environment = a.environment AND b.focal_point = a.focal_point "
                "AND b.node_id = json_extract(p.value, '$[1]'))"
            )
            params += [orjson.dumps([list(pair) for pair in holding]).decode(), environment]
        with self._snapshot():  # the cliques and the links they name, as of one moment
            rows = self._read(f"SELECT c.doc, c.link_keys FROM cliques c WHERE {' AND '.join(where)} "
                              "ORDER BY c.focal_point", params)
            return self._with_links(environment, rows, link_ids_only)

    def _with_links(self, environment: str, rows: list[tuple[Any, ...]], link_ids_only: bool = False) -> list[Doc]:
        """Clique documents with their ``links_detailed``: the links their keys name, as stored now
        (or, ``link_ids_only``, those links' ids: none is read)."""
        docs: list[Doc] = []
        named: list[list[LinkKey]] = []
        for text, key_text in rows:
            doc = loads(text)
            if key_text is None:  # written before links were attached on read: its own copies name them
                keys = [link_key(lk) for lk in doc.get("links_detailed") or ()]
            else:
                keys = [(k[0], k[1], k[2]) for k in orjson.loads(key_text)]
            docs.append(doc)
            named.append(keys)
        if link_ids_only:
            for doc, keys in zip(docs, named, strict=True):
                doc["links_detailed"] = [link_id(*key) for key in keys]
            return docs
        wanted = {key for keys in named for key in keys}
        found = {link_key(lk): lk for lk in self.find_links(environment, keys=wanted)} if wanted else {}
        for doc, keys in zip(docs, named, strict=True):
            # shared between cliques that hold the same link: clique documents are read-only to callers
            doc["links_detailed"] = [found[key] for key in keys if key in found]
        return docs

    def patch_clique_links(self, environment: str, keys: Iterable[LinkKey], skip: Iterable[str] = ()) -> int:
        return 0  # no copies: a clique's links are attached as stored when it is read

    # -- clique types and constraints ----------------------------------------------------------------
    def upsert_clique_type(self, doc: Mapping[str, Any]) -> None:
        check_keys(doc, ("id", "focal_point_type"), "clique type")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO clique_types (id, environment, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET environment = excluded.environment, doc = excluded.doc",
                (doc["id"], doc.get("environment") or "ANY", dumps(doc)),
            )

    def get_clique_type(self, type_id: str) -> Doc | None:
        docs = self._docs("SELECT doc FROM clique_types WHERE id = ?", (type_id,))
        return docs[0] if docs else None

    def list_clique_types(self, environment: str | None = None) -> list[Doc]:
        if environment is None:
            return self._docs("SELECT doc FROM clique_types ORDER BY id")
        return self._docs(
            "SELECT doc FROM clique_types WHERE environment IN (?, 'ANY') ORDER BY id", (environment,)
        )

    def remove_clique_type(self, type_id: str) -> bool:
        with self._write() as cur:
            cur.execute("DELETE FROM clique_types WHERE id = ?", (type_id,))
            return cur.rowcount > 0

    def upsert_clique_constraint(self, doc: Mapping[str, Any]) -> None:
        check_keys(doc, ("id", "focal_point_type"), "clique constraint")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO clique_constraints (id, doc) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                (doc["id"], dumps(doc)),
            )

    def list_clique_constraints(self) -> list[Doc]:
        return self._docs("SELECT doc FROM clique_constraints ORDER BY id")

    # -- scans -------------------------------------------------------------------------------------
    def submit_scan(self, doc: Mapping[str, Any]) -> str:
        check_keys(doc, ("id", "environment", "status"), "scan")
        submitted = doc.get("submit_timestamp")
        if not isinstance(submitted, datetime):
            raise ValueError("scan document needs a submit_timestamp datetime")
        with self._write() as cur:
            try:
                cur.execute(
                    "INSERT INTO scans (id, environment, status, submit_timestamp, owner, doc) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (doc["id"], doc["environment"], doc["status"], iso(submitted), doc.get("owner"), dumps(doc)),
                )
            except sqlite3.IntegrityError:
                raise DuplicateError(f"scan {doc['id']!r} exists already") from None
        return str(doc["id"])

    def get_scan(self, scan_id: str) -> Doc | None:
        docs = self._docs("SELECT doc FROM scans WHERE id = ?", (scan_id,))
        return docs[0] if docs else None

    def find_scans(
        self, environment: str | None = None, status: Iterable[str] | None = None, limit: int | None = None
    ) -> list[Doc]:
        where, params = ["1 = 1"], []
        if environment is not None:
            where.append("environment = ?")
            params.append(environment)
        if status is not None:
            where.append(f"status IN {_IDS}")
            params.append(_idlist(status))
        sql = f"SELECT doc FROM scans WHERE {' AND '.join(where)} ORDER BY submit_timestamp DESC, id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return self._docs(sql, params)

    def claim_next_scan(self, owner: str, lease_until: datetime, now: datetime) -> Doc | None:
        with self._write() as cur:
            row = cur.execute(
                "SELECT doc FROM scans WHERE status = 'pending' ORDER BY submit_timestamp, id LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            doc: Doc = loads(row[0])
            doc.update(status="running", owner=owner, lease_expires=lease_until, start_timestamp=now)
            cur.execute(
                "UPDATE scans SET status = 'running', owner = ?, doc = ? WHERE id = ? AND status = 'pending'",
                (owner, dumps(doc), doc["id"]),
            )
            return doc

    def update_scan(
        self, scan_id: str, changes: Mapping[str, Any], *, expect_status: str | None = None,
        expect_owner: str | None = None,
    ) -> bool:
        with self._write() as cur:
            row = cur.execute("SELECT doc FROM scans WHERE id = ?", (scan_id,)).fetchone()
            if row is None:
                return False
            doc: Doc = loads(row[0])
            if expect_status is not None and doc.get("status") != expect_status:
                return False
            if expect_owner is not None and doc.get("owner") != expect_owner:
                return False
            doc.update(changes)
            cur.execute(
                "UPDATE scans SET status = ?, owner = ?, doc = ? WHERE id = ?",
                (doc["status"], doc.get("owner"), dumps(doc), scan_id),
            )
            return True

    # -- scheduled scans ---------------------------------------------------------------------------
    def upsert_scheduled_scan(self, doc: Mapping[str, Any]) -> None:
        check_keys(doc, ("id", "environment"), "scheduled scan")
        with self._write() as cur:
            cur.execute(
                "INSERT INTO scheduled_scans (id, environment, doc) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET environment = excluded.environment, doc = excluded.doc",
                (doc["id"], doc["environment"], dumps(doc)),
            )

    def update_scheduled_scan(self, schedule_id: str, changes: Mapping[str, Any],
                              expect: Mapping[str, Any] | None = None) -> bool:
        with self._write() as cur:
            row = cur.execute("SELECT doc FROM scheduled_scans WHERE id = ?", (schedule_id,)).fetchone()
            if row is None:
                return False
            doc: Doc = loads(row[0])
            if expect and any(doc.get(field) != value for field, value in expect.items()):
                return False
            doc.update(changes)
            cur.execute("UPDATE scheduled_scans SET doc = ? WHERE id = ?", (dumps(doc), schedule_id))
            return True

    def list_scheduled_scans(self, environment: str | None = None) -> list[Doc]:
        if environment is None:
            return self._docs("SELECT doc FROM scheduled_scans ORDER BY environment, id")
        return self._docs("SELECT doc FROM scheduled_scans WHERE environment = ? ORDER BY id", (environment,))

    def remove_scheduled_scan(self, schedule_id: str) -> bool:
        with self._write() as cur:
            cur.execute("DELETE FROM scheduled_scans WHERE id = ?", (schedule_id,))
            return cur.rowcount > 0

    # -- host keys ---------------------------------------------------------------------------------
    def get_host_key(self, environment: str, host: str) -> Doc | None:
        docs = self._docs("SELECT doc FROM host_keys WHERE environment = ? AND host = ?", (environment, host))
        return docs[0] if docs else None

    def pin_host_key(self, doc: Mapping[str, Any]) -> Doc:
        check_keys(doc, HOST_KEY_REQUIRED, "host key")
        with self._write() as cur:
            cur.execute("INSERT OR IGNORE INTO host_keys (environment, host, doc) VALUES (?, ?, ?)",
                        (doc["environment"], doc["host"], dumps(doc)))
            row = cur.execute("SELECT doc FROM host_keys WHERE environment = ? AND host = ?",
                              (doc["environment"], doc["host"])).fetchone()
        return loads(row[0])

    def list_host_keys(self, environment: str) -> list[Doc]:
        return self._docs("SELECT doc FROM host_keys WHERE environment = ? ORDER BY host", (environment,))

    def remove_host_key(self, environment: str, host: str) -> bool:
        with self._write() as cur:
            cur.execute("DELETE FROM host_keys WHERE environment = ? AND host = ?", (environment, host))
            return cur.rowcount > 0

    # -- messages ----------------------------------------------------------------------------------
    def append_messages(self, docs: Iterable[Mapping[str, Any]]) -> int:
        rows = []
        for doc in docs:
            check_keys(doc, ("id",), "message")
            stamp = doc.get("timestamp")
            if not isinstance(stamp, datetime):
                raise ValueError("message document needs a timestamp datetime")
            rows.append((
                doc["id"], doc.get("environment"), doc.get("level"), doc.get("source_system"),
                doc.get("related_object"), iso(stamp), dumps(doc),
            ))
        if not rows:
            return 0
        with self._write() as cur:
            cur.executemany(
                "INSERT OR IGNORE INTO messages "
                "(id, environment, level, source_system, related_object, timestamp, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def prune_messages(self, *, older_than: datetime | None = None, keep: int | None = None,
                       limit: int = 10_000) -> int:
        removed = 0
        with self._write() as cur:
            if keep is not None:
                # newest as find_messages orders them (timestamp, then insertion): the first one
                # beyond the newest `keep`, and every older one, go (the oldest first)
                row = cur.execute("SELECT timestamp, seq FROM messages ORDER BY timestamp DESC, seq DESC "
                                  "LIMIT 1 OFFSET ?", (max(0, int(keep)),)).fetchone()
                if row is not None:
                    cur.execute("DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE timestamp < ? "
                                "OR (timestamp = ? AND seq <= ?) ORDER BY timestamp, seq LIMIT ?)",
                                (row[0], row[0], row[1], limit))
                    removed += cur.rowcount
            if older_than is not None and removed < limit:
                cur.execute("DELETE FROM messages WHERE seq IN "
                            "(SELECT seq FROM messages WHERE timestamp < ? ORDER BY timestamp LIMIT ?)",
                            (iso(older_than), limit - removed))
                removed += cur.rowcount
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
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("environment", environment), ("level", level),
                              ("source_system", source_system), ("related_object", related_object)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("timestamp >= ?")
            params.append(iso(since))
        return self._docs(
            f"SELECT doc FROM messages WHERE {' AND '.join(where)} ORDER BY timestamp DESC, seq DESC "
            f"LIMIT {int(limit)}",
            params,
        )
