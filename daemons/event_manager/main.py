"""``stackmap-event-manager`` (the supervised service) and ``stackmap-event-listener ENV`` (one listener
in the foreground, for operators and tests).

The event manager's listeners are child processes, so its metrics use prometheus_client's
multiprocess mode. That mode is chosen when prometheus_client is first imported, from
``PROMETHEUS_MULTIPROC_DIR``: ``main`` prepares that directory (wiping what a previous run left) before
importing anything that imports prometheus_client, which is why the imports below are inside the
functions.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from stackmap.settings import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SINK_HELP = "(testing) build the event sink with this factory, module:function, instead of the handlers"


def prepare_multiprocess_dir() -> Path:
    """An empty metrics directory for this run: the configured one wiped, or a private temporary one.

    Counter files of dead processes are kept on purpose by prometheus_client (their counts still
    count), so a new run must start from an empty directory.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for leftover in path.glob("*.db"):
            leftover.unlink()
    else:
        path = Path(tempfile.mkdtemp(prefix="stackmap-event-manager-metrics-"))
        os.environ[MULTIPROC_ENV] = str(path)
        atexit.register(shutil.rmtree, path, True)
    if "prometheus_client" in sys.modules:  # too late for this process to switch modes
        print("warning: prometheus_client was imported before the metrics directory was set; "
              "listener metrics will be missing", file=sys.stderr)
    return path


def _load(config: str | None, store_url: str | None, log_level: str | None, log_format: str | None,
          metrics_addr: str | None) -> tuple[Settings, dict[str, Any]]:
    from stackmap.errors import ConfigError
    from stackmap.logging import configure_logging
    from stackmap.settings import EventManagerSettings, load_settings

    overrides = {"store_url": store_url, "log_level": log_level, "log_format": log_format}
    try:
        settings = load_settings(config, **overrides)
        if metrics_addr is not None:
            settings.event_manager = EventManagerSettings.model_validate(
                {**settings.event_manager.model_dump(), "metrics_addr": metrics_addr})
    except (ConfigError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    configure_logging(settings.log_level, settings.log_format)
    return settings, overrides


_common = [
    click.option("--config", "config", type=click.Path(dir_okay=False), help="settings file (TOML)"),
    click.option("--store", "store_url", help="store URL (overrides the settings)"),
    click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False)),
    click.option("--log-format", type=click.Choice(["auto", "json", "console"])),
    click.option("--sink", "sink_spec", default=None, hidden=True, help=SINK_HELP),
]


def _with_common(func: Any) -> Any:
    for option in reversed(_common):
        func = option(func)
    return func


@click.command(name="stackmap-event-manager")
@_with_common
@click.option("--metrics-addr", help="HOST:PORT for /metrics (default from settings, 127.0.0.1:9311)")
def _manager(config: str | None, store_url: str | None, log_level: str | None, log_format: str | None,
             sink_spec: str | None, metrics_addr: str | None) -> None:
    """Follow the notification bus of every listening environment (one listener process each)."""
    prepare_multiprocess_dir()
    settings, overrides = _load(config, store_url, log_level, log_format, metrics_addr)
    from daemons.event_manager.listener import DEFAULT_SINK
    from daemons.event_manager.supervisor import EventManager
    from stackmap.errors import StackmapError

    try:
        manager = EventManager(settings, config_file=config, overrides=overrides, sink_spec=sink_spec or DEFAULT_SINK)
    except StackmapError as exc:
        raise click.ClickException(str(exc)) from None
    sys.exit(manager.run())


@click.command(name="stackmap-event-listener")
@click.argument("environment")
@_with_common
@click.option("--metrics-addr", help="HOST:PORT to serve /metrics on (default: no metrics endpoint)")
def _listener(environment: str, config: str | None, store_url: str | None, log_level: str | None,
              log_format: str | None, sink_spec: str | None, metrics_addr: str | None) -> None:
    """Run ENVIRONMENT's listener in the foreground until SIGTERM/SIGINT (no supervisor, no status writes).

    While stackmap-event-manager runs a listener for the same environment, both consume from the
    same queue and share its messages.
    """
    settings, _ = _load(config, store_url, log_level, log_format, None)
    from daemons.event_manager.listener import DEFAULT_SINK, run_listener
    from stackmap.daemon import serve_metrics

    if metrics_addr:
        try:
            _server, port = serve_metrics(metrics_addr)
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot serve metrics on {metrics_addr}: {exc}") from None
        click.echo(f"metrics on {metrics_addr.rpartition(':')[0]}:{port}/metrics", err=True)
    sys.exit(run_listener(environment, settings, sink_spec or DEFAULT_SINK))


def main(argv: list[str] | None = None) -> None:
    """Console script ``stackmap-event-manager``."""
    _manager.main(args=argv, prog_name="stackmap-event-manager")


def listener_main(argv: list[str] | None = None) -> None:
    """Console script ``stackmap-event-listener``."""
    _listener.main(args=argv, prog_name="stackmap-event-listener")


if __name__ == "__main__":
    main()
