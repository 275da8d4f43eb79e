"""The dispatcher as the listener builds it (``batched=True``) on a fake cloud served over HTTP,
watched through a second connection to the same SQLite file, as another daemon would see the map:
nothing of a batch is visible before its flush, everything is after it, a batch that cannot be
committed is undone as a whole and handled again, and an event that fails half-way leaves nothing
behind, so handling it again does all of its work (unchanged objects are not relinked)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from handlers.apply import MapUpdater
from stackmap.errors import StoreUnavailable
from stackmap.store.sqlite import SqliteStore
from tests.fakecloud import FakeCloud, ShowingServer
from tests.integration.test_handlers_fakecloud import ENV, SIZE, World, compute_ports, notification


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    cloud = FakeCloud(SIZE)
    with ShowingServer(cloud, max_limit=1000) as server:
        w = World(tmp_path, cloud, server, batched=True)
        w.dispatcher.updater.read_ahead_threads = 0  # every API read is made when the handler needs it
        yield w
        w.dispatcher.close()
        w.store.close()


@pytest.fixture
def other(world: World) -> Iterator[SqliteStore]:
    """A second connection to the map's file, with a short busy timeout."""
    store = SqliteStore(world.store.url, busy_timeout_s=0.2)
    yield store
    store.close()


def port_event(port: dict[str, Any], **changes: Any) -> Any:
    changed = dict(port, revision_number=port["revision_number"] + 1, **changes)
    return notification("port.update.end", {"port": changed})


def trusting(world: World) -> MapUpdater:
    updater: MapUpdater = world.dispatcher.updater
    updater.trust_payloads = True  # the payload is the port: no API read, so events batch together
    return updater


def test_nothing_of_a_batch_is_seen_before_its_flush_and_everything_after(world: World, other: SqliteStore) -> None:
    trusting(world)
    ports = compute_ports(world.cloud)[:3]
    names = [other.get_object(ENV, p["id"])["name"] for p in ports]
    messages_before = len(other.find_messages(environment=ENV))
    for n, port in enumerate(ports):
        result = world.dispatcher.handle(port_event(port, name=f"renamed-{n}"))
        assert result.result and "1 written" in result.message
    assert [other.get_object(ENV, p["id"])["name"] for p in ports] == names
    assert len(other.find_messages(environment=ENV)) == messages_before
    cliques_before = {c["focal_point"]: c for c in other.find_cliques(ENV, containing=[ports[0]["id"]])}
    assert cliques_before
    world.dispatcher.flush()
    assert [other.get_object(ENV, p["id"])["name"] for p in ports] == ["renamed-0", "renamed-1", "renamed-2"]
    assert len(other.find_messages(environment=ENV)) == messages_before + 3
    for focal, clique in cliques_before.items():  # the port's links carry its new name: rebuilt at the flush
        (after,) = other.find_cliques(ENV, focal_point=focal)
        assert after["links_detailed"] != clique["links_detailed"]


def test_a_batch_that_cannot_be_committed_is_undone_and_handled_again(world: World, other: SqliteStore) -> None:
    trusting(world)
    port = compute_ports(world.cloud)[0]
    name = other.get_object(ENV, port["id"])["name"]
    event = port_event(port, name="first-try")
    assert world.dispatcher.handle(event).result
    # the batch holds the write lock since its first write: the other connection cannot write
    with pytest.raises(StoreUnavailable):
        other.upsert_objects(ENV, [dict(other.get_object(ENV, port["id"]), name="other-writer")])
    real_append = world.store.append_messages

    def broken(docs: Any) -> int:
        raise StoreUnavailable("disk went away")

    world.store.append_messages = broken  # type: ignore[method-assign]
    with pytest.raises(StoreUnavailable):
        world.dispatcher.flush()
    world.store.append_messages = real_append  # type: ignore[method-assign]
    assert other.get_object(ENV, port["id"])["name"] == name  # undone as a whole
    # the listener hands the same event in again: it is not taken for a duplicate of the undone write
    result = world.dispatcher.handle(event)
    assert result.result and "1 written" in result.message, result.message
    world.dispatcher.flush()
    assert other.get_object(ENV, port["id"])["name"] == "first-try"
    world.cloud.update("ports", port["id"], name="first-try")
    world.assert_like_a_fresh_scan()


