"""CLI commands for the scan queue and schedules (served by ``stackmap-scan-manager``).

    stackmap scans [ENV]            list scan requests, newest first
    stackmap scans show ID          one scan: status, progress, outcome, summary
    stackmap scans cancel ID        abort a queued scan, or ask its manager to stop a running one
    stackmap schedule add ENV (--every 15m | --freq DAILY | --cron '30 3 * * *' | --defaults) [--types a,b]
    stackmap schedule list [ENV]
    stackmap schedule remove ID...

``follow_scan`` is what ``stackmap scan ENV --wait`` uses to follow a queued scan to its end.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stackmap.cli import App, cli, emit_json, emit_table, json_option, pass_app
from stackmap.environments import load_environment
from stackmap.errors import NotFound, StackmapError
from stackmap.model import Frequency, ScanStatus, utcnow
from stackmap.store import Doc

EXIT_PARTIAL = 3
PHASES = ("inventory", "links", "cliques")


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else ""


def _duration(doc: Doc) -> str:
    start, end = doc.get("start_timestamp"), doc.get("end_timestamp")
    if isinstance(start, datetime) and isinstance(end, datetime):
        return f"{(end - start).total_seconds():.1f}s"
    return ""


def parse_types(text: str | None) -> list[str] | None:
    """``instance,port`` -> ["instance", "port"] (None when not given)."""
    if not text:
        return None
    types = [t.strip() for t in text.split(",") if t.strip()]
    if not types:
        raise click.BadParameter("name at least one resource type", param_hint="--types")
    return types


# -- scans -------------------------------------------------------------------------------------------

class _ListByDefault(click.Group):
    """``stackmap scans [ENV]`` lists; ``stackmap scans show|cancel ID`` act on one scan."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = ["list", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_ListByDefault)
def scans() -> None:
    """Scan requests and their outcomes: list (the default), show, cancel."""


@scans.command("list")
@click.argument("environment", required=False)
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in ScanStatus]),
              help="Only scans in this status (repeatable).")
@click.option("--limit", type=int, default=50, show_default=True)
@json_option
@pass_app
def scans_list(app: App, environment: str | None, statuses: tuple[str, ...], limit: int, as_json: bool) -> None:
    """List scans (of ENVIRONMENT), newest first."""
    from daemons.scan_manager.jobs import scan_kind

    if environment:
        load_environment(app.store, environment)
    found = app.store.find_scans(environment, status=list(statuses) or None, limit=limit)
    if as_json:
        emit_json(found)
        return
    emit_table(None, ["id", "environment", "status", "kind", "submitted", "duration", "attempts", "error"],
               ([s["id"], s["environment"], s["status"], scan_kind(s), _when(s.get("submit_timestamp")),
                 _duration(s), s.get("attempts", ""), (s.get("error") or "")[:80]] for s in found))
    click.echo(f"{len(found)} scan(s)")


@scans.command("show")
@click.argument("scan_id")
@json_option
@pass_app
def scans_show(app: App, scan_id: str, as_json: bool) -> None:
    """Show one scan: options, status, where it runs, progress, outcome."""
    from daemons.scan_manager.jobs import get, queue_position, scan_kind

    doc = get(app.store, scan_id)
    if as_json:
        emit_json(doc)
        return
    click.echo(f"id:          {doc['id']}")
    click.echo(f"environment: {doc['environment']}")
    click.echo(f"kind:        {scan_kind(doc)}")
    status = doc["status"]
    if status == ScanStatus.PENDING.value:
        status += f" ({queue_position(app.store, doc)} ahead in the queue)"
    click.echo(f"status:      {status}" + (" (cancel requested)" if doc.get("cancel_requested")
                                           and doc["status"] == ScanStatus.RUNNING.value else ""))
    for label, key in (("submitted", "submit_timestamp"), ("started", "start_timestamp"),
                       ("ended", "end_timestamp"), ("lease until", "lease_expires")):
        if doc.get(key):
            click.echo(f"{label + ':':<13}{_when(doc[key])}")
    for label, key in (("owner", "owner"), ("attempts", "attempts"), ("schedule", "scheduled_scan_id"),
                       ("recovered", "recovered"), ("error", "error")):
        if doc.get(key) not in (None, ""):
            click.echo(f"{label + ':':<13}{doc[key]}")
    progress = doc.get("progress") or {}
    if progress and doc["status"] == ScanStatus.RUNNING.value:
        counts = ", ".join(f"{k.removeprefix('api:')} {v}" for k, v in (progress.get("counts") or {}).items())
        click.echo(f"progress:    {progress.get('phase')}" + (f" ({counts})" if counts else ""))
    summary = doc.get("summary")
    if summary:
        objects = summary.get("objects_by_type") or {}
        click.echo(f"summary:     {sum(objects.values())} objects ({summary.get('objects_written', 0)} written, "
                   f"{summary.get('objects_deleted', 0)} deleted), {summary.get('links', 0)} links, "
                   f"{summary.get('cliques', 0)} cliques, {summary.get('api_calls', 0)} API calls, "
                   f"{summary.get('duration_s', 0)} s")
        for otype, count in sorted(objects.items()):
            click.echo(f"  {otype}: {count}")


