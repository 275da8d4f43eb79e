"""Schedules: cadence arithmetic, and due schedules becoming exactly one scan request each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from daemons.scan_manager.schedules import (
    Scheduler,
    cadence_text,
    check_cron,
    default_schedules,
    format_duration,
    load_sync_intervals,
    new_schedule,
    next_slot,
    parse_duration,
    slot_scan_id,
)
from stackmap.environments import add_environment
from stackmap.errors import ConfigError
from stackmap.model import EnvironmentConfig, ScheduledScan
from stackmap.secrets import SecretBox
from stackmap.store import Store

T0 = datetime(2025, 1, 6, 12, 0, 0, tzinfo=UTC)  # a Monday
ENV = "lab"


@pytest.fixture
def lab_store(store: Store, tmp_path: Path) -> Store:
    """conftest's ``store`` (every adapter: SQLite, mongomock, real MongoDB when configured) with an environment."""
    add_environment(store, SecretBox(tmp_path / "k"), EnvironmentConfig.model_validate({
        "name": ENV, "configuration": [{"name": "OpenStack", "host": "127.0.0.1", "user": "u", "pwd": "p"}]}))
    return store


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("90s", 90), ("15m", 900), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("500ms", 0.5),
    ("1.5h", 5400), (" 5 m ", 300),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "5x", "m5", "0", "-5m", "5m-", "1h 30"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    for text in ("5m", "1h30m", "1d", "1w2d", "45s", "1s"):
        assert format_duration(parse_duration(text)) == text


def test_check_cron() -> None:
    assert check_cron("30  3 * * *") == "30 3 * * *"
    with pytest.raises(ValueError, match="cron"):
        check_cron("61 * * * *")


def test_next_slot_keeps_the_grid_and_skips_missed_points() -> None:
    sched = ScheduledScan(environment=ENV, interval_seconds=60)
    # on time: the next point of the grid
    assert next_slot(sched, T0, T0 + timedelta(seconds=0.3)) == T0 + timedelta(seconds=60)
    # ten periods late: one run now, and the next point after now (not ten catch-up runs)
    late = T0 + timedelta(seconds=605)
    assert next_slot(sched, T0, late) == T0 + timedelta(seconds=660)
    # exactly on a grid point: strictly after now
    assert next_slot(sched, T0, T0 + timedelta(seconds=120)) == T0 + timedelta(seconds=180)


def test_next_slot_for_frequencies_and_cron() -> None:
    daily = ScheduledScan(environment=ENV, freq="DAILY")
    assert next_slot(daily, T0, T0 + timedelta(hours=1)) == T0 + timedelta(days=1)
    monthly = ScheduledScan(environment=ENV, freq="MONTHLY")
    assert next_slot(monthly, T0, T0) == T0 + timedelta(days=365.25 / 12)
    nightly = ScheduledScan(environment=ENV, cron="30 3 * * *")
    assert next_slot(nightly, T0, T0 + timedelta(days=3)) == datetime(2025, 1, 10, 3, 30, tzinfo=UTC)
    assert cadence_text(nightly.to_doc()) == "cron 30 3 * * * (UTC)"
    assert cadence_text(ScheduledScan(environment=ENV, interval_seconds=300).to_doc()) == "every 5m"


def test_new_schedule_validates_and_sets_the_first_run() -> None:
    every = new_schedule(ENV, every="15m", resource_types=["instance", "port"], now=T0)
    assert (every.interval_seconds, every.resource_types, every.scheduled_timestamp) == (900, ["instance", "port"], T0)
    cron = new_schedule(ENV, cron="0 * * * *", now=T0 + timedelta(minutes=1))
    assert cron.scheduled_timestamp == T0 + timedelta(hours=1)
    with pytest.raises(ValueError, match="exactly one"):
        new_schedule(ENV, every="5m", cron="* * * * *", now=T0)
    with pytest.raises(ValueError):
        new_schedule(ENV, freq="SOMETIMES", now=T0)


def test_shipped_sync_intervals_are_valid_and_stable() -> None:
    entries = load_sync_intervals()
    built = default_schedules(ENV, T0, entries)
    by_id = {s.id: s for s in built}
    assert f"{ENV}.sync.instances-ports" in by_id
    fast = by_id[f"{ENV}.sync.instances-ports"]
    assert fast.interval_seconds == 300 and {"instance", "port"} <= set(fast.resource_types or [])
    assert by_id[f"{ENV}.sync.networks-routers"].interval_seconds == 3600
    assert by_id[f"{ENV}.sync.catalog"].freq == "DAILY"
    assert {"flavor", "image", "aggregate"} <= set(by_id[f"{ENV}.sync.catalog"].resource_types or [])
    assert by_id[f"{ENV}.sync.full"].resource_types is None  # the nightly full scan
    assert [s.id for s in default_schedules(ENV, T0 + timedelta(days=1), entries)] == [s.id for s in built]


