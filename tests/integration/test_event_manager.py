"""The event manager: the real ``stackmap-event-manager`` process (listeners in child processes, metrics
in multiprocess mode, statuses in the store) on the real RabbitMQ, with the test double as the sink;
and the Supervisor in-process with fake listener processes for stalls and crash backoff."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from daemons.event_manager.supervisor import Supervisor
from stackmap.logging import configure_logging
from stackmap.secrets import SecretBox
from stackmap.settings import load_settings
from stackmap.store import Store
from stackmap.store.sqlite import SqliteStore
from tests.integration.event_doubles import exchanges_for
from tests.integration.event_helpers import (
    Publisher,
    add_env,
    cleanup_amqp,
    handled_ids,
    metric,
    new_env_name,
    oslo_body,
    require_broker,
    scrape,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]
SINK = "tests.integration.event_doubles:make_sink"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Manager:
    """A running ``stackmap-event-manager`` (python -m, so the test double is importable)."""

    def __init__(self, db: Path, log: Path, *, config: Path | None = None, extra_env: dict[str, str] | None = None,
                 **settings: Any) -> None:
        self.port = free_port()
        self.log = log
        env = dict(os.environ, PYTHONPATH=str(ROOT), STACKMAP_LOG_LEVEL="INFO", **(extra_env or {}))
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        defaults = {"poll_interval_s": 0.5, "restart_delay_max_s": 4, "heartbeat_s": 10, "connect_timeout_s": 2,
                    "reconnect_delay_max_s": 2, "retry_delay_s": 0.05, "store_retry_max_s": 2}
        for key, value in {**defaults, **settings}.items():
            env[f"STACKMAP_EVENT_MANAGER__{key.upper()}"] = str(value)
        self.out = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemons.event_manager.main", "--store", f"sqlite:///{db}", "--metrics-addr",
             f"127.0.0.1:{self.port}", "--sink", SINK, "--log-format", "json",
             *(["--config", str(config)] if config else [])],
            cwd=ROOT, env=env, stdout=self.out, stderr=subprocess.STDOUT)
        wait_for(self._serving, 30, "the metrics endpoint")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"event manager exited with {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            scrape(self.port)
            return True
        except OSError:
            return False

    def metrics(self) -> str:
        return scrape(self.port)

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def listener_pid(self, environment: str) -> int:
        started = [e for e in self.events() if e.get("event") == "listener started"
                   and e.get("environment") == environment]
        assert started, f"no listener started for {environment}"
        return int(started[-1]["pid"])

    def children(self) -> list[int]:
        """Listener processes (not multiprocessing's resource tracker)."""
        out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(self.proc.pid)], capture_output=True,
                             text=True)
        return [int(line.split()[0]) for line in out.stdout.splitlines() if "spawn_main" in line]

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"event manager did not stop on SIGTERM:\n{self.log.read_text()}") from None
        self.out.close()
        return int(self.proc.returncode)



@pytest.fixture(autouse=True)
def _logging_to_this_tests_stderr() -> None:
    """Listener threads log; an earlier test (click's CliRunner) may have left structlog writing to a
    stream that is closed by now."""
    configure_logging("INFO", "console", stream=sys.stderr)

@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "manager.db"


@pytest.fixture
def store(db: Path) -> Iterator[Store]:
    s = SqliteStore(f"sqlite:///{db}")
    yield s
    s.close()


@pytest.fixture
def box() -> SecretBox:
    return SecretBox(load_settings().secret_key_file)


@pytest.fixture
def envs() -> Iterator[Callable[[str], str]]:
    """Environment names for a test; their queues and exchanges are deleted afterwards."""
    made: list[str] = []

    def make(suffix: str = "") -> str:
        made.append(new_env_name() + suffix)
        return made[-1]

    require_broker()
    yield make
    for name in made:
        cleanup_amqp(name)


@pytest.fixture
def manager(db: Path, tmp_path: Path) -> Iterator[Callable[..., Manager]]:
    started: list[Manager] = []

    def start(**kw: Any) -> Manager:
        started.append(Manager(db, tmp_path / f"manager-{len(started)}.log", **kw))
        return started[-1]

    yield start
    for m in started:
        children = m.children()  # before the manager goes: then they are no longer its children
        if m.proc.poll() is None:
            m.proc.kill()
            m.proc.wait(10)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def status(store: Store, name: str) -> tuple[str, str | None]:
    doc = store.get_environment(name) or {}
    return str(doc.get("operational")), doc.get("operational_reason")


# --------------------------------------------------------------------------------------------------
# the daemon


