"""A daemon's SQLite store (event listener, monitor handler) leaves WAL checkpoints to a thread of
its own: the writer's commits never copy the WAL into the database themselves, yet the database file
catches up, while the writer goes on committing; closing the store stops that thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from stackmap.store.sqlite import SqliteStore

ENV = "lab"


def host(i: int) -> dict[str, object]:
    return {"id": f"h{i}", "type": "host", "name": f"h{i}", "parent_id": None, "id_path": f"/lab/h{i}",
            "name_path": f"/lab/h{i}", "show_in_tree": True, "padding": "x" * 4000}


def write(store: SqliteStore, start: int, count: int) -> None:
    for i in range(start, start + count):  # small commits, as a listener's batches are
        store.upsert_objects(ENV, [host(i)])


def database_bytes(path: Path) -> int:
    return path.stat().st_size


@pytest.mark.parametrize("background", [True, False])
def test_the_database_file_catches_up_only_through_the_checkpointer(tmp_path: Path, background: bool) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/map.db")
    if background:
        store.checkpoint_in_background(0.05)
    try:
        before = database_bytes(store.path)
        write(store, 0, 300)  # ~1.2 MB: far below the writer's own autocheckpoint size (20,000 pages)
        deadline = time.monotonic() + 5
        while database_bytes(store.path) < before + 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        grown = database_bytes(store.path) - before
        assert (grown > 1_000_000) is background, grown
        assert len(store.find_objects(ENV, type="host")) == 300
    finally:
        store.close()


def test_the_writer_commits_while_the_checkpointer_works_and_close_stops_it(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/map.db", busy_timeout_s=0.2)
    store.checkpoint_in_background(0.01)
    write(store, 0, 500)  # a short busy timeout: a commit that had to wait for a checkpoint would fail
    assert [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]
    store.close()
    assert not [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]
    reopened = SqliteStore(f"sqlite:///{tmp_path}/map.db")
    assert len(reopened.find_objects(ENV, type="host")) == 500
    reopened.close()


@pytest.mark.parametrize("opener", ["listener", "monitor handler"])
def test_the_daemons_that_commit_small_batches_open_their_store_with_background_checkpoints(
        tmp_path: Path, opener: str) -> None:
    from daemons.event_manager.listener import open_listener_store
    from daemons.monitor_handler.main import open_monitor_store

    url = f"sqlite:///{tmp_path}/map.db"
    store = open_listener_store(url, 0.2) if opener == "listener" else open_monitor_store(url)
    assert isinstance(store, SqliteStore)
    try:
        before = database_bytes(store.path)
        write(store, 0, 300)
        assert [t for t in threading.enumerate() if t.name == "sqlite-checkpoint"]
        deadline = time.monotonic() + 5  # the file catches up without any commit checkpointing
        while database_bytes(store.path) < before + 1_000_000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert database_bytes(store.path) - before > 1_000_000
    finally:
        store.close()