@scans.command("cancel")
@click.argument("scan_id")
@pass_app
def scans_cancel(app: App, scan_id: str) -> None:
    """Cancel a scan: a queued one is aborted at once, a running one is stopped by its manager."""
    from daemons.scan_manager.jobs import cancel

    status = cancel(app.store, scan_id)
    if status == ScanStatus.ABORTED.value:
        click.echo(f"scan {scan_id} cancelled (it had not started)")
    else:
        click.echo(f"cancel requested: the scan manager running {scan_id} stops it within seconds "
                   f"(follow with: stackmap scans show {scan_id})")


# -- following a queued scan (stackmap scan --wait) --------------------------------------------------

def _phases_of(doc: Doc) -> tuple[str, ...]:
    if doc.get("scan_only_inventory"):
        return ("inventory",)
    if doc.get("scan_only_links"):
        return ("links",)
    if doc.get("scan_only_cliques"):
        return ("cliques",)
    return PHASES


def follow_scan(app: App, scan_id: str, *, poll_s: float = 0.5, timeout_s: float | None = None) -> Doc:
    """Follow a scan until it ends, drawing a progress bar on a terminal (a line per state change
    otherwise); returns its final document. Ctrl-C stops following, not the scan."""
    from daemons.scan_manager.jobs import get, queue_position

    console = Console(stderr=True)
    phases_done: list[str] = []
    last_state = ""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    doc = get(app.store, scan_id)
    phases = _phases_of(doc)
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    task = bar.add_task("queued", total=len(phases))
    try:
        with bar:
            while True:
                doc = get(app.store, scan_id)
                status = doc["status"]
                if status in {s.value for s in ScanStatus if s.finished}:
                    bar.update(task, completed=len(phases))
                    break
                if status == ScanStatus.PENDING.value:
                    state = f"queued ({queue_position(app.store, doc)} ahead)"
                else:
                    progress = doc.get("progress") or {}
                    phase = str(progress.get("phase") or "starting")
                    if phase in phases and phase not in phases_done:
                        phases_done[:] = list(phases[:phases.index(phase)])
                    counts = progress.get("counts") or {}
                    shown = ", ".join(f"{k.removeprefix('api:')} {v}" for k, v in list(counts.items())[:5])
                    state = f"running: {phase}" + (f" ({shown})" if shown else "")
                bar.update(task, description=state, completed=len(phases_done))
                if not console.is_terminal and state.split(" (")[0] != last_state:
                    click.echo(f"scan {scan_id}: {state.split(' (')[0]}", err=True)
                last_state = state.split(" (")[0]
                if deadline is not None and time.monotonic() > deadline:
                    raise StackmapError(f"scan {scan_id} still {status} after {timeout_s:g} s "
                                        f"(follow with: stackmap scans show {scan_id})")
                time.sleep(poll_s)
    except KeyboardInterrupt:
        click.echo(f"stopped following; the scan goes on (stackmap scans show {scan_id})", err=True)
        sys.exit(130)
    return doc


