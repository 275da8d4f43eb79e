"""Change detection, batching, derived link status and last-seen flushing; the shared pipeline."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from daemons.monitor_handler.applier import Outcome, StatusApplier
from daemons.monitor_handler.mapping import CheckMapper, ObjectTarget
from daemons.monitor_handler.pipeline import ResultPipeline
from daemons.monitor_handler.results import CheckResult, parse_document
from stackmap.model import Message
from stackmap.store import open_store
from tests.monitor_helpers import ENV, CountingStore, body, core_result, seed

T0 = 1_700_000_000.0
VEDGE = ObjectTarget(ENV, "h1-OVS", "vedge")
PNIC = ObjectTarget(ENV, "eth0-fa:16:3e:00:00:01", "host_pnic")


@pytest.fixture
def store(store_url: str) -> Iterator[CountingStore]:
    """Every adapter (tests/conftest.py's store_url: SQLite, mongomock, a real MongoDB when configured)."""
    inner = open_store(store_url)
    seed(inner)
    yield CountingStore(inner)
    inner.close()


def result(status: int, t: float, output: str = "out", **meta: str) -> CheckResult:
    return parse_document(core_result("c", status, output=output, executed=t, **(meta or {"object_id": "h1-OVS"})))


def test_first_result_and_changes_write_repeats_do_not(store: CountingStore) -> None:
    applier = StatusApplier(store, last_seen_flush_s=3600)
    assert applier.stage(result(0, T0), VEDGE) is Outcome.APPLIED
    report = applier.commit()
    assert (report.status_writes, report.messages) == (1, 1)
    doc = store.get_object(ENV, "h1-OVS")
    assert doc is not None
    assert (doc["status"], doc["status_value"], doc["status_text"]) == ("OK", 0, "out")
    assert doc["status_timestamp"] == datetime.fromtimestamp(T0, UTC)
    writes = store.writes
    for i in range(1, 100):
        assert applier.stage(result(0, T0 + i), VEDGE) is Outcome.UNCHANGED
    applier.commit()
    assert store.writes == writes
    assert applier.stage(result(2, T0 + 100, "boom"), VEDGE) is Outcome.APPLIED
    applier.commit()
    doc = store.get_object(ENV, "h1-OVS")
    assert doc is not None and (doc["status"], doc["status_text"]) == ("Critical", "boom")
    messages = store.find_messages(ENV, related_object="h1-OVS")
    assert len(messages) == 2 and "OK -> Critical" in messages[0]["message"] and messages[0]["level"] == "error"


def test_message_documents_have_the_model_shape(store: CountingStore) -> None:
    applier = StatusApplier(store)
    applier.stage(result(1, T0), VEDGE)
    doc = applier._messages[0]
    assert Message.model_validate(doc).to_doc() == doc
    assert doc["source_system"] == "Sensu" and doc["related_object_type"] == "vedge"


def test_a_restarted_applier_reads_the_stored_status_and_writes_nothing(store: CountingStore) -> None:
    first = StatusApplier(store)
    first.stage(result(1, T0), VEDGE)
    first.commit()
    writes = store.writes
    second = StatusApplier(store)  # a new process
    assert second.stage(result(1, T0 + 15), VEDGE) is Outcome.UNCHANGED
    second.commit()
    assert store.writes == writes


def test_stale_results_are_ignored(store: CountingStore) -> None:
    applier = StatusApplier(store)
    applier.stage(result(2, T0 + 100), VEDGE)
    applier.commit()
    assert applier.stage(result(0, T0 + 50), VEDGE) is Outcome.STALE
    applier.commit()
    assert store.get_object(ENV, "h1-OVS")["status"] == "Critical"  # type: ignore[index]


def test_replayed_changes_do_not_duplicate_messages(store: CountingStore) -> None:
    applier = StatusApplier(store)
    applier.stage(result(2, T0), VEDGE)
    messages = list(applier._messages)
    applier.commit()
    store.append_messages(messages)  # as if the commit's first step ran twice
    assert len(store.find_messages(ENV, related_object="h1-OVS")) == 1


def test_a_failed_commit_forgets_staged_state_so_the_retry_writes_again(store: CountingStore) -> None:
    applier = StatusApplier(store)
    applier.stage(result(2, T0), VEDGE)
    store.fail_writes = 1
    with pytest.raises(RuntimeError):
        applier.commit()
    assert store.get_object(ENV, "h1-OVS").get("status") is None  # type: ignore[union-attr]
    assert applier.stage(result(2, T0), VEDGE) is Outcome.APPLIED  # the redelivered result
    applier.commit()
    assert store.get_object(ENV, "h1-OVS")["status"] == "Critical"  # type: ignore[index]


def test_changes_within_a_batch_coalesce_into_one_write_with_a_message_each(store: CountingStore) -> None:
    applier = StatusApplier(store)
    for i, status in enumerate([0, 2, 0, 1]):
        applier.stage(result(status, T0 + i), VEDGE)
    report = applier.commit()
    assert (report.status_writes, report.messages) == (1, 4)
    assert store.get_object(ENV, "h1-OVS")["status"] == "Warning"  # type: ignore[index]


def test_derived_link_status_follows_both_endpoints(store: CountingStore) -> None:
    applier = StatusApplier(store, derived_link_types=["vedge-host_pnic"])
    applier.stage(result(0, T0), VEDGE)
    applier.commit()
    link = store.find_links(ENV, link_type="vedge-host_pnic")[0]
    assert "status" not in link  # the pNIC has not reported yet
    applier.stage(result(0, T0, object_id=PNIC.object_id), PNIC)
    report = applier.commit()
    assert report.derived_writes == 1
    assert store.find_links(ENV, link_type="vedge-host_pnic")[0]["status"] == "OK"
    applier.stage(result(2, T0 + 1, object_id=PNIC.object_id), PNIC)
    applier.commit()
    link = store.find_links(ENV, link_type="vedge-host_pnic")[0]
    assert link["status"] == "Warning" and "Critical" in link["status_text"]
    other = store.find_links(ENV, link_type="vnic-vconnector")[0]
    assert "status" not in other  # not a derived link type


def test_last_seen_is_flushed_in_chunks_once_per_interval(store: CountingStore) -> None:
    now = [0.0]
    applier = StatusApplier(store, last_seen_flush_s=60, flush_chunk=1, clock=lambda: now[0])
    applier.stage(result(0, T0), VEDGE)
    applier.stage(result(0, T0, object_id=PNIC.object_id), PNIC)
    applier.commit()
    for i in range(1, 50):
        applier.stage(result(0, T0 + i), VEDGE)
        applier.stage(result(0, T0 + i, object_id=PNIC.object_id), PNIC)
    writes = store.writes
    assert applier.flush_last_seen() == 0 and store.writes == writes  # not due yet
    now[0] = 61
    assert applier.flush_last_seen() == 1  # one chunk per call
    assert applier.flush_last_seen() == 1
    assert applier.flush_last_seen() == 0
    assert store.get_object(ENV, "h1-OVS")["status_last_seen"] == datetime.fromtimestamp(T0 + 49, UTC)  # type: ignore[index]
    assert store.get_object(ENV, "h1-OVS")["status_timestamp"] == datetime.fromtimestamp(T0, UTC)  # type: ignore[index]
    applier.stage(result(0, T0 + 60), VEDGE)
    assert applier.flush_last_seen(force=True) == 1


def test_a_rescan_keeps_the_status_and_nothing_is_rewritten(store: CountingStore) -> None:
    applier = StatusApplier(store, revalidate_s=300, clock=lambda: 0.0)
    applier.stage(result(2, T0), VEDGE)
    applier.commit()
    doc = store.get_object(ENV, "h1-OVS")
    assert doc is not None
    # a rescan brings the document without the monitor's fields: the store keeps them, writes nothing
    assert store.upsert_objects(ENV, [{k: v for k, v in doc.items() if not k.startswith("status")}]) == 0
    assert store.get_object(ENV, "h1-OVS")["status"] == "Critical"  # type: ignore[index]
    writes = store.writes
    assert applier.stage(result(2, T0 + 1), VEDGE) is Outcome.UNCHANGED
    applier.commit()
    assert store.writes == writes

def test_a_deleted_target_is_reported_gone(store: CountingStore) -> None:
    applier = StatusApplier(store)
    applier.stage(result(0, T0), VEDGE)
    applier.commit()
    store.delete_objects(ENV, ["h1-OVS"])
    applier.stage(result(2, T0 + 1), VEDGE)
    report = applier.commit()
    assert report.gone == [VEDGE] and report.status_writes == 0


# -- the pipeline ----------------------------------------------------------------------------------

def pipeline_for(store: CountingStore) -> ResultPipeline:
    return ResultPipeline(CheckMapper(store), StatusApplier(store), text_limit=256, max_bytes=10_000)


def test_pipeline_outcomes_and_counts(store: CountingStore) -> None:
    pipe = pipeline_for(store)
    assert pipe.handle_body(body(core_result("c", 0, executed=T0, object_id="h1-OVS"))) == "applied"
    assert pipe.handle_body(body(core_result("c", 0, executed=T0 + 1, object_id="h1-OVS"))) == "unchanged"
    assert pipe.handle_body(b"nope") == "malformed_json"
    assert pipe.handle_body(body(core_result("c", 0, object_id="gone"))) == "unknown_object"
    assert pipe.handle_body(body(core_result("c", 0, executed=T0 - 5, object_id="h1-OVS"))) == "stale"
    assert pipe.handle_body(b"x" * 20_000) == "too_large"
    pipe.commit()
    assert pipe.counts["received"] == 6 and pipe.counts["ignored"] == 4 and pipe.counts["status_writes"] == 1


def test_pipeline_never_raises_on_garbage(store: CountingStore) -> None:
    pipe = pipeline_for(store)
    rng = random.Random(1)
    templates = [body(core_result("vedge_h1-OVS", 1)), body({"check": {"metadata": {"name": "x"}, "status": 0}})]
    before = {o["id"]: o for o in store.find_objects(ENV)}
    for _ in range(2000):
        raw = bytearray(rng.choice(templates))
        for _ in range(rng.randint(1, 6)):
            raw[rng.randrange(len(raw))] = rng.randrange(256)
        pipe.handle_body(bytes(raw))
    pipe.commit()
    assert pipe.counts["received"] == 2000
    after = {o["id"]: o for o in store.find_objects(ENV)}
    assert {k for k in after if after[k] != before[k]} <= {"h1-OVS"}


def test_a_store_error_while_staging_reaches_the_transport(store: CountingStore) -> None:
    pipe = pipeline_for(store)

    def broken(*_a: object, **_k: object) -> None:
        raise OSError("disk on fire")

    real = store.inner.get_object
    store.inner.get_object = broken  # type: ignore[method-assign]
    with pytest.raises(OSError):
        pipe.handle_body(body(core_result("c", 0, object_id="h1-OVS")))
    store.inner.get_object = real  # type: ignore[method-assign]
    assert pipe.handle_body(body(core_result("c", 0, object_id="h1-OVS"))) == "applied"
