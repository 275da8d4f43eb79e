"""structlog configuration shared by the CLI and every daemon.

Redaction is a processor in the pipeline rather than a rule at call sites: code logs whatever
context it has, and nothing secret can reach a log line however deeply it is nested.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any, TextIO

import structlog
from pydantic import SecretBytes, SecretStr

REDACTED = "**redacted**"

# A key is secret when one of its underscore/dash separated words is a secret word; paths and
# file names of keys are not secrets, so keys ending in _file/_path stay visible.
_SECRET_KEY = re.compile(
    r"(?:^|[_\-.])(?:pass|passwd|password|pwd|secret|token|key|apikey|credential|credentials|"
    r"authorization|cookie|private)(?:$|[_\-.])",
    re.IGNORECASE,
)
_NOT_SECRET_SUFFIX = re.compile(r"[_\-](?:file|path|dir|id|name|type|types)$", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)


def is_secret_key(name: str) -> bool:
    return bool(_SECRET_KEY.search(name)) and not _NOT_SECRET_SUFFIX.search(name)


def redact_value(value: Any) -> Any:
    """Return ``value`` with secrets removed: secret-named keys at any depth, URL passwords, Secret types."""
    if isinstance(value, SecretStr | SecretBytes):
        return REDACTED
    if isinstance(value, str):
        return _URL_CREDENTIALS.sub(r"\g<scheme>\g<user>:" + REDACTED + "@", value) if "://" in value else value
    if isinstance(value, Mapping):
        return {
            key: (REDACTED if isinstance(key, str) and is_secret_key(key) and val not in (None, "") else
                  redact_value(val))
            for key, val in value.items()
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item) for item in value]
    return value


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: scrub every secret from the event before it is rendered."""
    for key in list(event_dict):
        val = event_dict[key]
        if is_secret_key(key) and val not in (None, ""):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = redact_value(val)
    return event_dict


def configure_logging(level: str = "INFO", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once per process: JSON lines off a TTY, readable console output on one."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    else:
        renderer = structlog.processors.JSONRenderer()
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_secrets,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name) if name else structlog.get_logger()
