"""A whole scan (inventory, links, cliques) against a fake cloud served over real HTTP.

The fake is only the remote API: keystoneauth, openstacksdk, the client's paging, the engine, the
link finders, the clique builder and a real SQLite store all run as they do in production. The
expected map comes from the fake cloud's own data (``FakeCloud.expected_objects``), never from what
a previous scan stored, so a fetcher that drops, misplaces or invents objects fails these tests.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.scan import Scanner, ScanOptions, ScanSummary
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, ScanStatus, stable_id
from stackmap.secrets import SecretBox
from stackmap.store import Store, open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer, closed_port_url

# openstacksdk warns about its own internal call on every request; nothing here can act on it
pytestmark = pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary")

ENV = "fake"
# Small, but with everything: two regions, an unschedulable server, a load balancer, several pages
# per paged collection (PAGE is far below most collection sizes). Server groups and more images than
# a page are covered by the regression tests at the end.
SIZE = CloudSize(projects=3, hosts=3, instances=10, unscheduled_instances=1, networks=4, routers=2,
                 floating_ips=3, security_groups=1, volumes=6, snapshots=2, flavors=4, images=3,
                 aggregates=2, load_balancers=1, server_groups=0, second_region=True)
PAGE = 4


@dataclass
class Rig:
    """One fake cloud, its server, and a store holding an environment that points at it."""

    cloud: FakeCloud
    server: FakeCloudServer
    store: Store
    box: SecretBox

    def scan(self, options: ScanOptions | None = None, env: str = ENV) -> ScanSummary:
        return Scanner(self.store, self.box, env, options or ScanOptions()).run()

    def objects(self) -> dict[str, dict[str, Any]]:
        return {o["id"]: o for o in self.store.find_objects(ENV)}

    def map(self) -> dict[str, tuple[str, str]]:
        return {o["id"]: (o["type"], o["parent_id"]) for o in self.store.find_objects(ENV) if o["type"] != "host_ref"}

    def links(self) -> set[tuple[str, str, str]]:
        return {(lk["link_type"], lk["source_id"], lk["target_id"]) for lk in self.store.find_links(ENV)}


def environment(name: str, auth_url: str, user: str, password: str) -> EnvironmentConfig:
    return EnvironmentConfig.model_validate({
        "name": name, "distribution": "Stock", "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
        "configuration": [{"name": "OpenStack", "auth_url": auth_url, "user": user, "pwd": password,
                           "project": "admin"}],
    })


def make_rig(tmp_path: Path, cloud: FakeCloud, server: FakeCloudServer) -> Rig:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    box = SecretBox(tmp_path / "k")
    add_environment(store, box, environment(ENV, server.auth_url, cloud.user, cloud.password))
    return Rig(cloud, server, store, box)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    cloud = FakeCloud(SIZE)
    with FakeCloudServer(cloud, max_limit=PAGE) as server:
        r = make_rig(tmp_path, cloud, server)
        yield r
        r.store.close()


def assert_complete(summary: ScanSummary) -> None:
    assert summary.status == ScanStatus.COMPLETED.value, summary.errors
    assert summary.errors == []


def scheduled_servers(cloud: FakeCloud) -> list[dict[str, Any]]:
    return [s for r in cloud.regions for s in cloud.items("servers", r) if s["OS-EXT-SRV-ATTR:host"]]


# --------------------------------------------------------------------------------------------------
# a complete scan


def test_map_is_the_clouds_truth(rig: Rig) -> None:
    summary = rig.scan()
    assert_complete(summary)
    expected = rig.cloud.expected_objects(ENV)
    stored = rig.map()
    assert set(stored) - set(expected) == set(), "objects the cloud does not have"
    assert set(expected) - set(stored) == set(), "objects the scan missed"
    assert stored == expected  # right type and right parent for every object
    refs = {(o["parent_id"], o["ref_id"]) for o in rig.objects().values() if o["type"] == "host_ref"}
    assert refs == rig.cloud.expected_host_refs() != set()
    assert sum(summary.objects_by_type.values()) == len(expected) + len(refs) == SIZE.object_count()
    # paging really happened: nova, neutron and cinder were each read over several pages
    for service, path, count in (("compute", "/servers/detail", SIZE.instances + 1),
                                 ("network", "/ports", None), ("block-storage", "/volumes/detail", SIZE.volumes)):
        pages = rig.server.requests[rig.server.path(service, path)]
        assert pages > 1, f"{path} was not paged"
        if count is not None:
            assert pages == count // PAGE + 1


def test_parents_are_consistent(rig: Rig) -> None:
    assert_complete(rig.scan())
    objects = rig.objects()
    for doc in objects.values():
        if doc["parent_type"] == "environment":
            assert doc["parent_id"] == ENV
            continue
        parent = objects[doc["parent_id"]]
        assert doc["parent_type"] == parent["type"], doc["id"]
        assert doc["id_path"] == f"{parent['id_path']}/{doc['id']}"
        assert doc["name_path"] == f"{parent['name_path']}/{doc['name']}"


def test_instances_sit_under_their_host_with_their_port_data(rig: Rig) -> None:
    assert_complete(rig.scan())
    objects = rig.objects()
    ports = {p["device_id"]: p for r in rig.cloud.regions for p in rig.cloud.items("ports", r)}
    for server in scheduled_servers(rig.cloud):
        doc = objects[server["id"]]
        host = server["OS-EXT-SRV-ATTR:host"]
        folder = objects[doc["parent_id"]]
        assert folder["id"] == stable_id(host, "instances") and folder["type"] == "instances_folder"
        assert folder["parent_id"] == host and objects[host]["type"] == "host"
        port = ports[server["id"]]
        assert (doc["name"], doc["project_id"], doc["host"]) == (server["name"], server["tenant_id"], host)
        assert doc["network"] == [port["network_id"]]
        assert doc["mac_address"] == port["mac_address"]
        assert doc["ip_address"] == port["fixed_ips"][0]["ip_address"]
    unscheduled = [s["id"] for r in rig.cloud.regions for s in rig.cloud.items("servers", r)
                   if not s["OS-EXT-SRV-ATTR:host"]]
    assert unscheduled and not set(unscheduled) & set(objects)


def test_hosts_carry_hypervisor_and_service_data(rig: Rig) -> None:
    assert_complete(rig.scan())
    objects = rig.objects()
    for region in rig.cloud.regions.values():
        for name, host in region.hosts.items():
            doc = objects[name]
            assert sorted(doc["services"]) == sorted(host["binaries"])
            if "nova-compute" in host["binaries"]:
                assert doc["host_type"] == ["Compute"]
                assert doc["ip_address"] == host["host_ip"]
                assert doc["hypervisor"]["hypervisor_type"] == "QEMU"
            else:
                assert doc["host_type"] == ["Controller"]


def test_private_flavors_and_all_tenants_are_read(rig: Rig) -> None:
    """The client must ask for every project's servers and volumes and for private flavors."""
    assert_complete(rig.scan())
    types = Counter(o["type"] for o in rig.objects().values())
    regions = len(SIZE.regions)
    assert types["flavor"] == SIZE.flavors * regions
    assert types["instance"] == SIZE.instances * regions
    assert types["volume"] == SIZE.volumes * regions


