"""The Sensu check scripts: decisions on recorded command output, and the real commands here
(loopback, a network namespace, a bridge) where this machine allows them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from daemons.monitor_handler.checks.otep import checksum, evaluate_otep
from daemons.monitor_handler.checks.pnic import evaluate_pnic
from daemons.monitor_handler.checks.vconnector import evaluate_vconnector
from daemons.monitor_handler.checks.vedge import evaluate_processes
from daemons.monitor_handler.checks.vnic_link import evaluate_vnic_link
from daemons.monitor_handler.checks.vservice import evaluate_vservice, parse_netns_list
from daemons.monitor_handler.results import Status

UP = {"ifname": "eth0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"], "operstate": "UP",
      "address": "fe:16:3e:00:00:09", "master": "brq1", "mtu": 1500}
NO_CARRIER = {**UP, "flags": ["BROADCAST", "MULTICAST", "UP", "NO-CARRIER"], "operstate": "DOWN"}
ADMIN_DOWN = {**UP, "flags": ["BROADCAST", "MULTICAST"], "operstate": "DOWN"}


def run_check(module: str, *args: str, netns: str | None = None) -> tuple[int, str]:
    cmd = [sys.executable, "-m", f"daemons.monitor_handler.checks.{module}", *args]
    if netns:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=os.getcwd())
    return proc.returncode, proc.stdout.strip()


# -- decisions on recorded output ------------------------------------------------------------------

def test_pnic_decisions() -> None:
    assert evaluate_pnic([UP], "eth0")[0] is Status.OK
    assert evaluate_pnic([NO_CARRIER], "eth0") == (Status.CRITICAL, "interface eth0 no carrier (operstate DOWN, mtu "
                                                                    "1500, mac fe:16:3e:00:00:09)")
    assert evaluate_pnic([ADMIN_DOWN], "eth0")[0] is Status.CRITICAL
    assert evaluate_pnic([], "eth0") == (Status.CRITICAL, "interface eth0 not found")


def test_vnic_link_decisions() -> None:
    assert evaluate_vnic_link([UP], "tap1", bridge="brq1", mac="fa:16:3e:00:00:09")[0] is Status.OK
    assert "not attached to brq2" in evaluate_vnic_link([UP], "tap1", bridge="brq2")[1]
    assert evaluate_vnic_link([UP], "tap1", mac="fa:16:3e:00:00:01")[0] is Status.CRITICAL
    assert evaluate_vnic_link([NO_CARRIER], "tap1")[0] is Status.CRITICAL
    assert evaluate_vnic_link([], "tap1")[0] is Status.CRITICAL


def test_vconnector_decisions() -> None:
    bridge = {**UP, "ifname": "brq1", "linkinfo": {"info_kind": "bridge"}}
    assert evaluate_vconnector([bridge], [UP, NO_CARRIER], "brq1") == (Status.OK, "bridge brq1: 2 port(s), 1 up")
    assert evaluate_vconnector([bridge], [NO_CARRIER], "brq1")[0] is Status.WARNING
    assert evaluate_vconnector([bridge], [], "brq1")[0] is Status.WARNING
    assert evaluate_vconnector([bridge], [], "brq1", min_ports=0)[0] is Status.OK
    assert evaluate_vconnector([{**bridge, "flags": []}], [UP], "brq1")[0] is Status.CRITICAL
    assert evaluate_vconnector([{**UP, "linkinfo": {"info_kind": "veth"}}], [], "eth0")[0] is Status.WARNING
    assert evaluate_vconnector([], [], "brq1")[0] is Status.CRITICAL


def test_vservice_decisions() -> None:
    listing = parse_netns_list("qdhcp-n1 (id: 3)\nqrouter-r1\n\n")
    assert listing == ["qdhcp-n1", "qrouter-r1"]
    assert evaluate_vservice(listing, [812], "dhcp", "qdhcp-n1")[0] is Status.OK
    assert evaluate_vservice(listing, [], "dhcp", "qdhcp-n1")[0] is Status.CRITICAL
    assert evaluate_vservice(listing, None, "router", "qrouter-r1")[0] is Status.OK
    assert evaluate_vservice(listing, None, "router", "qrouter-r2")[0] is Status.CRITICAL


def test_vedge_decisions() -> None:
    running = {"ovs-vswitchd": [100], "ovsdb-server": [99], "vpp_main": [7]}
    assert evaluate_processes(running, ["ovs-vswitchd", "ovsdb-server"])[0] is Status.OK
    assert evaluate_processes({"ovsdb-server": [99]}, ["ovs-vswitchd", "ovsdb-server"]) == (
        Status.CRITICAL, "vEdge process(es) not running: ovs-vswitchd")
    assert evaluate_processes(running, ["vpp|vpp_main"])[0] is Status.OK


def test_otep_rollup_fixes_calipsos_always_critical() -> None:
    assert evaluate_otep({"10.0.0.2": 0.001, "10.0.0.3": 0.002})[0] is Status.OK
    assert evaluate_otep({"10.0.0.2": 0.001, "10.0.0.3": None})[0] is Status.WARNING
    assert evaluate_otep({"10.0.0.2": None})[0] is Status.CRITICAL
    assert evaluate_otep({})[0] is Status.UNKNOWN
    assert checksum(b"\x08\x00\x00\x00\x00\x01\x00\x01") == 0xF7FD


# -- the scripts, run for real ----------------------------------------------------------------------

def test_pnic_check_on_loopback_and_a_missing_interface() -> None:
    code, out = run_check("pnic", "lo")
    assert code == 0 and out.startswith("stackmap_pnic OK: interface lo up")
    code, out = run_check("pnic", "nosuch-if0")
    assert code == 2 and "not found" in out


def test_vnic_link_check_on_loopback() -> None:
    assert run_check("vnic_link", "lo", "--mac", "00:00:00:00:00:00")[0] == 0
    code, out = run_check("vnic_link", "lo", "--bridge", "br-nothing")
    assert code == 2 and "not attached" in out


def test_vedge_check_finds_this_very_process_and_misses_ovs() -> None:
    me = open("/proc/self/comm").read().strip()  # noqa: SIM115 - one line of /proc
    assert run_check("vedge", "--process", f"{me}|python3|python")[0] == 0
    code, out = run_check("vedge", "--type", "ovs")
    assert code == 2 and "ovs-vswitchd" in out


def test_otep_check_pings_loopback() -> None:
    code, out = run_check("otep", "--wait", "1", "--source", "127.0.0.1", "127.0.0.1")
    assert code == 0, out
    assert "1/1 tunnel endpoints reachable" in out


def test_a_check_that_cannot_find_out_says_unknown(tmp_path: object) -> None:
    env = {**os.environ, "PATH": "/nonexistent"}
    proc = subprocess.run([sys.executable, "-m", "daemons.monitor_handler.checks.pnic", "lo"], capture_output=True,
                          text=True, timeout=30, env=env)
    assert proc.returncode == 3 and "not found" in proc.stdout


def _root_net_admin() -> bool:
    if os.geteuid() != 0:
        return False
    name = f"smp{uuid.uuid4().hex[:6]}"
    ok = subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return ok


needs_netns = pytest.mark.skipif(not _root_net_admin(), reason="needs root and network namespaces")


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"smt{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    yield name
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


@needs_netns
def test_vservice_check_with_a_real_namespace(netns: str) -> None:
    assert run_check("vservice", "router", netns)[0] == 0
    code, out = run_check("vservice", "dhcp", netns)  # nothing runs in it: DHCP is down
    assert code == 2 and "no running process" in out
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "30"])
    try:
        for _ in range(50):
            if subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.strip():
                break
            subprocess.run(["sleep", "0.1"])
        assert run_check("vservice", "dhcp", netns)[0] == 0
    finally:
        sleeper.kill()
        sleeper.wait()
    assert run_check("vservice", "dhcp", f"{netns}-gone")[0] == 2


@needs_netns
def test_otep_check_inside_a_namespace_reaches_some_endpoints(netns: str) -> None:
    code, out = run_check("otep", "--wait", "0.3", "--count", "1", "127.0.0.1", "10.255.255.1", netns=netns)
    assert code == 1 and "unreachable: 10.255.255.1" in out
    assert run_check("otep", "--wait", "0.3", "--count", "1", "10.255.255.1", netns=netns)[0] == 2


@needs_netns
def test_bridge_checks_with_a_real_bridge_and_veth(netns: str) -> None:
    def ip(*args: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, "ip", *args], check=True)

    ip("link", "add", "br-t", "type", "bridge")
    ip("link", "add", "tap-t", "type", "veth", "peer", "name", "tap-p")
    ip("link", "set", "tap-t", "master", "br-t")
    code, out = run_check("vconnector", "br-t", netns=netns)
    assert code == 2 and "administratively down" in out
    for dev in ("br-t", "tap-t", "tap-p"):
        ip("link", "set", dev, "up")
    code, out = run_check("vconnector", "br-t", netns=netns)
    assert code == 0 and "1 port(s), 1 up" in out, out
    assert run_check("vnic_link", "tap-t", "--bridge", "br-t", netns=netns)[0] == 0
    assert run_check("pnic", "tap-t", netns=netns)[0] == 0
    ip("link", "set", "tap-p", "down")  # the peer goes away: no carrier
    assert run_check("pnic", "tap-t", netns=netns)[0] == 2
