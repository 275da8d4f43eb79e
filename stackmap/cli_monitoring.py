"""CLI commands for monitoring: ``stackmap monitoring config ENV``.

The definitions themselves are built by ``daemons.monitor_handler.sensu_config`` (next to the check
scripts and the handler whose metadata keys they must match); this module only chooses the output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from stackmap.cli import App, _json_default, cli, pass_app
from stackmap.environments import load_environment
from stackmap.errors import StackmapError


@cli.group()
def monitoring() -> None:
    """Sensu monitoring: client and check definitions for an environment's objects."""


def _write_json(path: Path, data: Any, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, default=_json_default)
        fh.write("\n")
    os.chmod(path, mode)  # an existing file keeps its old mode otherwise


@monitoring.command("config")
@click.argument("environment")
@click.option("--format", "fmt", type=click.Choice(["sensu-core", "sensu-go"]), default="sensu-core",
              show_default=True, help="Sensu Core client/check JSON per host, or Sensu Go resources.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write files here (sensu-core: HOST/client.json and HOST/checks.json; sensu-go: "
                   "sensu-go.json) instead of printing JSON.")
@click.option("--interval", type=click.IntRange(1), default=15, show_default=True, help="Check interval (s).")
@click.option("--check-command", default=None,
              help="Prefix of check commands on the hosts [python3 -m daemons.monitor_handler.checks].")
@click.option("--namespace", default="default", show_default=True, help="Sensu Go namespace.")
@click.option("--with-credentials", is_flag=True,
              help="Put the environment's RabbitMQ password into client.json (written with mode 0600); "
                   "otherwise a CHANGE-ME placeholder.")
@pass_app
def monitoring_config(app: App, environment: str, fmt: str, output_dir: Path | None, interval: int,
                      check_command: str | None, namespace: str, with_credentials: bool) -> None:
    """Generate Sensu definitions for every monitorable object of ENVIRONMENT."""
    from daemons.monitor_handler import sensu_config

    env = load_environment(app.store, environment)
    plan = sensu_config.plan_checks(app.store, env, check_command=check_command or sensu_config.DEFAULT_CHECK_COMMAND)
    password: str | None = None
    if with_credentials:
        if output_dir is None:
            raise StackmapError("--with-credentials writes files only: give --output-dir")
        section = env.section("Monitoring")
        if section is None:
            raise StackmapError(f"environment {environment} has no Monitoring section: no credentials to include")
        password = app.box.reveal(section.rabbitmq_pass)
    vhost = app.settings.monitor_handler.rabbitmq_vhost
    data: Any
    if fmt == "sensu-core":
        data = sensu_config.sensu_core_config(plan, env, vhost=vhost, interval=interval, password=password)
    else:
        data = sensu_config.sensu_go_resources(plan, namespace=namespace, interval=interval)
    summary = f"{len(plan.checks)} check(s) on {len(plan.hosts)} host(s)"
    if plan.skipped:
        summary += f"; {len(plan.skipped)} object(s) skipped"
    if output_dir is None:
        click.echo(json.dumps(data, indent=2, default=_json_default))
    else:
        mode = 0o600 if password is not None else 0o640
        if fmt == "sensu-core":
            for host, files in data.items():
                for name, content in files.items():
                    _write_json(output_dir / host / name, content, mode)
        else:
            _write_json(output_dir / "sensu-go.json", data, mode)
        summary += f"; written to {output_dir}"
    click.echo(summary, err=True)
    for reason in plan.skipped[:20]:
        click.echo(f"skipped {reason}", err=True)
