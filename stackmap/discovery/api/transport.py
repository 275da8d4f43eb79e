"""The HTTP boundary of a scan: counting, recording and replaying OpenStack API exchanges.

openstacksdk and keystoneauth do all the talking (auth, catalog, endpoint discovery, retries); these
requests adapters sit underneath them, on the one requests.Session a connection uses. Recording a
real cloud and replaying it later therefore exercises exactly the same client code path, which is
what ``stackmap demo`` and the tests rely on. Recordings never hold a secret: request bodies are not
kept and tokens are replaced by a placeholder.
"""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

RECORDING_FILE = "exchanges.json"
TOKEN_PLACEHOLDER = "recorded-token"
_KEPT_RESPONSE_HEADERS = ("content-type", "x-subject-token", "openstack-api-version", "x-openstack-nova-api-version")
_SECRET_JSON = re.compile(r'"(password|secret|token|id)"\s*:\s*"[^"]*"')


def normalize_url(url: str) -> str:
    """One spelling per request: sorted query parameters, no trailing slash on the path."""
    parts = urlsplit(url)
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)))
    path = parts.path.rstrip("/") or "/"
    return urlunsplit((parts.scheme, parts.netloc, path, query, ""))


class CountingAdapter(HTTPAdapter):
    """Counts requests per host:port so a scan can report its API round trips."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self._count()
        return super().send(request, *args, **kwargs)


class RecordingAdapter(CountingAdapter):
    """Passes requests to the network and keeps each exchange, scrubbed, for ``save``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.exchanges: list[dict[str, Any]] = []

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        response = super().send(request, *args, **kwargs)
        headers = {k.lower(): v for k, v in response.headers.items() if k.lower() in _KEPT_RESPONSE_HEADERS}
        if "x-subject-token" in headers:
            headers["x-subject-token"] = TOKEN_PLACEHOLDER
        with self._lock:
            self.exchanges.append({
                "method": request.method,
                "url": normalize_url(request.url or ""),
                "status": response.status_code,
                "headers": headers,
                "body": response.text,
            })
        return response

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / RECORDING_FILE
        target.write_text(json.dumps({"version": 1, "exchanges": self.exchanges}, indent=1))
        return target


class RecordingMissing(Exception):
    """A request the recording has no answer for (the replayed scan asked something new)."""


class ReplayAdapter(CountingAdapter):
    """Answers requests from a recording, without any network.

    Exchanges are matched by method and normalized URL; repeated requests get the recorded answers
    in order, and the last one again once they run out (a replayed scan can be run many times).
    """

    def __init__(self, exchanges: list[Mapping[str, Any]]) -> None:
        super().__init__()
        self._answers: dict[tuple[str, str], deque[Mapping[str, Any]]] = defaultdict(deque)
        for exchange in exchanges:
            self._answers[(str(exchange["method"]), str(exchange["url"]))].append(exchange)

    @classmethod
    def load(cls, directory: Path) -> ReplayAdapter:
        data = json.loads((directory / RECORDING_FILE).read_text())
        return cls(data["exchanges"])

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self._count()
        key = (str(request.method), normalize_url(request.url or ""))
        with self._lock:
            queue = self._answers.get(key)
            if not queue:
                raise RecordingMissing(f"the recording has no answer for {key[0]} {key[1]}")
            exchange = queue.popleft() if len(queue) > 1 else queue[0]
        response = requests.Response()
        response.status_code = int(exchange["status"])
        response.headers = CaseInsensitiveDict(exchange.get("headers") or {})
        response._content = str(exchange.get("body") or "").encode()
        response.encoding = "utf-8"
        response.url = request.url or ""
        response.request = request
        response.reason = "replayed"
        return response


def mount(session: requests.Session, adapter: HTTPAdapter) -> None:
    session.mount("http://", adapter)
    session.mount("https://", adapter)
