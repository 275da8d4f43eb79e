"""CLI commands that scan and look at the map: scan, record, demo, clique, env add-cloud."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from stackmap import paths
from stackmap.cli import App, cli, emit_json, emit_table, env, json_option, pass_app
from stackmap.discovery.api.transport import RecordingAdapter
from stackmap.discovery.scan import Scanner, ScanOptions, ScanSummary, make_adapter
from stackmap.environments import add_environment, load_environment
from stackmap.errors import NotFound, StackmapError
from stackmap.model import EnvironmentConfig, Scan, ScanStatus, utcnow
from stackmap.views import clique_dot, clique_text

EXIT_PARTIAL = 3
DEMO_ENV = "demo"
DEMO_RECORDING = "recordings/demo"


class RichProgress:
    """Draws a scan's progress on a terminal: the phase and a running count per object type."""

    def __init__(self, console: Console) -> None:
        self.counts: Counter[str] = Counter()
        self._phase = "starting"
        self._bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                             console=console, transient=True, disable=not console.is_terminal)
        self._task = self._bar.add_task("", total=None)

    def __enter__(self) -> RichProgress:
        self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()

    def phase(self, name: str) -> None:
        self._phase = name
        self._draw()

    def counted(self, what: str, count: int) -> None:
        self.counts[what] += count
        self._draw()

    def _draw(self) -> None:
        shown = [f"{k.removeprefix('api:')} {v}" for k, v in self.counts.items()
                 if (k.startswith("api:")) == (self._phase == "inventory" and not any(
                     not c.startswith("api:") for c in self.counts))][-6:]
        self._bar.update(self._task, description=f"[bold]{self._phase}[/bold] " + ", ".join(shown))


def print_summary(summary: ScanSummary, console: Console) -> None:
    rows = sorted(summary.objects_by_type.items())
    emit_table(f"scan of {summary.environment}: {summary.status}", ["type", "objects"], rows)
    console.print(
        f"objects {sum(summary.objects_by_type.values())} ({summary.objects_written} written, "
        f"{summary.objects_deleted} deleted) | links {summary.links} ({summary.links_written} written, "
        f"{summary.links_deleted} deleted) | cliques {summary.cliques} ({summary.cliques_written} written, "
        f"{summary.cliques_deleted} deleted) | API calls {summary.api_calls} | {summary.duration_s:.2f} s",
        soft_wrap=True, highlight=False)
    for warning in summary.warnings[:10]:
        console.print(f"warning: {warning}", style="yellow", soft_wrap=True, highlight=False)


def run_foreground_scan(app: App, environment: str, options: ScanOptions, *, as_json: bool = False,
                        record_to: Path | None = None) -> ScanSummary:
    """Run a scan in this process, recorded in the scans collection like a queued one."""
    store = app.store
    env_model = load_environment(store, environment)
    console = Console(stderr=True)
    owner = f"cli:{os.getpid()}"
    lease_s = app.settings.scan_manager.lease_s
    scan = Scan(environment=environment, status=ScanStatus.RUNNING, owner=owner, start_timestamp=utcnow(),
                lease_expires=utcnow() + timedelta(seconds=lease_s), clear=options.clear,
                object_id=options.object_id, resource_types=options.resource_types,
                scan_only_inventory=options.inventory_only, scan_only_links=options.links_only,
                scan_only_cliques=options.cliques_only)
    store.submit_scan(scan.to_doc())
    adapter = make_adapter(env_model, record_to)
    # Renew the lease like a scan manager does, so if this process is killed the managers see the
    # lease expire and mark the scan failed instead of leaving it "running" forever.
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(max(1.0, lease_s / 3)):
            store.update_scan(scan.id, {"lease_expires": utcnow() + timedelta(seconds=lease_s)},
                              expect_status=ScanStatus.RUNNING.value, expect_owner=owner)

    renewer = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    renewer.start()
    try:
        with RichProgress(console) as progress:
            summary = Scanner(store, app.box, environment, options, progress=progress, adapter=adapter,
                              ssh=app.settings.ssh).run()
    finally:
        stop.set()
        renewer.join(timeout=5)
    store.update_scan(scan.id, {"status": summary.status, "end_timestamp": utcnow(),
                                "summary": summary.as_dict(), "error": "; ".join(summary.errors[:5]) or None})
    if record_to is not None and isinstance(adapter, RecordingAdapter):
        section = env_model.section("OpenStack")
        adapter.save(record_to)
        (record_to / "meta.json").write_text(json.dumps({
            "auth_url": section.auth_url or f"{'https' if section.https else 'http'}://{section.host}:{section.port}/v3",
            "user": section.user, "project": section.project, "user_domain": section.user_domain,
            "project_domain": section.project_domain, "recorded": utcnow().isoformat(),
            "exchanges": len(adapter.exchanges)}, indent=1))
    if as_json:
        emit_json(summary.as_dict())
    else:
        print_summary(summary, Console())
    return summary


