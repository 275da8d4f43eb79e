"""SQLite: an object's host is a column of its own (indexed), filled in for files written before it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson

from stackmap.store.sqlite import SqliteStore

ENV = "lab"


def test_a_file_from_before_finds_objects_by_host(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    # the inventory as the previous schema created it: no host column
    db.executescript("""
        CREATE TABLE inventory (environment TEXT NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL, parent_id TEXT,
            id_path TEXT NOT NULL DEFAULT '', last_scanned TEXT, doc TEXT NOT NULL, monitor TEXT);
        CREATE UNIQUE INDEX inventory_key ON inventory (environment, id);
    """)
    docs = [{"environment": ENV, "id": f"h{h}-eth{n}", "type": "host_pnic", "host": f"h{h}", "name": f"eth{n}"}
            for h in range(3) for n in range(2)]
    docs += [{"environment": ENV, "id": "p1", "type": "port", "name": "p1", "host": {"not": "a name"}}]
    db.executemany("INSERT INTO inventory (environment, id, type, doc) VALUES (?, ?, ?, ?)",
                   [(ENV, d["id"], d["type"], orjson.dumps(d).decode()) for d in docs])
    db.commit()
    db.close()

    store = SqliteStore(f"sqlite:///{path}")

    def on(*hosts: str, **kw: str) -> list[str]:
        return [o["id"] for o in store.find_objects(ENV, hosts=hosts, **kw)]

    assert on("h0", "h2") == ["h0-eth0", "h0-eth1", "h2-eth0", "h2-eth1"]
    # and kept up to date by every write
    store.update_object(ENV, "h0-eth0", {"host": "h1"})
    store.upsert_objects(ENV, [dict(docs[1], host="h9")])
    assert on("h1", type="host_pnic") == ["h0-eth0", "h1-eth0", "h1-eth1"]
    assert on("h9") == ["h0-eth1"] and on("h0") == []
    store.close()