def test_links_are_the_clouds_truth(rig: Rig) -> None:
    summary = rig.scan()
    assert_complete(summary)
    expected = rig.cloud.expected_links()
    found = rig.links()
    assert expected - found == set(), "links the scan missed"
    assert found - expected == set(), "links the cloud does not have"
    kinds = Counter(t for t, _, _ in found)
    for kind in ("host-instance", "instance-port", "port-network", "network-subnet", "router-network",
                 "floatingip-port", "volume-instance", "loadbalancer-port", "port-security_group"):
        assert kinds[kind] > 0, kind
    assert summary.links == len(expected)


def test_link_state_follows_the_data(rig: Rig) -> None:
    server = scheduled_servers(rig.cloud)[0]
    port = next(p for p in rig.cloud.items("ports") if p["device_id"] == server["id"])
    rig.cloud.update("ports", port["id"], admin_state_up=False)
    assert_complete(rig.scan())
    states = {(lk["link_type"], lk["source_id"], lk["target_id"]): lk["state"] for lk in rig.store.find_links(ENV)}
    assert states[("port-network", port["id"], port["network_id"])] == "down"
    assert states[("host-instance", server["OS-EXT-SRV-ATTR:host"], server["id"])] == "up"


def test_every_instance_has_a_clique_reaching_its_host_port_and_network(rig: Rig) -> None:
    summary = rig.scan()
    assert_complete(summary)
    cliques = {c["focal_point"]: c for c in rig.store.find_cliques(ENV)}
    ports = {p["device_id"]: p for r in rig.cloud.regions for p in rig.cloud.items("ports", r)}
    servers = scheduled_servers(rig.cloud)
    for server in servers:
        clique = cliques[server["id"]]
        assert clique["focal_point_type"] == "instance"
        port = ports[server["id"]]
        subnet = port["fixed_ips"][0]["subnet_id"]
        assert {server["id"], server["OS-EXT-SRV-ATTR:host"], port["id"], port["network_id"], subnet} <= \
            set(clique["nodes"])
    assert summary.cliques == len(cliques) >= len(servers)


