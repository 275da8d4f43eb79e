"""Scheduled scans: when each is due, and how a due schedule becomes exactly one scan request.

Calipso's scheduler wrote scans with a status (``submitted``) that its worker never claimed, so
scheduled scans never ran. Here a due schedule produces an ordinary ``pending`` scan, the very
status ``claim_next_scan`` takes, and several scan managers may poll the same schedules safely:

- the scan created for a schedule's slot has an id derived from (schedule id, slot), so a second
  manager handling the same slot gets a duplicate-key refusal instead of a second scan;
- the schedule is moved to its next slot with compare-and-set on the slot it was read at;
- the next slot is the first cadence point *after now*: a manager that was down for ten periods
  runs one catch-up scan, not ten;
- while a scan of a schedule is still waiting in the queue, the schedule does not add another one
  (a slow queue does not pile up identical requests).

Cadences are Calipso's frequencies (HOURLY ... YEARLY, with Calipso's lengths), a fixed interval
(``--every 15m``) or a cron expression (evaluated in UTC, through ``croniter``).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import ValidationError

from stackmap import paths
from stackmap.errors import ConfigError, DuplicateError
from stackmap.logging import get_logger
from stackmap.model import Frequency, Scan, ScanStatus, ScheduledScan
from stackmap.settings import describe_validation_error
from stackmap.store import Doc, Store

log = get_logger("stackmap.scan_manager.schedules")

DAY = 86400.0
# Calipso's lengths (``scan_manager.py``): a "month" is a twelfth of a Julian year.
FREQUENCY_SECONDS: dict[str, float] = {
    Frequency.HOURLY.value: 3600.0,
    Frequency.DAILY.value: DAY,
    Frequency.WEEKLY.value: 7 * DAY,
    Frequency.MONTHLY.value: 365.25 / 12 * DAY,
    Frequency.YEARLY.value: 365.25 * DAY,
}

SYNC_INTERVALS_FILE = "sync_intervals.json"
_SCHEDULE_IDS = uuid.UUID("5f0c6d1e-8a7b-4c1e-9a53-7a1d2c3b4e5f")  # namespace of slot scan ids

# -- durations -------------------------------------------------------------------------------------

_UNITS = {"w": 7 * DAY, "d": DAY, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|[wdhms])")


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``1h30m``, ``2d``, ``1w`` (what ``--every`` accepts)."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned:
        raise ValueError("empty duration")
    try:
        seconds = float(cleaned)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(cleaned):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(cleaned):
            raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 15m, 1h30m, 2d, 1w)") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"a duration must be positive: {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The short form of a duration (``5m``, ``1h30m``, ``1d``) for listings."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    parts, left = [], seconds
    for unit in ("w", "d", "h", "m"):
        size = _UNITS[unit]
        count = int(left // size)
        if count:
            parts.append(f"{count}{unit}")
            left -= count * size
    if left > 1e-9 or not parts:
        parts.append(f"{round(left, 3):g}s")
    return "".join(parts)


def check_cron(expression: str) -> str:
    """The expression if croniter accepts it; ValueError (with the reason) otherwise."""
    expression = " ".join(expression.split())
    if not croniter.is_valid(expression):
        raise ValueError(f"not a valid cron expression: {expression!r} (e.g. '*/15 * * * *', '30 3 * * *')")
    return expression


# -- cadence arithmetic ----------------------------------------------------------------------------

def step_seconds(schedule: ScheduledScan) -> float | None:
    """The fixed period of a frequency or interval schedule; None for cron."""
    if schedule.interval_seconds is not None:
        return float(schedule.interval_seconds)
    if schedule.freq is not None:
        return FREQUENCY_SECONDS[str(schedule.freq)]
    return None


def _next_cron(expression: str, after: datetime) -> datetime:
    nxt = croniter(expression, after).get_next(datetime)
    assert isinstance(nxt, datetime)
    return nxt if nxt.tzinfo is not None else nxt.replace(tzinfo=after.tzinfo)


def first_slot(schedule: ScheduledScan, now: datetime) -> datetime:
    """When a new schedule first runs: at once for a period (the map is fresh from the start), at
    the next matching time for cron."""
    if schedule.cron is not None:
        return _next_cron(schedule.cron, now)
    return now


def next_slot(schedule: ScheduledScan, slot: datetime, now: datetime) -> datetime:
    """The first cadence point strictly after ``now``, continuing the grid that ``slot`` is on.

    Points missed while no manager ran are skipped, so downtime yields one catch-up run; keeping
    to the grid (rather than ``now + period``) keeps the cadence from drifting by each poll's delay.
    """
    if schedule.cron is not None:
        return _next_cron(schedule.cron, max(slot, now))
    step = step_seconds(schedule)
    assert step is not None
    if slot > now:
        return slot
    periods = math.floor((now - slot).total_seconds() / step) + 1
    nxt = slot + timedelta(seconds=periods * step)
    while nxt <= now:  # float rounding at the boundary
        nxt += timedelta(seconds=step)
    return nxt


def cadence_text(doc: Mapping[str, Any]) -> str:
    """How a schedule doc repeats, for listings."""
    if doc.get("interval_seconds") is not None:
        return f"every {format_duration(float(doc['interval_seconds']))}"
    if doc.get("cron"):
        return f"cron {doc['cron']} (UTC)"
    return str(doc.get("freq") or "?")


def slot_scan_id(schedule_id: str, slot: datetime) -> str:
    """The id of the scan a schedule's slot produces: the same for every manager handling it."""
    return uuid.uuid5(_SCHEDULE_IDS, f"{schedule_id}|{slot.isoformat()}").hex


