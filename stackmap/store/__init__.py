"""The store port and its adapters, chosen by URL.

``sqlite:///path`` gives the embedded store (the default), ``mongodb://...`` the production one, and
``mongomock://name`` an in-memory MongoDB for tests (needs the ``mongomock`` package).
"""

from __future__ import annotations

from stackmap.errors import StoreError
from stackmap.store.base import Doc, LinkKey, Store

__all__ = ["Doc", "LinkKey", "Store", "open_store"]


def open_store(url: str) -> Store:
    if url.startswith("sqlite:///"):
        from stackmap.store.sqlite import SqliteStore

        return SqliteStore(url)
    if url.startswith(("mongodb://", "mongodb+srv://", "mongomock://")):
        from stackmap.store.mongo import MongoStore

        return MongoStore(url)
    raise StoreError(f"unsupported store URL {url.split('://')[0]}://... (use sqlite:/// or mongodb://)")
