"""``stackmap monitoring config``, the broker the daemon picks, and the Sensu pipe handler."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from daemons.monitor_handler.main import resolve_broker
from daemons.monitor_handler.results import parse_document
from daemons.monitor_handler.sensu_config import check_name, plan_checks, sensu_core_config, sensu_go_resources
from daemons.monitor_handler.sensu_handler import EXIT_BAD_INPUT, StackmapSensuHandler
from stackmap.cli import _register_commands, cli
from stackmap.environments import add_environment, load_environment
from stackmap.errors import ConfigError
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox
from stackmap.settings import load_settings
from stackmap.store import Store, open_store
from tests.monitor_helpers import ENV, core_result, go_event, seed

MONITORING = {"server_ip": "10.0.0.9", "rabbitmq_port": 5671, "rabbitmq_user": "sensu", "rabbitmq_pass": "s3cret!"}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mon.db'}"


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    s = open_store(store_url)
    seed(s)
    yield s
    s.close()


# -- check definitions -----------------------------------------------------------------------------

def test_plan_covers_every_monitorable_object_with_structured_metadata(store: Store) -> None:
    plan = plan_checks(store, load_environment(store, ENV))
    by_type = {c.metadata.get("object_type", c.metadata.get("link_type")): c for c in plan.checks}
    assert set(by_type) == {"vedge", "host_pnic", "vconnector", "vservice", "otep", "vnic-vconnector"}
    assert len(plan.checks) == 8 and plan.skipped == []  # 2 vedges, 2 oteps
    assert by_type["host_pnic"].command.endswith("checks.pnic eth0")
    assert by_type["vconnector"].command.endswith("checks.vconnector brq1")
    assert by_type["vservice"].command.endswith("checks.vservice dhcp qdhcp-net_1")
    assert "checks.vnic_link tap_1 --bridge brq1 --mac fa:16:3e:00:00:09" in by_type["vnic-vconnector"].command
    oteps = [c for c in plan.checks if c.metadata.get("object_type") == "otep"]
    assert {c.command.split("--source ")[1] for c in oteps} == {"10.0.0.1 10.0.0.2", "10.0.0.2 10.0.0.1"}
    assert by_type["vnic-vconnector"].metadata == {"environment": ENV, "link_type": "vnic-vconnector",
                                                   "source_id": "h1-tap_1", "target_id": "h1-br_int-8000"}


def test_check_names_are_sensu_safe_and_unique() -> None:
    assert check_name("vedge", "h1-OVS") == "vedge_h1-OVS"
    a, b = check_name("host_pnic", "eth0-fa:16"), check_name("host_pnic", "eth0-fa|16")
    assert a != b and all(ch.isalnum() or ch in "_.-" for ch in a + b)


def test_generated_definitions_map_back_to_their_objects(store: Store) -> None:
    """The loop closes: a result of a generated check finds its object through the handler's parser."""
    from daemons.monitor_handler.mapping import CheckMapper

    env = load_environment(store, ENV)
    plan = plan_checks(store, env)
    mapper = CheckMapper(store)
    core = sensu_core_config(plan, env)
    for host, files in core.items():
        for name, definition in files["checks.json"]["checks"].items():
            result = {"client": files["client.json"]["client"], "check": {**definition, "name": name, "status": 1}}
            assert mapper.resolve(parse_document(result)) is not None, (host, name)
    for resource in sensu_go_resources(plan)[1:]:
        event = go_event(resource["metadata"]["name"], 2, labels=resource["metadata"]["labels"],
                         annotations=resource["metadata"]["annotations"])
        assert mapper.resolve(parse_document(event)) is not None


def test_cli_prints_json_and_writes_files(store: Store, store_url: str, tmp_path: Path) -> None:
    _register_commands()
    runner = CliRunner()
    out = runner.invoke(cli, ["--store", store_url, "monitoring", "config", ENV])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert set(data) == {"h1", "h2"}
    assert data["h1"]["client.json"]["client"]["stackmap"] == {"environment": ENV}
    out = runner.invoke(cli, ["--store", store_url, "monitoring", "config", ENV, "--format", "sensu-go"])
    resources = json.loads(out.stdout)
    assert resources[0]["type"] == "Handler" and resources[0]["spec"]["type"] == "pipe"
    target = tmp_path / "sensu"
    out = runner.invoke(cli, ["--store", store_url, "monitoring", "config", ENV, "--output-dir", str(target)])
    assert out.exit_code == 0
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.json")) == [
        "h1/checks.json", "h1/client.json", "h2/checks.json", "h2/client.json"]
    assert "8 check(s) on 2 host(s)" in out.stderr
    out = runner.invoke(cli, ["--store", store_url, "monitoring", "config", "nope"])
    assert out.exit_code != 0


