"""The embedded store's transactions against a second connection to the same file, as the event
listener and the scan manager or the monitor handler share one database: a transaction takes
SQLite's write lock only at its first write, holds it until it ends, and what it wrote is seen by
others only once it has committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stackmap.errors import StoreUnavailable
from stackmap.store.sqlite import SqliteStore

ENV = "lab"


def obj(oid: str) -> dict[str, object]:
    return {"id": oid, "type": "host", "name": oid, "parent_id": None, "id_path": f"/lab/{oid}",
            "name_path": f"/lab/{oid}", "show_in_tree": True}


@pytest.fixture
def two(tmp_path: Path) -> Iterator[tuple[SqliteStore, SqliteStore]]:
    url = f"sqlite:///{tmp_path}/map.db"
    first, second = SqliteStore(url, busy_timeout_s=0.2), SqliteStore(url, busy_timeout_s=0.2)
    yield first, second
    first.close()
    second.close()


def test_a_transaction_that_only_read_so_far_leaves_the_write_lock_free(two: tuple[SqliteStore, SqliteStore]) -> None:
    first, second = two
    with first.transaction():
        first.find_objects(ENV)  # an event handler reads (the store, then the API) before it writes
        assert second.upsert_objects(ENV, [obj("other")]) == 1  # the scan manager is not blocked
        first.upsert_objects(ENV, [obj("h1")])
        with pytest.raises(StoreUnavailable, match="busy"):  # from the first write on, it is held
            second.upsert_objects(ENV, [obj("h2")])
        assert second.get_object(ENV, "h1") is None  # not committed yet
    assert second.get_object(ENV, "h1") is not None
    assert second.upsert_objects(ENV, [obj("h2")]) == 1


def test_a_failed_nested_block_inside_an_unbegun_transaction_leaves_nothing(
        two: tuple[SqliteStore, SqliteStore]) -> None:
    first, second = two
    with first.transaction():
        with pytest.raises(RuntimeError), first.transaction():
            first.upsert_objects(ENV, [obj("gone")])
            raise RuntimeError("the event failed")
        first.upsert_objects(ENV, [obj("kept")])
    assert second.get_object(ENV, "gone") is None
    assert second.get_object(ENV, "kept") is not None


def test_a_transaction_that_cannot_take_the_lock_says_so_and_leaves_the_store_usable(
        two: tuple[SqliteStore, SqliteStore]) -> None:
    first, second = two
    with second.transaction():
        second.upsert_objects(ENV, [obj("holder")])
        with pytest.raises(StoreUnavailable), first.transaction():
            first.upsert_objects(ENV, [obj("h1")])
    with first.transaction():
        first.upsert_objects(ENV, [obj("h1")])
    assert second.get_object(ENV, "h1") is not None and first.get_object(ENV, "holder") is not None
