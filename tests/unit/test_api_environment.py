"""The API client's requests session reads the process environment only when a proxy or netrc
setting is in it (an operator's proxy settings keep working); a CA bundle named there is handed
to the session once instead of being looked up at every request."""

from __future__ import annotations

import pytest
import requests
from keystoneauth1 import session as ks_session

from stackmap.discovery.api.client import settle_environment

NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle", "netrc")
URL = "https://keystone.example:5000/v3"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def settled(verify: bool | str = True) -> ks_session.Session:
    sess = ks_session.Session(verify=verify, session=requests.Session())
    settle_environment(sess)
    return sess


def test_nothing_for_requests_in_the_environment_stops_reading_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STACKMAP_LOG_LEVEL", "INFO")
    sess = settled()
    assert sess.session.trust_env is False and sess.verify is True


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "no_proxy", "all_proxy", "NETRC"])
def test_a_proxy_or_netrc_in_the_environment_is_still_honoured(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "http://proxy.example:3128" if "PROXY" in name.upper() else "/etc/netrc")
    sess = settled()
    assert sess.session.trust_env is True
    if name == "HTTPS_PROXY":
        settings = sess.session.merge_environment_settings(URL, {}, None, None, None)
        assert settings["proxies"].get("https") == "http://proxy.example:3128"


@pytest.mark.parametrize("name", ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"])
def test_a_ca_bundle_in_the_environment_becomes_the_sessions_own(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "/etc/ssl/x.pem")
    # what requests itself would verify with, reading the environment
    trusting = requests.Session()
    assert trusting.merge_environment_settings(URL, {}, None, True, None)["verify"] == "/etc/ssl/x.pem"
    sess = settled()
    assert sess.session.trust_env is False and sess.verify == "/etc/ssl/x.pem"
    # a bundle or verify=False configured for the cloud wins, as it does in requests
    assert settled("/etc/ssl/cloud.pem").verify == "/etc/ssl/cloud.pem"
    assert settled(False).verify is False


def test_requests_bundle_variable_comes_first(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("CURL_CA_BUNDLE", "/etc/ssl/curl.pem")
    clean_env.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/requests.pem")
    assert requests.Session().merge_environment_settings(URL, {}, None, True, None)["verify"] == "/etc/ssl/requests.pem"
    assert settled().verify == "/etc/ssl/requests.pem"
