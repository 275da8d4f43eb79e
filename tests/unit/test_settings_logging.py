"""Settings resolution and the logging pipeline's redaction."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from stackmap.errors import ConfigError
from stackmap.logging import REDACTED, configure_logging, get_logger, redact_value
from stackmap.settings import load_settings


def test_defaults_live_in_the_shared_data_dir(_isolated_data_dir: Path) -> None:
    s = load_settings()
    assert s.store_url == f"sqlite:///{_isolated_data_dir / 'stackmap.db'}"
    assert s.secret_key_file == _isolated_data_dir / "secret.key"
    assert s.scan_manager.metrics_addr.startswith("127.0.0.1:")


def test_precedence_override_then_env_then_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('store_url = "sqlite:///from-toml.db"\nlog_level = "debug"\n'
                    '[event_manager]\nmetrics_addr = "127.0.0.1:9999"\n')
    s = load_settings(toml)
    assert (s.store_url, s.log_level, s.event_manager.metrics_addr) == ("sqlite:///from-toml.db", "DEBUG",
                                                                         "127.0.0.1:9999")
    monkeypatch.setenv("STACKMAP_STORE_URL", "sqlite:///from-env.db")
    monkeypatch.setenv("STACKMAP_EVENT_MANAGER__METRICS_ADDR", "127.0.0.1:1234")
    s = load_settings(toml)
    assert s.store_url == "sqlite:///from-env.db" and s.event_manager.metrics_addr == "127.0.0.1:1234"
    assert load_settings(toml, store_url="sqlite:///cli.db").store_url == "sqlite:///cli.db"
    monkeypatch.setenv("STACKMAP_CONFIG", str(toml))
    assert load_settings().log_level == "DEBUG"


@pytest.mark.parametrize(("toml", "needle"), [
    ('log_format = "xml"\n', "log_format"),
    ('unknown_knob = 1\n', "unknown_knob"),
    ('[scan_manager]\nmetrics_addr = "nonsense"\n', "scan_manager.metrics_addr"),
    ('store_url = "ftp://x"\n', "store_url"),
])
def test_invalid_settings_name_the_field(tmp_path: Path, toml: str, needle: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=needle):
        load_settings(path)


def test_redaction_reaches_nested_values_urls_and_secret_types() -> None:
    event = {
        "env": {"configuration": [{"name": "OpenStack", "pwd": "p1", "host": "h"},
                                  {"name": "CLI", "key": "-----BEGIN KEY-----", "user": "u"}]},
        "headers": [{"X-Auth-Token": "t1"}, {"Authorization": "Basic abc"}],
        "url": "amqp://guest:p2@127.0.0.1:5672//",
        "rabbitmq_pass": "p3",
        "secret": SecretStr("p4"),
        "secret_key_file": "/var/lib/stackmap/secret.key",
        "token_type": "bearer",
    }
    out = redact_value(event)
    text = json.dumps(out)
    for leaked in ("p1", "t1", "Basic abc", "p2@", "p3", "BEGIN KEY"):
        assert leaked not in text
    assert out["env"]["configuration"][0]["host"] == "h"
    assert out["url"] == f"amqp://guest:{REDACTED}@127.0.0.1:5672//"
    assert out["secret"] == REDACTED
    assert out["secret_key_file"] == "/var/lib/stackmap/secret.key"  # a path, not a secret
    assert out["token_type"] == "bearer"


def test_log_lines_are_json_and_redacted() -> None:
    buf = io.StringIO()
    configure_logging("INFO", "json", buf)
    log = get_logger()
    log.info("connecting", password="hunter2", amqp_url="amqp://u:hunter3@h//", nested={"pwd": "hunter4"})
    log.debug("hidden at INFO")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "connecting" and record["level"] == "info" and "timestamp" in record
    assert "hunter" not in lines[0]
    configure_logging("DEBUG", "console", buf)
    get_logger().debug("shown", token="hunter5")
    assert "shown" in buf.getvalue() and "hunter5" not in buf.getvalue()


def test_ssh_settings_from_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[ssh]\nhost_key_policy = "known_hosts"\nknown_hosts = "~/kh"\nmax_parallel = 40\n')
    monkeypatch.setenv("STACKMAP_SSH__COMMAND_TIMEOUT_S", "15")
    settings = load_settings(toml)
    assert settings.ssh.host_key_policy == "known_hosts"
    assert settings.ssh.known_hosts == Path("~/kh").expanduser()
    assert (settings.ssh.max_parallel, settings.ssh.command_timeout_s) == (40, 15.0)
    assert load_settings().ssh.host_key_policy == "pin"  # the default: trust on first use, recorded
    toml.write_text('[ssh]\nhost_key_policy = "auto_add"\n')
    with pytest.raises(ConfigError, match=r"ssh\.host_key_policy"):
        load_settings(toml)
