"""The API client sends a GET through keystoneauth only the first time it reads a kind (service and
microversion); later ones go to the transport adapter's own urllib3 pools with the headers
keystoneauth chose and the session's current token. These tests hold that short path to what
keystoneauth and requests would do: the same headers reach the API, a refused token is renewed, a
redirect is followed, a dead API is reported, TLS is verified as the section says, a proxy is used,
and exchanges are still counted by the adapter."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.api.client import ApiError, OpenStackClient
from tests.fakecloud import CloudSize, FakeCloudServer, closed_port_url
from tests.unit.api_rig import served_client

SIZE = CloudSize(projects=1, hosts=2, instances=3, networks=2, routers=1, server_groups=2)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[FakeCloudServer, OpenStackClient]]:
    with served_client(tmp_path, SIZE) as pair:
        yield pair


@pytest.fixture
def through_keystoneauth(served: tuple[FakeCloudServer, OpenStackClient],
                         monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The URLs of the GETs keystoneauth itself sent."""
    _, client = served
    sess = client.session
    sent: list[str] = []
    real = sess.request

    def request(url: str, method: str, **kwargs: Any) -> Any:
        if method == "GET":
            sent.append(url)
        return real(url, method, **kwargs)

    monkeypatch.setattr(sess, "request", request)
    return sent


def server_ids(client: OpenStackClient) -> set[str]:
    return {s["id"] for s in client.get_json("compute", "/servers/detail", "RegionOne")["servers"]}


def test_only_the_first_get_of_a_kind_goes_through_keystoneauth(
        served: tuple[FakeCloudServer, OpenStackClient], through_keystoneauth: list[str]) -> None:
    server, client = served
    expected = {s["id"] for s in server.cloud.items("servers")}
    assert server_ids(client) == expected
    calls = client.api_calls  # the token's request and the first GET counted
    for _ in range(2):
        assert server_ids(client) == expected
    assert client.get_json("network", "/networks", "RegionOne")["networks"]
    assert client.get_json("network", "/networks", "RegionOne")["networks"]
    assert len(through_keystoneauth) == 2  # one compute GET, one network GET
    assert client.api_calls - calls == 4  # every GET still passes the counting adapter


def test_a_microversion_rides_on_every_get_of_its_kind(
        served: tuple[FakeCloudServer, OpenStackClient], through_keystoneauth: list[str]) -> None:
    _, client = served
    for _ in range(2):  # 2.64 shows 'policy'; 2.1 shows 'policies'
        groups = client.get_json("compute", "/os-server-groups", "RegionOne", microversion="2.64")["server_groups"]
        assert groups and all("policy" in g and "policies" not in g for g in groups)
        groups = client.get_json("compute", "/os-server-groups", "RegionOne")["server_groups"]
        assert groups and all("policies" in g and "policy" not in g for g in groups)
    assert len(through_keystoneauth) == 2  # once per microversion


def test_a_refused_token_is_renewed_and_the_read_answered(
        served: tuple[FakeCloudServer, OpenStackClient], through_keystoneauth: list[str]) -> None:
    server, client = served
    expected = server_ids(client)
    server.tokens.clear()  # Keystone revoked every token it issued
    server.log.clear()
    assert server_ids(client) == expected
    statuses = [(method, target.split("?")[0].rsplit("/", 2)[-2:], status) for method, target, status in server.log]
    assert statuses[0] == ("GET", ["servers", "detail"], 401)
    assert ("POST", ["auth", "tokens"], 201) in statuses
    assert statuses[-1] == ("GET", ["servers", "detail"], 200)
    assert len(through_keystoneauth) == 2  # the first read, and the one that renewed the token


def test_a_redirect_is_followed(served: tuple[FakeCloudServer, OpenStackClient]) -> None:
    server, client = served
    expected = server_ids(client)
    detail = server.path("compute", "/servers/detail")
    server.redirect(detail, server.url + detail, times=1)
    server.log.clear()
    assert server_ids(client) == expected
    assert [status for _, _, status in server.log] == [307, 200]


def test_an_api_that_stops_answering_is_reported(served: tuple[FakeCloudServer, OpenStackClient]) -> None:
    server, client = served
    server_ids(client)
    server.stop()
    client.adapter.close()  # its kept-alive connection would outlive the server's listening socket
    with pytest.raises(ApiError, match="cannot reach the compute API") as caught:
        server_ids(client)
    assert server.cloud.password not in str(caught.value)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1: (certificate, key)."""
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cloud.pem", where / "cloud.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
@pytest.mark.parametrize("trust", ["ca_cert", "verify_off"])
def test_reads_over_https_keep_the_sections_tls_settings(
        tmp_path: Path, certificate: tuple[Path, Path], trust: str) -> None:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    section = {"ca_cert": str(cert)} if trust == "ca_cert" else {"verify": False}
    with served_client(tmp_path, SIZE, server={"tls": context}, **section) as (server, client):
        assert server.url.startswith("https://")
        expected = {s["id"] for s in server.cloud.items("servers")}
        calls = client.api_calls
        for _ in range(3):  # the first through keystoneauth, then straight to the adapter's pool
            assert server_ids(client) == expected
        assert client.api_calls - calls >= 3


def test_a_certificate_nobody_vouches_for_is_refused(tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with served_client(tmp_path, SIZE, server={"tls": context}, ca_cert=str(cert)) as (_, client):
        server_ids(client)
        client.session.verify = True  # the system's authorities only, from now on
        client.adapter.close()
        with pytest.raises(ApiError, match="compute"):
            server_ids(client)


def test_a_proxy_set_on_the_session_is_used(served: tuple[FakeCloudServer, OpenStackClient]) -> None:
    _, client = served
    server_ids(client)
    client.session.session.proxies = {"http": closed_port_url()}  # a proxy that is down
    with pytest.raises(ApiError, match="cannot reach the compute API"):
        server_ids(client)  # sent through the proxy: the direct way would have reached the API
    client.session.session.proxies = {}
    assert server_ids(client)


def test_which_api_errors_are_worth_retrying() -> None:
    from stackmap.discovery.api.client import ServiceMissing
    from stackmap.errors import StackmapError

    assert ApiError("cannot reach the compute API").retryable  # no answer at all
    assert all(ApiError("x", status=s).retryable for s in (401, 408, 429, 500, 502, 503, 504))
    assert not any(ApiError("x", status=s).retryable for s in (400, 403, 404, 409, 413))
    assert not ServiceMissing("no compute endpoint").retryable
    assert not StackmapError("bad config").retryable