def exit_for(summary: ScanSummary) -> None:
    if summary.status == ScanStatus.FAILED:
        raise StackmapError(f"scan failed: {summary.errors[0] if summary.errors else 'unknown error'}")
    if summary.status == ScanStatus.COMPLETED_WITH_ERRORS:
        click.echo(f"stackmap: scan completed with errors: {summary.errors[0] if summary.errors else ''}", err=True)
        sys.exit(EXIT_PARTIAL)


@cli.command()
@click.argument("environment")
@click.option("--inventory-only", is_flag=True, help="Only objects (no links, no cliques).")
@click.option("--links-only", is_flag=True, help="Only recompute links from the stored objects.")
@click.option("--cliques-only", is_flag=True, help="Only recompute cliques from the stored links.")
@click.option("--clear", is_flag=True, help="Delete the environment's map before scanning.")
@click.option("--object-id", help="Rescan only this object and its subtree.")
@click.option("--types", "types", help="Sync only these resource types (comma-separated, e.g. instance,port); "
              "objects of other types are neither written nor deleted.")
@click.option("--scanners-file", help="Use this scanners.json instead of the shipped one.")
@click.option("--queue", is_flag=True, help="Queue the scan for stackmap-scan-manager and print its id.")
@click.option("--wait", is_flag=True, help="Queue the scan and follow it to its end (implies --queue).")
@click.option("--wait-timeout", type=float, default=None, help="With --wait: give up following after this many s.")
@json_option
@pass_app
def scan(app: App, environment: str, inventory_only: bool, links_only: bool, cliques_only: bool, clear: bool,
         object_id: str | None, types: str | None, scanners_file: str | None, queue: bool, wait: bool,
         wait_timeout: float | None, as_json: bool) -> None:
    """Scan ENVIRONMENT: inventory, links, cliques; in the foreground, or queued (--queue, --wait)."""
    from stackmap.cli_scans import parse_types

    options = ScanOptions(inventory_only=inventory_only, links_only=links_only, cliques_only=cliques_only,
                          clear=clear, object_id=object_id, scanners_file=scanners_file,
                          resource_types=parse_types(types))
    if queue or wait:
        from daemons.scan_manager.jobs import submit
        from stackmap.cli_scans import follow_scan, report_followed

        if scanners_file:
            raise click.UsageError("--scanners-file applies to foreground scans only")
        doc = submit(app.store, environment, options)
        if not wait:
            if as_json:
                emit_json({"id": doc["id"], "environment": environment, "status": doc["status"]})
            else:
                click.echo(doc["id"])
            return
        if not as_json:
            click.echo(f"queued scan {doc['id']}", err=True)
        report_followed(follow_scan(app, doc["id"], timeout_s=wait_timeout), as_json)
        return
    exit_for(run_foreground_scan(app, environment, options, as_json=as_json))


@cli.command()
@click.argument("environment")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@pass_app
def record(app: App, environment: str, directory: Path) -> None:
    """Scan ENVIRONMENT and save its API exchanges (scrubbed of secrets) in DIRECTORY for replay."""
    summary = run_foreground_scan(app, environment, ScanOptions(), record_to=directory)
    click.echo(f"recorded {summary.api_calls} API exchanges in {directory}")
    exit_for(summary)


