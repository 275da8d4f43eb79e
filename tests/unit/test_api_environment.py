"""The API client's requests session reads the process environment only when something in it
concerns requests (a proxy, a CA bundle, netrc): an operator's proxy settings keep working."""

from __future__ import annotations

import pytest
import requests

from stackmap.discovery.api.client import settle_environment

NAMES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "requests_ca_bundle", "curl_ca_bundle", "netrc")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


def test_nothing_for_requests_in_the_environment_stops_reading_it(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("STACKMAP_LOG_LEVEL", "INFO")
    session = requests.Session()
    settle_environment(session)
    assert session.trust_env is False


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "NETRC"])
def test_a_proxy_or_ca_bundle_in_the_environment_is_still_honoured(clean_env: pytest.MonkeyPatch, name: str) -> None:
    clean_env.setenv(name, "http://proxy.example:3128" if "PROXY" in name.upper() else "/etc/ssl/x.pem")
    session = requests.Session()
    settle_environment(session)
    assert session.trust_env is True
    if name == "HTTPS_PROXY":
        settings = session.merge_environment_settings("https://keystone.example:5000/v3", {}, None, None, None)
        assert settings["proxies"].get("https") == "http://proxy.example:3128"