def test_an_event_that_will_wait_for_the_api_commits_the_batch_before_it(world: World, other: SqliteStore) -> None:
    updater = trusting(world)
    port, second = compute_ports(world.cloud)[:2]
    name, second_name = (other.get_object(ENV, p["id"])["name"] for p in (port, second))
    assert world.dispatcher.handle(port_event(port, name="batched")).result
    assert other.get_object(ENV, port["id"])["name"] == name
    updater.trust_payloads = False  # the next port is read from the API, which was not read ahead
    world.cloud.rename("ports", second["id"], "read-from-the-api")
    assert world.dispatcher.handle(notification("port.update.end", {"port": {"id": second["id"]}})).result
    assert other.get_object(ENV, port["id"])["name"] == "batched"  # committed before the read
    assert other.get_object(ENV, second["id"])["name"] == second_name  # not yet
    world.dispatcher.flush()
    assert other.get_object(ENV, second["id"])["name"] == "read-from-the-api"


def test_events_handled_together_that_will_wait_for_the_api_commit_the_batch_before_them(
        world: World, other: SqliteStore) -> None:
    updater = trusting(world)
    port, *later = compute_ports(world.cloud)[:3]
    assert world.dispatcher.handle(port_event(port, name="batched")).result
    updater.trust_payloads = False  # the next ports are read from the API, which was not read ahead
    for p in later:
        world.cloud.rename("ports", p["id"], f"read-{p['id'][:6]}")
    events = [notification("port.update.end", {"port": {"id": p["id"]}}) for p in later]
    updater.read_ahead_threads = 2
    world.dispatcher.read_ahead(events[0])  # the first one's read is in: only the second one will wait
    for entry in list(updater._ahead.values()):
        entry[1].result(timeout=30)
    assert not world.dispatcher.will_wait(events[0]) and world.dispatcher.will_wait(events[1])
    results = world.dispatcher.handle_many(events)
    assert all("one pass" in r.message for r in results), results
    assert other.get_object(ENV, port["id"])["name"] == "batched"  # committed before the reads
    world.dispatcher.flush()
    assert [other.get_object(ENV, p["id"])["name"] for p in later] == [f"read-{p['id'][:6]}" for p in later]