def test_credentials_only_into_private_files(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    key = tmp_path / "secret.key"
    with open_store(url) as s:
        config = EnvironmentConfig.model_validate({"name": "cred", "environment_type": "Bare-metal",
                                                   "configuration": [{"name": "Monitoring", **MONITORING}]})
        add_environment(s, SecretBox(key), config)
        s.upsert_objects("cred", [{"environment": "cred", "id": "v", "type": "vedge", "host": "h"}])
    _register_commands()
    runner = CliRunner(env={"STACKMAP_SECRET_KEY_FILE": str(key)})
    out = runner.invoke(cli, ["--store", url, "monitoring", "config", "cred"])
    assert "s3cret" not in out.output and "CHANGE-ME" in out.stdout
    assert runner.invoke(cli, ["--store", url, "monitoring", "config", "cred", "--with-credentials"]).exit_code != 0
    target = tmp_path / "out"
    out = runner.invoke(cli, ["--store", url, "monitoring", "config", "cred", "--with-credentials",
                              "--output-dir", str(target)])
    assert out.exit_code == 0, out.output
    client = target / "h" / "client.json"
    assert json.loads(client.read_text())["rabbitmq"]["password"] == "s3cret!"
    assert stat.S_IMODE(client.stat().st_mode) == 0o600


# -- which broker ----------------------------------------------------------------------------------

def _env(store: Store, box: SecretBox, name: str, monitoring: dict[str, Any] | None, enabled: bool = True) -> None:
    doc: dict[str, Any] = {"name": name, "environment_type": "Bare-metal", "enable_monitoring": enabled}
    if monitoring:
        doc["configuration"] = [{"name": "Monitoring", **monitoring}]
    add_environment(store, box, EnvironmentConfig.model_validate(doc))


def test_broker_from_the_monitoring_section_with_the_sealed_password(tmp_path: Path) -> None:
    box = SecretBox(tmp_path / "k")
    with open_store(f"sqlite:///{tmp_path / 'b.db'}") as s:
        _env(s, box, "one", MONITORING)
        _env(s, box, "off", None, enabled=False)
        stored = s.get_environment("one")
        assert stored is not None and "s3cret" not in json.dumps(stored, default=str)
        source = resolve_broker(s, load_settings(None), box)
        assert source.environments == ("one",) and source.default_environment == "one"
        assert source.connection_args["password"] == "s3cret!"
        assert source.connection_args["virtual_host"] == "/sensu" and source.connection_args["port"] == 5671
        assert "s3cret" not in source.display
        _env(s, box, "two", {**MONITORING, "server_ip": "10.0.0.10"})
        with pytest.raises(ConfigError, match="different Sensu brokers"):
            resolve_broker(s, load_settings(None), box)
        picked = resolve_broker(s, load_settings(None, monitor_handler={"environments": ["two"]}), box)
        assert picked.connection_args["hostname"] == "10.0.0.10"
        with pytest.raises(ConfigError, match="unknown environment"):
            resolve_broker(s, load_settings(None, monitor_handler={"environments": ["nope"]}), box)
        url = resolve_broker(s, load_settings(None, monitor_handler={"broker_url": "amqp://u:p@h:1//"}), box)
        assert url.environments is None and url.default_environment is None


def test_no_monitored_environment_is_a_config_error(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path / 'b.db'}") as s, pytest.raises(ConfigError, match="monitoring enabled"):
        resolve_broker(s, load_settings(None), SecretBox(tmp_path / "k"))


# -- the pipe handler ------------------------------------------------------------------------------

def run_handler(store: Store, store_url: str, stdin: str, *args: str) -> StackmapSensuHandler:
    return StackmapSensuHandler(argv=["--store", store_url, *args], stdin=io.StringIO(stdin), store=store)


def test_pipe_handler_applies_sensu_go_events(store: Store, store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    event = go_event("vedge-h1", 2, output="dead", labels={"stackmap_environment": ENV},
                     annotations={"stackmap_object_id": "h1-OVS"})
    handler = run_handler(store, store_url, json.dumps(event))
    assert (handler.outcome, handler.exit_code) == ("applied", 0)
    assert store.get_object(ENV, "h1-OVS")["status"] == "Critical"  # type: ignore[index]
    assert "stackmap: vedge-h1: applied" in capsys.readouterr().out
    assert run_handler(store, store_url, json.dumps(event)).outcome == "unchanged"
    assert len(store.find_messages(ENV, related_object="h1-OVS")) == 1


def test_pipe_handler_default_environment_and_core_events(store: Store, store_url: str) -> None:
    handler = run_handler(store, store_url, json.dumps(core_result("vedge_h2-OVS", 1, env=None)), "--environment", ENV)
    assert handler.outcome == "applied"
    assert store.get_object(ENV, "h2-OVS")["status"] == "Warning"  # type: ignore[index]


@pytest.mark.parametrize("stdin, outcome, code", [
    ("{broken", "malformed_json", EXIT_BAD_INPUT),
    ("x" * 2_000_000, "too_large", EXIT_BAD_INPUT),
    (json.dumps(go_event("c", 0, annotations={"stackmap_object_id": "h1-OVS"})), "no_environment", 0),
    (json.dumps(core_result("c", 0, object_id="missing")), "unknown_object", 0),
])
def test_pipe_handler_bad_input(store: Store, store_url: str, stdin: str, outcome: str, code: int) -> None:
    handler = run_handler(store, store_url, stdin)
    assert (handler.outcome, handler.exit_code) == (outcome, code)
    assert all("status" not in o for o in store.find_objects(ENV))