def scan_for_slot(schedule: ScheduledScan, slot: datetime, now: datetime) -> Scan:
    """The ``pending`` scan request one slot of a schedule puts in the queue."""
    return Scan(id=slot_scan_id(schedule.id, slot), environment=schedule.environment, status=ScanStatus.PENDING,
                submit_timestamp=now, scheduled_scan_id=schedule.id, clear=schedule.clear,
                scan_only_inventory=schedule.scan_only_inventory, scan_only_links=schedule.scan_only_links,
                scan_only_cliques=schedule.scan_only_cliques, object_id=schedule.object_id,
                resource_types=list(schedule.resource_types) if schedule.resource_types else None)


# -- the scheduler -----------------------------------------------------------------------------------

class Scheduler:
    """Turns due ``scheduled_scans`` into scan requests; one instance per scan manager.

    ``run_due`` never raises for a bad schedule document (it is logged once and counted through
    ``on_problem``); store errors do propagate, so the daemon's loop can back off.
    """

    def __init__(self, store: Store, *, on_created: Callable[[str], None] | None = None,
                 on_problem: Callable[[str], None] | None = None) -> None:
        self.store = store
        self._on_created = on_created or (lambda _env: None)
        self._on_problem = on_problem or (lambda _kind: None)
        self._reported: dict[str, str] = {}  # schedule id -> the problem already logged for it

    def _problem(self, schedule_id: str, kind: str, message: str, **fields: Any) -> None:
        """Log a schedule's problem once (not at every poll), count it every time."""
        self._on_problem(kind)
        if self._reported.get(schedule_id) != message:
            self._reported[schedule_id] = message
            log.warning(message, schedule_id=schedule_id, **fields)

    def run_due(self, now: datetime, environments: Iterable[str] | None = None) -> list[str]:
        """Create the scans of every due schedule; returns the ids of the scans created."""
        known = set(environments) if environments is not None else {
            e["name"] for e in self.store.list_environments()}
        created: list[str] = []
        for raw in self.store.list_scheduled_scans():
            schedule_id = str(raw.get("id") or "?")
            try:
                schedule = ScheduledScan.model_validate(raw)
            except ValidationError as exc:
                self._problem(schedule_id, "invalid_schedule",
                              f"invalid scheduled scan skipped: {describe_validation_error(exc)}")
                continue
            if schedule.cron is not None and not croniter.is_valid(schedule.cron):
                self._problem(schedule_id, "invalid_schedule", f"invalid cron expression {schedule.cron!r}; skipped")
                continue
            if schedule.environment not in known:
                self._problem(schedule_id, "unknown_environment",
                              "scheduled scan names an unknown environment; skipped until it exists",
                              environment=schedule.environment)
                continue
            self._reported.pop(schedule_id, None)
            scan_id = self._handle(schedule, raw, now)
            if scan_id is not None:
                created.append(scan_id)
        return created

    def _handle(self, schedule: ScheduledScan, raw: Doc, now: datetime) -> str | None:
        slot = schedule.scheduled_timestamp
        if slot is None:
            # a schedule written by other tooling without a first run: give it one (compare-and-set,
            # so two managers agree on it)
            self.store.update_scheduled_scan(schedule.id, {"scheduled_timestamp": first_slot(schedule, now)},
                                             expect={"scheduled_timestamp": raw.get("scheduled_timestamp")})
            return None
        if slot > now:
            return None
        created: str | None = None
        waiting = [s for s in self.store.find_scans(schedule.environment, status=[ScanStatus.PENDING.value])
                   if s.get("scheduled_scan_id") == schedule.id]
        if waiting:
            log.info("scheduled scan still queued; not adding another", schedule_id=schedule.id,
                     environment=schedule.environment, scan_id=waiting[0]["id"])
        else:
            scan = scan_for_slot(schedule, slot, now)
            try:
                self.store.submit_scan(scan.to_doc())
                created = scan.id
            except DuplicateError:
                pass  # another scan manager created this slot's scan first
        nxt = next_slot(schedule, slot, now)
        moved = self.store.update_scheduled_scan(schedule.id, {"scheduled_timestamp": nxt, "last_run": now},
                                                 expect={"scheduled_timestamp": raw["scheduled_timestamp"]})
        if created is not None:
            self._on_created(schedule.environment)
            log.info("scheduled scan queued", schedule_id=schedule.id, environment=schedule.environment,
                     scan_id=created, slot=slot.isoformat(), next_run=nxt.isoformat(),
                     missed=max(0, _missed(schedule, slot, now)), moved=moved)
        return created


