"""Monitor handler fixtures for tests against the real RabbitMQ on 127.0.0.1:5672 (guest/guest).

Imported by the monitor handler's test modules (not a conftest, so other suites keep theirs).

Every test gets its own exchange, queue and dead-letter names, deleted afterwards, so runs (and
other engineers' tests on the same broker) never see each other's messages.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Queue

BROKER_URL = os.environ.get("STACKMAP_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def broker_url() -> str:
    if not _broker_up():
        pytest.fail("RabbitMQ is not listening on 127.0.0.1:5672 (start it with: rabbitmq-server -detached)")
    return BROKER_URL


@pytest.fixture
def amqp_names(broker_url: str) -> Iterator[dict[str, str]]:
    tag = uuid.uuid4().hex[:10]
    names = {"exchange": f"test.results.{tag}", "queue": f"test.stackmap.monitor.{tag}",
             "dead_letter_exchange": f"test.stackmap.dead.{tag}"}
    yield names
    with Connection(broker_url) as conn:
        channel = conn.channel()
        for queue in (names["queue"], names["dead_letter_exchange"]):
            try:
                Queue(queue, channel=channel).delete()
            except Exception:
                channel = conn.channel()
        for exchange in (names["exchange"], names["dead_letter_exchange"]):
            try:
                Exchange(exchange, channel=channel).delete()
            except Exception:
                channel = conn.channel()
