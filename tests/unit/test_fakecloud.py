"""The fake cloud itself: it must answer like OpenStack, or the scan tests prove nothing.

These talk to the server with plain ``requests`` (no stackmap code), following each service's own
paging convention the way its reference clients do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import pytest
import requests

from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer

SIZE = CloudSize(projects=3, hosts=2, instances=9, unscheduled_instances=1, networks=3, routers=2, floating_ips=3,
                 volumes=5, snapshots=2, images=7, aggregates=1, load_balancers=2, server_groups=2,
                 second_region=True)


@pytest.fixture
def server() -> Iterator[FakeCloudServer]:
    with FakeCloudServer(FakeCloud(SIZE), max_limit=3) as srv:
        yield srv


def login(server: FakeCloudServer, password: str | None = None, project: str = "admin") -> requests.Response:
    cloud = server.cloud
    body: dict[str, Any] = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": cloud.user, "domain": {"name": "Default"}, "password": password or cloud.password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    return requests.post(f"{server.auth_url}/auth/tokens", json=body, timeout=10)


def session(server: FakeCloudServer, project: str = "admin") -> tuple[requests.Session, dict[str, Any]]:
    answer = login(server, project=project)
    assert answer.status_code == 201
    s = requests.Session()
    s.headers["X-Auth-Token"] = answer.headers["X-Subject-Token"]
    return s, answer.json()["token"]


def endpoint(token: dict[str, Any], service: str, region: str = "RegionOne") -> str:
    svc = next(s for s in token["catalog"] if s["type"] == service)
    return next(e["url"] for e in svc["endpoints"] if e["region_id"] == region and e["interface"] == "public")


def test_password_auth_and_token_checks(server: FakeCloudServer) -> None:
    assert login(server, password="wrong").status_code == 401
    assert login(server, project="no-such-project").status_code == 401
    assert requests.get(server.url + server.path("compute", "/servers/detail"), timeout=10).status_code == 401
    s, token = session(server)
    assert token["project"]["name"] == "admin" and token["user"]["name"] == server.cloud.user
    assert s.get(server.url + server.path("compute", "/servers/detail"), timeout=10).status_code == 200


def test_catalog_points_back_at_the_server_per_region(server: FakeCloudServer) -> None:
    _, token = session(server)
    types = {s["type"] for s in token["catalog"]}
    assert types == {"identity", "compute", "network", "image", "block-storage", "load-balancer"}
    assert endpoint(token, "compute") == f"{server.url}/compute/v2.1"
    assert endpoint(token, "network", "RegionTwo") == f"{server.url}/RegionTwo/networking"
    server.remove_service("block-storage", "RegionTwo")
    _, token = session(server)
    volume = next(s for s in token["catalog"] if s["type"] == "block-storage")
    assert [e["region_id"] for e in volume["endpoints"]] == ["RegionOne"]


def test_version_discovery_documents(server: FakeCloudServer) -> None:
    identity = requests.get(f"{server.url}/identity", timeout=10)
    assert identity.status_code == 300
    assert identity.json()["versions"]["values"][0]["links"][0]["href"] == f"{server.url}/identity/v3/"
    image = requests.get(f"{server.url}/image", timeout=10)
    assert image.status_code == 300 and image.json()["versions"][0]["status"] == "CURRENT"
    compute = requests.get(f"{server.url}/compute/v2.1/", timeout=10).json()["version"]
    assert (compute["min_version"], compute["status"]) == ("2.1", "CURRENT")


def walk(s: requests.Session, url: str, key: str, image_endpoint: str | None = None) -> tuple[list[str], int]:
    """Ids of every item, following `<key>_links` (or glance's `next` as python-glanceclient does)."""
    ids: list[str] = []
    pages = 0
    next_url: str | None = url
    while next_url:
        answer = s.get(next_url, timeout=10)
        assert answer.status_code == 200, answer.text
        data = answer.json()
        pages += 1
        ids.extend(str(item["id"]) for item in data[key])
        if image_endpoint is not None:
            nxt = data.get("next")
            next_url = urljoin(image_endpoint.rstrip("/") + "/", nxt.lstrip("/")) if nxt else None
        else:
            next_url = next((lk["href"] for lk in data.get(f"{key}_links", []) if lk["rel"] == "next"), None)
    return ids, pages


@pytest.mark.parametrize("service, path, key, collection", [
    ("compute", "/servers/detail?all_tenants=1", "servers", "servers"),
    ("network", "/ports", "ports", "ports"),
    ("block-storage", "/volumes/detail?all_tenants=1", "volumes", "volumes"),
    ("load-balancer", "/lbaas/loadbalancers", "loadbalancers", "loadbalancers"),
    ("image", "/images?limit=1000", "images", "images"),
])
@pytest.mark.parametrize("region", ["RegionOne", "RegionTwo"])
def test_paging_returns_every_item_once(server: FakeCloudServer, service: str, path: str, key: str,
                                        collection: str, region: str) -> None:
    s, token = session(server)
    image_endpoint = endpoint(token, "image", region) if service == "image" else None
    ids, pages = walk(s, server.url + server.path(service, path, region), key, image_endpoint)
    expected = [str(i["id"]) for i in server.cloud.items(collection, region)]
    assert ids == expected
    assert pages == len(expected) // 3 + 1  # max_limit 3, and a last (possibly empty) page


def test_marker_and_project_filters(server: FakeCloudServer) -> None:
    s, _ = session(server)
    url = server.url + server.path("compute", "/servers/detail")
    assert s.get(url, params={"marker": "nope", "all_tenants": "1"}, timeout=10).status_code == 400
    # without all_tenants an admin sees only its own project's servers (here: none)
    assert s.get(url, timeout=10).json()["servers"] == []
    flavors = server.url + server.path("compute", "/flavors/detail")
    public, _ = walk(s, flavors, "flavors")
    every, _ = walk(s, flavors + "?is_public=none", "flavors")
    assert len(every) == len(public) + 1 == SIZE.flavors


def test_server_groups_follow_the_compute_microversion(server: FakeCloudServer) -> None:
    s, _ = session(server)
    url = server.url + server.path("compute", "/os-server-groups")
    old = s.get(url, params={"all_projects": "True"}, timeout=10)
    assert old.headers["OpenStack-API-Version"] == "compute 2.1"
    assert old.json()["server_groups"] and all("project_id" not in g for g in old.json()["server_groups"])
    new = s.get(url, params={"all_projects": "True"}, headers={"OpenStack-API-Version": "compute 2.64"}, timeout=10)
    groups = new.json()["server_groups"]
    assert all(g["project_id"] and "policy" in g and "policies" not in g for g in groups)
    assert len(groups) == SIZE.server_groups


def test_faults(server: FakeCloudServer) -> None:
    s, _ = session(server)
    url = server.url + server.path("network", "/networks")
    server.fail(server.path("network", "/networks"), 503, after=1, times=1)
    assert [s.get(url, timeout=10).status_code for _ in range(3)] == [200, 503, 200]
    server.slow(server.path("network", "/subnets"), 0.3, times=1)
    started = time.perf_counter()
    assert s.get(server.url + server.path("network", "/subnets"), timeout=10).status_code == 200
    assert time.perf_counter() - started >= 0.3
    assert server.requests[server.path("network", "/networks")] == 3


def test_the_cloud_is_consistent_before_and_after_changes() -> None:
    cloud = FakeCloud(SIZE)

    def check() -> None:
        for region in SIZE.regions:
            networks = {n["id"] for n in cloud.items("networks", region)}
            subnets = {s["id"]: s for s in cloud.items("subnets", region)}
            servers = {s["id"] for s in cloud.items("servers", region)}
            ports = {p["id"]: p for p in cloud.items("ports", region)}
            for port in ports.values():
                assert port["network_id"] in networks
                assert all(subnets[ip["subnet_id"]]["network_id"] == port["network_id"] for ip in port["fixed_ips"])
                if port["device_owner"].startswith("compute:"):
                    assert port["device_id"] in servers
            for fip in cloud.items("floatingips", region):
                assert fip["port_id"] is None or fip["port_id"] in ports
            for vol in cloud.items("volumes", region):
                assert all(a["server_id"] in servers for a in vol["attachments"])
            addresses = [ip["ip_address"] for p in ports.values() for ip in p["fixed_ips"]
                         if p["device_owner"] != "network:router_interface"]
            assert len(addresses) == len(set(addresses))
        objects = cloud.expected_objects("e")
        assert len(objects) + len(cloud.expected_host_refs()) == SIZE.object_count() if cloud.version == 0 else True
        for kind, source, target in cloud.expected_links():
            assert source in objects and target in objects, (kind, source, target)

    check()
    servers = [s["id"] for s in cloud.items("servers")]
    cloud.delete_servers(servers[::2])
    check()
    assert not {s["id"] for s in cloud.items("servers")} & set(servers[::2])
