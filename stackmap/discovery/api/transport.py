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
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers, select_proxy
from urllib3 import HTTPConnectionPool
from urllib3.util import Timeout

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

    # Whether ``get`` may skip requests' preparation and go to this adapter's urllib3 pools itself;
    # adapters that must see every request as requests prepares it (recording, replay) say no.
    direct_gets: ClassVar[bool] = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0
        self._lock = threading.Lock()
        self._pools: dict[tuple[str, str, bool | str, Any], HTTPConnectionPool] = {}

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        self._count()
        return super().send(request, *args, **kwargs)

    def get(self, url: str, params: Mapping[str, Any] | None, headers: Mapping[str, str], *, timeout: float,
            verify: bool | str, cert: Any, proxies: Mapping[str, str]) -> requests.Response:
        """A GET answered as ``send`` would answer it, for the paths that read one object per event.

        requests spends more CPU preparing a request (URL parsed and re-quoted, headers and hooks
        merged) and wrapping its answer than urllib3 spends sending it; an event listener reads a
        server per event. So this goes to the same urllib3 pools with the headers as given. A request
        through a proxy, or to an adapter that must see it prepared, takes the ordinary way."""
        if not self.direct_gets or select_proxy(url, dict(proxies)):
            prepared = requests.Request("GET", url, params=params, headers=headers).prepare()
            return self.send(prepared, timeout=timeout, verify=verify, cert=cert, proxies=proxies)
        self._count()
        parts = urlsplit(url)
        query = "&".join(q for q in (parts.query, urlencode(params or {}, doseq=True)) if q)
        target = (parts.path or "/") + (f"?{query}" if query else "")
        pool = self._pool(parts.scheme, parts.netloc, verify, cert)
        try:
            raw = pool.urlopen("GET", target, headers=dict(headers), retries=self.max_retries, redirect=False,
                               assert_same_host=False, preload_content=True, decode_content=True,
                               timeout=Timeout(connect=timeout, read=timeout))
        except urllib3.exceptions.SSLError as exc:
            raise requests.exceptions.SSLError(exc) from None
        except urllib3.exceptions.NewConnectionError as exc:  # (a subclass of the connect timeout)
            raise requests.exceptions.ConnectionError(exc) from None
        except urllib3.exceptions.ConnectTimeoutError as exc:
            raise requests.exceptions.ConnectTimeout(exc) from None
        except urllib3.exceptions.ReadTimeoutError as exc:
            raise requests.exceptions.ReadTimeout(exc) from None
        except urllib3.exceptions.MaxRetryError as exc:
            raise requests.exceptions.ConnectionError(exc.reason or exc) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.exceptions.ConnectionError(exc) from None
        response = requests.Response()
        response.status_code = raw.status
        response.headers = CaseInsensitiveDict(raw.headers)
        response._content = raw.data  # read whole (preload_content), so the connection is back in its pool
        response._content_consumed = True
        response.encoding = get_encoding_from_headers(response.headers)
        response.reason = raw.reason or ""
        response.url = url if not params else f"{parts.scheme}://{parts.netloc}{target}"
        response.connection = self
        return response

    def _pool(self, scheme: str, netloc: str, verify: bool | str, cert: Any) -> HTTPConnectionPool:
        """The pool ``send`` would use for this host with these TLS settings."""
        key = (scheme, netloc, verify, cert)
        pool = self._pools.get(key)
        if pool is None:  # requests' own derivation, once per host and settings
            probe = requests.Request("GET", f"{scheme}://{netloc}/").prepare()
            host_params, pool_kwargs = self.build_connection_pool_key_attributes(probe, verify, cert)
            pool = self.poolmanager.connection_from_host(**host_params, pool_kwargs=pool_kwargs)
            with self._lock:
                self._pools[key] = pool
        return pool

    def close(self) -> None:
        with self._lock:
            self._pools.clear()
        super().close()


class RecordingAdapter(CountingAdapter):
    """Passes requests to the network and keeps each exchange, scrubbed, for ``save``."""

    direct_gets = False

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

    direct_gets = False

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