def test_sync_intervals_file_errors_are_config_errors(tmp_path: Path) -> None:
    bad = tmp_path / "s.json"
    bad.write_text('{"schedules": [{"name": "x", "every": "5m"}, {"name": "x", "every": "1h"}]}')
    with pytest.raises(ConfigError, match="unique"):
        load_sync_intervals(bad)
    bad.write_text('{"schedules": [{"name": "x", "every": "soon"}]}')
    with pytest.raises(ConfigError, match="'x'"):
        default_schedules(ENV, T0, load_sync_intervals(bad))


def _add(store: Store, **fields: object) -> ScheduledScan:
    sched = ScheduledScan.model_validate({"environment": ENV, **fields})
    store.upsert_scheduled_scan(sched.to_doc())
    return sched


def test_due_schedule_creates_one_pending_scan_and_moves_on(lab_store: Store) -> None:
    store = lab_store
    sched = _add(store, id="s1", interval_seconds=60, scheduled_timestamp=T0, resource_types=["instance"])
    created = Scheduler(store).run_due(T0 + timedelta(seconds=1))
    assert created == [slot_scan_id("s1", T0)]
    scan = store.get_scan(created[0])
    assert scan is not None
    assert (scan["status"], scan["scheduled_scan_id"], scan["resource_types"]) == ("pending", sched.id, ["instance"])
    doc = store.list_scheduled_scans()[0]
    assert doc["scheduled_timestamp"] == T0 + timedelta(seconds=60)
    assert doc["last_run"] == T0 + timedelta(seconds=1)
    # not due again before the next slot
    assert Scheduler(store).run_due(T0 + timedelta(seconds=30)) == []


def test_two_managers_on_the_same_slot_create_one_scan(lab_store: Store) -> None:
    store = lab_store
    _add(store, id="s1", interval_seconds=60, scheduled_timestamp=T0)
    a, b = Scheduler(store), Scheduler(store)
    now = T0 + timedelta(seconds=2)
    # b read the schedule before a moved it: simulate by running b's handling on the old document
    raw = store.list_scheduled_scans()[0]
    assert len(a.run_due(now)) == 1
    assert b._handle(ScheduledScan.model_validate(raw), raw, now) is None  # duplicate slot id refused
    assert len(store.find_scans(ENV)) == 1


def test_downtime_produces_one_catch_up_run(lab_store: Store) -> None:
    store = lab_store
    _add(store, id="s1", interval_seconds=60, scheduled_timestamp=T0)
    now = T0 + timedelta(minutes=10, seconds=5)  # ten slots were missed
    assert len(Scheduler(store).run_due(now)) == 1
    assert len(store.find_scans(ENV)) == 1
    nxt = store.list_scheduled_scans()[0]["scheduled_timestamp"]
    assert nxt == T0 + timedelta(minutes=11)


def test_a_schedule_does_not_pile_up_while_its_scan_waits(lab_store: Store) -> None:
    store = lab_store
    _add(store, id="s1", interval_seconds=60, scheduled_timestamp=T0)
    scheduler = Scheduler(store)
    assert len(scheduler.run_due(T0)) == 1
    assert scheduler.run_due(T0 + timedelta(seconds=61)) == []  # the first one is still pending
    assert len(store.find_scans(ENV)) == 1
    assert store.list_scheduled_scans()[0]["scheduled_timestamp"] == T0 + timedelta(seconds=120)
    store.update_scan(slot_scan_id("s1", T0), {"status": "completed"})
    assert len(scheduler.run_due(T0 + timedelta(seconds=121))) == 1


def test_bad_schedules_are_skipped_and_reported(lab_store: Store) -> None:
    store = lab_store
    problems: list[str] = []
    scheduler = Scheduler(store, on_problem=problems.append)
    store.upsert_scheduled_scan({"id": "bad", "environment": ENV, "freq": "SOMETIMES"})
    store.upsert_scheduled_scan({"id": "badcron", "environment": ENV, "cron": "99 * * * *",
                                 "scheduled_timestamp": T0})
    _add(store, id="elsewhere", environment="nowhere", interval_seconds=60, scheduled_timestamp=T0)
    _add(store, id="good", interval_seconds=60, scheduled_timestamp=T0)
    created = scheduler.run_due(T0 + timedelta(seconds=1))
    assert created == [slot_scan_id("good", T0)]
    assert sorted(problems) == ["invalid_schedule", "invalid_schedule", "unknown_environment"]


def test_a_schedule_without_a_first_run_gets_one(lab_store: Store) -> None:
    store = lab_store
    _add(store, id="s1", cron="0 * * * *")
    assert Scheduler(store).run_due(T0 + timedelta(minutes=5)) == []
    assert store.list_scheduled_scans()[0]["scheduled_timestamp"] == T0 + timedelta(hours=1)
