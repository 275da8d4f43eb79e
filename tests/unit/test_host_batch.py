"""The batch script and its parser, run by a real local ``sh`` (no SSH needed), and address choice."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from stackmap.discovery.host.batch import build_batch, parse_batch
from stackmap.discovery.host.ssh import SshError, choose_address, load_private_key


def run_locally(commands: dict[str, str], timeout_s: float = 5, sudo: bool = False) -> tuple[bytes, str, object]:
    batch = build_batch(commands, timeout_s, sudo)
    proc = subprocess.run(["sh", "-s"], input=batch.script.encode(), capture_output=True, timeout=60)
    return proc.stdout, proc.stderr.decode(), batch


def test_each_command_gets_its_own_output_status_and_error() -> None:
    commands = {"ok": "echo a; echo b >&2", "status": "exit 5", "missing": "no-such-tool-x",
                "stdin": "cat", "quote": "echo \"it's\" '$HOME'"}
    stdout, stderr, batch = run_locally(commands)
    out = parse_batch(batch, stdout, stderr)  # type: ignore[arg-type]
    assert list(out) == list(commands)
    assert (out["ok"].stdout, out["ok"].stderr, out["ok"].exit_status, out["ok"].error) == ("a\n", "b\n", 0, None)
    assert out["status"].exit_status == 5 and out["status"].error == "exit status 5"
    assert out["missing"].exit_status == 127 and "no-such-tool-x" in (out["missing"].error or "")
    assert out["stdin"].ok and out["stdin"].stdout == ""  # stdin is closed: the script is not eaten
    assert out["quote"].stdout == "it's $HOME\n"


def test_timeout_is_per_command() -> None:
    if shutil.which("timeout") is None:
        pytest.skip("coreutils timeout is absent")
    stdout, stderr, batch = run_locally({"slow": "sleep 20", "next": "echo next"}, timeout_s=0.5)
    out = parse_batch(batch, stdout, stderr)  # type: ignore[arg-type]
    assert out["slow"].exit_status == 124 and out["slow"].error == "timed out after 0.5 s"
    assert out["next"].stdout == "next\n"


def test_cut_short_or_garbled_output_never_lends_bytes_to_another_command() -> None:
    stdout, stderr, batch = run_locally({"one": "echo one", "two": "seq 1 1000"})
    full = parse_batch(batch, stdout, stderr)  # type: ignore[arg-type]
    assert full["two"].stdout.splitlines()[-1] == "1000"
    cut = parse_batch(batch, stdout[:-10], "sh: killed")  # type: ignore[arg-type]
    assert cut["one"].stdout == "one\n" and cut["one"].ok
    assert cut["two"].error == "no result from the host (batch cut short: sh: killed)" and cut["two"].stdout == ""
    garbage = parse_batch(batch, b"\x00\xffrandom noise\n" * 50, "")  # type: ignore[arg-type]
    assert all(o.error and o.exit_status is None for o in garbage.values())


def test_address_choice_follows_the_connection_policy() -> None:
    both = {"id": "node-1", "name": "node-1.cloud", "ip_address": "192.0.2.10"}
    public = dict(both, public_ip="203.0.113.10")
    bare = {"id": "node-2"}
    assert choose_address(both, "local") == "192.0.2.10"
    assert choose_address(both, "public") == "node-1.cloud"
    assert choose_address(public, "public") == "203.0.113.10"
    assert choose_address(both, "auto") == "192.0.2.10"
    assert choose_address(bare, "auto") == "node-2"
    assert choose_address(bare, "local") is None


def test_a_bad_key_is_reported_without_its_text() -> None:
    text = "-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5\n-----END OPENSSH PRIVATE KEY-----\n"
    with pytest.raises(SshError) as info:
        load_private_key(text)
    assert "bm90IGEga2V5" not in str(info.value) and "not a usable private key" in str(info.value)
