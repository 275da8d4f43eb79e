"""``stackmap-scan-manager``: the console script that runs the scan manager daemon.

Options override the settings file and ``STACKMAP_*`` variables (see README "Scan manager"); every
other knob (poll interval, lease, timeout, attempts) is a setting under ``[scan_manager]``, so
that SIGHUP can reload it.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from stackmap import __version__
from stackmap.errors import StackmapError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stackmap-scan-manager")
@click.option("--config", "config", envvar="STACKMAP_CONFIG", help="TOML settings file.")
@click.option("--store", "store_url", help="Store URL (sqlite:///PATH or mongodb://...); overrides settings.")
@click.option("--metrics-addr", help="HOST:PORT for /metrics (default 127.0.0.1:9310; port 0 picks one).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.option("--log-format", type=click.Choice(["auto", "json", "console"]))
def cli(config: str | None, store_url: str | None, metrics_addr: str | None, log_level: str | None,
        log_format: str | None) -> None:
    """Run requested and scheduled scans until stopped (SIGTERM); SIGHUP reloads the settings."""
    from stackmap.settings import load_settings

    given: dict[str, Any] = {"store_url": store_url, "log_level": log_level, "log_format": log_format}
    if metrics_addr:
        given["scan_manager"] = {"metrics_addr": metrics_addr}
    overrides = {key: value for key, value in given.items() if value is not None}
    settings = load_settings(config, **overrides)
    if settings.scan_manager.worker_start_method == "forkserver":
        from daemons.scan_manager.worker import start_forkserver

        start_forkserver()  # it imports the scan code in parallel with the rest of this start-up

    from daemons.scan_manager.manager import ScanManager

    manager = ScanManager(settings, config_file=config, overrides=overrides)
    sys.exit(manager.serve())


def main(argv: list[str] | None = None) -> None:
    """Console entry point: a settings error is one line on stderr and exit status 2 (no restart loop
    of tracebacks in the journal)."""
    try:
        cli.main(args=argv, prog_name="stackmap-scan-manager", standalone_mode=False)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except StackmapError as exc:
        click.echo(f"stackmap-scan-manager: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
