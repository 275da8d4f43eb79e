"""The stackmap command, run as a real process against a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SECRET = "Zq9-unmistakable-pa55word"
TOKEN = "tok-0123456789abcdef-unmistakable"

ENV_YAML = f"""
name: lab
distribution: Stock
distribution_version: Zed
mechanism_drivers: OVS
type_drivers: vxlan
listen: true
last_scanned: filled-by-scanning
configuration:
  - name: OpenStack
    host: 127.0.0.1
    port: 5000
    user: admin
    pwd: {SECRET}
    admin_token: {TOKEN}
  - name: AMQP
    host: 127.0.0.1
    user: guest
    pwd: {SECRET}-amqp
"""


def run(*args: str, stdin: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "stackmap", *args], input=stdin, capture_output=True,
                          text=True, env=full_env, timeout=60)


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    path = tmp_path / "lab.yaml"
    path.write_text(ENV_YAML)
    return path


def test_info_names_the_default_store_shared_by_every_process(_isolated_data_dir: Path) -> None:
    out = run("info", "--json")
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    assert info["store_url"] == f"sqlite:///{_isolated_data_dir / 'stackmap.db'}"
    assert info["secret_key_file"] == str(_isolated_data_dir / "secret.key")
    assert (_isolated_data_dir / "stackmap.db").is_file()
    text = run("info")
    assert str(_isolated_data_dir / "stackmap.db") in text.stdout


def test_env_add_encrypts_secrets_at_rest_and_never_logs_them(env_file: Path, _isolated_data_dir: Path) -> None:
    out = run("--log-level", "DEBUG", "--log-format", "json", "env", "add", str(env_file))
    assert out.returncode == 0, out.stderr
    assert "added environment lab (3 secret(s) encrypted)" in out.stdout
    key = _isolated_data_dir / "secret.key"
    assert key.stat().st_mode & 0o777 == 0o600
    shown = run("--log-level", "DEBUG", "env", "show", "lab", "--json")
    listed = run("--log-level", "DEBUG", "env", "list", "--json")
    text = run("--log-level", "DEBUG", "env", "show", "lab")
    everything = "".join(p.stdout + p.stderr for p in (out, shown, listed, text))
    assert SECRET not in everything and TOKEN not in everything
    raw = b"".join(p.read_bytes() for p in _isolated_data_dir.glob("stackmap.db*"))
    assert raw, "the store file exists"
    assert SECRET.encode() not in raw and TOKEN.encode() not in raw
    assert b"enc:v1:" in raw
    doc = json.loads(shown.stdout)
    openstack = next(s for s in doc["configuration"] if s["name"] == "OpenStack")
    assert openstack["pwd"] == "********" and openstack["admin_token"] == "********"
    assert openstack["user"] == "admin" and openstack["port"] == "5000"
    assert doc["mechanism_drivers"] == ["OVS"] and "last_scanned" not in doc
    assert "pwd: ********" in text.stdout


def test_secrets_decrypt_with_the_key_and_fail_clearly_without_it(env_file: Path, _isolated_data_dir: Path) -> None:
    from stackmap.environments import load_environment
    from stackmap.errors import SecretsUnavailable
    from stackmap.secrets import SecretBox
    from stackmap.store import open_store

    assert run("env", "add", str(env_file)).returncode == 0
    key = _isolated_data_dir / "secret.key"
    with open_store(f"sqlite:///{_isolated_data_dir / 'stackmap.db'}") as store:
        env = load_environment(store, "lab")
        assert SecretBox(key).reveal(env.section("OpenStack").pwd) == SECRET
        key.rename(key.with_suffix(".moved"))
        with pytest.raises(SecretsUnavailable, match=r"secret\.key does not exist"):
            SecretBox(key).reveal(env.section("OpenStack").pwd)
    # without the key the environment is still listed, and the listing says its secrets are unusable
    listed = run("env", "list")
    assert listed.returncode == 0 and "lab" in listed.stdout and "KEY MISSING" in listed.stdout
    # and no new key is minted over secrets sealed with the lost one
    other = env_file.read_text().replace("name: lab", "name: lab2")
    refused = run("env", "add", "-", stdin=other)
    assert refused.returncode == 1
    assert "missing" in refused.stderr and "restore that key file" in refused.stderr
    assert not key.exists()
    # a different key cannot open them either
    SecretBox(key).create_key()
    with open_store(f"sqlite:///{_isolated_data_dir / 'stackmap.db'}") as store:
        env = load_environment(store, "lab")
        with pytest.raises(SecretsUnavailable, match="not sealed with the key"):
            SecretBox(key).reveal(env.section("AMQP").pwd)


def _assert_one_line_error(out: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


BAD_FILES: list[tuple[str, str, tuple[str, ...]]] = [
    ("bad.json", '{"name": "x", "configuration": [', ("not valid JSON", "line 1")),
    ("bad.yaml", "name: x\nconfiguration: [\n  - {name: OpenStack\n", ("not valid YAML",)),
    ("list.yaml", "- a\n- b\n", ("expected one environment document",)),
    ("missing.yaml", "name: x\nconfiguration:\n  - name: AMQP\n    host: h\n    user: u\n",
     ("needs configuration section(s): OpenStack",)),
    ("field.yaml", "name: x\nconfiguration:\n  - name: OpenStack\n    host: h\n    user: u\n",
     ("configuration.0.OpenStack", "needs pwd")),
    ("unknown.yaml", "name: x\nconfiguration:\n  - name: OpenStack\n    host: h\n    user: u\n    pwd: p\n"
     "  - name: Telepathy\n    host: h\n", ("configuration.1", "Telepathy")),
    ("typo.yaml", "name: x\nlisten: true\nconfiguration:\n  - name: OpenStack\n    host: h\n    user: u\n"
     "    pwd: p\n    pasword: oops\n", ("configuration.0.OpenStack.pasword", "Extra inputs")),
    ("twice.yaml", "name: x\nconfiguration:\n  - {name: OpenStack, host: h, user: u, pwd: p}\n"
     "  - {name: OpenStack, host: h, user: u, pwd: p}\n", ("given twice: OpenStack",)),
    ("badname.yaml", "name: 'a b/c'\nconfiguration:\n  - {name: OpenStack, host: h, user: u, pwd: p}\n", ("name:",)),
]


@pytest.mark.parametrize(("filename", "content", "needles"), BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_environment_files_are_refused_clearly_and_write_nothing(
    tmp_path: Path, _isolated_data_dir: Path, filename: str, content: str, needles: tuple[str, ...]
) -> None:
    path = tmp_path / filename
    path.write_text(content)
    out = run("env", "add", str(path))
    _assert_one_line_error(out, filename, *needles)
    assert "p55" not in out.stderr
    assert json.loads(run("env", "list", "--json").stdout) == []


def test_duplicate_environment_is_refused_and_the_first_kept(env_file: Path) -> None:
    assert run("env", "add", str(env_file)).returncode == 0
    other = env_file.read_text().replace("distribution: Stock", "distribution: Other")
    _assert_one_line_error(run("env", "add", "-", stdin=other), "environment 'lab' exists already")
    shown = json.loads(run("env", "show", "lab", "--json").stdout)
    assert shown["distribution"] == "Stock"


@pytest.mark.parametrize("args", [["env", "show", "nope"], ["inventory", "nope"], ["links", "nope"],
                                  ["messages", "nope"], ["show", "nope", "x"], ["env", "remove", "nope", "--yes"]])
def test_unknown_environment_is_one_clear_line(args: list[str]) -> None:
    _assert_one_line_error(run(*args), "unknown environment 'nope'")


def test_store_unreachable_and_invalid_settings_are_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    _assert_one_line_error(run("--store", f"sqlite:///{blocker}/sub/x.db", "env", "list"), "cannot open SQLite store")
    _assert_one_line_error(run("--store", "mongodb://127.0.0.1:1/x", "env", "list"), "MongoDB")
    _assert_one_line_error(run("--store", "redis://x", "env", "list"), "store_url")
    bad_toml = tmp_path / "s.toml"
    bad_toml.write_text('log_level = "LOUD"\n')
    _assert_one_line_error(run("--config", str(bad_toml), "info"), "log_level")
    _assert_one_line_error(run("--config", str(tmp_path / "none.toml"), "info"), "does not exist")
    bad_toml.write_text("this is = = not toml")
    _assert_one_line_error(run("--config", str(bad_toml), "info"), "not valid TOML")


def _seed_map(data_dir: Path) -> None:
    from stackmap.model import InventoryObject, Link, Message
    from stackmap.store import open_store

    with open_store(f"sqlite:///{data_dir / 'stackmap.db'}") as store:
        objs = [
            InventoryObject(environment="lab", type="host", id="h1", id_path="/lab/h1", name_path="/lab/h1"),
            InventoryObject(environment="lab", type="instance", id="i1", name="vm-1", parent_id="h1",
                            parent_type="host", id_path="/lab/h1/i1", name_path="/lab/h1/vm-1", flavor="m1.tiny"),
        ]
        store.upsert_objects("lab", [o.to_doc() for o in objs])
        store.upsert_links("lab", [Link(environment="lab", link_type="host-instance", source_id="h1",
                                        target_id="i1").to_doc()])
        store.append_messages([Message(environment="lab", level="warn", message="scan slow").to_doc()])


def test_map_queries(env_file: Path, _isolated_data_dir: Path) -> None:
    assert run("env", "add", str(env_file)).returncode == 0
    _seed_map(_isolated_data_dir)
    inv = json.loads(run("inventory", "lab", "--json").stdout)
    assert [o["id"] for o in inv] == ["h1", "i1"]
    only: list[dict[str, Any]] = json.loads(run("inventory", "lab", "--type", "instance", "--json").stdout)
    assert [o["id"] for o in only] == ["i1"] and only[0]["flavor"] == "m1.tiny"
    assert [o["id"] for o in json.loads(run("inventory", "lab", "--parent", "h1", "--json").stdout)] == ["i1"]
    assert "vm-1" in run("inventory", "lab").stdout
    shown = run("show", "lab", "i1")
    assert "host-instance: h1 -> i1" in shown.stdout
    assert json.loads(run("show", "lab", "i1", "--json").stdout)["name"] == "vm-1"
    _assert_one_line_error(run("show", "lab", "zz"), "no object 'zz'")
    lks = json.loads(run("links", "lab", "--object", "i1", "--json").stdout)
    assert [lk["id"] for lk in lks] == ["host-instance|h1|i1"]
    assert json.loads(run("links", "lab", "--type", "other", "--json").stdout) == []
    msgs = json.loads(run("messages", "lab", "--json").stdout)
    assert [(m["level"], m["message"]) for m in msgs] == [("warning", "scan slow")]
    removed = run("env", "remove", "lab", "--yes")
    assert removed.returncode == 0
    assert json.loads(run("env", "list", "--json").stdout) == []
    _assert_one_line_error(run("inventory", "lab"), "unknown environment")


def test_replace_keeps_what_stackmap_recorded(env_file: Path, _isolated_data_dir: Path) -> None:
    from stackmap.store import open_store

    assert run("env", "add", str(env_file)).returncode == 0
    with open_store(f"sqlite:///{_isolated_data_dir / 'stackmap.db'}") as store:
        store.update_environment("lab", {"scanned": True, "operational": "running"})
    changed = env_file.read_text().replace("distribution: Stock", "distribution: RDO")
    out = run("env", "add", "--replace", "-", stdin=changed)
    assert out.returncode == 0 and "replaced environment lab" in out.stdout
    shown = json.loads(run("env", "show", "lab", "--json").stdout)
    assert shown["distribution"] == "RDO" and shown["scanned"] is True and shown["operational"] == "running"
    # --replace of a new name simply adds it
    fresh = run("env", "add", "--replace", "-", stdin=changed.replace("name: lab", "name: lab3"))
    assert fresh.returncode == 0 and "added environment lab3" in fresh.stdout