def test_listeners_follow_the_environments_flags_and_statuses_are_written(
        store: Store, box: SecretBox, db: Path, envs: Callable[[str], str], manager: Callable[..., Manager]) -> None:
    a, b, c = envs(""), envs(""), envs("")
    add_env(store, box, a)
    add_env(store, box, b, listen=False)
    add_env(store, box, c, scanned=False)
    m = manager()
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running")
    assert status(store, b)[0] == "stopped" and status(store, c)[0] == "stopped"
    Publisher(exchanges_for(a)[0]).publish(oslo_body("test.thing.update.end", {}, "m-1"))
    wait_for(lambda: "m-1" in handled_ids(db, a), 15, "a message through A's listener")
    wait_for(lambda: metric(m.metrics(), "stackmap_events_handled_total", environment=a, result="handled") == 1,
             10, "the child's counter in the daemon's /metrics")
    text = m.metrics()
    assert metric(text, "stackmap_listener_up", environment=a) == 1
    assert "stackmap_event_handling_seconds_bucket" in text
    assert len(m.children()) == 1

    store.update_environment(b, {"listen": True})
    store.update_environment(a, {"listen": False})
    wait_for(lambda: status(store, b) == ("running", None), 30, "B running once it listens")
    wait_for(lambda: status(store, a) == ("stopped", "listen is off"), 30, "A stopped once it does not")
    wait_for(lambda: metric(m.metrics(), "stackmap_listener_up", environment=a) == 0, 10, "A down in /metrics")
    assert len(m.children()) == 1

    assert m.stop() == 0
    assert status(store, b) == ("stopped", "event manager stopped")
    assert m.children() == []


@pytest.mark.fault
def test_kill_9_of_a_listener_mid_stream_loses_nothing(
        store: Store, box: SecretBox, db: Path, envs: Callable[[str], str], manager: Callable[..., Manager]) -> None:
    a = envs("")
    add_env(store, box, a)
    m = manager()
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running")
    first = m.listener_pid(a)
    ids = [f"k-{i}" for i in range(3000)]
    Publisher(exchanges_for(a)[0]).publish_many(
        oslo_body("test.thing.update.end", {"sleep_ms": 2}, mid) for mid in ids)
    wait_for(lambda: len(handled_ids(db, a)) >= 300, 30, "the stream to be under way")
    os.kill(first, signal.SIGKILL)
    assert len(handled_ids(db, a)) < len(ids), "the stream was over before the kill"
    wait_for(lambda: m.listener_pid(a) != first, 30, "a new listener")
    wait_for(lambda: handled_ids(db, a) >= set(ids), 90, "every message, after the restart")
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running again")
    text = m.metrics()
    handled_metric = metric(text, "stackmap_events_handled_total", environment=a, result="handled")
    assert metric(text, "stackmap_event_listener_restarts_total", environment=a) == 1
    assert metric(text, "stackmap_event_dead_letters_total", environment=a) == 0
    # counted once when acknowledged: the killed listener's unacknowledged batch was handled again and
    # counted by its successor, so the count is every message (and at most a batch more)
    assert len(ids) <= handled_metric <= len(ids) + 200
    assert m.stop() == 0


