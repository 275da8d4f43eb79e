"""The SSH runner against real OpenSSH servers in namespace hosts (tests/hostbed.py), real paramiko.

Each test builds the hosts it needs in its own bed (unique names, torn down after), and a store
file of its own for pinned host keys.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from stackmap.discovery.host.hostkeys import fingerprint
from stackmap.discovery.host.ssh import SshRunner, load_private_key
from stackmap.logging import configure_logging
from stackmap.model import CLISection
from stackmap.secrets import SecretBox
from stackmap.settings import SshSettings
from stackmap.store import Store, open_store
from tests.hostbed import HostBed, TestHost, missing_requirements

pytestmark = pytest.mark.skipif(missing_requirements() is not None, reason=str(missing_requirements()))

ENV = "lab"


@pytest.fixture
def bed() -> Iterator[HostBed]:
    with HostBed("ts") as b:
        yield b


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield s
    s.close()


@pytest.fixture
def box(tmp_path: Path) -> SecretBox:
    b = SecretBox(tmp_path / "secret.key")
    b.create_key()
    return b


def sshd_hosts(bed: HostBed, count: int, prefix: str = "h") -> list[TestHost]:
    hosts = [bed.add_host(f"{prefix}{i}") for i in range(count)]
    for host in hosts:
        host.start_sshd()
    return hosts


def doc(host: TestHost) -> dict[str, Any]:
    return {"id": host.name, "name": host.name, "type": "host", "ip_address": host.ip}


def cli(host: TestHost | str, bed: HostBed, box: SecretBox, **extra: Any) -> CLISection:
    """A CLI section as environments store it: secrets sealed."""
    fields: dict[str, Any] = {"name": "CLI", "host": host if isinstance(host, str) else host.ip, "user": "root",
                              "key": SecretStr(box.seal(bed.client_key))}
    fields.update(extra)
    return CLISection(**fields)


def runner(section: CLISection, box: SecretBox, store: Store, **settings: Any) -> SshRunner:
    return SshRunner(section, box, SshSettings(**settings), store=store, environment=ENV)


def addresses_of(output: str) -> list[str]:
    return [a["local"] for link in json.loads(output) for a in link.get("addr_info", []) if a["family"] == "inet"]


def test_commands_run_on_each_host_and_come_back_per_command(bed: HostBed, box: SecretBox, store: Store) -> None:
    a, b = sshd_hosts(bed, 2)
    commands = {
        "addr": "ip -j addr show eth0",
        "both": "echo out; echo err >&2",
        "fails": "echo partial; exit 3",
        "missing": "no-such-tool --version",
        "binary": "printf 'a\\000b\\377'",
        "mimic": "echo STACKMAP-0000000000000000 0 0 999 999",
        "big": "head -c 3000000 /dev/zero | tr '\\000' x; head -c 200000 /dev/zero >&2",
    }
    with runner(cli(a, bed, box), box, store) as run:
        facts = run.collect([doc(a), doc(b)], commands)
    assert set(facts) == {"h0", "h1"}
    for host in (a, b):
        got = facts[host.name]
        assert got.error is None and got.address == host.ip
        assert addresses_of(got.outputs["addr"].stdout) == [host.ip]  # really ran on that host
        both = got.outputs["both"]
        assert (both.stdout, both.stderr, both.exit_status, both.ok) == ("out\n", "err\n", 0, True)
        fails = got.outputs["fails"]
        assert fails.stdout == "partial\n" and fails.exit_status == 3 and fails.error == "exit status 3"
        missing = got.outputs["missing"]
        assert missing.exit_status == 127 and not missing.ok
        assert missing.error is not None and "command not found" in missing.error and "no-such-tool" in missing.error
        assert got.outputs["binary"].stdout == "a\x00b\ufffd"
        assert got.outputs["mimic"].stdout == "STACKMAP-0000000000000000 0 0 999 999\n"
        big = got.outputs["big"]
        assert big.stdout == "x" * 3_000_000 and big.stderr == "\x00" * 200_000 and big.ok


def test_one_exec_per_host_per_call_over_one_connection_per_scan(
        bed: HostBed, box: SecretBox, store: Store) -> None:
    hosts = sshd_hosts(bed, 3)
    commands = {f"c{i}": f"echo {i}" for i in range(8)}
    with runner(cli(hosts[0], bed, box), box, store) as run:
        first = run.collect([doc(h) for h in hosts], commands)
        second = run.collect([doc(h) for h in hosts], {"uname": "uname -s"})
        assert all(f.outputs["c7"].stdout == "7\n" for f in first.values())
        assert all(f.outputs["uname"].stdout == "Linux\n" for f in second.values())
        assert run.stats.execs == {h.name: 2 for h in hosts}
        assert run.stats.connects == {h.ip: 1 for h in hosts}
    for host in hosts:  # what sshd saw: one login, two command sessions
        log = host.sshd_log()
        assert log.count("Accepted publickey for root") == 1, log
        assert log.count("Starting session: command") == 2, log


def test_a_host_only_the_jump_host_reaches(bed: HostBed, box: SecretBox, store: Store) -> None:
    jump = bed.add_host("jump")
    hidden = bed.add_host("hidden", bridged=False)
    jump_side, _ = bed.link(jump, hidden)
    jump.start_sshd()
    hidden.start_sshd()
    section = cli(jump, bed, box)
    with runner(section, box, store) as run:
        facts = run.collect([doc(jump), doc(hidden)], {"addr": "ip -j addr show"})
        assert facts["hidden"].error is None and facts["jump"].error is None
        assert hidden.ip in addresses_of(facts["hidden"].outputs["addr"].stdout)
        assert jump.ip in addresses_of(facts["jump"].outputs["addr"].stdout)
        assert run.stats.connects == {jump.ip: 1, hidden.ip: 1}  # the jump connection also served the jump host
    assert f"from {jump_side}" in hidden.sshd_log()  # the connection came out of the jump host
    with runner(section, box, store, jump_via_cli_host=False, connect_timeout_s=2, connect_retries=0) as direct:
        started = time.monotonic()
        facts = direct.collect([doc(hidden)], {"addr": "true"})
    # no route here (or a gateway that accepts and drops it): either way an error naming the address
    assert facts["hidden"].error is not None and f"{hidden.ip}:22" in facts["hidden"].error
    assert time.monotonic() - started < 8


def test_unreachable_hosts_fail_alone_and_fast(bed: HostBed, box: SecretBox, store: Store) -> None:
    ok = sshd_hosts(bed, 2)
    no_sshd = bed.add_host("nosshd")
    ghost = {"id": "ghost", "ip_address": str(bed.subnet.network_address + 250)}  # nobody has it
    nowhere = {"id": "noaddr", "type": "host"}  # nothing to connect to under policy local
    docs = [doc(ok[0]), doc(no_sshd), ghost, doc(ok[1]), nowhere]
    section = cli(ok[0], bed, box, connection_policy="local")
    with runner(section, box, store, connect_timeout_s=2, connect_retries=1, jump_via_cli_host=False) as run:
        started = time.monotonic()
        facts = run.collect(docs, {"u": "uname -s"})
        elapsed = time.monotonic() - started
        assert run.stats.connects[no_sshd.ip] == 2  # refused is worth one more try (sshd restarting)...
        assert run.stats.connects[ghost["ip_address"]] == 1  # ...no route is not
    assert facts["h0"].outputs["u"].stdout == facts["h1"].outputs["u"].stdout == "Linux\n"
    assert facts["nosshd"].error == f"cannot connect to {no_sshd.ip}:22: connection refused (no sshd?)"
    assert facts["nosshd"].outputs == {}
    assert facts["ghost"].error is not None and facts["ghost"].error.startswith(
        f"cannot connect to {ghost['ip_address']}:22: ")
    assert facts["noaddr"].error is not None and "no address for host noaddr" in facts["noaddr"].error
    assert elapsed < 10  # bounded by the connect timeout, not by the number of hosts
    with runner(section, box, store, connect_timeout_s=2, connect_retries=0) as run:  # through the jump host
        facts = run.collect(docs, {"u": "uname -s"})
    assert facts["h1"].outputs["u"].stdout == "Linux\n"
    assert facts["nosshd"].error == f"jump host {ok[0].ip} cannot reach {no_sshd.ip}:22: Connect failed"
    assert facts["ghost"].error is not None and facts["ghost"].error.startswith(f"jump host {ok[0].ip} cannot reach")


def test_password_login_and_a_wrong_password_never_shown(
        bed: HostBed, box: SecretBox, store: Store) -> None:
    logged = io.StringIO()
    configure_logging("DEBUG", "json", stream=logged)
    host = bed.add_host("pw")
    host.add_user("ops", password="s3cret-Pass")
    host.start_sshd()
    good = cli(host, bed, box, user="ops", key=None, pwd=SecretStr(box.seal("s3cret-Pass")))
    with runner(good, box, store) as run:
        facts = run.collect([doc(host)], {"who": "id -un"})
    assert facts["pw"].error is None and facts["pw"].outputs["who"].stdout == "ops\n"
    bad = cli(host, bed, box, user="ops", key=None, pwd=SecretStr(box.seal("wrong-Pass-123")))
    with runner(bad, box, store, connect_retries=2) as run:
        facts = run.collect([doc(host)], {"who": "id -un"})
        assert run.stats.connects[host.ip] == 1  # an auth failure is not retried
    assert facts["pw"].error == f"authentication failed for ops@{host.ip}:22 (tried password)"
    assert "wrong-Pass-123" not in logged.getvalue() and "s3cret" not in logged.getvalue()
    assert "authentication failed for ops@" in logged.getvalue()  # but the failure itself is logged


@pytest.mark.parametrize("kind", ["rsa", "ecdsa"])
def test_other_client_key_types(bed: HostBed, box: SecretBox, store: Store, kind: str) -> None:
    key_path = bed.new_host_key(f"client_{kind}", kind)
    host = bed.add_host(kind)
    host.start_sshd(authorized_key=key_path.with_suffix(".pub").read_text())
    assert load_private_key(key_path.read_text()).get_name().startswith(("ssh-rsa", "ecdsa"))
    with runner(cli(host, bed, box, key=SecretStr(box.seal(key_path.read_text()))), box, store) as run:
        assert run.collect([doc(host)], {"t": "true"})[kind].outputs["t"].ok


def test_known_hosts_accepts_listed_keys_and_refuses_others(
        bed: HostBed, box: SecretBox, store: Store, tmp_path: Path) -> None:
    listed, unlisted, rekeyed = [*sshd_hosts(bed, 2), bed.add_host("rekeyed")]
    other_key = bed.new_host_key("other_host_key")
    rekeyed.start_sshd(host_key_path=other_key)
    known = tmp_path / "known_hosts"
    known.write_text(bed.known_hosts_text([listed, rekeyed]))  # rekeyed is listed with the bed's key
    settings = {"host_key_policy": "known_hosts", "known_hosts": known}
    with runner(cli(listed, bed, box), box, store, **settings) as run:
        facts = run.collect([doc(listed), doc(unlisted), doc(rekeyed)], {"t": "true"})
    assert facts["h0"].error is None and facts["h0"].outputs["t"].ok
    assert facts["h1"].error is not None and f"host key of {unlisted.ip}" in facts["h1"].error
    assert f"is not in the known_hosts file {known}" in facts["h1"].error
    expected = fingerprint(load_private_key(bed.host_key_path.read_text()))
    offered = fingerprint(load_private_key(other_key.read_text()))
    assert facts["rekeyed"].error == (
        f"host key mismatch for {rekeyed.ip}: expected {expected}, host offered {offered}; refusing to connect "
        "(if the host was re-keyed: stackmap host-keys forget ENV HOST, or edit known_hosts)")
    assert known.read_text() == bed.known_hosts_text([listed, rekeyed])  # never written to
    assert store.get_host_key(ENV, unlisted.ip) is None


def test_pinned_on_first_use_then_a_changed_key_is_refused(
        bed: HostBed, box: SecretBox, store: Store, tmp_path: Path) -> None:
    host = sshd_hosts(bed, 1)[0]
    with runner(cli(host, bed, box), box, store, host_key_policy="pin") as run:
        assert run.collect([doc(host)], {"t": "true"})["h0"].error is None
    original = fingerprint(load_private_key(bed.host_key_path.read_text()))
    with open_store(f"sqlite:///{tmp_path / 'store.db'}") as reader:  # recorded in the file, not in memory
        pinned = reader.get_host_key(ENV, host.ip)
    assert pinned is not None and pinned["fingerprint"] == original and pinned["key_type"] == "ssh-ed25519"
    # the host comes back with another key (re-installed, or someone in the middle)
    host.stop_sshd()
    new_key = bed.new_host_key("replacement")
    host.start_sshd(host_key_path=new_key)
    with runner(cli(host, bed, box), box, store, host_key_policy="pin") as run:
        facts = run.collect([doc(host)], {"t": "true"})
    offered = fingerprint(load_private_key(new_key.read_text()))
    assert facts["h0"].error is not None and facts["h0"].outputs == {}
    assert f"host key mismatch for {host.ip}: expected {original}, host offered {offered}" in facts["h0"].error
    assert store.get_host_key(ENV, host.ip) == pinned  # unchanged
    store.remove_host_key(ENV, host.ip)  # the operator accepts the new key
    with runner(cli(host, bed, box), box, store, host_key_policy="pin") as run:
        assert run.collect([doc(host)], {"t": "true"})["h0"].error is None
    assert store.get_host_key(ENV, host.ip)["fingerprint"] == offered  # type: ignore[index]


def test_sudo_only_when_configured_and_a_refusal_is_per_command(
        bed: HostBed, box: SecretBox, store: Store) -> None:
    host = bed.add_host("sudo")
    host.add_user("plain", authorized_key=bed.client_public_key)
    host.start_sshd()
    commands = {"uid": "id -u", "ns": "ip netns list"}
    with runner(cli(host, bed, box, user="plain"), box, store) as run:
        facts = run.collect([doc(host)], commands)
    assert facts["sudo"].outputs["uid"].stdout == "20000\n"  # no sudo asked for: runs as the user
    with runner(cli(host, bed, box, user="plain", sudo=True), box, store) as run:
        facts = run.collect([doc(host)], commands)
    assert facts["sudo"].error is None  # the host was reached; its commands were refused
    for out in facts["sudo"].outputs.values():
        assert out.error is not None and out.error.startswith("sudo refused: sudo:") and out.stdout == ""
    with runner(cli(host, bed, box, sudo=True), box, store) as run:  # root: sudo is not needed
        assert run.collect([doc(host)], commands)["sudo"].outputs["uid"].stdout == "0\n"
    host.allow_sudo("plain")
    with runner(cli(host, bed, box, user="plain", sudo=True), box, store, command_timeout_s=1) as run:
        facts = run.collect([doc(host)], {**commands, "slow": "sleep 30", "after": "id -u"})
    outputs = facts["sudo"].outputs
    assert outputs["uid"].stdout == outputs["after"].stdout == "0\n"  # granted: the commands ran as root
    assert outputs["slow"].error == "timed out after 1 s"  # and the timeout still reaches a command under sudo


def test_each_command_has_its_own_timeout(bed: HostBed, box: SecretBox, store: Store) -> None:
    host = sshd_hosts(bed, 1)[0]
    with runner(cli(host, bed, box), box, store, command_timeout_s=1) as run:
        started = time.monotonic()
        facts = run.collect([doc(host)], {"slow": "sleep 30", "after": "echo still here"})
    assert facts["h0"].outputs["slow"].error == "timed out after 1 s"
    assert facts["h0"].outputs["after"].stdout == "still here\n"
    assert time.monotonic() - started < 10


def test_hosts_run_concurrently_up_to_max_parallel(bed: HostBed, box: SecretBox, store: Store) -> None:
    hosts = sshd_hosts(bed, 6)
    docs = [doc(h) for h in hosts]
    with runner(cli(hosts[0], bed, box), box, store) as run:
        run.collect(docs, {"warm": "true"})  # connections made: what follows is only the batches
        facts = run.collect(docs, {"nap": "sleep 2"})
        assert all(f.outputs["nap"].ok for f in facts.values())
        assert run.stats.max_active == 6
    with runner(cli(hosts[0], bed, box), box, store, max_parallel=2) as run:
        run.collect(docs, {"nap": "sleep 0.3"})
        assert run.stats.max_active == 2


def test_a_lost_connection_is_made_again_on_the_next_call(bed: HostBed, box: SecretBox, store: Store) -> None:
    host = sshd_hosts(bed, 1)[0]
    with runner(cli(host, bed, box), box, store) as run:
        assert run.collect([doc(host)], {"t": "true"})["h0"].outputs["t"].ok
        assert host.sshd_pid is not None
        host.exec(["pkill", "-KILL", "-P", str(host.sshd_pid)])  # the per-connection sshd dies: link cut
        facts = run.collect([doc(host)], {"u": "uname -s"})
        assert facts["h0"].error is None and facts["h0"].outputs["u"].stdout == "Linux\n"
        assert run.stats.connects[host.ip] == 2


def test_noise_from_the_login_shell_does_not_confuse_the_outputs(
        bed: HostBed, box: SecretBox, store: Store) -> None:
    host = bed.add_host("noisy")
    shell = host.dir / "noisy-shell"  # like a .bashrc that prints a banner, even for commands
    shell.write_text("#!/bin/sh\nprintf 'Welcome!\\000\\377 STACKMAP- 1 2 3\\n'\n"
                     "echo banner >&2\nexec /bin/sh \"$@\"\n")
    shell.chmod(0o755)
    host.add_user("noisy", authorized_key=bed.client_public_key, shell=str(shell))
    host.start_sshd()
    with runner(cli(host, bed, box, user="noisy"), box, store) as run:
        facts = run.collect([doc(host)], {"a": "echo one", "b": "echo two >&2; exit 4"})
    out = facts["noisy"].outputs
    assert facts["noisy"].error is None
    assert (out["a"].stdout, out["a"].exit_status) == ("one\n", 0)
    assert (out["b"].stdout, out["b"].stderr, out["b"].error) == ("", "two\n", "exit status 4: two")
