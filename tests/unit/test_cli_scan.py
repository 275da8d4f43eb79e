"""`stackmap scan` and `stackmap env add-cloud` as an operator runs them, against the fake cloud."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer, Fault

SIZE = CloudSize(projects=2, hosts=2, instances=5, networks=2, routers=1, floating_ips=1, volumes=1)


def stackmap(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmap", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


@pytest.fixture
def cloud_env(tmp_path: Path) -> Iterator[tuple[FakeCloud, FakeCloudServer, Path]]:
    cloud = FakeCloud(SIZE)
    with FakeCloudServer(cloud) as server:
        config = tmp_path / "lab.yaml"
        config.write_text(json.dumps({"name": "lab", "configuration": [
            server.openstack_section(project="admin")]}))
        assert stackmap("env", "add", str(config)).returncode == 0
        yield cloud, server, config


def test_scan_prints_a_summary_records_history_and_marks_the_environment(cloud_env: tuple) -> None:
    out = stackmap("scan", "lab")
    assert out.returncode == 0, out.stderr
    assert "scan of lab: completed" in out.stdout and "API calls" in out.stdout
    as_json = json.loads(stackmap("scan", "lab", "--json").stdout)
    assert as_json["status"] == "completed" and as_json["objects_written"] == 0  # nothing changed
    assert as_json["objects_by_type"]["instance"] == SIZE.instances
    env = json.loads(stackmap("env", "show", "lab", "--json").stdout)
    assert env["scanned"] is True and env["last_scanned"]
    messages = json.loads(stackmap("messages", "lab", "--json").stdout)
    assert messages[0]["message"].startswith("scan completed")
    history = json.loads(stackmap("scans", "lab", "--json").stdout)
    assert [h["status"] for h in history][:2] == ["completed", "completed"]


def test_scan_failures_are_one_line_with_a_non_zero_exit(cloud_env: tuple, tmp_path: Path) -> None:
    _cloud, server, config = cloud_env
    wrong = json.loads(config.read_text())
    wrong["configuration"][0]["pwd"] = "not-the-password"
    (tmp_path / "wrong.yaml").write_text(json.dumps(wrong))
    assert stackmap("env", "add", "--replace", str(tmp_path / "wrong.yaml")).returncode == 0
    out = stackmap("scan", "lab")
    assert out.returncode == 1
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("stackmap:")]
    assert lines == [lines[0]] and "authentication failed" in lines[0] and "not-the-password" not in out.stderr
    bad_scanners = tmp_path / "scanners.json"
    bad_scanners.write_text("{not json")
    assert stackmap("env", "add", "--replace", str(config)).returncode == 0
    out = stackmap("scan", "lab", "--scanners-file", str(bad_scanners))
    assert out.returncode == 1 and "scanners.json is not valid JSON" in out.stderr
    server.faults.append(Fault("*/ports", status=500))
    out = stackmap("scan", "lab")
    assert out.returncode == 3 and "completed with errors" in out.stderr


def test_add_cloud_reads_credentials_from_clouds_yaml(tmp_path: Path) -> None:
    cloud = FakeCloud(SIZE)
    with FakeCloudServer(cloud) as server:
        clouds = tmp_path / "clouds.yaml"
        clouds.write_text(json.dumps({"clouds": {"lab": {"auth": {
            "auth_url": server.auth_url, "username": cloud.user, "password": cloud.password,
            "project_name": "admin", "user_domain_name": "Default", "project_domain_name": "Default"},
            "identity_api_version": 3}}}))
        env = {"OS_CLIENT_CONFIG_FILE": str(clouds)}
        added = stackmap("env", "add-cloud", "lab", "--cloud", "lab", env=env)
        assert added.returncode == 0, added.stderr
        shown = json.loads(stackmap("env", "show", "lab", "--json", env=env).stdout)
        assert shown["configuration"][0]["cloud"] == "lab" and "pwd" not in shown["configuration"][0]
        out = stackmap("scan", "lab", "--json", env=env)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["objects_by_type"]["instance"] == SIZE.instances
        missing = stackmap("env", "add-cloud", "other", "--cloud", "nope", env=env)
        assert missing.returncode == 1 and "no usable cloud 'nope'" in missing.stderr
