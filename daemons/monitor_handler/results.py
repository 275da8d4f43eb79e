"""Sensu Core check results and Sensu Go events, parsed into one ``CheckResult``.

Everything after parsing (mapping, change detection, writes) sees only ``CheckResult``, so the
RabbitMQ path (Sensu Core) and the pipe handler path (Sensu Go, or a Sensu Core server's handler)
cannot drift apart. Parsing never trusts its input: a body that is not JSON, not an object, lacks a
check name or status, or carries metadata of the wrong shape raises ``BadResult`` with a reason
from a fixed vocabulary (used as a metric label), and the check output is cut to a bound before
anything else sees it.

Status labels are defined here, in code: Calipso looked them up in a ``monitoring_check_statuses``
constant its seed data never contained, so every label came out empty.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import IntEnum
from typing import Any

import orjson

# The structured mapping keys, without their prefix. In a Sensu Core check definition they sit in a
# ``stackmap`` mapping (or as flat ``stackmap_<key>`` attributes); in Sensu Go as ``stackmap_<key>``
# labels or annotations of the check (the environment may also be given on the client / entity).
METADATA_KEYS = ("environment", "object_type", "object_id", "link_type", "source_id", "target_id")
METADATA_PREFIX = "stackmap_"
MAX_METADATA_VALUE = 1024
DEFAULT_TEXT_LIMIT = 4096
DEFAULT_MAX_BYTES = 1_048_576
TRUNCATION_MARK = " [truncated]"


class Status(IntEnum):
    """Sensu's check statuses (the Nagios plugin exit codes)."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def label(self) -> str:
        return _LABELS[self]

    @classmethod
    def from_exit(cls, value: int) -> Status:
        """Sensu treats any exit status above 3 (or below 0) as unknown; so do we."""
        return cls(value) if 0 <= value <= 3 else cls.UNKNOWN


_LABELS = {Status.OK: "OK", Status.WARNING: "Warning", Status.CRITICAL: "Critical", Status.UNKNOWN: "Unknown"}
STATUS_BY_LABEL = {label: status for status, label in _LABELS.items()}


class BadResult(ValueError):
    """Input that cannot be a check result; ``reason`` is a low-cardinality metric label."""

    REASONS = ("malformed_json", "not_an_object", "missing_fields", "bad_status", "bad_metadata", "too_large")

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in self.REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class CheckResult:
    """One check execution, whatever Sensu version sent it. ``executed`` is epoch seconds (cheap to
    compare on the hot path); ``executed_at`` is the datetime that goes into documents."""

    check_name: str
    status: Status
    raw_status: int
    output: str
    executed: float
    client: str = ""
    environment: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    source: str = "sensu-core"
    truncated: bool = False

    @property
    def label(self) -> str:
        return self.status.label

    @property
    def executed_at(self) -> datetime:
        return datetime.fromtimestamp(self.executed, UTC)


def truncate_text(text: str, limit: int) -> tuple[str, bool]:
    """Cut ``text`` to at most ``limit`` UTF-8 bytes (marker included), never inside a character."""
    if len(text) * 4 <= limit:  # fast path: cannot exceed the bound whatever the characters are
        return text, False
    raw = text.encode("utf-8", "replace")
    if len(raw) <= limit:
        return text, False
    keep = max(0, limit - len(TRUNCATION_MARK))
    return raw[:keep].decode("utf-8", "ignore") + TRUNCATION_MARK, True


