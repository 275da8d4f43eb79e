"""``stackmap host-keys``: the pins the SSH runner's first-use policy records, listed and forgotten
through the real entry point and a real SQLite store, so that a re-keyed host is accepted again."""

from __future__ import annotations

import json

import paramiko
import pytest

from stackmap.discovery.host.hostkeys import HostKeyRefused, _PinOnFirstUse, fingerprint
from stackmap.settings import load_settings
from stackmap.store import open_store
from tests.unit.test_cli_scans import lab, run  # noqa: F401 - lab: the environment fixture


def meet(host: str, key: paramiko.PKey) -> None:
    """What the SSH runner does when it meets a host whose key it has not checked yet."""
    store = open_store(load_settings().store_url)
    try:
        _PinOnFirstUse(store, "lab").missing_host_key(paramiko.SSHClient(), host, key)
    finally:
        store.close()


@pytest.mark.usefixtures("lab")
def test_a_re_keyed_host_is_refused_until_its_pin_is_forgotten(capsys: pytest.CaptureFixture[str]) -> None:
    old, new = paramiko.RSAKey.generate(1024), paramiko.RSAKey.generate(1024)
    meet("10.0.0.5", old)
    meet("[10.0.0.6]:2222", new)
    code, out, err = run(capsys, "host-keys", "list", "lab", "--json")
    assert code == 0, err
    assert [(k["host"], k["fingerprint"]) for k in json.loads(out)] == [
        ("10.0.0.5", fingerprint(old)), ("[10.0.0.6]:2222", fingerprint(new))]
    code, out, _ = run(capsys, "host-keys", "list", "lab")
    assert "10.0.0.5" in out and fingerprint(old)[:20] in out

    with pytest.raises(HostKeyRefused, match="mismatch"):
        meet("10.0.0.5", new)
    code, out, err = run(capsys, "host-keys", "forget", "lab", "10.0.0.5")
    assert code == 0, err
    assert "forgot the key of 10.0.0.5" in out
    meet("10.0.0.5", new)  # pinned again, on first use
    code, out, _ = run(capsys, "host-keys", "list", "lab", "--json")
    assert {k["host"]: k["fingerprint"] for k in json.loads(out)}["10.0.0.5"] == fingerprint(new)


@pytest.mark.usefixtures("lab")
def test_forgetting_what_is_not_pinned_fails_clearly(capsys: pytest.CaptureFixture[str]) -> None:
    code, _out, err = run(capsys, "host-keys", "forget", "lab", "10.9.9.9")
    assert code != 0 and "no host key is pinned for 10.9.9.9 in environment lab" in err
    code, _out, err = run(capsys, "host-keys", "list", "nowhere")
    assert code != 0 and "nowhere" in err
