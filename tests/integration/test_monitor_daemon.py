"""``stackmap-monitor-handler`` as systemd runs it: a process with readiness, watchdog, /metrics,
SIGHUP and SIGTERM, consuming from the real RabbitMQ; and ``stackmap-sensu-handler`` as a pipe."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kombu import Connection, Exchange, Producer

from stackmap.store import open_store
from tests.integration import monitor_fixtures
from tests.monitor_helpers import ENV, body, core_result, go_event, seed

# the shared RabbitMQ fixtures (a helper module, not a conftest: other suites keep theirs)
broker_url = monitor_fixtures.broker_url
amqp_names = monitor_fixtures.amqp_names


def _read_notifications(sock: socket.socket, until: float) -> list[str]:
    got: list[str] = []
    sock.settimeout(0.2)
    while time.monotonic() < until:
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            if any("READY=1" in g for g in got) and sum("WATCHDOG=1" in g for g in got) >= 2:
                break
    return got


def test_daemon_lifecycle(broker_url: str, amqp_names: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "mon.db"
    with open_store(f"sqlite:///{db}") as store:
        seed(store)
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "1000000",
           "STACKMAP_LOG_FORMAT": "json", "STACKMAP_MONITOR_HANDLER__EXCHANGE": amqp_names["exchange"],
           "STACKMAP_MONITOR_HANDLER__QUEUE": amqp_names["queue"],
           "STACKMAP_MONITOR_HANDLER__DEAD_LETTER_EXCHANGE": amqp_names["dead_letter_exchange"],
           "STACKMAP_MONITOR_HANDLER__BATCH_TIMEOUT_S": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.monitor_handler.main", "--store", f"sqlite:///{db}",
         "--broker-url", broker_url, "--environment", ENV, "--metrics-addr", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        notes = _read_notifications(notify, time.monotonic() + 20)
        assert any("READY=1" in n for n in notes), notes
        assert sum("WATCHDOG=1" in n for n in notes) >= 2, notes
        with Connection(broker_url) as conn:
            producer = Producer(conn.channel(), exchange=Exchange(amqp_names["exchange"], type="direct",
                                                                   durable=False))
            producer.publish(body(core_result("vedge_h1-OVS", 2, env=None)), routing_key="")  # legacy, no env
            producer.publish(b"garbage", routing_key="")
        with open_store(f"sqlite:///{db}") as store:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and (store.get_object(ENV, "h1-OVS") or {}).get("status") is None:
                time.sleep(0.05)
            assert store.get_object(ENV, "h1-OVS")["status"] == "Critical"  # type: ignore[index]
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    events = [line["event"] for line in lines]
    assert "consuming check results" in events and "settings reloaded" in events and "daemon stopped" in events
    assert any(line["event"] == "check result ignored" and line["reason"] == "malformed_json" for line in lines)
    assert "guest:guest" not in err  # the broker password never reaches the log


def test_metrics_endpoint(broker_url: str, amqp_names: dict[str, str], tmp_path: Path) -> None:
    db = tmp_path / "mon.db"
    with open_store(f"sqlite:///{db}") as store:
        seed(store)
    env = {**os.environ, "STACKMAP_LOG_FORMAT": "json", "STACKMAP_MONITOR_HANDLER__EXCHANGE": amqp_names["exchange"],
           "STACKMAP_MONITOR_HANDLER__QUEUE": amqp_names["queue"],
           "STACKMAP_MONITOR_HANDLER__DEAD_LETTER_EXCHANGE": amqp_names["dead_letter_exchange"],
           "STACKMAP_MONITOR_HANDLER__BATCH_TIMEOUT_S": "0.05"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "daemons.monitor_handler.main", "--store", f"sqlite:///{db}",
         "--broker-url", broker_url, "--metrics-addr", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        address = None
        assert proc.stderr is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and address is None:
            line = proc.stderr.readline()
            if line.startswith("{") and json.loads(line)["event"] == "metrics endpoint up":
                address = json.loads(line)["address"]
        assert address, "no metrics endpoint"
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "consuming check results" in line:
                break
        with Connection(broker_url) as conn:
            producer = Producer(conn.channel(), exchange=Exchange(amqp_names["exchange"], type="direct",
                                                                   durable=False))
            for status in (0, 0, 1):
                producer.publish(body(core_result("c", status, object_id="h1-OVS")), routing_key="")
            producer.publish(body(core_result("c", 0, object_id="nothing-here")), routing_key="")
        text = ""
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(f"http://{address}/metrics", timeout=5).read().decode()
            if 'stackmap_monitor_handler_results_received_total{transport="rabbitmq"} 4.0' in text:
                break
            time.sleep(0.1)
        for expected in ('stackmap_monitor_handler_results_applied_total{status="Warning"} 1.0',
                         'stackmap_monitor_handler_results_unchanged_total{status="OK"} 1.0',
                         'stackmap_monitor_handler_results_ignored_total{reason="unknown_object"} 1.0',
                         "stackmap_monitor_handler_unknown_targets 1.0",
                         "stackmap_monitor_handler_broker_connected 1.0",
                         "stackmap_monitor_handler_handling_seconds_count 4.0"):
            assert expected in text, expected
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert proc.returncode == 0


def test_bad_settings_exit_with_ex_config(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "daemons.monitor_handler.main", "--store",
                           f"sqlite:///{tmp_path / 'empty.db'}"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "STACKMAP_LOG_FORMAT": "json"})
    assert proc.returncode == 78 and "monitoring enabled" in proc.stderr


def test_sensu_pipe_handler_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mon.db'}"
    with open_store(url) as store:
        seed(store)
    event = go_event("vedge-check", 1, labels={"stackmap_environment": ENV},
                     annotations={"stackmap_object_id": "h1-OVS", "stackmap_object_type": "vedge"})
    cmd = [sys.executable, "-m", "daemons.monitor_handler.sensu_handler", "--store", url]
    proc = subprocess.run(cmd, input=json.dumps(event), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "applied" in proc.stdout, proc.stderr
    proc = subprocess.run(cmd, input="{nope", capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "malformed_json" in proc.stderr
    with open_store(url) as store:
        assert store.get_object(ENV, "h1-OVS")["status"] == "Warning"  # type: ignore[index]
