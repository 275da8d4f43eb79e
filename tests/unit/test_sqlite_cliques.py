"""The embedded store keeps no copies of links inside cliques: a clique row names its links by key
and ``find_cliques`` attaches them as the links table holds them. A file written before that (each
clique document embedding its ``links_detailed``) is still read right."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from stackmap.model import Clique, Link
from stackmap.store.sqlite import SqliteStore

ENV = "lab"


def link(ltype: str, src: str, dst: str, **extra: object) -> dict[str, object]:
    return Link(environment=ENV, link_type=ltype, source_id=src, target_id=dst, **extra).to_doc()


def test_a_clique_row_holds_no_link_copies_and_reads_the_links_as_stored(tmp_path: Path) -> None:
    store = SqliteStore(f"sqlite:///{tmp_path}/map.db")
    store.upsert_links(ENV, [link("instance-port", "i1", "p1"), link("port-network", "p1", "n1")])
    held = store.find_links(ENV)
    store.replace_cliques(ENV, [dict(Clique(environment=ENV, focal_point="i1", focal_point_type="instance",
                                            clique_type="t", nodes=["i1", "p1", "n1"],
                                            links=[lk["id"] for lk in held]).to_doc(), links_detailed=held)])
    doc, keys = sqlite3.connect(tmp_path / "map.db").execute("SELECT doc, link_keys FROM cliques").fetchone()
    assert "links_detailed" not in orjson.loads(doc)
    assert orjson.loads(keys) == [["instance-port", "i1", "p1"], ["port-network", "p1", "n1"]]
    store.upsert_links(ENV, [link("port-network", "p1", "n1", state="down")])  # no clique is written
    assert [lk.get("state") for lk in store.find_cliques(ENV)[0]["links_detailed"]] == ["up", "down"]
    store.close()


def test_a_file_from_before_reads_its_embedded_cliques_with_the_links_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    # the tables as the previous schema created them
    db.executescript("""
        CREATE TABLE links (environment TEXT NOT NULL, link_type TEXT NOT NULL, source_id TEXT NOT NULL,
            target_id TEXT NOT NULL, doc TEXT NOT NULL, monitor TEXT);
        CREATE TABLE cliques (environment TEXT NOT NULL, focal_point TEXT NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE clique_nodes (environment TEXT NOT NULL, node_id TEXT NOT NULL, focal_point TEXT NOT NULL,
            PRIMARY KEY (environment, node_id, focal_point)) WITHOUT ROWID;
    """)
    up, other = link("port-network", "p1", "n1"), link("instance-port", "i1", "p1")
    for lk in (up, other):
        db.execute("INSERT INTO links VALUES (?, ?, ?, ?, ?, NULL)",
                   (ENV, lk["link_type"], lk["source_id"], lk["target_id"], orjson.dumps(lk).decode()))
    old = dict(Clique(environment=ENV, focal_point="i1", focal_point_type="instance", clique_type="t",
                      nodes=["i1", "p1", "n1"], links=[other["id"], up["id"]]).to_doc(),
               links_detailed=[other, up])
    db.execute("INSERT INTO cliques VALUES (?, ?, ?)", (ENV, "i1", orjson.dumps(old).decode()))
    db.executemany("INSERT INTO clique_nodes VALUES (?, ?, ?)", [(ENV, n, "i1") for n in ("i1", "p1", "n1")])
    db.commit()
    db.close()

    store = SqliteStore(f"sqlite:///{path}")
    assert store.find_cliques(ENV, containing=["n1"])[0]["links_detailed"] == [other, up]
    store.upsert_links(ENV, [link("port-network", "p1", "n1", state="down")])
    assert [lk.get("state") for lk in store.find_cliques(ENV)[0]["links_detailed"]] == ["up", "down"]
    store.close()


def test_a_clique_and_its_links_are_read_as_of_one_moment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process (a listener, the scan manager) may commit between the read of the cliques
    and the read of their links: the reader still sees both as they were together."""
    url = f"sqlite:///{tmp_path}/map.db"
    reader, writer = SqliteStore(url), SqliteStore(url)
    reader.upsert_links(ENV, [link("instance-port", "i1", "p1"), link("port-network", "p1", "n1")])
    held = reader.find_links(ENV)
    reader.replace_cliques(ENV, [dict(Clique(environment=ENV, focal_point="i1", focal_point_type="instance",
                                             clique_type="t", nodes=["i1", "p1", "n1"],
                                             links=[lk["id"] for lk in held]).to_doc(), links_detailed=held)])
    real = reader.find_links

    def after_a_commit_elsewhere(environment: str, **filters: object) -> list[dict[str, object]]:
        # the port leaves its network, and its clique is rebuilt without that link, in between
        writer.delete_links(ENV, [("port-network", "p1", "n1")])
        writer.upsert_links(ENV, [link("instance-port", "i1", "p1", state="down")])
        return real(environment, **filters)  # type: ignore[arg-type]  # the filters find_links takes

    monkeypatch.setattr(reader, "find_links", after_a_commit_elsewhere)
    clique = reader.find_cliques(ENV)[0]
    assert [lk["link_type"] for lk in clique["links_detailed"]] == ["instance-port", "port-network"]
    assert clique["links_detailed"][0].get("state") == "up"
    monkeypatch.undo()
    assert [(lk["link_type"], lk.get("state")) for lk in reader.find_cliques(ENV)[0]["links_detailed"]] == [
        ("instance-port", "down")]
    reader.close()
    writer.close()