# --------------------------------------------------------------------------------------------------
# rescans


def test_second_scan_of_an_unchanged_cloud_writes_nothing(rig: Rig) -> None:
    first = rig.scan()
    assert_complete(first)
    assert first.objects_written > 0 and first.links_written > 0 and first.cliques_written > 0
    second = rig.scan()  # service heartbeats (updated_at) have moved on in between
    assert_complete(second)
    assert (second.objects_written, second.links_written, second.cliques_written) == (0, 0, 0)
    assert (second.objects_deleted, second.links_deleted, second.cliques_deleted) == (0, 0, 0)
    assert second.links == first.links and second.cliques == first.cliques


def test_deleted_instances_go_with_their_links_and_cliques(rig: Rig) -> None:
    assert_complete(rig.scan())
    servers = scheduled_servers(rig.cloud)
    doomed = {s["id"] for s in servers[: len(servers) // 2]}
    doomed_ports = {p["id"] for r in rig.cloud.regions for p in rig.cloud.items("ports", r)
                    if p["device_id"] in doomed}
    for region in rig.cloud.regions:
        rig.cloud.delete_servers({s for s in doomed if s in rig.cloud.regions[region].servers}, region)

    summary = rig.scan()
    assert_complete(summary)
    objects = rig.objects()
    assert not (doomed | doomed_ports) & set(objects)
    assert summary.objects_deleted == len(doomed) + len(doomed_ports)
    assert rig.map() == rig.cloud.expected_objects(ENV)
    assert not [lk for lk in rig.links() if {lk[1], lk[2]} & (doomed | doomed_ports)]
    assert rig.links() == rig.cloud.expected_links()
    cliques = rig.store.find_cliques(ENV)
    assert not {c["focal_point"] for c in cliques} & doomed
    assert not rig.store.find_cliques(ENV, containing=sorted(doomed | doomed_ports))
    # (summary.links_deleted / cliques_deleted stay 0 here: the store cascades them with the objects)


def test_a_renamed_network_is_rewritten(rig: Rig) -> None:
    assert_complete(rig.scan())
    net = next(n for n in rig.cloud.items("networks") if not n["router:external"])
    rig.cloud.rename("networks", net["id"], "renamed-net")
    summary = rig.scan()
    assert_complete(summary)
    doc = rig.objects()[net["id"]]
    assert doc["name"] == "renamed-net"
    assert doc["name_path"].endswith("/renamed-net")
    assert summary.objects_written >= 1
    assert summary.objects_deleted == 0
    children = [o for o in rig.objects().values() if o["parent_id"] in (stable_id(net["id"], "ports"),)]
    assert children and all("/renamed-net/" in o["name_path"] for o in children)


# --------------------------------------------------------------------------------------------------
# bad input: the scan says what is wrong and never deletes on a partial view


def test_wrong_password_fails_clearly_and_deletes_nothing(rig: Rig) -> None:
    assert_complete(rig.scan())
    before = rig.map()
    rig.cloud.password = "changed-behind-our-back"
    summary = rig.scan()
    assert summary.status == ScanStatus.FAILED.value
    assert len(summary.errors) == 1
    message = summary.errors[0]
    assert "authentication failed" in message and repr(rig.cloud.user) in message
    assert rig.server.auth_url in message
    assert rig.cloud.password not in message and "fake-cloud-pa55word" not in message
    assert rig.map() == before
    logged = rig.store.find_messages(ENV, level="error")
    assert logged and "authentication failed" in str(logged[0]["message"])


def test_unreachable_keystone_fails(tmp_path: Path) -> None:
    cloud = FakeCloud(SIZE)
    with FakeCloudServer(cloud) as server:
        rig = make_rig(tmp_path, cloud, server)
        assert_complete(rig.scan())
        before = rig.map()
    # the server is gone: its port is closed
    summary = rig.scan()
    assert summary.status == ScanStatus.FAILED.value
    assert "cannot reach Keystone" in summary.errors[0]
    assert rig.map() == before


def test_keystone_on_a_closed_port_fails(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path}/s.db")
    box = SecretBox(tmp_path / "k")
    add_environment(store, box, environment(ENV, closed_port_url() + "/identity/v3", "admin", "x"))
    started = time.perf_counter()
    summary = Scanner(store, box, ENV).run()
    assert summary.status == ScanStatus.FAILED.value
    assert "cannot reach Keystone" in summary.errors[0]
    assert time.perf_counter() - started < 30


def test_a_500_on_one_collection_reports_it_and_deletes_nothing(rig: Rig) -> None:
    assert_complete(rig.scan())
    before, links_before = rig.map(), rig.links()
    servers = scheduled_servers(rig.cloud)
    rig.cloud.delete_servers([servers[0]["id"]])  # a complete scan would delete it (and its port)
    rig.server.fail(rig.server.path("network", "/ports"))
    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    assert any("ports" in e and "500" in e for e in summary.errors), summary.errors
    assert summary.objects_deleted == summary.links_deleted == 0
    assert rig.map() == before
    assert rig.links() == links_before


def test_a_500_on_a_later_page_deletes_nothing(rig: Rig) -> None:
    """A collection read halfway (page 1 fine, page 2 failing) must not look like a shorter cloud."""
    assert_complete(rig.scan())
    before = rig.map()
    rig.server.fail(rig.server.path("compute", "/servers/detail"), after=1)
    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    assert any("servers" in e for e in summary.errors), summary.errors
    assert summary.objects_deleted == summary.links_deleted == 0
    assert rig.map() == before


def test_an_unreachable_compute_endpoint_is_an_error_not_a_failure(rig: Rig) -> None:
    rig.server.point_service_at("compute", closed_port_url() + "/compute/v2.1")
    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    assert any("compute" in e and "cannot reach" in e for e in summary.errors), summary.errors
    types = Counter(o["type"] for o in rig.objects().values())
    assert types["network"] == (SIZE.networks + 1) * len(SIZE.regions)  # neutron was still read
    assert types["instance"] == 0


def test_missing_volume_service_is_a_warning(rig: Rig) -> None:
    rig.server.remove_service("block-storage")
    summary = rig.scan()
    assert_complete(summary)
    assert any(w.startswith("volumes:") and "not in the catalog" in w for w in summary.warnings), summary.warnings
    assert any(w.startswith("snapshots:") for w in summary.warnings)
    types = Counter(o["type"] for o in rig.objects().values())
    assert types["volume"] == types["snapshot"] == 0
    assert types["instance"] == SIZE.instances * len(SIZE.regions)
    assert not rig.server.requests[rig.server.path("block-storage", "/volumes/detail")]


def test_missing_compute_service_is_an_error_and_deletes_nothing(rig: Rig) -> None:
    assert_complete(rig.scan())
    before = rig.map()
    rig.server.remove_service("compute")
    summary = rig.scan()
    assert summary.status == ScanStatus.COMPLETED_WITH_ERRORS.value
    assert any("servers" in e and "no compute service" in e for e in summary.errors), summary.errors
    assert summary.objects_deleted == 0
    assert rig.map() == before


def test_missing_service_in_one_region_only(rig: Rig) -> None:
    rig.server.remove_service("load-balancer", "RegionTwo")
    summary = rig.scan()
    assert_complete(summary)
    assert any("load_balancers" in w and "RegionTwo" in w for w in summary.warnings)
    lbs = [o for o in rig.objects().values() if o["type"] == "load_balancer"]
    assert [lb["region"] for lb in lbs] == ["RegionOne"] * SIZE.load_balancers


@pytest.mark.parametrize("content, expected", [
    ("{ not json", "is not valid JSON"),
    ('{"scanners": {"ScanEnvironment": [{"type": "x", "fetcher": "NoSuchFetcher"}]}}', "NoSuchFetcher"),
    ('{"scanners": {}}', "ScanEnvironment"),
])
def test_malformed_scanners_file_fails_naming_the_file(rig: Rig, tmp_path: Path, content: str, expected: str) -> None:
    assert_complete(rig.scan())
    before = rig.map()
    bad = tmp_path / "bad-scanners.json"
    bad.write_text(content)
    summary = rig.scan(ScanOptions(scanners_file=str(bad)))
    assert summary.status == ScanStatus.FAILED.value
    assert str(bad) in summary.errors[0] and expected in summary.errors[0]
    assert rig.server.requests[rig.server.path("compute", "/servers/detail")] == SIZE.instances // PAGE + 1
    assert rig.map() == before


def test_missing_scanners_file_fails_naming_the_file(rig: Rig, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    summary = rig.scan(ScanOptions(scanners_file=str(missing)))
    assert summary.status == ScanStatus.FAILED.value
    assert str(missing) in summary.errors[0]
    assert rig.server.calls == 0  # checked before any API call


def test_slow_collections_are_read_concurrently(rig: Rig) -> None:
    delay = 1.0
    for service, path in (("compute", "/servers/detail"), ("network", "/ports"), ("image", "/images")):
        rig.server.slow(rig.server.path(service, path), delay, times=1)
    summary = rig.scan()
    assert_complete(summary)
    assert rig.map() == rig.cloud.expected_objects(ENV)
    assert delay <= summary.phase_seconds["inventory"] < 2.5 * delay  # three 1 s waits overlapped


def test_api_calls_do_not_grow_with_objects_except_paging(tmp_path: Path) -> None:
    calls = []
    for n, instances in enumerate((6, 60)):
        cloud = FakeCloud(CloudSize(instances=instances, volumes=instances // 2))
        with FakeCloudServer(cloud, max_limit=1000) as server:
            sub = tmp_path / str(n)
            sub.mkdir()
            summary = make_rig(sub, cloud, server).scan()
            assert_complete(summary)
            calls.append((summary.api_calls, server.calls))
    assert calls[0] == calls[1]
    assert calls[0][0] == calls[0][1]  # the scan's own count agrees with what the server saw


# --------------------------------------------------------------------------------------------------
# aggregates, and regressions of bugs found in the discovery code (glance paging behind a path
# prefix, server groups' project_id needing microversion 2.13)


def test_glance_paging_behind_a_path_prefix(tmp_path: Path) -> None:
    cloud = FakeCloud(CloudSize(images=9))
    with FakeCloudServer(cloud, max_limit=4) as server:
        rig = make_rig(tmp_path, cloud, server)
        summary = rig.scan()
        assert_complete(summary)
        assert rig.server.requests[rig.server.path("image", "/images")] == 3
        assert rig.map() == cloud.expected_objects(ENV)


def test_aggregate_hosts_are_mapped(tmp_path: Path) -> None:
    cloud = FakeCloud(CloudSize(aggregates=2))
    with FakeCloudServer(cloud) as server:
        rig = make_rig(tmp_path, cloud, server)
        assert_complete(rig.scan())
        refs = {(o["parent_id"], o["name"]) for o in rig.objects().values() if o["type"] == "host_ref"}
        assert refs == cloud.expected_host_refs()
        assert rig.map() == cloud.expected_objects(ENV)


def test_server_groups_are_mapped(tmp_path: Path) -> None:
    cloud = FakeCloud(CloudSize(server_groups=3))
    with FakeCloudServer(cloud) as server:
        rig = make_rig(tmp_path, cloud, server)
        assert_complete(rig.scan())
        groups = {o["id"]: o for o in rig.objects().values() if o["type"] == "server_group"}
        assert {g["id"]: sorted(g["members"]) for g in cloud.items("server_groups")} == \
            {gid: g["members"] for gid, g in groups.items()}
        assert rig.map() == cloud.expected_objects(ENV)
