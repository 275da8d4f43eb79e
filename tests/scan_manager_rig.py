"""What the scan manager's unit and integration tests share: one small fake cloud, served over HTTP,
registered as an environment of a SQLite store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer

ENV = "fake"
SMALL = CloudSize(projects=2, hosts=2, instances=4, networks=2, routers=1, floating_ips=1, volumes=2, snapshots=1,
                  flavors=2, images=1, aggregates=1)
TOKENS = "/identity/v3/auth/tokens"  # slowed down to make a scan hang in its first request


@dataclass
class Served:
    cloud: FakeCloud
    server: FakeCloudServer
    store: Store
    url: str
    key: Path


@contextmanager
def served_environment(tmp_path: Path) -> Iterator[Served]:
    cloud = FakeCloud(SMALL)
    with FakeCloudServer(cloud) as server:
        url = f"sqlite:///{tmp_path}/stackmap.db"
        store = open_store(url)
        key = tmp_path / "secret.key"
        add_environment(store, SecretBox(key), EnvironmentConfig.model_validate(
            {"name": ENV, "configuration": [server.openstack_section(project="admin")]}))
        try:
            yield Served(cloud, server, store, url, key)
        finally:
            store.close()
