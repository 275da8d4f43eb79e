"""A scan of an environment with a CLI section: the Scanner hands its fetchers an SSH runner as
``FetchContext.hosts`` and closes it when the walk is done.

The cloud is the fake OpenStack API over HTTP; its hosts are namespace hosts with real sshds
(tests/hostbed.py). A probe fetcher, added under each host for this test, asks ``ctx.hosts`` for a
command's output on all hosts of its level at once - the way host-level fetchers do - and stores it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from stackmap.discovery.api.fetchers import Doc, FetchContext, Fetcher
from stackmap.discovery.host.facts import HostFacts
from stackmap.discovery.scan import Scanner
from stackmap.discovery.scanners import ScannerEntry, ScannersConfig, load_scanners
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig, stable_id
from stackmap.secrets import SecretBox
from stackmap.settings import SshSettings
from stackmap.store import Store, open_store
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer
from tests.hostbed import HostBed, TestHost, missing_requirements

pytestmark = [
    pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements())),
    pytest.mark.filterwarnings("ignore:The 'service_type' parameter is unnecesary"),
]

ENV = "sshlab"
# how sshd logs the end of a connection (paramiko closes the socket without a disconnect message)
ENDED = re.compile(r"Disconnected from|Connection reset by peer|Connection closed by|Received disconnect")
SIZE = CloudSize(projects=1, hosts=3, instances=2, networks=1, routers=1, floating_ips=0, security_groups=1,
                 volumes=0, snapshots=0, flavors=1, images=1, aggregates=0, load_balancers=0, server_groups=0)


class ProbeHosts(Fetcher):
    """Stands in for a host-level fetcher: one ``collect()`` for the whole level, one child per host."""

    name = "TestProbeHosts"
    object_type = "host_probe"
    addresses: ClassVar[list[str]] = []  # bed addresses, given to the cloud's hosts in id order
    placed: ClassVar[dict[str, str]] = {}  # cloud host id -> the bed address it was given
    seen: ClassVar[list[Any]] = []  # the FactsSource each scan handed over

    def fetch(self, parents: list[Doc], ctx: FetchContext) -> list[Doc]:
        ProbeHosts.seen.append(ctx.hosts)
        if ctx.hosts is None:
            return []
        ids = sorted(p["id"] for p in parents if p.get("type") == "host")
        ProbeHosts.placed = dict(zip(ids, self.addresses, strict=False))
        hosts = [dict(p, ip_address=self.placed[p["id"]]) for p in parents if p["id"] in self.placed]
        facts: dict[str, HostFacts] = ctx.hosts.collect(hosts, {"addr": "ip -o -4 addr show eth0"})
        return [{"id": stable_id(host_id, "probe"), "name": f"{host_id}-probe", "parent_id": host_id,
                 "reached_at": f.address, "error": f.error,
                 "addr": f.outputs["addr"].stdout.split()[3] if "addr" in f.outputs else None}
                for host_id, f in sorted(facts.items())]


def scanners_with_probe() -> ScannersConfig:
    config = load_scanners()
    scanners = dict(config.scanners)
    scanners["ScanHost"] = [*scanners["ScanHost"], ScannerEntry(type="host_probe", fetcher="TestProbeHosts")]
    return ScannersConfig(scanners=scanners)


@pytest.fixture
def bed() -> Iterator[HostBed]:
    with HostBed("sc") as b:
        yield b


@pytest.fixture
def cloud() -> Iterator[tuple[FakeCloud, FakeCloudServer]]:
    fake = FakeCloud(SIZE)
    with FakeCloudServer(fake) as server:
        yield fake, server


def make_env(store: Store, box: SecretBox, fake: FakeCloud, server: FakeCloudServer, cli: dict[str, Any] | None
             ) -> None:
    sections: list[dict[str, Any]] = [{"name": "OpenStack", "auth_url": server.auth_url, "user": fake.user,
                                       "pwd": fake.password, "project": "admin"}]
    if cli is not None:
        sections.append(cli)
    add_environment(store, box, EnvironmentConfig.model_validate({
        "name": ENV, "distribution": "Stock", "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
        "configuration": sections}))


def test_a_scan_reads_its_hosts_over_one_runner_and_closes_it(
        bed: HostBed, cloud: tuple[FakeCloud, FakeCloudServer], tmp_path: Path) -> None:
    fake, server = cloud
    hosts: list[TestHost] = [bed.add_host(f"n{i}") for i in range(3)]
    for host in hosts[:2]:
        host.start_sshd()  # the third host has no sshd: unreachable
    ProbeHosts.addresses = [host.ip for host in hosts]
    ProbeHosts.seen = []
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    box = SecretBox(tmp_path / "k")
    make_env(store, box, fake, server, {"name": "CLI", "host": hosts[0].ip, "user": "root", "key": bed.client_key})
    stored_key = next(s for s in store.get_environment(ENV)["configuration"] if s["name"] == "CLI")["key"]
    assert stored_key != bed.client_key  # sealed at rest; the runner reveals it only to paramiko
    summary = Scanner(store, box, ENV, scanners=scanners_with_probe(),
                      ssh=SshSettings(connect_timeout_s=3, connect_retries=0)).run()
    probes = {o["parent_id"]: o for o in store.find_objects(ENV, type="host_probe")}
    ids = sorted(ProbeHosts.placed)
    assert len(ids) == 3 and set(probes) == set(ids), summary.errors
    for host_id, host in zip(ids[:2], hosts[:2], strict=True):
        assert probes[host_id]["error"] is None
        assert probes[host_id]["addr"] == f"{host.ip}/{bed.subnet.prefixlen}"  # read on that very host
    assert "cannot reach" in probes[ids[2]]["error"] and hosts[2].ip in probes[ids[2]]["error"]
    runner = ProbeHosts.seen[0]
    assert len(ProbeHosts.seen) == 1 and runner.stats.execs == {ids[0]: 1, ids[1]: 1}
    assert runner._clients == {}  # closed at the end of the scan...
    for host in hosts[:2]:  # ...as the sshds saw: the connection ended (logged a moment later)
        deadline = time.monotonic() + 5
        while not ENDED.search(host.sshd_log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ENDED.search(host.sshd_log()), host.sshd_log()
        assert host.sshd_log().count("Accepted publickey") == 1
    assert store.get_host_key(ENV, hosts[0].ip) is not None  # pinned on first use (default policy)
    store.close()


def test_without_a_cli_section_there_is_no_runner_and_with_a_broken_one_every_host_says_why(
        bed: HostBed, cloud: tuple[FakeCloud, FakeCloudServer], tmp_path: Path) -> None:
    fake, server = cloud
    ProbeHosts.addresses = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
    ProbeHosts.seen = []
    store = open_store(f"sqlite:///{tmp_path / 's.db'}")
    box = SecretBox(tmp_path / "k")
    make_env(store, box, fake, server, None)
    Scanner(store, box, ENV, scanners=scanners_with_probe()).run()
    assert ProbeHosts.seen == [None] and store.find_objects(ENV, type="host_probe") == []
    store.remove_environment(ENV)
    make_env(store, box, fake, server, {"name": "CLI", "host": "192.0.2.10", "user": "root", "pwd": "x"})
    missing = tmp_path / "no_known_hosts"
    summary = Scanner(store, box, ENV, scanners=scanners_with_probe(),
                      ssh=SshSettings(host_key_policy="known_hosts", known_hosts=missing)).run()
    assert any(f"known_hosts file {missing} does not exist" in e for e in summary.errors)
    probes = store.find_objects(ENV, type="host_probe")
    assert len(probes) == 3 and all("SSH unavailable" in p["error"] for p in probes)
    store.close()