def loads_body(body: bytes | str, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """JSON text to a dict; refuses oversize bodies before parsing them."""
    if len(body) > max_bytes:
        raise BadResult("too_large", f"{len(body)} bytes > {max_bytes}")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadResult("malformed_json", str(exc)[:200]) from None
    if not isinstance(data, dict):
        raise BadResult("not_an_object", type(data).__name__)
    return data


def parse_body(body: bytes | str, *, text_limit: int = DEFAULT_TEXT_LIMIT,
               max_bytes: int = DEFAULT_MAX_BYTES) -> CheckResult:
    """Parse a message body holding either a Sensu Core result/event or a Sensu Go event."""
    return parse_document(loads_body(body, max_bytes), text_limit=text_limit)


def parse_document(data: Mapping[str, Any], *, text_limit: int = DEFAULT_TEXT_LIMIT) -> CheckResult:
    """Tell Sensu Go events (an ``entity``, check ``metadata``) from Sensu Core ones (a ``client``)."""
    check = data.get("check")
    if not isinstance(check, dict):
        raise BadResult("missing_fields", "no 'check' object")
    if "entity" in data or isinstance(check.get("metadata"), dict):
        return _parse_go(data, check, text_limit)
    return _parse_core(data, check, text_limit)


# -- Sensu Core ------------------------------------------------------------------------------------

def _parse_core(data: Mapping[str, Any], check: Mapping[str, Any], text_limit: int) -> CheckResult:
    name = check.get("name")
    if not isinstance(name, str) or not name:
        raise BadResult("missing_fields", "check without a name")
    status, raw = _status(check.get("status"))
    client = data.get("client")
    client_name = client if isinstance(client, str) else client.get("name", "") if isinstance(client, dict) else ""
    metadata = _metadata_from_core(check)
    environment = metadata.pop("environment", None)
    if environment is None and isinstance(client, dict):
        environment = _core_environment(client)
    output, truncated = _output(check.get("output"), text_limit)
    return CheckResult(
        check_name=name, status=status, raw_status=raw, output=output,
        executed=_when(check.get("executed"), check.get("issued"), data.get("timestamp")),
        client=client_name if isinstance(client_name, str) else "", environment=environment,
        metadata=metadata, source="sensu-core", truncated=truncated,
    )


_FLAT_KEYS = tuple((METADATA_PREFIX + key, key) for key in METADATA_KEYS)


def _metadata_from_core(check: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    nested = check.get("stackmap")
    if nested is not None:
        if not isinstance(nested, dict):
            raise BadResult("bad_metadata", "'stackmap' is not an object")
        for key, value in nested.items():
            if key in _KNOWN_KEYS:
                found[key] = _meta_value(key, value)
    else:  # flat ``stackmap_<key>`` attributes, for definitions that cannot nest a mapping
        for flat, key in _FLAT_KEYS:
            value = check.get(flat)
            if value is not None and key not in found:
                found[key] = _meta_value(key, value)
    return found


_KNOWN_KEYS = frozenset(METADATA_KEYS)


def _core_environment(client: Mapping[str, Any]) -> str | None:
    nested = client.get("stackmap")
    value = nested.get("environment") if isinstance(nested, dict) else client.get(METADATA_PREFIX + "environment")
    return None if value is None else _meta_value("environment", value)


# -- Sensu Go --------------------------------------------------------------------------------------

def _parse_go(data: Mapping[str, Any], check: Mapping[str, Any], text_limit: int) -> CheckResult:
    meta = check.get("metadata")
    if not isinstance(meta, dict):
        raise BadResult("missing_fields", "check without metadata")
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise BadResult("missing_fields", "check without metadata.name")
    status, raw = _status(check.get("status"))
    metadata = _metadata_from_go(meta)
    entity = data.get("entity")
    entity_name = ""
    if isinstance(entity, dict) and isinstance(entity.get("metadata"), dict):
        emeta = entity["metadata"]
        entity_name = emeta.get("name") if isinstance(emeta.get("name"), str) else ""
        if "environment" not in metadata:
            env = _metadata_from_go(emeta).get("environment")
            if env is not None:
                metadata["environment"] = env
    environment = metadata.pop("environment", None)
    output, truncated = _output(check.get("output"), text_limit)
    return CheckResult(
        check_name=name, status=status, raw_status=raw, output=output,
        executed=_when(check.get("executed"), check.get("issued"), data.get("timestamp")),
        client=entity_name, environment=environment, metadata=metadata, source="sensu-go", truncated=truncated,
    )


def _metadata_from_go(meta: Mapping[str, Any]) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in ("labels", "annotations"):  # annotations win: they hold long ids without label limits
        values = meta.get(part)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise BadResult("bad_metadata", f"metadata.{part} is not an object")
        for key in METADATA_KEYS:
            value = values.get(METADATA_PREFIX + key)
            if value is not None:
                found[key] = _meta_value(key, value)
    return found


# -- shared field rules ----------------------------------------------------------------------------

_STATUSES = {int(s): s for s in Status}


def _status(value: Any) -> tuple[Status, int]:
    if type(value) is int:  # the common case, first
        return _STATUSES.get(value, Status.UNKNOWN), value
    if isinstance(value, bool) or value is None:
        raise BadResult("missing_fields" if value is None else "bad_status", "check status")
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int):
        raise BadResult("bad_status", f"status of type {type(value).__name__}")
    return Status.from_exit(value), value


def _meta_value(key: str, value: Any) -> str:
    if type(value) is not str or not value or len(value) > MAX_METADATA_VALUE:
        raise BadResult("bad_metadata", f"{key} must be a non-empty string of at most {MAX_METADATA_VALUE} chars")
    return value


def _output(value: Any, limit: int) -> tuple[str, bool]:
    if value is None:
        return "", False
    if not isinstance(value, str):
        value = str(value)
    return truncate_text(value, limit)


_MIN_EPOCH, _MAX_EPOCH = 946_684_800, 32_503_680_000  # 2000-01-01 .. 3000-01-01


def _when(*candidates: Any) -> float:
    """The execution time: Sensu sends epoch seconds; anything implausible falls back to now."""
    for value in candidates:
        if type(value) in (int, float) and _MIN_EPOCH <= value <= _MAX_EPOCH:
            return float(value)
    return time.time()
