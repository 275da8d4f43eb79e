"""The event manager's pure parts: no broker, no processes."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import SecretStr

from daemons.event_manager import listener as L
from daemons.event_manager import metrics as M
from daemons.event_manager.supervisor import fingerprint, qualifies
from handlers.base import EventResult
from handlers.envelope import Notification
from stackmap.amqp_reads import BufferedReads
from stackmap.errors import ConfigError
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.settings import EventManagerSettings, load_settings


def test_queue_names_are_per_environment() -> None:
    names = L.QueueNames.for_environment("prod-1")
    assert (names.main, names.retry, names.dead) == (
        "stackmap.notifications.prod-1", "stackmap.notifications.prod-1.retry", "stackmap.notifications.prod-1.dead")


@pytest.mark.parametrize(("headers", "attempt"), [
    (None, 0), ({}, 0), ({L.ATTEMPT_HEADER: 3}, 3), ({L.ATTEMPT_HEADER: "2"}, 2), ({L.ATTEMPT_HEADER: "x"}, 0),
    ({L.ATTEMPT_HEADER: -4}, 0), ({L.ATTEMPT_HEADER: None}, 0)])
def test_attempt_header_is_read_defensively(headers: dict[str, Any] | None, attempt: int) -> None:
    assert L._attempt_of(headers) == attempt


def test_store_outage_is_recognised_from_the_dispatchers_result() -> None:
    assert L.is_store_outage(EventResult.store_unavailable("SQLite store is busy"))
    # a handler's own "not yet" is not an outage, whatever its text says
    assert not L.is_store_outage(EventResult.again("store unavailable: said by a handler, not the dispatcher"))
    assert not L.is_store_outage(EventResult.again("instance i-1 is not in the map yet"))
    assert not L.is_store_outage(EventResult.failed("store unavailable: but not a retry"))


def test_environment_qualifies_only_when_scanned_and_listening() -> None:
    assert qualifies({"listen": True, "scanned": True}) is None
    assert qualifies({"listen": False, "scanned": True}) == "listen is off"
    assert qualifies({"listen": True, "scanned": False}) == "not scanned yet"


def test_fingerprint_ignores_what_the_daemons_write_themselves() -> None:
    doc = {"name": "e", "listen": True, "configuration": [{"name": "AMQP", "host": "h"}]}
    same = dict(doc, operational="running", operational_reason=None, last_scanned="2024-01-01", scanned=True)
    assert fingerprint(doc) == fingerprint(same)
    assert fingerprint(doc) != fingerprint(dict(doc, configuration=[{"name": "AMQP", "host": "other"}]))


def test_broker_from_the_amqp_section_reveals_the_password_for_kombu_only(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "key")
    env = EnvironmentConfig.model_validate({"name": "e", "configuration": [
        {"name": "OpenStack", "host": "h", "user": "u", "pwd": "p"},
        {"name": "AMQP", "host": "rabbit.example", "port": 5673, "user": "stackmap", "pwd": "s3cret",
         "vhost": "/openstack"}]})
    doc = box.seal_environment(env)
    conn = L.broker_connection(doc, box, EventManagerSettings())
    assert (conn.hostname, conn.port, conn.userid, conn.password, conn.virtual_host) == (
        "rabbit.example", 5673, "stackmap", "s3cret", "/openstack")
    assert "s3cret" not in conn.as_uri() and "s3cret" not in L.describe_broker(conn)
    override = EventManagerSettings(broker_url=SecretStr("amqp://guest:guest@127.0.0.1:5672//"))
    assert L.broker_connection(doc, box, override).hostname == "127.0.0.1"
    with pytest.raises(ConfigError, match="no AMQP section"):
        L.broker_connection({"name": "e", "configuration": []}, box, EventManagerSettings())


def test_sink_factory_spec() -> None:
    assert L.load_sink_factory("tests.integration.event_doubles:make_sink").__name__ == "make_sink"
    for bad in ("nocolon", "tests.integration.event_doubles:KNOWN"):
        with pytest.raises(ConfigError):
            L.load_sink_factory(bad)


def test_settings_of_the_event_manager_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STACKMAP_EVENT_MANAGER__RETRY_LIMIT", "4")
    monkeypatch.setenv("STACKMAP_EVENT_MANAGER__QUEUE_MAX_LENGTH", "1000")
    monkeypatch.setenv("STACKMAP_EVENT_MANAGER__BROKER_URL", "amqp://u:pw@h//")
    s = load_settings()
    assert s.event_manager.retry_limit == 4 and s.event_manager.queue_max_length == 1000
    assert s.event_manager.metrics_addr == "127.0.0.1:9311"
    assert "pw" not in repr(s.event_manager)


class _Sink:
    def bindings(self) -> list[tuple[str, str]]:
        return [("nova", "notifications.*")]

    def event_types(self) -> list[str]:
        return ["instance.update"]

    def handle(self, n: Notification) -> EventResult:
        return EventResult.done("ok")


def test_event_type_labels_are_bounded() -> None:
    listener = L.Listener("unit", SimpleNamespace(), _Sink(), EventManagerSettings())  # type: ignore[arg-type]
    assert listener._label("instance.update") == "instance.update"
    assert {listener._label(f"made.up.{i}") for i in range(20_000)} == {M.OTHER_EVENT_TYPE}
    assert len(listener._labels) <= 10_000


def test_read_ahead_returns_exact_reads_and_keeps_pushed_back_bytes() -> None:
    left, right = socket.socketpair()
    transport = SimpleNamespace(sock=left, _read_buffer=b"", raise_on_initial_eintr=True)
    read = BufferedReads(transport)
    payload = bytes(range(256)) * 1000
    threading.Thread(target=right.sendall, args=(payload,)).start()
    sizes = [7, 1, 1000, 5, 100_000, 65_536, 70_000]
    got = b"".join(read(n) for n in [*sizes, len(payload) - sum(sizes)])
    assert got == payload
    # read_frame pushes back a partial frame after a timeout: it is read first
    transport._read_buffer = b"abc"
    right.sendall(b"def")
    assert read(6) == b"abcdef"
    left.settimeout(0.05)
    with pytest.raises(TimeoutError):
        read(1)
    right.close()
    with pytest.raises(OSError, match="closed"):
        read(1)
    left.close()


@pytest.mark.parametrize("body", [b"[" * 200_000, ('{"oslo.message": "' + "[" * 200_000 + '"}').encode()])
def test_absurdly_nested_json_is_a_bad_message_not_a_crash(body: bytes) -> None:
    from handlers.envelope import BadMessage, parse

    with pytest.raises(BadMessage) as caught:
        parse(body)
    assert caught.value.reason == "too_deep"


def test_bodies_the_standard_decoder_reads_are_read_alike() -> None:
    """The envelope decodes with orjson, which refuses NaN and integers beyond 64 bits: those
    messages are still read, as oslo's json-based serializer may write them."""
    import json

    from handlers.envelope import BadMessage, parse

    inner = {"event_type": "port.update.end", "priority": "INFO", "message_id": "m1",
             "payload": {"port": {"id": "p1", "rate": float("nan"), "big": 2**70, "name": "caf\u00e9 \u2603"}}}
    for body in (json.dumps({"oslo.version": "2.0", "oslo.message": json.dumps(inner)}).encode(),
                 json.dumps(inner).encode()):
        port = parse(body).payload["port"]
        assert port["big"] == 2**70 and port["rate"] != port["rate"] and port["name"] == "caf\u00e9 \u2603"
    with pytest.raises(BadMessage) as caught:
        parse(b'{"event_type": "x", "payload": {}')
    assert caught.value.reason == "not_json" and "Expecting" in str(caught.value)


@pytest.mark.parametrize(("stamp", "expected"), [
    ("2026-11-23 12:00:00.500000", 1795435200.5),  # oslo: naive UTC
    ("2026-11-23T12:00:00Z", 1795435200.0),
    ("yesterday", None),
    (None, None),
])
def test_a_notifications_own_timestamp_in_epoch_seconds(stamp: str | None, expected: float | None) -> None:
    assert Notification("x.y", {}, timestamp=stamp).sent_at == expected
