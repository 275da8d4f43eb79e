"""The rig's neutron-server stopped while a notification waits to be handled: the event is retried
(not dead-lettered) while neutron is away, and once neutron is back the map equals a fresh scan."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from handlers.envelope import Notification
from tests.e2e import topology
from tests.e2e.test_rig_events import Harness

pytestmark = pytest.mark.e2e

RIG_DIR = Path(os.environ.get("RIG_DIR") or Path(__file__).resolve().parents[3] / "shared" / "rig" / "openstack")
NEUTRON = ("neutron-server --config-file /etc/neutron/neutron.conf "
           "--config-file /etc/neutron/plugins/ml2/ml2_conf.ini")


def neutron_down() -> None:
    subprocess.run(["bash", str(RIG_DIR / "down.sh"), "neutron-server"], check=True, timeout=120)


def neutron_up() -> None:
    """As the rig's up.sh starts it, then until it answers."""
    subprocess.run(["bash", "-c", f'source "{RIG_DIR}/common.sh" && start_bg neutron-server {NEUTRON} && '
                    "wait_http http://127.0.0.1:9696/ neutron-server 180"], check=True, timeout=240)


class Gate:
    """The dispatcher behind a gate: while it is shut, the listener's handling of what it received
    waits (so the test can stop neutron between a notification and its handling)."""

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher
        self.open = threading.Event()
        self.open.set()
        self.waiting = threading.Event()

    def handle(self, notification: Notification) -> Any:
        if not self.open.is_set():
            self.waiting.set()
            self.open.wait(300)
        return self._dispatcher.handle(notification)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dispatcher, name)


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    # no reads ahead: the read must happen when the event is handled, after neutron went away
    h = Harness(tmp_path, topology.connect(), read_ahead_threads=0)
    yield h
    h.tap.close()
    h.store.close()


def test_neutron_away_between_a_notification_and_its_handling(harness: Harness) -> None:
    net = harness.conn.network
    p = f"sme2out-{harness.tap.queue_name[-6:]}"
    made: dict[str, Any] = {}
    gate = Gate(harness.dispatcher)
    harness.tap.sink.dispatcher = gate
    env = harness.tap.environment
    try:
        made["net"] = harness.after(lambda: net.create_network(name=f"{p}-net"), {"network.create.end"})
        made["port"] = harness.after(lambda: net.create_port(name=f"{p}-port", network_id=made["net"].id),
                                     {"port.create.end"})
        gate.open.clear()
        net.update_port(made["port"], name=f"{p}-renamed")
        assert gate.waiting.wait(60), "port.update.end did not arrive"
        neutron_down()
        try:
            gate.open.set()
            topology.wait_for(lambda: (REGISTRY.get_sample_value("stackmap_event_api_unavailable_total",
                                                                 {"environment": env}) or 0) >= 2,
                              "the event to find neutron away twice", 60)
            assert harness.tap.sink.retried, "the event was not retried"
            with harness.tap.sink.lock:  # port.update.start is ignored; .end is waiting, not failed
                settled = list(harness.tap.sink.final)
            assert all(r.result for _, r in settled) and "port.update.end" not in {et for et, _ in settled}, settled
        finally:
            neutron_up()
        # the retry after neutron came back maps the change; then the map equals a fresh scan
        harness.after(lambda: None, {"port.update.end"}, quiet_for=6.0)
        assert harness.store.get_object("rig", made["port"].id)["name"] == f"{p}-renamed"
        assert REGISTRY.get_sample_value("stackmap_event_dead_letters_total",
                                         {"environment": env, "reason": "unavailable_too_long"}) is None
    finally:
        gate.open.set()
        leftovers = topology.Topology(prefix=p)
        if made.get("net") is not None:
            leftovers.add("network", made["net"].id)
        topology.cleanup(harness.conn, leftovers)
