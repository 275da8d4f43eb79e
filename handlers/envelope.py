"""Decoding what arrives on the notification bus into one ``Notification`` shape.

Three forms are in the wild: oslo.messaging's v2 wire wrapper (``{"oslo.version": "2.0",
"oslo.message": "<JSON string>"}``), a bare v1 envelope (``event_type``, ``payload``, ``_context_*``
...), and nova's versioned notifications whose payload is a ``nova_object`` tree. Everything that
cannot be decoded becomes a ``BadMessage`` with a reason, so the consumer can dead-letter it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

MAX_BODY_BYTES = 4 * 1024 * 1024


class BadMessage(ValueError):
    """A message that is not a notification we can read; ``reason`` is a short, stable label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Notification:
    event_type: str
    payload: dict[str, Any]
    publisher_id: str = ""
    priority: str = "INFO"
    message_id: str | None = None
    timestamp: str | None = None
    versioned: bool = False
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def sent_at(self) -> float | None:
        """Epoch seconds of the notification's own timestamp (oslo writes naive UTC), or None."""
        if not self.timestamp:
            return None
        try:
            stamp = datetime.fromisoformat(self.timestamp)
        except ValueError:
            return None
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()

    @property
    def data(self) -> dict[str, Any]:
        """The payload's fields: a versioned payload's ``nova_object.data`` (nested objects unwrapped)."""
        return unwrap(self.payload) if self.versioned else self.payload


def unwrap(value: Any) -> Any:
    """Replace every ``{"nova_object.data": {...}}`` by its data, recursively."""
    if isinstance(value, dict):
        if "nova_object.data" in value:
            return unwrap(value["nova_object.data"])
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def _loads(text: str) -> Any:
    """orjson where it can (a few times faster on every message); the standard decoder where orjson
    refuses what the standard one reads (NaN, integers beyond 64 bits) or to say what is wrong."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def parse(body: Any) -> Notification:
    """Decode a message body (bytes, text or an already-decoded dict) into a Notification."""
    if isinstance(body, bytes | bytearray):
        if len(body) > MAX_BODY_BYTES:
            raise BadMessage("too_large", f"{len(body)} bytes")
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("not_utf8") from None
    if isinstance(body, str):
        if len(body) > MAX_BODY_BYTES:
            raise BadMessage("too_large", f"{len(body)} characters")
        try:
            body = _loads(body)
        except json.JSONDecodeError as exc:
            raise BadMessage("not_json", exc.msg) from None
        except RecursionError:
            raise BadMessage("too_deep", "JSON nested deeper than the decoder allows") from None
    if not isinstance(body, dict):
        raise BadMessage("not_an_object", type(body).__name__)
    if "oslo.message" in body:
        inner = body["oslo.message"]
        if not isinstance(inner, str):
            raise BadMessage("bad_envelope", "oslo.message is not a string")
        try:
            body = _loads(inner)
        except json.JSONDecodeError as exc:
            raise BadMessage("bad_envelope", f"oslo.message is not JSON: {exc.msg}") from None
        except RecursionError:
            raise BadMessage("too_deep", "oslo.message nested deeper than the decoder allows") from None
        if not isinstance(body, dict):
            raise BadMessage("bad_envelope", "oslo.message is not an object")
    event_type = body.get("event_type")
    if not isinstance(event_type, str) or not event_type:
        raise BadMessage("no_event_type")
    payload = body.get("payload")
    if not isinstance(payload, dict):
        raise BadMessage("bad_payload", f"payload is {type(payload).__name__}")
    raw_metadata = body.get("metadata")
    metadata: dict[str, Any] = raw_metadata if isinstance(raw_metadata, dict) else {}
    message_id = body.get("message_id") or metadata.get("message_id")
    timestamp = body.get("timestamp") or metadata.get("timestamp")
    context = {k[len("_context_"):]: v for k, v in body.items() if k.startswith("_context_")}
    return Notification(
        event_type=event_type, payload=payload, publisher_id=str(body.get("publisher_id") or ""),
        priority=str(body.get("priority") or "INFO").upper(),
        message_id=str(message_id) if message_id is not None else None,
        timestamp=str(timestamp) if timestamp is not None else None,
        versioned="nova_object.data" in payload, context=context,
    )