@cli.command()
@pass_app
def demo(app: App) -> None:
    """Load a recorded real OpenStack into the map (no cloud needed) and show where to look."""
    recording = paths.defaults_dir() / DEMO_RECORDING
    meta_file = recording / "meta.json"
    if not meta_file.is_file():
        raise StackmapError(f"the demo recording is missing from this installation ({recording})")
    meta = json.loads(meta_file.read_text())
    config = EnvironmentConfig.model_validate({
        "name": DEMO_ENV, "distribution": "Stock", "distribution_version": "Zed", "mechanism_drivers": ["OVS"],
        "type_drivers": "vxlan", "configuration": [{
            "name": "OpenStack", "auth_url": meta["auth_url"], "user": meta["user"], "pwd": "replayed-not-used",
            "project": meta["project"], "user_domain": meta["user_domain"], "project_domain": meta["project_domain"],
            "recording": DEMO_RECORDING}],
    })
    add_environment(app.store, app.box, config, replace=True)
    summary = run_foreground_scan(app, DEMO_ENV, ScanOptions())
    exit_for(summary)
    instance = next(iter(app.store.find_objects(DEMO_ENV, type="instance", limit=1)), None)
    click.echo(f"\nThe map of a recorded OpenStack is in {app.store.describe()}. Look around:")
    click.echo(f"  stackmap inventory {DEMO_ENV} --tree")
    click.echo(f"  stackmap links {DEMO_ENV} --type instance-port")
    click.echo(f"  stackmap clique {DEMO_ENV} {instance['id'] if instance else 'OBJECT_ID'}")


@cli.command()
@click.argument("environment")
@click.argument("object_id")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "dot"]), default="text", show_default=True)
@pass_app
def clique(app: App, environment: str, object_id: str, fmt: str) -> None:
    """Show the clique of OBJECT_ID (its own, or the ones it belongs to)."""
    load_environment(app.store, environment)
    found = app.store.find_cliques(environment, focal_point=object_id) or \
        app.store.find_cliques(environment, containing=[object_id])
    if not found:
        if app.store.get_object(environment, object_id) is None:
            raise NotFound(f"no object {object_id!r} in environment {environment}")
        raise NotFound(f"object {object_id!r} is in no clique (scan the environment, or check its clique types)")
    if fmt == "json":
        emit_json(found)
        return
    ids = {n for c in found for n in c.get("nodes") or []}
    objects = {o["id"]: o for o in app.store.find_objects(environment, ids=ids)}
    for one in found:
        if fmt == "dot":
            click.echo(clique_dot(one, objects), nl=False)
        else:
            click.echo("\n".join(clique_text(one, objects)))


@env.command("add-cloud")
@click.argument("name")
@click.option("--cloud", required=True, help="The cloud's name in clouds.yaml.")
@click.option("--distribution", default="Stock", show_default=True)
@click.option("--mechanism-driver", "mechanism_drivers", multiple=True, default=["OVS"], show_default=True)
@click.option("--type-driver", "type_drivers", default="vxlan", show_default=True)
@click.option("--listen/--no-listen", default=False)
@pass_app
def env_add_cloud(app: App, name: str, cloud: str, distribution: str, mechanism_drivers: tuple[str, ...],
                  type_drivers: str, listen: bool) -> None:
    """Add an environment whose OpenStack credentials come from a clouds.yaml cloud."""
    import openstack.config

    try:
        openstack.config.OpenStackConfig().get_one(cloud=cloud)
    except Exception as exc:  # openstacksdk raises several types for a missing/invalid cloud
        raise StackmapError(f"clouds.yaml has no usable cloud {cloud!r}: {str(exc).splitlines()[0][:200]}") from None
    config = EnvironmentConfig.model_validate({
        "name": name, "distribution": distribution, "mechanism_drivers": list(mechanism_drivers),
        "type_drivers": type_drivers, "listen": listen, "configuration": [{"name": "OpenStack", "cloud": cloud}]})
    add_environment(app.store, app.box, config)
    click.echo(f"added environment {name} (credentials from clouds.yaml cloud {cloud})")


def scan_history_rows(scans: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["id"], s["environment"], s["status"], s.get("submit_timestamp"), s.get("end_timestamp")]
            for s in scans]


