"""Which host fetchers a scan runs, by mechanism driver (config/scanners.json's environment_condition)."""

from __future__ import annotations

import pytest

from stackmap.discovery.api.fetchers import FetchContext, Fetcher
from stackmap.discovery.api.resources import ResourceCache
from stackmap.discovery.engine import Engine
from stackmap.discovery.scanners import load_scanners

LXB_ONLY = {"CliOtepsLxb"}
OVS_ONLY = {"CliVedgesOvs", "CliOtepsOvs"}
VPP_ONLY = {"CliVedgesVpp"}
EVERY_CLOUD = {"CliHostPnics", "CliVservices", "CliVserviceVnics", "CliVconnectors", "CliInstanceVnics"}


def fetchers_run(drivers: list[str]) -> set[str]:
    ctx = FetchContext("e", ResourceCache(None, []), {"mechanism_drivers": drivers})  # type: ignore[arg-type]
    engine = Engine(load_scanners(), ctx)
    found = {entry.fetcher for entry in engine.entries_from() if isinstance(entry.fetcher, str)}
    return {name for name in found if Fetcher.registry[name].__module__.endswith(".host.fetchers")}


@pytest.mark.parametrize(("drivers", "expected"), [
    (["OVS"], EVERY_CLOUD | OVS_ONLY),
    (["openvswitch"], EVERY_CLOUD | OVS_ONLY),
    (["LXB"], EVERY_CLOUD | LXB_ONLY),
    (["linuxbridge"], EVERY_CLOUD | LXB_ONLY),
    (["VPP"], EVERY_CLOUD | VPP_ONLY),
    (["OVS", "LXB"], EVERY_CLOUD | OVS_ONLY | LXB_ONLY),
])
def test_mechanism_drivers_choose_the_host_fetchers(drivers: list[str], expected: set[str]) -> None:
    assert fetchers_run(drivers) == expected


def test_every_host_fetcher_is_reachable_and_needs_hosts_except_derived_oteps() -> None:
    host_fetchers = {n for n, cls in Fetcher.registry.items() if cls.__module__.endswith(".host.fetchers")}
    assert fetchers_run(["OVS", "LXB", "VPP"]) == host_fetchers
    assert {n for n in host_fetchers if not Fetcher.registry[n].needs_hosts} == {"CliOtepsOvs"}
