"""The ``stackmap`` command: environments, inventory queries and (later) scans.

Every command shares one ``App`` (settings, store, secret box) built lazily, so ``--help`` and
argument errors never touch the store. Operator-facing failures are ``StackmapError``s, printed by
``main`` as one line on stderr with a non-zero exit, never a traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from datetime import datetime
from enum import Enum
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from stackmap import __version__
from stackmap.environments import add_environment, load_environment, read_environment_file
from stackmap.errors import NotFound, StackmapError
from stackmap.logging import configure_logging, get_logger
from stackmap.secrets import SecretBox, masked_environment, stored_secret_count
from stackmap.settings import Settings, load_settings
from stackmap.store import Store, open_store

EXIT_ERROR = 1


class App:
    """Per-invocation context: resolves settings once, opens the store on first use."""

    def __init__(self, config: str | None, store_url: str | None, log_level: str | None, log_format: str | None):
        self._overrides = {"store_url": store_url, "log_level": log_level, "log_format": log_format}
        self._config = config
        self._settings: Settings | None = None
        self._store: Store | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self._config, **self._overrides)
            # The CLI talks to people through its output; its log lines are for problems unless asked.
            level = self._overrides["log_level"] or "WARNING"
            configure_logging(level, self._settings.log_format)
        return self._settings

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = open_store(self.settings.store_url)
        return self._store

    @property
    def box(self) -> SecretBox:
        return SecretBox(self.settings.secret_key_file)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


pass_app = click.make_pass_decorator(App)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    return str(value)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=_json_default, sort_keys=False))


def emit_table(title: str | None, columns: list[str], rows: Iterable[Iterable[Any]]) -> None:
    table = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    out = Console(soft_wrap=False)
    if not out.is_terminal:
        out = Console(soft_wrap=False, width=400)  # piped output: never fold columns
    out.print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stackmap")
@click.option("--config", "config", envvar="STACKMAP_CONFIG", help="TOML settings file.")
@click.option("--store", "store_url", help="Store URL (sqlite:///PATH or mongodb://...); overrides settings.")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]))
@click.pass_context
def cli(ctx: click.Context, config: str | None, store_url: str | None, log_level: str | None,
        log_format: str | None) -> None:
    """stackmap keeps a live, queryable map of an OpenStack cloud."""
    app = App(config, store_url, log_level, log_format)
    ctx.obj = app
    ctx.call_on_close(app.close)


# -- info ------------------------------------------------------------------------------------------

@cli.command()
@json_option
@pass_app
def info(app: App, as_json: bool) -> None:
    """Where stackmap keeps its data and what it holds."""
    s = app.settings
    key_state = "present" if app.box.has_key() else "missing (created when the first secret is stored)"
    envs = app.store.list_environments()
    data = {
        "version": __version__,
        "store_url": s.store_url if s.store_url.startswith("sqlite") else app.store.describe(),
        "store": app.store.describe(),
        "secret_key_file": str(s.secret_key_file),
        "secret_key": key_state,
        "environments": [e["name"] for e in envs],
        "log_level": s.log_level,
        "metrics": {
            "scan_manager": s.scan_manager.metrics_addr,
            "event_manager": s.event_manager.metrics_addr,
            "monitor_handler": s.monitor_handler.metrics_addr,
        },
    }
    if as_json:
        emit_json(data)
        return
    click.echo(f"stackmap {__version__}")
    click.echo(f"store:           {data['store']}")
    click.echo(f"secret key file: {data['secret_key_file']} ({key_state})")
    click.echo(f"environments:    {', '.join(data['environments']) or '(none)'}")


# -- environments ----------------------------------------------------------------------------------

@cli.group()
def env() -> None:
    """Add, list, show and remove environments (environments_config)."""


@env.command("add")
@click.argument("file")
@click.option("--replace", is_flag=True,
              help="Replace the configuration of an environment of that name (its scan state is kept).")
@pass_app
def env_add(app: App, file: str, replace: bool) -> None:
    """Add an environment from FILE (JSON or YAML; '-' reads standard input)."""
    config = read_environment_file(file, sys.stdin)
    existed = replace and app.store.get_environment(config.name) is not None
    doc = add_environment(app.store, app.box, config, replace=replace)
    get_logger().info("environment replaced" if existed else "environment added", environment=config.name)
    sealed = stored_secret_count(doc)
    click.echo(f"{'replaced' if existed else 'added'} environment {config.name}"
               + (f" ({sealed} secret(s) encrypted)" if sealed else ""))


def _secrets_state(app: App, doc: dict[str, Any]) -> str:
    count = stored_secret_count(doc)
    if not count:
        return "none"
    return f"{count} sealed" + ("" if app.box.has_key() else " (KEY MISSING: cannot be used)")


@env.command("list")
@json_option
@pass_app
def env_list(app: App, as_json: bool) -> None:
    """List environments."""
    envs = app.store.list_environments()
    if as_json:
        emit_json([masked_environment(e) for e in envs])
        return
    emit_table(None, ["name", "type", "distribution", "drivers", "scanned", "last scanned", "listen",
                      "operational", "secrets"],
               ([e["name"], e.get("environment_type", "OpenStack"),
                 f"{e.get('distribution', '')} {e.get('distribution_version', '')}".strip(),
                 ",".join(e.get("mechanism_drivers") or []) + "/" + str(e.get("type_drivers") or ""),
                 e.get("scanned"), e.get("last_scanned"), e.get("listen"), e.get("operational"),
                 _secrets_state(app, e)] for e in envs))


@env.command("show")
@click.argument("name")
@json_option
@pass_app
def env_show(app: App, name: str, as_json: bool) -> None:
    """Show one environment, secrets masked."""
    doc = load_environment(app.store, name).to_doc()
    stored = app.store.get_environment(name) or {}
    shown = masked_environment(json.loads(json.dumps(doc, default=_json_default)))
    if as_json:
        emit_json(shown)
        return
    for key, value in shown.items():
        if key != "configuration":
            click.echo(f"{key}: {value}")
    click.echo(f"secrets: {_secrets_state(app, stored)}")
    for section in shown.get("configuration", []):
        click.echo(f"[{section['name']}]")
        for key, value in section.items():
            if key != "name":
                click.echo(f"  {key}: {value}")


@env.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def env_remove(app: App, name: str, yes: bool) -> None:
    """Remove an environment and all its inventory, links, cliques, scans and messages."""
    load_environment(app.store, name)
    if not yes and sys.stdin.isatty():
        click.confirm(f"remove environment {name} and its whole map?", abort=True)
    app.store.remove_environment(name)
    get_logger().info("environment removed", environment=name)
    click.echo(f"removed environment {name}")


# -- map queries -----------------------------------------------------------------------------------

def _require_env(app: App, name: str) -> None:
    load_environment(app.store, name)


@cli.command()
@click.argument("environment")
@click.option("--type", "otype", help="Only objects of this type.")
@click.option("--parent", "parent", help="Only children of this object id.")
@click.option("--limit", type=int, default=None)
@click.option("--tree", is_flag=True, help="Print the hierarchy (of --parent's subtree, if given).")
@json_option
@pass_app
def inventory(app: App, environment: str, otype: str | None, parent: str | None, limit: int | None,
              tree: bool, as_json: bool) -> None:
    """List an environment's objects."""
    _require_env(app, environment)
    if tree:
        from stackmap.views import inventory_tree

        root = app.store.get_object(environment, parent) if parent else None
        if parent and root is None:
            raise NotFound(f"no object {parent!r} in environment {environment}")
        objs = app.store.find_objects(environment, under=root["id"] if root else None)
        Console(soft_wrap=True).print(inventory_tree(environment, objs, root_id=parent))
        return
    objs = app.store.find_objects(environment, type=otype, parent_id=parent, limit=limit)
    if as_json:
        emit_json(objs)
        return
    emit_table(None, ["type", "id", "name", "parent"],
               ([o["type"], o["id"], o.get("name"), o.get("parent_id")] for o in objs))
    click.echo(f"{len(objs)} object(s)")


