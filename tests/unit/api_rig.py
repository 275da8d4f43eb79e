"""A fake cloud served over HTTP(S) and an API client for it, as an environment's section names it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from stackmap.discovery.api.client import OpenStackClient
from stackmap.environments import add_environment, load_environment
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.store import open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer


@contextmanager
def served_client(tmp_path: Path, size: CloudSize, *, server: dict[str, Any] | None = None,
                  **section: Any) -> Iterator[tuple[FakeCloudServer, OpenStackClient]]:
    """``server``: FakeCloudServer options (``tls``...); ``section``: extra OpenStack section fields."""
    with FakeCloudServer(FakeCloud(size), **(server or {})) as served, \
            open_store(f"sqlite:///{tmp_path}/api.db") as store:
        box = SecretBox(tmp_path / "key")
        add_environment(store, box, EnvironmentConfig.model_validate(
            {"name": "lab", "configuration": [served.openstack_section(**section)]}))
        found = load_environment(store, "lab").section("OpenStack")
        assert found is not None
        yield served, OpenStackClient(found, box)
