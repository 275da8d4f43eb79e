"""The queue and schedule commands (``scan --queue``, ``scans``, ``schedule``) and the daemon's
command line, run through the real entry points against a real SQLite file (no scan manager:
``tests/integration/test_scan_manager.py`` follows queued scans to their end)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from daemons.scan_manager import main as daemon_main
from stackmap.cli import main
from stackmap.settings import load_settings

ENV_YAML = """
name: lab
configuration:
  - name: OpenStack
    host: 127.0.0.1
    user: admin
    pwd: not-a-real-password
"""


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "lab.yaml"
    env_file.write_text(ENV_YAML)
    code, _out, err = run(capsys, "env", "add", str(env_file))
    assert code == 0, err


def test_queue_list_show_and_cancel(lab: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "scan", "lab", "--queue")
    assert code == 0, err
    scan_id = out.strip()
    assert len(scan_id) == 32
    code, out, _ = run(capsys, "scan", "lab", "--queue", "--types", "instance,port", "--json")
    typed = json.loads(out)
    assert code == 0 and typed["status"] == "pending"

    code, out, _ = run(capsys, "scans")
    assert code == 0 and scan_id in out and "types instance,port" in out and "2 scan(s)" in out
    code, out, _ = run(capsys, "scans", "lab", "--json")
    listed = {s["id"]: s for s in json.loads(out)}
    assert listed[typed["id"]]["resource_types"] == ["instance", "port"]
    code, out, _ = run(capsys, "scans", "show", typed["id"])
    assert code == 0 and "pending (1 ahead in the queue)" in out and "types instance,port" in out

    code, out, _ = run(capsys, "scans", "cancel", scan_id)
    assert code == 0 and "cancelled" in out
    code, out, _ = run(capsys, "scans", "lab", "--status", "aborted", "--json")
    assert [s["id"] for s in json.loads(out)] == [scan_id]
    code, _, err = run(capsys, "scans", "cancel", scan_id)
    assert code == 1 and "already finished (aborted)" in err


def test_bad_scan_requests_are_refused_before_queueing(lab: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "scan", "nowhere", "--queue")
    assert code == 1 and "unknown environment 'nowhere'" in err
    code, _, err = run(capsys, "scan", "lab", "--queue", "--types", "instance", "--object-id", "x")
    assert code == 1 and "either to resource types or to one object" in err
    code, _, err = run(capsys, "scans", "show", "nope")
    assert code == 1 and "no scan 'nope'" in err
    code, out, _ = run(capsys, "scans", "--json")
    assert json.loads(out) == []


def test_schedule_add_list_remove(lab: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "schedule", "add", "lab", "--every", "15m", "--types", "instance,port", "--json")
    assert code == 0, err
    added = json.loads(out)[0]
    assert added["interval_seconds"] == 900 and added["resource_types"] == ["instance", "port"]
    code, _, err = run(capsys, "schedule", "add", "lab", "--cron", "30 3 * * *", "--id", "nightly")
    assert code == 0, err
    code, out, _ = run(capsys, "schedule", "list")
    assert "every 15m" in out and "types instance,port" in out and "cron 30 3 * * * (UTC)" in out
    assert "2 schedule(s)" in out

    code, _, err = run(capsys, "schedule", "add", "lab", "--cron", "61 * * * *")
    assert code == 2 and "not a valid cron expression" in err
    code, _, err = run(capsys, "schedule", "add", "lab", "--every", "5m", "--freq", "DAILY")
    assert code == 2 and "exactly one" in err
    code, _, err = run(capsys, "schedule", "add", "lab", "--every", "soon")
    assert code == 2 and "not a duration" in err
    code, _, err = run(capsys, "schedule", "add", "nowhere", "--every", "5m")
    assert code == 1 and "unknown environment" in err

    code, out, err = run(capsys, "schedule", "add", "lab", "--defaults", "--json")
    assert code == 0, err
    ids = sorted(d["id"] for d in json.loads(out))
    assert "lab.sync.instances-ports" in ids and "lab.sync.full" in ids
    run(capsys, "schedule", "add", "lab", "--defaults")  # installing again replaces, never duplicates
    code, out, _ = run(capsys, "schedule", "list", "lab", "--json")
    assert len(json.loads(out)) == len(ids) + 2

    code, out, _ = run(capsys, "schedule", "remove", "nightly", "lab.sync.full")
    assert code == 0 and "removed schedule nightly" in out
    code, _, err = run(capsys, "schedule", "remove", "nightly")
    assert code == 1 and "no schedule 'nightly'" in err


def test_scan_manager_settings_and_command_line(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings()
    assert settings.scan_manager.metrics_addr == "127.0.0.1:9310"  # loopback unless widened
    monkeypatch.setenv("STACKMAP_SCAN_MANAGER__LEASE_S", "7")
    monkeypatch.setenv("STACKMAP_SCAN_MANAGER__MAX_ATTEMPTS", "5")
    overridden = load_settings(scan_manager={"metrics_addr": "127.0.0.1:0"})
    conf = overridden.scan_manager
    assert (conf.lease_s, conf.max_attempts, conf.metrics_addr) == (7.0, 5, "127.0.0.1:0")
    with pytest.raises(SystemExit) as exited:
        daemon_main.main(["--store", "nosql://x"])
    assert exited.value.code == 2 and "store_url" in capsys.readouterr().err
    monkeypatch.setenv("STACKMAP_SCAN_MANAGER__POLL_INTERVAL_S", "0")
    with pytest.raises(SystemExit) as exited:
        daemon_main.main([])
    assert exited.value.code == 2 and "poll_interval_s" in capsys.readouterr().err
