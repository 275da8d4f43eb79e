"""The store port and its adapters, chosen by URL.

``sqlite:///path`` gives the embedded store (the default), ``mongodb://...`` the production one, and
``mongomock://name`` an in-memory MongoDB for tests (needs the ``mongomock`` package).
"""

from __future__ import annotations

from stackmap.errors import StoreError
from stackmap.store.base import Doc, LinkKey, Store

__all__ = ["Doc", "LinkKey", "Store", "open_store"]


def open_store(url: str, *, busy_timeout_s: float | None = None, background_checkpoints: bool = False) -> Store:
    """``busy_timeout_s``: how long a SQLite write waits for the lock (30 s unless given).
    ``background_checkpoints``: SQLite copies its write-ahead log into the database from a thread of
    its own (``SqliteStore.checkpoint_in_background``), for a daemon that commits many small batches
    and waits on each commit. Both mean nothing to MongoDB."""
    if url.startswith("sqlite:///"):
        from stackmap.store.sqlite import SqliteStore

        store = SqliteStore(url) if busy_timeout_s is None else SqliteStore(url, busy_timeout_s=busy_timeout_s)
        if background_checkpoints:
            store.checkpoint_in_background(0.5)
        return store
    if url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from stackmap.store.mongo import MongoStore

        return MongoStore(url)
    raise StoreError(f"unsupported store URL {url.split('://')[0]}://... (use sqlite:/// or mongodb://)")