class Blackhole:
    """A 'broker' that accepts TCP connections and never says a word (a wedged broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.fault
def test_a_wedged_broker_or_a_crashing_listener_leaves_other_environments_alone(
        store: Store, box: SecretBox, db: Path, envs: Callable[[str], str], manager: Callable[..., Manager]) -> None:
    hole = Blackhole()
    try:
        good, wedged, crashing, misconfigured = envs(""), envs(""), envs("-crash"), envs("-badconf")
        add_env(store, box, good)
        add_env(store, box, wedged, amqp_port=hole.port)
        add_env(store, box, crashing)
        add_env(store, box, misconfigured)
        m = manager()
        wait_for(lambda: status(store, good) == ("running", None), 30, "the good environment running")
        pub = Publisher(exchanges_for(good)[0])
        for i in range(50):
            pub.publish(oslo_body("test.thing.update.end", {}, f"g-{i}"), f"g-{i}")
            time.sleep(0.05)
        wait_for(lambda: handled_ids(db, good) >= set(pub.confirmed), 15, "the good environment's messages")
        wait_for(lambda: "cannot reach broker" in (status(store, wedged)[1] or ""), 30, "the wedged one in error")
        assert status(store, wedged)[0] == "error"
        wait_for(lambda: metric(m.metrics(), "stackmap_event_listener_restarts_total", environment=crashing) >= 2,
                 30, "the crashing listener restarted with backoff")
        crash_status = status(store, crashing)
        assert crash_status[0] == "error" and "RuntimeError" in (crash_status[1] or "")
        assert "restarting in" in (crash_status[1] or "")
        assert status(store, misconfigured)[0] == "error"
        assert "unusable" in (status(store, misconfigured)[1] or "")
        # and through all that, the good one kept going
        for i in range(50, 100):
            pub.publish(oslo_body("test.thing.update.end", {}, f"g-{i}"), f"g-{i}")
        wait_for(lambda: handled_ids(db, good) >= set(pub.confirmed), 15, "more of the good environment's messages")
        assert status(store, good) == ("running", None)
        events = m.events()
        restarts = [e for e in events if e.get("event") == "listener failed; restarting it later"
                    and e.get("environment") == crashing]
        delays = [e["restart_in_s"] for e in restarts]
        assert delays[:3] == [1.0, 2.0, 4.0][: len(delays[:3])] and len(delays) >= 2
        assert m.stop() == 0
        assert status(store, wedged)[0] == "error"  # an environment in error keeps its error
        assert status(store, good) == ("stopped", "event manager stopped")
    finally:
        hole.close()


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_listeners_stop_when_the_manager_is_killed(
        store: Store, box: SecretBox, db: Path, envs: Callable[[str], str], manager: Callable[..., Manager]) -> None:
    a = envs("")
    add_env(store, box, a)
    m = manager()
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running")
    [child] = m.children()
    m.proc.kill()  # no chance to stop its listeners
    m.proc.wait(10)
    wait_for(lambda: _gone(child), 15, "the orphaned listener to stop by itself")


def test_configuration_change_restarts_the_listener(
        store: Store, box: SecretBox, db: Path, envs: Callable[[str], str], manager: Callable[..., Manager]) -> None:
    a = envs("")
    add_env(store, box, a)
    m = manager()
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running")
    first = m.listener_pid(a)
    store.update_environment(a, {"distribution_version": "Zed-2"})
    wait_for(lambda: m.listener_pid(a) != first, 30, "a listener with the new configuration")
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running again")
    assert metric(m.metrics(), "stackmap_event_listener_restarts_total", environment=a) == 0
    assert m.stop() == 0


def test_readiness_watchdog_and_reload(store: Store, box: SecretBox, db: Path, tmp_path: Path,
                                       envs: Callable[[str], str], manager: Callable[..., Manager]) -> None:
    a = envs("")
    add_env(store, box, a)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    notify.bind(str(notify_path))
    notify.settimeout(1.0)
    config = tmp_path / "stackmap.toml"
    config.write_text("[event_manager]\nretry_limit = 3\n")
    m = manager(config=config, extra_env={"NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "2000000"})
    received: list[str] = []

    def got(text: str) -> bool:
        with contextlib.suppress(TimeoutError):
            received.append(notify.recv(4096).decode())
        return any(text in r for r in received)

    wait_for(lambda: got("READY=1"), 30, "READY=1")
    wait_for(lambda: got("WATCHDOG=1"), 10, "WATCHDOG=1 from the supervisor loop")
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running")
    first = m.listener_pid(a)
    config.write_text("[event_manager]\nretry_limit = 4\n")
    m.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: m.listener_pid(a) != first, 30, "the listener restarted with the new settings")
    wait_for(lambda: status(store, a) == ("running", None), 30, "A running again")
    assert metric(m.metrics(), "stackmap_event_listener_restarts_total", environment=a) == 0
    assert m.stop() == 0
    notify.close()


# --------------------------------------------------------------------------------------------------
# the supervisor with fake listeners (in this process)


def _run_supervisor(sup: Supervisor, seconds: float, until: Callable[[], bool] | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sup.tick()
        if until is not None and until():
            return
        time.sleep(0.1)


def test_a_stalled_listener_is_killed_and_restarted(store: Store, box: SecretBox, db: Path) -> None:
    name = new_env_name()
    add_env(store, box, name)
    settings = load_settings(store_url=f"sqlite:///{db}")
    settings.event_manager = settings.event_manager.model_copy(
        update={"stall_timeout_s": 1.5, "poll_interval_s": 0.2, "restart_delay_max_s": 1.0})
    sup = Supervisor(store, settings, target=_target("silent_listener"))
    before = REGISTRY.get_sample_value("stackmap_event_listener_restarts_total", {"environment": name}) or 0
    try:
        _run_supervisor(sup, 20, lambda: (REGISTRY.get_sample_value(
            "stackmap_event_listener_restarts_total", {"environment": name}) or 0) >= before + 1)
        assert (REGISTRY.get_sample_value("stackmap_event_listener_restarts_total", {"environment": name}) or 0) \
            >= before + 1
        state, reason = status(store, name)
        assert state == "error" and "stalled" in (reason or "")
    finally:
        sup.shutdown(timeout_s=5)
    assert sup.running() == {}


def test_a_crashing_listener_is_restarted_with_growing_delays(store: Store, box: SecretBox, db: Path) -> None:
    name = new_env_name()
    add_env(store, box, name)
    settings = load_settings(store_url=f"sqlite:///{db}")
    settings.event_manager = settings.event_manager.model_copy(
        update={"poll_interval_s": 0.2, "restart_delay_max_s": 2.0})
    sup = Supervisor(store, settings, target=_target("failing_listener"))
    try:
        delays: list[float] = []

        def record() -> bool:
            slot = sup.slots.get(name)
            if slot is not None and slot.child is None and slot.failures and \
                    (not delays or len(delays) < slot.failures):
                delays.append(round(slot.next_start - time.monotonic()))
            return len(delays) >= 4

        _run_supervisor(sup, 30, record)
        assert delays[:4] == [1, 2, 2, 2]  # doubling, capped at restart_delay_max_s
        state, reason = status(store, name)
        assert state == "error" and (reason or "").startswith("broker exploded (test)")
    finally:
        sup.shutdown(timeout_s=5)


def _target(name: str) -> Any:
    from tests.integration import event_doubles

    return getattr(event_doubles, name)
