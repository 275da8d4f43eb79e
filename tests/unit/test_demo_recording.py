"""Recording a scan's HTTP exchanges and replaying them through the same openstacksdk code path."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from stackmap.discovery.api.transport import RecordingAdapter
from stackmap.discovery.scan import Scanner, ScanOptions
from stackmap.environments import add_environment
from stackmap.model import EnvironmentConfig
from stackmap.paths import defaults_dir
from stackmap.secrets import SecretBox
from stackmap.store import open_store
from tests.e2e.mapdiff import differences
from tests.fakecloud import CloudSize, FakeCloud, FakeCloudServer


def stackmap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stackmap", *args], capture_output=True, text=True,
                          env=dict(os.environ), timeout=120)


def test_shipped_demo_recording_holds_no_secret() -> None:
    text = (defaults_dir() / "recordings/demo/exchanges.json").read_text()
    data = json.loads(text)
    assert len(data["exchanges"]) >= 10
    assert '"password"' not in text and "secret" not in text.lower()
    tokens = {ex["headers"].get("x-subject-token") for ex in data["exchanges"]} - {None}
    assert tokens == {"recorded-token"}


def test_demo_maps_the_recording_and_is_repeatable(_isolated_data_dir: Path) -> None:
    first = stackmap("demo")
    assert first.returncode == 0, first.stderr
    assert "stackmap inventory demo --tree" in first.stdout
    instance = re.search(r"stackmap clique demo (\S+)", first.stdout)
    assert instance and instance.group(1) != "OBJECT_ID"
    clique = stackmap("clique", "demo", instance.group(1))
    assert clique.returncode == 0 and "instance-port" in clique.stdout and "port-network" in clique.stdout
    dot = stackmap("clique", "demo", instance.group(1), "--format", "dot")
    assert dot.stdout.startswith("digraph") and "->" in dot.stdout
    tree = stackmap("inventory", "demo", "--tree")
    assert "Regions" in tree.stdout and "instance" in tree.stdout
    again = stackmap("demo")
    assert again.returncode == 0
    assert re.search(r"objects \d+ \(0 written, 0 deleted\)", again.stdout), again.stdout


def test_record_then_replay_gives_the_same_map(tmp_path: Path) -> None:
    cloud = FakeCloud(CloudSize(projects=2, hosts=2, instances=6, networks=3, routers=1, floating_ips=2,
                                volumes=2, snapshots=1, load_balancers=1))
    box = SecretBox(tmp_path / "key")
    with FakeCloudServer(cloud) as server:
        live = open_store(f"sqlite:///{tmp_path / 'live.db'}")
        add_environment(live, box, EnvironmentConfig.model_validate({
            "name": "lab", "configuration": [server.openstack_section(project="admin")]}))
        recorder = RecordingAdapter()
        assert Scanner(live, box, "lab", ScanOptions(), adapter=recorder).run().status == "completed"
        recorder.save(tmp_path / "rec")
    # the server is gone: the replay must not need the network
    replayed = open_store(f"sqlite:///{tmp_path / 'replay.db'}")
    add_environment(replayed, box, EnvironmentConfig.model_validate({
        "name": "lab", "configuration": [{"name": "OpenStack", "auth_url": server.auth_url, "user": cloud.user,
                                          "pwd": "anything", "project": "admin", "recording": str(tmp_path / "rec")}]}))
    summary = Scanner(replayed, box, "lab", ScanOptions()).run()
    assert summary.status == "completed", summary.errors
    assert differences(live, replayed, "lab") == []
    assert cloud.password not in (tmp_path / "rec" / "exchanges.json").read_text()
