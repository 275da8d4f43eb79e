"""A connection to one OpenStack cloud, through openstacksdk and keystoneauth.

openstacksdk gives us auth (Keystone v3 or a clouds.yaml cloud), the service catalog, endpoint and
version discovery, TLS and retries. We list resources through its per-service proxies with plain
GETs and read the JSON ourselves: its Resource objects cost milliseconds each to build, which at
50,000 objects would be the whole scan budget. Every failure becomes an ``ApiError`` whose message
says what an operator must check, never the password.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import keystoneauth1.exceptions as ks_exc
import openstack
import openstack.connection
import openstack.proxy
import orjson
import requests
from keystoneauth1 import session as ks_session
from keystoneauth1.identity import v3

from stackmap.discovery.api.transport import CountingAdapter, RecordingMissing, mount
from stackmap.errors import StackmapError
from stackmap.model import OpenStackSection
from stackmap.secrets import SecretBox

# service type in the catalog -> openstacksdk proxy attribute
PROXIES = {
    "identity": "identity",
    "compute": "compute",
    "network": "network",
    "block-storage": "block_storage",
    "volumev3": "block_storage",
    "image": "image",
    "load-balancer": "load_balancer",
}
PAGE_LIMIT = 1000
# How long a service's endpoint, found through the catalog and version discovery, is reused: the
# lookup deep-copies the catalog and parses its dates at every request (a quarter of a read's CPU),
# and an event listener's client lives as long as the daemon, so a moved endpoint is found again.
ENDPOINT_TTL_S = 300.0


class ApiError(StackmapError):
    """An OpenStack API could not be read; ``fatal`` when nothing else can work (auth, keystone down)."""

    def __init__(self, message: str, *, fatal: bool = False, status: int | None = None,
                 unanswered: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.status = status
        self.unanswered = unanswered  # no answer came at all: refused, unreachable or timed out

    @property
    def retryable(self) -> bool:
        """Unreachable, timed out, throttled, or the service failing (5xx: an API restarting behind its
        load balancer answers 502/503), or our token refused (keystone restarting): a later read may
        well succeed. Any other 4xx is an answer about the request itself."""
        status = self.status
        return status is None or status in (401, 408, 429) or status >= 500


class ServiceMissing(ApiError):
    """The catalog has no endpoint for a service in a region."""

    @property
    def retryable(self) -> bool:
        return False  # the deployment's shape, not a passing state


def auth_url_of(section: OpenStackSection) -> str:
    if section.auth_url:
        return section.auth_url
    scheme = "https" if section.https else "http"
    return f"{scheme}://{section.host}:{section.port}/v3"


# What requests takes from the environment when ``trust_env`` is on: proxies (and their exceptions),
# credentials from .netrc, and a CA bundle (which ``settle_environment`` can hand over itself).
_ENVIRONMENT_PROXIES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "netrc")
_ENVIRONMENT_BUNDLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")  # requests reads these, in this order


def settle_environment(sess: ks_session.Session) -> None:
    """Stop requests from reading the process environment again at every request (every variable,
    twice: a sixth of an API read's CPU here, more in a large environment) unless a proxy or netrc
    setting is there. A CA bundle named in the environment is given to the session instead, as the
    ``verify`` requests would have taken from it (only where nothing else was configured)."""
    if any(name.lower() in _ENVIRONMENT_PROXIES for name in os.environ):
        return
    bundle = next((os.environ[name] for name in _ENVIRONMENT_BUNDLES if os.environ.get(name)), None)
    if bundle and sess.verify is True:
        sess.verify = bundle
    sess.session.trust_env = False


class OpenStackClient:
    """One authenticated session for a whole scan, shared by per-region connections and threads."""

    def __init__(
        self,
        section: OpenStackSection,
        box: SecretBox,
        *,
        adapter: CountingAdapter | None = None,
        timeout: float = 60.0,
    ) -> None:
        self.section = section
        self.adapter = adapter or CountingAdapter(pool_maxsize=16)
        self._box = box
        self._timeout = timeout
        self._session: ks_session.Session | None = None
        self._conns: dict[str, openstack.connection.Connection] = {}
        self._endpoints: dict[tuple[str, str], tuple[float, str]] = {}
        # (service type, microversion) -> the headers keystoneauth sent with such a GET, token aside
        self._get_headers: dict[tuple[str, str], dict[str, str]] = {}
        self._lock = threading.Lock()

    # -- connection --------------------------------------------------------------------------------
    @property
    def api_calls(self) -> int:
        return self.adapter.calls

    def _make_session(self) -> ks_session.Session:
        section = self.section
        verify: bool | str = section.ca_cert or section.verify
        if section.cloud:
            config = openstack.config.OpenStackConfig().get_one(cloud=section.cloud)
            sess = config.get_session()
        else:
            auth = v3.Password(
                auth_url=auth_url_of(section),
                username=section.user,
                password=self._box.reveal(section.pwd) or "",
                project_name=section.project,
                user_domain_name=section.user_domain,
                project_domain_name=section.project_domain,
            )
            sess = ks_session.Session(auth=auth, verify=verify, timeout=self._timeout,
                                      session=requests.Session())
        mount(sess.session, self.adapter)
        settle_environment(sess)
        return sess

    @property
    def session(self) -> ks_session.Session:
        with self._lock:
            if self._session is None:
                self._session = self._make_session()
            return self._session

    def connection(self, region: str | None) -> openstack.connection.Connection:
        key = region or ""
        sess = self.session
        with self._lock:
            if key not in self._conns:
                self._conns[key] = openstack.connection.Connection(
                    session=sess, region_name=region, interface=self.section.interface,
                    identity_interface=self.section.interface,
                )
            return self._conns[key]

    def authenticate(self) -> None:
        """Get a token now, so bad credentials or an unreachable Keystone fail the scan up front."""
        try:
            self.session.get_token()
        except ks_exc.Unauthorized:
            raise ApiError(f"authentication failed for user {self.section.user!r} at {self.where()}: "
                           "check the OpenStack section's user, pwd, project and domains", fatal=True) from None
        except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout, ks_exc.DiscoveryFailure) as exc:
            raise ApiError(f"cannot reach Keystone at {self.where()}: {_short(exc)}", fatal=True) from None
        except RecordingMissing as exc:
            raise ApiError(str(exc), fatal=True) from None
        except ks_exc.ClientException as exc:
            raise ApiError(f"Keystone at {self.where()} refused to authenticate: {_short(exc)}", fatal=True) from None

    def where(self) -> str:
        return f"cloud {self.section.cloud!r}" if self.section.cloud else auth_url_of(self.section)

    # -- catalog -----------------------------------------------------------------------------------
    def catalog(self) -> list[dict[str, Any]]:
        access = self.session.auth.get_access(self.session)  # type: ignore[union-attr]
        return list(access.service_catalog.catalog or [])

    def regions(self) -> list[str]:
        """Regions that have at least one endpoint, from the catalog (no admin API needed)."""
        if self.section.region:
            return [self.section.region]
        found = {ep.get("region_id") or ep.get("region") for svc in self.catalog() for ep in svc.get("endpoints", [])}
        return sorted(r for r in found if r) or ["RegionOne"]

    def services(self, region: str) -> dict[str, str]:
        """Service type -> endpoint URL of the configured interface, in ``region``."""
        out: dict[str, str] = {}
        for svc in self.catalog():
            for ep in svc.get("endpoints", []):
                in_region = (ep.get("region_id") or ep.get("region")) == region
                if in_region and ep.get("interface") == self.section.interface:
                    out[svc["type"]] = ep["url"]
        return out

    # -- listing -----------------------------------------------------------------------------------
    def _proxy(self, service_type: str, region: str | None) -> Any:
        return getattr(self.connection(region), PROXIES[service_type])

    def endpoint(self, service_type: str, region: str | None) -> str:
        """The service's versioned endpoint, as its openstacksdk proxy finds it (catalog, overrides,
        version discovery), remembered for ENDPOINT_TTL_S."""
        key, now = (service_type, region or ""), time.monotonic()
        with self._lock:
            cached = self._endpoints.get(key)
        if cached is not None and now - cached[0] < ENDPOINT_TTL_S:
            return cached[1]
        # the base class's: a service's proxy may name its own get_endpoint otherwise (identity's
        # shows an endpoint resource)
        found = openstack.proxy.Proxy.get_endpoint(self._proxy(service_type, region))
        if not found:
            raise ks_exc.EndpointNotFound()
        with self._lock:
            self._endpoints[key] = (now, str(found))
        return str(found)

    def get_json(self, service_type: str, path: str, region: str | None, *, params: dict[str, Any] | None = None,
                 microversion: str | None = None) -> Any:
        try:
            # joined as keystoneauth joins a proxy's relative path to its endpoint; a page's own
            # absolute 'next' link is kept as it is
            url = urljoin(self.endpoint(service_type, region).rstrip("/") + "/", path.lstrip("/"))
            response = self._get(url, params, service_type, microversion)
        except ks_exc.EndpointNotFound:
            raise ServiceMissing(f"no {service_type} endpoint in region {region} of the catalog") from None
        except (ks_exc.ConnectFailure, ks_exc.ConnectTimeout) as exc:
            with self._lock:  # it may have moved: look it up again at the next request
                self._endpoints.pop((service_type, region or ""), None)
            raise ApiError(f"cannot reach the {service_type} API in region {region}: {_short(exc)}",
                           unanswered=True) from None
        except ks_exc.Unauthorized:
            raise ApiError(f"the {service_type} API refused our token (401)", fatal=True) from None
        except RecordingMissing as exc:
            raise ApiError(str(exc)) from None
        except ks_exc.ClientException as exc:
            raise ApiError(f"{service_type} API in region {region}: {_short(exc)}") from None
        if response.status_code >= 400:
            raise ApiError(
                f"{service_type} API in region {region} answered {response.status_code} to GET {path}: "
                f"{_body_hint(response)}",
                status=response.status_code,
                fatal=response.status_code == 401,
            )
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            pass  # what orjson refuses (NaN, integers beyond 64 bits) the standard decoder may take
        try:
            return response.json()
        except ValueError:
            raise ApiError(f"{service_type} API in region {region} sent a non-JSON answer to GET {path}") from None

    def _get(self, url: str, params: dict[str, Any] | None, service_type: str,
             microversion: str | None) -> requests.Response:
        """A GET, sent through the transport adapter's own ``get`` with the headers keystoneauth chose
        for the first such GET (user agent, microversion) and the session's current token.

        keystoneauth and requests spend more CPU preparing every request the same way (headers,
        hooks, cookies, environment, the URL parsed and re-quoted twice) than urllib3 spends sending
        it: a server read took 750 us of CPU through them, 380 us this way. An event listener reads one
        server per event. Whatever this path does not handle itself goes through keystoneauth: the
        first GET of a kind, and any answer that is a redirect or a 401 (keystoneauth follows the
        one, and re-authenticates once on the other)."""
        sess = self.session
        key = (service_type, microversion or "")
        template = self._get_headers.get(key)
        if template is not None:
            http = sess.session
            if http.trust_env:  # proxies or netrc in the environment (see settle_environment)
                settings = http.merge_environment_settings(url, {}, None, sess.verify, sess.cert)
            else:
                settings = {"proxies": http.proxies, "verify": sess.verify, "cert": sess.cert}
            headers = {**template, **(sess.get_auth_headers() or {})}
            try:  # (the adapter mounted on the session for http and https: see _make_session)
                response = self.adapter.get(url, params, headers, timeout=self._timeout, verify=settings["verify"],
                                            cert=settings["cert"], proxies=settings["proxies"])
            except requests.exceptions.SSLError as exc:
                raise ks_exc.SSLError(_short(exc)) from None
            except requests.exceptions.Timeout as exc:
                raise ks_exc.ConnectTimeout(_short(exc)) from None
            except requests.exceptions.ConnectionError as exc:
                raise ks_exc.ConnectFailure(_short(exc)) from None
            if response.status_code != 401 and not response.is_redirect:
                return response
            response.close()
        response = sess.request(url, "GET", params=params, microversion=microversion,
                                microversion_service_type=service_type, raise_exc=False)
        if response.request is not None:
            with self._lock:
                self._get_headers[key] = {name: value if isinstance(value, str) else value.decode("latin-1")
                                          for name, value in response.request.headers.items()
                                          if name.lower() != "x-auth-token"}
        return response

    def list(self, service_type: str, path: str, key: str, region: str | None, *,
             params: dict[str, Any] | None = None, microversion: str | None = None,
             paged: bool = True) -> builtins.list[dict[str, Any]]:
        """Every item of a collection, following the API's own 'next' links page by page."""
        items: list[dict[str, Any]] = []
        for page in self._pages(service_type, path, key, region, params, microversion, paged):
            items.extend(page)
        return items

    def _pages(self, service_type: str, path: str, key: str, region: str | None, params: dict[str, Any] | None,
               microversion: str | None, paged: bool) -> Iterator[builtins.list[dict[str, Any]]]:
        query = dict(params or {})
        if paged:
            query.setdefault("limit", PAGE_LIMIT)
        url: str | None = path
        seen: set[str] = set()
        while url:
            data = self.get_json(service_type, url, region, params=query, microversion=microversion)
            page = data.get(key) if isinstance(data, dict) else None
            if not isinstance(page, list):
                raise ApiError(f"{service_type} API in region {region}: GET {path} has no {key!r} list")
            yield page
            url = _next_link(data, key) if paged else None
            query = {}  # a next link carries its own query
            if url in seen:
                break
            if url:
                seen.add(url)


def _next_link(data: dict[str, Any], key: str) -> str | None:
    for link in data.get(f"{key}_links") or []:
        if link.get("rel") == "next" and link.get("href"):
            return str(link["href"])
    nxt = data.get("next")
    if isinstance(nxt, str) and nxt:
        # glance's next link is "/v2/images?marker=...": relative to the versioned endpoint the proxy
        # already uses (which may sit under a path prefix), so drop the version and let it resolve
        return nxt[nxt.find("/", 1):] if nxt.startswith("/v") else nxt
    return None


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:300]


def _body_hint(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return (response.text or response.reason or "").strip()[:200]
    if isinstance(data, dict):
        for value in data.values():
            if isinstance(value, dict) and "message" in value:
                return str(value["message"])[:200]
        for field in ("message", "faultstring", "description", "NeutronError"):
            if field in data:
                return str(data[field])[:200]
    return str(data)[:200]