def report_followed(doc: Doc, as_json: bool) -> None:
    """Print a followed scan's outcome and exit like a foreground scan would (3: with errors)."""
    from stackmap.cli_scan import print_summary
    from stackmap.discovery.scan import ScanSummary

    summary = doc.get("summary")
    if as_json:
        emit_json(doc)
    elif summary:
        known = {k: v for k, v in summary.items() if k in ScanSummary.__dataclass_fields__}
        print_summary(ScanSummary(**known), Console())
    status = doc["status"]
    if status in (ScanStatus.FAILED.value, ScanStatus.ABORTED.value):
        raise StackmapError(f"scan {doc['id']} {status}: {doc.get('error') or 'no reason recorded'}")
    if status == ScanStatus.COMPLETED_WITH_ERRORS.value:
        click.echo(f"stackmap: scan completed with errors: {doc.get('error') or ''}", err=True)
        sys.exit(EXIT_PARTIAL)


# -- schedules ---------------------------------------------------------------------------------------

@cli.group()
def schedule() -> None:
    """Recurring scans: full or per resource type, at an interval, a frequency or a cron time."""


@schedule.command("add")
@click.argument("environment")
@click.option("--every", help="Interval: 90s, 15m, 1h30m, 2d, 1w.")
@click.option("--freq", type=click.Choice([f.value for f in Frequency], case_sensitive=False),
              help="Calipso frequency.")
@click.option("--cron", help="Cron expression, 5 fields, in UTC (e.g. '30 3 * * *').")
@click.option("--types", "types", help="Sync only these resource types (comma-separated, e.g. instance,port).")
@click.option("--defaults", is_flag=True,
              help="Install the shipped per-resource sync intervals (config/sync_intervals.json).")
@click.option("--inventory-only", is_flag=True, help="Only objects (no links, no cliques).")
@click.option("--id", "schedule_id", help="Id of the schedule (default: generated); an existing id is replaced.")
@json_option
@pass_app
def schedule_add(app: App, environment: str, every: str | None, freq: str | None, cron: str | None,
                 types: str | None, defaults: bool, inventory_only: bool, schedule_id: str | None,
                 as_json: bool) -> None:
    """Add a scheduled scan of ENVIRONMENT (or, with --defaults, the per-resource sync set)."""
    from pydantic import ValidationError

    from daemons.scan_manager.schedules import default_schedules, new_schedule
    from stackmap.settings import describe_validation_error

    load_environment(app.store, environment)
    now = utcnow()
    if defaults:
        if every or freq or cron or types or schedule_id or inventory_only:
            raise click.UsageError("--defaults takes no other schedule option")
        built = default_schedules(environment, now)
    else:
        try:
            built = [new_schedule(environment, every=every, freq=freq, cron=cron, resource_types=parse_types(types),
                                  schedule_id=schedule_id, now=now, scan_only_inventory=inventory_only)]
        except ValidationError as exc:
            raise StackmapError(f"invalid schedule: {describe_validation_error(exc)}") from None
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    for one in built:
        app.store.upsert_scheduled_scan(one.to_doc())
    docs = [one.to_doc() for one in built]
    if as_json:
        emit_json(docs)
        return
    _schedule_table(docs)


def _schedule_table(docs: list[Doc]) -> None:
    from daemons.scan_manager.jobs import scan_kind
    from daemons.scan_manager.schedules import cadence_text

    emit_table(None, ["id", "environment", "cadence", "scans", "next run (UTC)", "last run (UTC)"],
               ([d["id"], d["environment"], cadence_text(d), scan_kind(d), _when(d.get("scheduled_timestamp")),
                 _when(d.get("last_run"))] for d in docs))


@schedule.command("list")
@click.argument("environment", required=False)
@json_option
@pass_app
def schedule_list(app: App, environment: str | None, as_json: bool) -> None:
    """List scheduled scans (of ENVIRONMENT)."""
    found = app.store.list_scheduled_scans(environment)
    if as_json:
        emit_json(found)
        return
    _schedule_table(found)
    click.echo(f"{len(found)} schedule(s)")


@schedule.command("remove")
@click.argument("schedule_ids", nargs=-1, required=True)
@pass_app
def schedule_remove(app: App, schedule_ids: tuple[str, ...]) -> None:
    """Remove scheduled scans by id (scans they already queued stay queued)."""
    missing = [sid for sid in schedule_ids if not app.store.remove_scheduled_scan(sid)]
    for sid in schedule_ids:
        if sid not in missing:
            click.echo(f"removed schedule {sid}")
    if missing:
        raise NotFound(f"no schedule {', '.join(repr(m) for m in missing)}")