def _missed(schedule: ScheduledScan, slot: datetime, now: datetime) -> int:
    """How many slots after ``slot`` passed unrun (they are folded into this one run)."""
    step = step_seconds(schedule)
    if step is None:
        return 0
    return math.floor((now - slot).total_seconds() / step)


# -- building schedules (CLI) and the shipped per-resource defaults ------------------------------------

def new_schedule(environment: str, *, every: str | None = None, freq: str | None = None, cron: str | None = None,
                 resource_types: list[str] | None = None, schedule_id: str | None = None,
                 now: datetime, **options: Any) -> ScheduledScan:
    """A validated schedule with its first slot set; ValueError/ValidationError on bad input."""
    given = [name for name, value in (("every", every), ("freq", freq), ("cron", cron)) if value]
    if len(given) != 1:
        raise ValueError("give exactly one of --every, --freq or --cron")
    fields: dict[str, Any] = {"environment": environment, **options}
    if schedule_id:
        fields["id"] = schedule_id
    if resource_types:
        fields["resource_types"] = list(resource_types)
    if every:
        fields["interval_seconds"] = parse_duration(every)
    elif freq:
        fields["freq"] = freq.upper()
    else:
        assert cron is not None
        fields["cron"] = check_cron(cron)
    schedule = ScheduledScan.model_validate(fields)
    schedule.submit_timestamp = now
    schedule.scheduled_timestamp = first_slot(schedule, now)
    return schedule


def load_sync_intervals(path: Path | None = None) -> list[dict[str, Any]]:
    """The shipped per-resource sync intervals (``config/sync_intervals.json``), checked."""
    file = path or paths.defaults_dir() / SYNC_INTERVALS_FILE
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read sync intervals from {file}: {exc}") from None
    entries = data.get("schedules") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{file}: expected an object with a non-empty 'schedules' list")
    names: set[str] = set()
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name) or name in names:
            raise ConfigError(f"{file}: every schedule needs a unique lowercase 'name' (got {name!r})")
        names.add(name)
    return entries


def default_schedules(environment: str, now: datetime, entries: list[dict[str, Any]] | None = None
                      ) -> list[ScheduledScan]:
    """The per-resource sync schedules of an environment, with stable ids (``ENV.sync.NAME``) so
    installing them again replaces rather than duplicates them."""
    built = []
    for entry in entries if entries is not None else load_sync_intervals():
        try:
            built.append(new_schedule(
                environment, every=entry.get("every"), freq=entry.get("freq"), cron=entry.get("cron"),
                resource_types=entry.get("resource_types"), schedule_id=f"{environment}.sync.{entry['name']}",
                now=now))
        except (ValueError, ValidationError) as exc:
            raise ConfigError(f"sync interval {entry.get('name')!r}: {exc}") from None
    return built
