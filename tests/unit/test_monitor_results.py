"""Parsing Sensu Core results and Sensu Go events, and mapping them to objects and links."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemons.monitor_handler.mapping import CheckMapper, LinkTarget, ObjectTarget, Unmapped, decode_calipso_name
from daemons.monitor_handler.results import BadResult, Status, parse_body, parse_document, truncate_text
from stackmap.model import InventoryObject
from stackmap.store import Store, open_store
from tests.monitor_helpers import ENV, body, core_result, go_event, seed


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'mon.db'}")
    seed(s)
    yield s
    s.close()


# -- statuses --------------------------------------------------------------------------------------

def test_status_labels_are_defined_in_code() -> None:
    assert [(s.value, s.label) for s in Status] == [(0, "OK"), (1, "Warning"), (2, "Critical"), (3, "Unknown")]
    assert Status.from_exit(7) is Status.UNKNOWN and Status.from_exit(-1) is Status.UNKNOWN


# -- Sensu Core ------------------------------------------------------------------------------------

def test_core_result_with_structured_metadata() -> None:
    result = parse_body(body(core_result("whatever", 2, output="down", executed=1_700_000_000,
                                         object_type="vedge", object_id="a_b|c:d")))
    assert (result.check_name, result.status, result.output) == ("whatever", Status.CRITICAL, "down")
    assert result.client == "h1"
    assert result.environment == ENV
    assert dict(result.metadata) == {"object_type": "vedge", "object_id": "a_b|c:d"}
    assert result.executed == 1_700_000_000 and result.executed_at.year == 2023
    assert result.source == "sensu-core"


def test_core_flat_attributes_and_client_environment() -> None:
    doc = {"client": {"name": "h1", "stackmap": {"environment": "e2"}},
           "check": {"name": "c", "status": "1", "stackmap_object_id": "x", "executed": 1_700_000_000}}
    result = parse_document(doc)
    assert result.environment == "e2" and result.metadata == {"object_id": "x"} and result.status is Status.WARNING


@pytest.mark.parametrize("raw, reason", [
    (b"{nope", "malformed_json"),
    (b"", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b'"a string"', "not_an_object"),
    (b"[]", "not_an_object"),
    (b'{"client": "h"}', "missing_fields"),
    (b'{"check": "c"}', "missing_fields"),
    (b'{"check": {"status": 0}}', "missing_fields"),
    (b'{"check": {"name": "c"}}', "missing_fields"),
    (b'{"check": {"name": "c", "status": true}}', "bad_status"),
    (b'{"check": {"name": "c", "status": "down"}}', "bad_status"),
    (b'{"check": {"name": "c", "status": [0]}}', "bad_status"),
    (b'{"check": {"name": "c", "status": 0, "stackmap": "x"}}', "bad_metadata"),
    (b'{"check": {"name": "c", "status": 0, "stackmap": {"object_id": 5}}}', "bad_metadata"),
    (b'{"check": {"name": "c", "status": 0, "stackmap": {"object_id": ""}}}', "bad_metadata"),
    (b'{"check": {"metadata": {"namespace": "d"}, "status": 0}}', "missing_fields"),
    (b'{"entity": {}, "check": {"metadata": {"name": "c", "labels": []}, "status": 0}}', "bad_metadata"),
])
def test_bad_input_raises_bad_result_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadResult) as info:
        parse_body(raw)
    assert info.value.reason == reason


def test_oversize_bodies_are_refused_before_parsing() -> None:
    with pytest.raises(BadResult) as info:
        parse_body(b"x" * 2000, max_bytes=1024)
    assert info.value.reason == "too_large"


def test_output_is_truncated_to_the_bound_without_breaking_characters() -> None:
    result = parse_body(body(core_result("c", 0, output="é" * 10_000)), text_limit=4096)
    assert result.truncated and len(result.output.encode()) <= 4096 and result.output.endswith("[truncated]")
    assert truncate_text("short", 4096) == ("short", False)
    assert parse_document({"check": {"name": "c", "status": 0, "output": 42}}).output == "42"


def test_statuses_beyond_three_are_unknown_and_implausible_times_are_now() -> None:
    result = parse_document({"check": {"name": "c", "status": 127, "executed": -5}})
    assert result.status is Status.UNKNOWN and result.raw_status == 127
    assert result.executed > 1_700_000_000


# -- Sensu Go --------------------------------------------------------------------------------------

def test_go_event_labels_and_annotations() -> None:
    event = go_event("vedge-h1", 1, executed=1_700_000_100,
                     labels={"stackmap_environment": ENV, "stackmap_object_type": "vedge"},
                     annotations={"stackmap_object_id": "h1-OVS"})
    result = parse_document(event)
    assert (result.source, result.client, result.environment) == ("sensu-go", "h1", ENV)
    assert dict(result.metadata) == {"object_type": "vedge", "object_id": "h1-OVS"}
    assert result.status is Status.WARNING and result.executed == 1_700_000_100


def test_go_event_environment_from_the_entity() -> None:
    event = go_event("c", 0, annotations={"stackmap_object_id": "x"})
    event["entity"]["metadata"]["labels"] = {"stackmap_environment": "from-entity"}
    assert parse_document(event).environment == "from-entity"


def test_go_event_mapped_into_v1_by_sensu_plugin_still_parses() -> None:
    from sensu_plugin.utils import map_v2_event_into_v1

    event = go_event("c", 2, labels={"stackmap_environment": ENV}, annotations={"stackmap_object_id": "x"})
    event["entity"]["id"] = "h1"  # the Sensu 2.0 shape sensu_plugin's mapping expects
    event["entity"]["subscriptions"] = []
    event["check"]["subscriptions"] = []
    event["check"]["proxy_entity_id"] = ""
    mapped = map_v2_event_into_v1(json.loads(json.dumps(event)))
    result = parse_document(mapped)
    assert result.status is Status.CRITICAL and result.metadata == {"object_id": "x"}


# -- mapping ---------------------------------------------------------------------------------------

def resolve(mapper: CheckMapper, doc: dict) -> object:
    return mapper.resolve(parse_document(doc))


def test_structured_object_and_link(store: Store) -> None:
    mapper = CheckMapper(store)
    assert resolve(mapper, core_result("c", 0, object_type="vedge", object_id="h1-OVS")) == \
        ObjectTarget(ENV, "h1-OVS", "vedge")
    link = resolve(mapper, core_result("c", 0, link_type="vnic-vconnector", source_id="h1-tap_1",
                                       target_id="h1-br_int-8000"))
    assert link == LinkTarget(ENV, "vnic-vconnector", "h1-tap_1", "h1-br_int-8000")


@pytest.mark.parametrize("doc, reason", [
    (core_result("c", 0, object_id="nope"), "unknown_object"),
    (core_result("c", 0, object_type="otep", object_id="h1-OVS"), "type_mismatch"),
    (core_result("c", 0, env="other", object_id="h1-OVS"), "unknown_environment"),
    (core_result("c", 0, env=None, object_id="h1-OVS"), "no_environment"),
    (core_result("c", 0, object_type="vedge"), "incomplete_metadata"),
    (core_result("c", 0, link_type="vnic-vconnector", source_id="h1-tap_1"), "incomplete_metadata"),
    (core_result("c", 0, link_type="vnic-vconnector", source_id="h1-tap_1", target_id="x"), "unknown_link"),
    (core_result("nodelimiter", 0), "unparsable_name"),
    (core_result("vedge_h9-OVS", 0), "unknown_object"),
    (core_result("link_vnic-vconnector_h1-tap_1_nothing", 0), "unknown_link"),
])
def test_unmapped_results_say_why(store: Store, doc: dict, reason: str) -> None:
    with pytest.raises(Unmapped) as info:
        resolve(CheckMapper(store), doc)
    assert info.value.reason == reason


def test_restricted_environments_and_default_environment(store: Store) -> None:
    mapper = CheckMapper(store, environments=["elsewhere"])
    with pytest.raises(Unmapped, match="unknown_environment"):
        resolve(mapper, core_result("c", 0, object_id="h1-OVS"))
    mapper = CheckMapper(store, default_environment=ENV)
    assert resolve(mapper, core_result("c", 0, env=None, object_id="h1-OVS")) == ObjectTarget(ENV, "h1-OVS", "vedge")


def test_legacy_names_with_underscores_in_ids(store: Store) -> None:
    mapper = CheckMapper(store)
    assert resolve(mapper, core_result("vservice_h1-qdhcp-net_1", 0)) == \
        ObjectTarget(ENV, "h1-qdhcp-net_1", "vservice")
    assert resolve(mapper, core_result("host_pnic_eth0-fa:16:3e:00:00:01", 0)) == \
        ObjectTarget(ENV, "eth0-fa:16:3e:00:00:01", "host_pnic")
    assert resolve(mapper, core_result("link_vnic-vconnector_h1-tap_1_h1-br_int-8000", 0)) == \
        LinkTarget(ENV, "vnic-vconnector", "h1-tap_1", "h1-br_int-8000")
    # Calipso's escaping of ':' inside ids
    assert resolve(mapper, core_result("host_pnic_eth0-fa---..58..---16:3e:00:00:01", 0)) == \
        ObjectTarget(ENV, "eth0-fa:16:3e:00:00:01", "host_pnic")
    assert decode_calipso_name("a---..47..---b") == "a/b"


def test_legacy_names_that_could_mean_two_objects_are_refused(store: Store) -> None:
    # "host_pnic_eth9" reads as host "pnic_eth9" or as host_pnic "eth9": both exist
    store.upsert_objects(ENV, [InventoryObject(environment=ENV, id="pnic_eth9", type="host").to_doc(),
                               InventoryObject(environment=ENV, id="eth9", type="host_pnic").to_doc()])
    with pytest.raises(Unmapped, match="ambiguous"):
        resolve(CheckMapper(store), core_result("host_pnic_eth9", 0))
    # structured metadata settles it
    assert resolve(CheckMapper(store), core_result("host_pnic_eth9", 0, object_id="eth9")) == \
        ObjectTarget(ENV, "eth9", "host_pnic")


def test_misses_are_cached_briefly_and_hits_until_forgotten(store: Store) -> None:
    now = [0.0]
    calls: list[str] = []
    real_get = store.get_object

    def counting_get(env: str, oid: str) -> dict | None:
        calls.append(oid)
        return real_get(env, oid)

    store.get_object = counting_get  # type: ignore[method-assign]
    mapper = CheckMapper(store, negative_ttl_s=30, clock=lambda: now[0])
    doc = core_result("c", 0, object_id="later")
    for _ in range(100):
        with pytest.raises(Unmapped):
            resolve(mapper, doc)
    assert calls == ["later"] and mapper.unknown_count() == 1
    store.upsert_objects(ENV, [InventoryObject(environment=ENV, id="later", type="vedge").to_doc()])
    now[0] = 31.0  # the miss expires: the object added since is found
    assert resolve(mapper, doc) == ObjectTarget(ENV, "later", "vedge")
    for _ in range(100):
        resolve(mapper, doc)
    assert calls == ["later", "later"] and mapper.unknown_count() == 0
    mapper.forget(ObjectTarget(ENV, "later", "vedge"))
    resolve(mapper, doc)
    assert len(calls) == 3
