"""Shared fixtures: every test gets its own data directory, so nothing touches /var/lib/stackmap."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from stackmap.logging import configure_logging
from stackmap.store import Store, open_store


@pytest.fixture(autouse=True)
def _logging_to_the_current_stderr() -> None:
    """structlog's unconfigured default keeps the sys.stdout of when it was imported, which under
    pytest's capture is a file closed after that test: configure it the way every process does."""
    configure_logging("INFO", "json")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("STACKMAP_DATA_DIR", str(data))
    for var in ("STACKMAP_STORE_URL", "STACKMAP_SECRET_KEY_FILE", "STACKMAP_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    return data


STORE_KINDS = ["sqlite", "mongomock"] + (["mongodb"] if os.environ.get("STACKMAP_TEST_MONGODB_URI") else [])


def _url_for(kind: str, tmp: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'store.db'}"
    if kind == "mongomock":
        return f"mongomock://t{uuid.uuid4().hex[:12]}"
    parts = urlsplit(os.environ["STACKMAP_TEST_MONGODB_URI"])
    # a fresh database per test on the real server, dropped afterwards
    return urlunsplit(parts._replace(path=f"/stackmap_test_{uuid.uuid4().hex[:12]}"))


@pytest.fixture(params=STORE_KINDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    url = _url_for(request.param, tmp_path)
    yield url
    if request.param == "mongodb":
        import pymongo

        client: pymongo.MongoClient = pymongo.MongoClient(url)
        client.drop_database(client.get_default_database())
        client.close()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    yield s
    s.close()
