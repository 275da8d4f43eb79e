"""The API client looks a service's endpoint up once (catalog, version discovery) and reuses it for
ENDPOINT_TTL_S, so a long-lived client (an event listener's) follows an endpoint that moved: after
the TTL, or at once when the remembered endpoint stops answering."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stackmap.discovery.api import client as client_module
from stackmap.discovery.api.client import ApiError, OpenStackClient
from tests.fakecloud import CloudSize, FakeCloudServer, closed_port_url
from tests.unit.api_rig import served_client

SIZE = CloudSize(projects=1, hosts=2, instances=3, networks=2, routers=1)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeCloudServer, OpenStackClient]]:
    with served_client(tmp_path, SIZE) as pair:
        yield pair


def servers(client: OpenStackClient) -> int:
    return len(client.get_json("compute", "/servers/detail", "RegionOne")["servers"])


def test_a_moved_endpoint_is_followed_after_the_ttl_or_a_failure(
        served: tuple[FakeCloudServer, OpenStackClient], monkeypatch: pytest.MonkeyPatch) -> None:
    server, client = served
    assert servers(client) == 3
    # the catalog now names a compute endpoint where nothing answers; a new token brings that catalog
    server.point_service_at("compute", closed_port_url() + "/compute/v2.1")
    client.session.invalidate()
    assert servers(client) == 3  # within the TTL: the endpoint found before
    monkeypatch.setattr(client_module, "ENDPOINT_TTL_S", 0.0)
    with pytest.raises(ApiError, match="cannot reach the compute API"):
        servers(client)
    monkeypatch.undo()
    server.reset()  # the catalog names the live endpoint again
    client.session.invalidate()
    assert servers(client) == 3  # the endpoint that failed was forgotten: looked up again, not reused