@cli.command()
@click.argument("environment")
@click.argument("object_id")
@json_option
@pass_app
def show(app: App, environment: str, object_id: str, as_json: bool) -> None:
    """Show one object with its links."""
    _require_env(app, environment)
    doc = app.store.get_object(environment, object_id)
    if doc is None:
        raise NotFound(f"no object {object_id!r} in environment {environment}")
    if as_json:
        emit_json(doc)
        return
    for key in sorted(doc):
        click.echo(f"{key}: {doc[key]}")
    links = app.store.find_links(environment, touching=[object_id])
    if links:
        click.echo("links:")
        for lk in links:
            click.echo(f"  {lk['link_type']}: {lk['source_id']} -> {lk['target_id']} ({lk.get('state')})")


@cli.command()
@click.argument("environment")
@click.option("--type", "link_type", help="Only links of this link type.")
@click.option("--object", "object_id", help="Only links touching this object id.")
@json_option
@pass_app
def links(app: App, environment: str, link_type: str | None, object_id: str | None, as_json: bool) -> None:
    """List an environment's links."""
    _require_env(app, environment)
    found = app.store.find_links(environment, link_type=link_type,
                                 touching=[object_id] if object_id else None)
    if as_json:
        emit_json(found)
        return
    emit_table(None, ["type", "source", "target", "state", "name"],
               ([lk["link_type"], lk["source_id"], lk["target_id"], lk.get("state"), lk.get("link_name")]
                for lk in found))
    click.echo(f"{len(found)} link(s)")


@cli.command()
@click.argument("environment")
@click.option("--level", help="Only messages of this level (info, warning, error...).")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@pass_app
def messages(app: App, environment: str, level: str | None, limit: int, as_json: bool) -> None:
    """Show an environment's newest messages."""
    _require_env(app, environment)
    found = app.store.find_messages(environment, level=level, limit=limit)
    if as_json:
        emit_json(found)
        return
    emit_table(None, ["time", "level", "source", "object", "message"],
               ([m.get("timestamp"), m.get("level"), m.get("source_system"), m.get("related_object"),
                 m.get("message") if isinstance(m.get("message"), str) else json.dumps(m.get("message"),
                                                                                       default=_json_default)]
                for m in found))


def _register_commands() -> None:
    """Commands living in their own modules attach themselves to ``cli`` when imported."""
    import stackmap.cli_host_keys
    import stackmap.cli_monitoring
    import stackmap.cli_scan  # noqa: F401
    from stackmap import cli_scans  # noqa: F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point: StackmapErrors become one line on stderr and exit status 1."""
    try:
        _register_commands()
        cli.main(args=argv, prog_name="stackmap", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except StackmapError as exc:
        click.echo(f"stackmap: error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug, not an operator error: still one line, details in the debug log
        get_logger().debug("unexpected error", exc_info=True)
        click.echo(f"stackmap: internal error: {type(exc).__name__}: {exc} (rerun with --log-level DEBUG "
                   "for details)", err=True)
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":  # run as the real module, so commands registered on it are the ones used
    from stackmap import cli as _cli

    _cli.main()


