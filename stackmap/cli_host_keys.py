"""CLI commands for the SSH host keys pinned on first use (``ssh.host_key_policy = "pin"``).

    stackmap host-keys list ENV           the pinned keys: host, type, fingerprint, first seen
    stackmap host-keys forget ENV HOST    forget one, after the host was re-keyed on purpose

A scan refuses a host whose key differs from its pin, naming both fingerprints; forgetting the pin
lets the next scan pin the host's new key (and log it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from stackmap.cli import App, cli, emit_json, emit_table, json_option, pass_app
from stackmap.environments import load_environment
from stackmap.errors import NotFound
from stackmap.logging import get_logger


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else str(value or "")


@cli.group("host-keys")
def host_keys() -> None:
    """List or forget the SSH host keys pinned on first use."""


@host_keys.command("list")
@click.argument("environment")
@json_option
@pass_app
def host_keys_list(app: App, environment: str, as_json: bool) -> None:
    """The host keys pinned for ENVIRONMENT."""
    load_environment(app.store, environment)
    keys = app.store.list_host_keys(environment)
    if as_json:
        emit_json([{k: v for k, v in key.items() if k != "environment"} for key in keys])
        return
    emit_table(None, ["host", "type", "fingerprint", "first seen"],
               ([k["host"], k.get("key_type"), k.get("fingerprint"), _when(k.get("first_seen"))] for k in keys))


@host_keys.command("forget")
@click.argument("environment")
@click.argument("host")
@pass_app
def host_keys_forget(app: App, environment: str, host: str) -> None:
    """Forget HOST's pinned key (HOST as listed: ``10.0.0.5`` or ``[10.0.0.5]:2222``); the next scan
    pins the key the host offers then."""
    load_environment(app.store, environment)
    pinned = app.store.get_host_key(environment, host)
    if pinned is None or not app.store.remove_host_key(environment, host):
        raise NotFound(f"no host key is pinned for {host} in environment {environment}")
    get_logger().info("host key forgotten", environment=environment, host=host,
                      fingerprint=pinned.get("fingerprint"))
    click.echo(f"forgot the key of {host} ({pinned.get('fingerprint')}); the next scan pins the key it offers")