def test_an_event_that_fails_half_way_leaves_nothing_and_its_retry_does_everything(world: World) -> None:
    updater = trusting(world)
    port = compute_ports(world.cloud)[0]
    name = world.store.get_object(ENV, port["id"])["name"]
    event = port_event(port, name="half-way")
    links_before = world.store.find_links(ENV, touching=[port["id"]])
    real_relink = updater.relink

    def store_gone(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("the store went away between the object and its links")

    updater.relink = store_gone  # type: ignore[method-assign]
    result = world.dispatcher.handle(event)
    assert not result.result and result.store_outage
    updater.relink = real_relink  # type: ignore[method-assign]
    assert world.store.get_object(ENV, port["id"])["name"] == name  # the object write was undone
    result = world.dispatcher.handle(event)
    assert result.result and "1 written" in result.message
    assert "links and cliques redone at the batch's commit" in result.message
    world.dispatcher.flush()
    assert world.store.find_links(ENV, touching=[port["id"]]) != links_before  # relabelled with the name
    world.cloud.update("ports", port["id"], name="half-way")
    world.assert_like_a_fresh_scan()


def test_abandoned_batches_leave_nothing(world: World, other: SqliteStore) -> None:
    trusting(world)
    port = compute_ports(world.cloud)[0]
    name = other.get_object(ENV, port["id"])["name"]
    assert world.dispatcher.handle(port_event(port, name="never-acked")).result
    world.dispatcher.abandon()  # the broker connection was lost: the message comes back
    assert other.get_object(ENV, port["id"])["name"] == name
    assert other.upsert_objects(ENV, [dict(other.get_object(ENV, port["id"]), name="free-again")]) == 1


def handle_as_one_batch(world: World, events: list[Any], other: SqliteStore, watched: str) -> None:
    """Handle ``events`` as the listener does with a backlog: their API reads made ahead, all handled
    before one flush. ``watched`` (an object id) shows that nothing was committed before the flush."""
    updater: MapUpdater = world.dispatcher.updater
    updater.read_ahead_threads = 4
    for event in events:
        world.dispatcher.read_ahead(event)
    for entry in list(updater._ahead.values()):
        entry[1].result(timeout=30)
    before = other.get_object(ENV, watched)
    for event in events:
        assert not world.dispatcher.will_wait(event)
        result = world.dispatcher.handle(event)
        assert result.result, result.message
    assert other.get_object(ENV, watched) == before  # one batch: nothing committed yet
    world.dispatcher.flush()


def test_a_batch_of_mixed_events_is_relinked_once_and_converges_to_a_fresh_scan(
        world: World, other: SqliteStore) -> None:
    cloud = world.cloud
    servers = [s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host")]
    by_server: dict[str, list[dict[str, Any]]] = {}
    for p in compute_ports(cloud):
        by_server.setdefault(p["device_id"], []).append(p)
    attached = {a.get("server_id") for v in cloud.items("volumes") for a in v.get("attachments") or ()}
    gone = next(s for s in servers if s["id"] not in attached)  # (cinder would send its own events)
    first, renamed, fourth = [s for s in servers if s is not gone][:3]
    changed = by_server[first["id"]] + by_server[fourth["id"]]
    events: list[Any] = []
    for i, p in enumerate(changed):  # instances' ports change: each instance is re-derived once
        cloud.update("ports", p["id"], name=f"batched-port-{i}", status="DOWN")
        events.append(notification("port.update.end", {"port": {"id": p["id"]}}))
    cloud.rename("servers", renamed["id"], "batched-vm")
    events.append(notification("compute.instance.update", {"instance_id": renamed["id"], "state": "active"},
                               f"compute.{renamed['OS-EXT-SRV-ATTR:host']}"))
    its_ports = [p["id"] for p in by_server[gone["id"]]]
    its_fips = [f["id"] for f in cloud.items("floatingips") if f.get("port_id") in its_ports]
    cloud.delete_servers([gone["id"]])
    events += [notification("port.delete.end", {"port_id": pid}) for pid in its_ports]
    events += [notification("floatingip.update.end", {"floatingip": {"id": fid}}) for fid in its_fips]
    events.append(notification("compute.instance.delete.end", {"instance_id": gone["id"]},
                               f"compute.{gone['OS-EXT-SRV-ATTR:host']}"))
    links_before = world.store.find_links(ENV, touching=[by_server[first["id"]][0]["id"]])

    updater: MapUpdater = world.dispatcher.updater
    relinked: list[int] = []
    real = updater._relink_now

    def counting(change: Any, holders: dict[str, Any], **kw: Any) -> None:
        relinked.append(len(holders))
        real(change, holders, **kw)

    updater._relink_now = counting  # type: ignore[method-assign]
    handle_as_one_batch(world, events, other, by_server[first["id"]][0]["id"])
    # the batch's objects were relinked together at the flush (then the re-derived instance, if it
    # changed), not once per event
    assert len(events) > 5 and 1 <= len(relinked) <= 2 and relinked[0] >= len(changed) + 1, relinked
    assert world.store.find_links(ENV, touching=[by_server[first["id"]][0]["id"]]) != links_before
    world.assert_like_a_fresh_scan()


def test_links_read_in_the_middle_of_a_batch_include_its_events(world: World) -> None:
    updater = trusting(world)
    port = compute_ports(world.cloud)[0]
    stored = {lk["id"]: lk for lk in world.store.find_links(ENV, touching=[port["id"]])}
    assert world.dispatcher.handle(port_event(port, name="mid-batch")).result
    # the port's links are relinked at the flush; a handler that reads links before it sees them relinked
    assert {lk["id"]: lk for lk in world.store.find_links(ENV, touching=[port["id"]])} == stored
    seen = updater.find_links(touching=[port["id"]])
    labels = {lk["id"]: (lk["source_label"], lk["target_label"]) for lk in seen}
    assert any("mid-batch" in pair for pair in labels.values()), labels
    world.dispatcher.flush()
    assert {lk["id"]: (lk["source_label"], lk["target_label"])
            for lk in world.store.find_links(ENV, touching=[port["id"]])} == labels
    world.cloud.update("ports", port["id"], name="mid-batch")
    world.assert_like_a_fresh_scan()


def spy_refreshes(updater: MapUpdater) -> list[tuple[str, int]]:
    """(kind, how many items) of every ``MapUpdater.refresh`` call from now on."""
    calls: list[tuple[str, int]] = []
    real = updater.refresh

    def spying(kind: str, items: list[dict[str, Any]], *args: Any, **kwargs: Any) -> Any:
        calls.append((kind, len(items)))
        return real(kind, items, *args, **kwargs)

    updater.refresh = spying  # type: ignore[method-assign]
    return calls


def test_events_handled_together_are_placed_in_one_pass_and_converge_to_a_fresh_scan(
        world: World, other: SqliteStore) -> None:
    cloud, dispatcher = world.cloud, world.dispatcher
    ports = compute_ports(cloud)[:6]
    for i, p in enumerate(ports[:5]):
        cloud.update("ports", p["id"], name=f"together-{i}", status="DOWN" if i % 2 else "ACTIVE")
    cloud.delete("ports", ports[5]["id"])  # gone from the API: removed, and its instance re-derived
    events = [notification("port.update.end", {"port": {"id": p["id"]}}) for p in ports]
    events += [notification("port.update.end", {"port": {"id": ports[0]["id"]}}),  # again: after the others
               notification("port.update.end", {"port": {"name": "no id"}})]
    name = other.get_object(ENV, ports[0]["id"])["name"]
    calls = spy_refreshes(dispatcher.updater)
    results = dispatcher.handle_many(events)
    assert [r.result for r in results] == [True] * 7 + [False]
    assert all("placed (with 4 other(s) in one pass)" in r.message for r in results[:5]), results
    assert "already gone from the API" in results[5].message
    assert results[6].ignored and "duplicate ignored" in results[6].message  # the map has its revision already
    assert "payload has no port object" in results[7].message
    assert ("port", 5) in calls and not [c for c in calls if c[0] == "port" and c[1] < 5], calls
    assert other.get_object(ENV, ports[0]["id"])["name"] == name  # one batch: nothing committed yet
    server = next(s for s in cloud.items("servers") if s["id"] == ports[5]["device_id"])  # nova's event for it
    assert dispatcher.handle(notification("compute.instance.update", {"instance_id": server["id"]},
                                          f"compute.{server['OS-EXT-SRV-ATTR:host']}")).result
    dispatcher.flush()
    assert [other.get_object(ENV, p["id"])["name"] for p in ports[:5]] == [f"together-{i}" for i in range(5)]
    assert other.get_object(ENV, ports[5]["id"]) is None
    recorded = [m["message"] for m in other.find_messages(environment=ENV) if "one pass" in m["message"]]
    assert len(recorded) == 5  # one messages entry per event handled
    world.assert_like_a_fresh_scan()


def test_instances_handled_together_are_placed_in_one_pass_and_converge_to_a_fresh_scan(world: World) -> None:
    cloud, dispatcher = world.cloud, world.dispatcher
    servers = [s for s in cloud.items("servers") if s.get("OS-EXT-SRV-ATTR:host")][:4]
    cloud.rename("servers", servers[0]["id"], "together-vm")
    cloud.update("servers", servers[1]["id"], status="SHUTOFF", **{"OS-EXT-STS:vm_state": "stopped"})
    cloud.update("servers", servers[2]["id"], **{"OS-EXT-STS:task_state": "migrating"})
    events = [notification(event_type, {"instance_id": s["id"], "state": "active"},
                           f"compute.{s['OS-EXT-SRV-ATTR:host']}")
              for event_type, s in zip(["compute.instance.update", "instance.power_off.end",
                                        "compute.instance.live_migration.post.dest.end",
                                        "compute.instance.update"], servers, strict=True)]
    calls = spy_refreshes(dispatcher.updater)
    results = dispatcher.handle_many(events)
    assert [r.result for r in results] == [True, True, False, True], results
    assert results[2].retry and "still migrating; mapped" in results[2].message  # mapped, and read again later
    assert all("placed (with 3 other(s) in one pass)" in r.message for r in (results[0], results[1], results[3]))
    assert next(c for c in calls if c[0] == "instance") == ("instance", 4), calls
    dispatcher.flush()
    assert world.store.get_object(ENV, servers[0]["id"])["name"] == "together-vm"
    world.assert_like_a_fresh_scan()


def test_events_whose_parent_is_not_mapped_are_handled_one_at_a_time(world: World) -> None:
    """A port of a network the map lacks cannot be placed with the others: the pass is undone and
    each event is handled alone, which maps the network first."""
    dispatcher = world.dispatcher
    ports = compute_ports(world.cloud)
    network = ports[0]["network_id"]
    on_it = [p for p in ports if p["network_id"] == network][:2]
    elsewhere = next(p for p in ports if p["network_id"] != network)
    world.store.delete_subtree(ENV, network)  # as if the network's create event had not come yet
    for p in [*on_it, elsewhere]:
        world.cloud.update("ports", p["id"], name=f"alone-{p['id'][:4]}")
    results = dispatcher.handle_many([notification("port.update.end", {"port": {"id": p["id"]}})
                                      for p in [elsewhere, *on_it]])
    assert all(r.result for r in results), results
    assert not [r for r in results if "one pass" in r.message], results
    assert "after mapping its network" in results[1].message  # (the next one finds it mapped)
    dispatcher.flush()
    for p in [*on_it, elsewhere]:
        assert world.store.get_object(ENV, p["id"])["name"] == f"alone-{p['id'][:4]}"
    assert world.store.get_object(ENV, network) is not None
