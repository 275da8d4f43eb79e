"""The namespace host bed itself: hosts are reachable, isolated from each other, and fully removed."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator

import pytest

from tests.hostbed import HostBed, _pids_in_netns, missing_requirements

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))


@pytest.fixture
def bed() -> Iterator[HostBed]:
    with HostBed("tb") as b:
        yield b


def _connects(address: str, port: int = 22, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            return sock.recv(7).startswith(b"SSH-2.0")
    except OSError:
        return False


def test_hosts_are_reachable_from_the_root_namespace(bed: HostBed) -> None:
    a, b = bed.add_host("a"), bed.add_host("b")
    assert a.ip != b.ip
    a.start_sshd()
    assert _connects(a.ip)
    assert not _connects(b.ip, timeout=1.0)  # no sshd there: refused, not some other host answering
    links = json.loads(a.exec(["ip", "-j", "addr", "show", "eth0"]).stdout)
    assert [info["local"] for info in links[0]["addr_info"] if info["family"] == "inet"] == [a.ip]


def test_each_host_has_its_own_netns_list_and_ovs_run_dir(bed: HostBed) -> None:
    a, b = bed.add_host("a"), bed.add_host("b")
    a.exec(["ip", "netns", "add", f"qrouter-{bed.prefix}"])
    assert a.exec(["ip", "netns", "list"]).stdout.split()[0] == f"qrouter-{bed.prefix}"
    assert b.exec(["ip", "netns", "list"]).stdout == ""
    root = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"qrouter-{bed.prefix}" not in root
    marker = f"{bed.prefix}.sock"
    a.exec(["touch", f"/run/openvswitch/{marker}"])
    assert a.exec(["ls", "/run/openvswitch"]).stdout.split() == [marker]
    assert b.exec(["ls", "/run/openvswitch"]).stdout == ""
    assert marker not in os.listdir("/run/openvswitch")


def test_host_users_exist_on_that_host_only(bed: HostBed) -> None:
    a, b = bed.add_host("a"), bed.add_host("b")
    a.add_user(f"u{bed.prefix}", password="pw")
    assert a.exec(["id", "-u", f"u{bed.prefix}"]).stdout.strip() == "20000"
    assert b.exec(["id", f"u{bed.prefix}"], check=False).returncode != 0
    assert subprocess.run(["id", f"u{bed.prefix}"], capture_output=True).returncode != 0


def test_a_linked_host_is_reachable_only_through_its_neighbour(bed: HostBed) -> None:
    jump = bed.add_host("jump")
    hidden = bed.add_host("hidden", bridged=False)
    _ip_jump, ip_hidden = bed.link(jump, hidden)
    hidden.start_sshd()
    assert hidden.ip == ip_hidden
    assert not _connects(ip_hidden, timeout=1.0)
    probe = jump.exec(["bash", "-c", f"exec 3<>/dev/tcp/{ip_hidden}/22 && head -c 7 <&3"], check=False)
    assert probe.stdout == "SSH-2.0"


def test_close_removes_processes_links_and_files() -> None:
    bed = HostBed("tc")
    a = bed.add_host("a")
    b = bed.add_host("b", bridged=False)
    bed.link(a, b)
    a.start_sshd()
    a.exec(["ip", "netns", "add", "inner"])
    inodes = list(bed._inodes)
    anchors = [a.pid, b.pid]
    directory = bed.dir
    bed.close()
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    assert bed.prefix not in links
    assert all(_pids_in_netns(inode) == [] for inode in inodes)
    assert all(not os.path.exists(f"/proc/{pid}") for pid in anchors)
    assert not directory.exists()
    bed.close()  # twice is harmless
