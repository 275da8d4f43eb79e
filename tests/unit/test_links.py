"""Link finders over a small hand-made cloud, in memory and through a real SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stackmap.discovery.api.fetchers import FILED_BY, folder_id
from stackmap.discovery.links import (
    FINDER_CLASSES,
    LinkFinder,
    MemoryLookup,
    RouterNetworkFinder,
    StoreLookup,
    find_links,
    link_types_of,
    load_link_finders,
)
from stackmap.errors import ConfigError
from stackmap.model import Link
from stackmap.store import open_store
from tests.store_calls import record_calls

ENV = "lab"

Doc = dict[str, Any]


def obj(type_: str, id_: str, **fields: Any) -> Doc:
    return {"environment": ENV, "type": type_, "id": id_, "name": fields.pop("name", id_), **fields}


def port(id_: str, network: str, subnet: str, ip: str, owner: str, device: str, **fields: Any) -> Doc:
    """Filed under its network's ports folder, as a scan files it."""
    return obj("port", id_, network_id=network, device_owner=owner, device_id=device,
               parent_id=folder_id(network, FILED_BY["port"][1]),
               mac_address=fields.pop("mac_address", f"fa:16:3e:00:00:{len(id_):02x}"),
               fixed_ips=[{"subnet_id": subnet, "ip_address": ip}], status=fields.pop("status", "ACTIVE"),
               **{"binding:host_id": fields.pop("host", "")}, **fields)


def cloud() -> list[Doc]:
    """Two compute hosts, three networks, one router, two instances, a floating IP, a volume, an LB.

    Deliberately dangling: fip-free (no port), fip-ghost (port gone), vol-ghost (server gone),
    vm-orphan (host not scanned), p-lost (network not scanned), an LB member outside the cloud.
    """
    return [
        obj("host", "compute-1", host_type=["Compute"]),
        obj("host", "compute-2", host_type=["Compute"]),
        obj("network", "net-a", network="net-a", subnet_ids=["sub-a"], **{"router:external": False}),
        obj("network", "net-b", network=["net-b"], subnet_ids=["sub-b"], **{"router:external": False}),
        obj("network", "ext", network="ext", subnet_ids=["sub-ext"], **{"router:external": True}),
        obj("subnet", "sub-a", network_id="net-a", cidr="10.0.0.0/24"),
        obj("subnet", "sub-b", network_id="net-b", cidr="10.1.0.0/24"),
        obj("subnet", "sub-ext", network_id="ext", cidr="172.24.4.0/24"),
        obj("router", "r1", external_gateway_info={
            "network_id": "ext", "external_fixed_ips": [{"subnet_id": "sub-ext", "ip_address": "172.24.4.10"}]}),
        port("rp-a", "net-a", "sub-a", "10.0.0.1", "network:router_interface", "r1", host="net-1"),
        port("rp-b", "net-b", "sub-b", "10.1.0.1", "network:router_interface_distributed", "r1"),
        port("rp-gw", "ext", "sub-ext", "172.24.4.10", "network:router_gateway", "r1"),
        obj("instance", "vm1", host="compute-1", project_id="p", network=["net-a"], status="ACTIVE"),
        obj("instance", "vm2", host="compute-2", project_id="p", network=["net-a", "net-b"], status="ACTIVE"),
        obj("instance", "vm-orphan", host="compute-9", network=[], status="ACTIVE"),
        port("p1", "net-a", "sub-a", "10.0.0.5", "compute:nova", "vm1", host="compute-1",
             mac_address="fa:16:3e:11:11:11", security_groups=["sg-default"]),
        port("p2a", "net-a", "sub-a", "10.0.0.6", "compute:nova", "vm2", host="compute-2",
             security_groups=["sg-default", "sg-gone"]),
        port("p2b", "net-b", "sub-b", "10.1.0.6", "compute:az1", "vm2", host="compute-2", status="DOWN"),
        port("p-dhcp", "net-a", "sub-a", "10.0.0.2", "network:dhcp", "dhcp-agent"),
        port("p-vip", "net-a", "sub-a", "10.0.0.100", "Octavia", "lb1"),
        port("p-lost", "net-gone", "sub-gone", "10.7.0.1", "compute:nova", "vm1"),
        obj("floating_ip", "fip1", port_id="p1", floating_network_id="ext", floating_ip_address="172.24.4.20",
            fixed_ip_address="10.0.0.5", router_id="r1"),
        obj("floating_ip", "fip-free", port_id=None, floating_network_id="ext", floating_ip_address="172.24.4.21"),
        obj("floating_ip", "fip-ghost", port_id="p-ghost", floating_network_id="ext"),
        obj("volume", "vol1", attachments=[{"server_id": "vm1", "device": "/dev/vdb", "attachment_id": "att1"}]),
        obj("volume", "vol-ghost", attachments=[{"server_id": "vm-gone", "device": "/dev/vdc"}]),
        obj("security_group", "sg-default"),
        obj("load_balancer", "lb1", vip_port_id="p-vip", vip_network_id="net-a", vip_subnet_id="sub-a", members=[
            {"id": "m1", "address": "10.0.0.5", "subnet_id": "sub-a", "pool_id": "pool1", "protocol_port": 80},
            {"id": "m2", "address": "10.0.0.6", "subnet_id": "sub-a", "pool_id": "pool1", "protocol_port": 80},
            {"id": "m3", "address": "10.0.0.99", "subnet_id": "sub-a", "pool_id": "pool1", "protocol_port": 80},
        ]),
    ]


def all_links(docs: list[Doc] | None = None) -> list[Doc]:
    docs = cloud() if docs is None else docs
    return find_links(ENV, docs, MemoryLookup(docs), load_link_finders())


def keys(links: list[Doc], link_type: str | None = None) -> set[tuple[str, str]]:
    return {(lk["source_id"], lk["target_id"]) for lk in links if link_type in (None, lk["link_type"])}


def by_key(links: list[Doc]) -> dict[tuple[str, str, str], Doc]:
    return {(lk["link_type"], lk["source_id"], lk["target_id"]): lk for lk in links}


# --------------------------------------------------------------------------------------------------
# what each finder produces


def test_every_link_type_from_the_cloud() -> None:
    links = all_links()
    assert keys(links, "host-instance") == {("compute-1", "vm1"), ("compute-2", "vm2")}
    assert keys(links, "instance-port") == {("vm1", "p1"), ("vm2", "p2a"), ("vm2", "p2b"), ("vm1", "p-lost")}
    assert keys(links, "port-network") == {
        ("p1", "net-a"), ("p2a", "net-a"), ("p2b", "net-b"), ("rp-a", "net-a"), ("rp-b", "net-b"),
        ("rp-gw", "ext"), ("p-dhcp", "net-a"), ("p-vip", "net-a"),
    }
    assert keys(links, "network-subnet") == {("net-a", "sub-a"), ("net-b", "sub-b"), ("ext", "sub-ext")}
    assert keys(links, "router-network") == {("r1", "net-a"), ("r1", "net-b"), ("r1", "ext")}
    assert keys(links, "floatingip-port") == {("fip1", "p1")}
    assert keys(links, "volume-instance") == {("vol1", "vm1")}
    assert keys(links, "loadbalancer-port") == {("lb1", "p-vip"), ("lb1", "p1"), ("lb1", "p2a")}
    assert keys(links, "port-security_group") == {("p1", "sg-default"), ("p2a", "sg-default")}
    assert len(links) == len(by_key(links)), "each link key appears once"


def test_links_are_model_documents_keyed_by_type_source_target() -> None:
    for link in all_links():
        assert Link.model_validate(link).to_doc() == link
        assert link["id"] == f"{link['link_type']}|{link['source_id']}|{link['target_id']}"
        assert link["environment"] == ENV
        assert link["source_type"] and link["target_type"]


def test_link_details_carry_network_names_and_hosts() -> None:
    links = by_key(all_links())
    vif = links[("instance-port", "vm1", "p1")]
    assert vif["link_name"] == "fa:16:3e:11:11:11"
    assert vif["attributes"] == {"network": "net-a"}
    assert vif["host"] == "compute-1"
    assert links[("port-network", "p2b", "net-b")]["attributes"] == {"network": "net-b"}
    assert links[("network-subnet", "net-b", "sub-b")]["attributes"] == {"network": "net-b"}
    assert links[("host-instance", "compute-1", "vm1")]["host"] == "compute-1"
    fip = links[("floatingip-port", "fip1", "p1")]
    assert fip["attributes"]["network"] == "net-a"
    assert fip["link_name"] == "172.24.4.20"
    vol = links[("volume-instance", "vol1", "vm1")]
    assert vol["attributes"] == {"device": "/dev/vdb", "attachment_id": "att1"}
    assert links[("port-security_group", "p1", "sg-default")]["source_type"] == "port"


def test_dangling_references_produce_no_link() -> None:
    links = all_links()
    ends = {lk["source_id"] for lk in links} | {lk["target_id"] for lk in links}
    for gone in ("compute-9", "net-gone", "p-ghost", "vm-gone", "sg-gone"):
        assert gone not in ends
    for holder in ("vm-orphan", "fip-free", "fip-ghost", "vol-ghost"):
        assert not [lk for lk in links if holder in (lk["source_id"], lk["target_id"])]
    # p-lost's instance exists but its network does not: instance-port yes, port-network no
    assert ("vm1", "p-lost") in keys(links, "instance-port")
    assert not [lk for lk in links if lk["link_type"] == "port-network" and lk["source_id"] == "p-lost"]


def test_an_end_of_the_wrong_type_is_not_linked() -> None:
    docs = [obj("instance", "vm", host="net-a"), obj("network", "net-a")]
    assert all_links(docs) == []


def test_link_state_comes_from_the_data() -> None:
    docs = cloud()
    for doc in docs:
        if doc["id"] == "p1":
            doc["admin_state_up"] = False
        if doc["id"] == "vm2":
            doc["status"] = "SHUTOFF"
    links = by_key(all_links(docs))
    assert links[("instance-port", "vm2", "p2b")]["state"] == "down"  # port DOWN (and instance off)
    assert links[("port-network", "p2b", "net-b")]["state"] == "down"  # port status DOWN
    assert links[("port-network", "p1", "net-a")]["state"] == "down"  # admin_state_up false
    assert links[("floatingip-port", "fip1", "p1")]["state"] == "down"
    assert links[("host-instance", "compute-2", "vm2")]["state"] == "down"  # instance SHUTOFF
    assert links[("host-instance", "compute-1", "vm1")]["state"] == "up"
    assert links[("port-network", "p2a", "net-a")]["state"] == "up"
    assert links[("network-subnet", "net-a", "sub-a")]["state"] == "up"


# --------------------------------------------------------------------------------------------------
# router-network: ports first, gateway info as fallback, one link per (router, network)


def test_router_links_from_ports_carry_port_and_subnets() -> None:
    links = by_key(all_links())
    gw = links[("router-network", "r1", "ext")]
    assert gw["attributes"] == {"network": "ext", "interface_type": "gateway", "port_id": "rp-gw",
                                "subnet_ids": ["sub-ext"]}
    iface = links[("router-network", "r1", "net-a")]
    assert iface["attributes"] == {"network": "net-a", "interface_type": "interface", "port_id": "rp-a",
                                   "subnet_ids": ["sub-a"]}
    assert iface["host"] == "net-1"
    assert links[("router-network", "r1", "net-b")]["attributes"]["interface_type"] == "interface"


def test_router_gateway_from_gateway_info_when_its_port_is_invisible() -> None:
    docs = [d for d in cloud() if d["id"] != "rp-gw"]
    gw = by_key(all_links(docs))[("router-network", "r1", "ext")]
    assert gw["attributes"] == {"network": "ext", "interface_type": "gateway", "subnet_ids": ["sub-ext"]}


def test_router_alone_does_not_shadow_its_visible_gateway_port() -> None:
    """An update about the router only must not replace the port-derived link by a poorer one."""
    docs = cloud()
    lookup = MemoryLookup(docs)
    router = next(d for d in docs if d["id"] == "r1")
    assert find_links(ENV, [router], lookup, [RouterNetworkFinder()]) == []
    assert find_links(ENV, [router], MemoryLookup([d for d in docs if d["id"] != "rp-gw"]),
                      [RouterNetworkFinder()])[0]["target_id"] == "ext"


def test_two_router_ports_on_one_network_give_one_link() -> None:
    docs = [
        *cloud(),
        obj("subnet", "sub-a2", network_id="net-a", cidr="10.2.0.0/24"),
        port("rp-a2", "net-a", "sub-a2", "10.2.0.1", "network:ha_router_replicated_interface", "r1", status="DOWN"),
    ]
    links = [lk for lk in all_links(docs) if lk["link_type"] == "router-network" and lk["target_id"] == "net-a"]
    assert len(links) == 1
    assert links[0]["attributes"]["subnet_ids"] == ["sub-a", "sub-a2"]
    assert links[0]["state"] == "up"  # one of the two ports is up


# --------------------------------------------------------------------------------------------------
# load balancers


def test_load_balancer_links_vip_and_members_matched_by_subnet_and_address() -> None:
    links = by_key(all_links())
    assert links[("loadbalancer-port", "lb1", "p-vip")]["attributes"] == {"role": "vip", "network": "net-a"}
    member = links[("loadbalancer-port", "lb1", "p1")]
    assert member["attributes"]["role"] == "member"
    assert member["attributes"]["pool_id"] == "pool1"
    assert member["attributes"]["network"] == "net-a"
    assert member["link_name"] == "10.0.0.5:80"


def test_member_address_on_another_subnet_does_not_match() -> None:
    docs = cloud()
    lb = next(d for d in docs if d["id"] == "lb1")
    lb["members"] = [{"id": "m", "address": "10.0.0.5", "subnet_id": "sub-b", "pool_id": "pool1"}]
    assert keys(all_links(docs), "loadbalancer-port") == {("lb1", "p-vip")}


# --------------------------------------------------------------------------------------------------
# lookups


def test_memory_lookup_get_and_find() -> None:
    lookup = MemoryLookup(cloud())
    assert set(lookup.get(["p1", "nope", "net-a"])) == {"p1", "net-a"}
    assert {d["id"] for d in lookup.find("port", network_id="net-b")} == {"rp-b", "p2b"}
    assert {d["id"] for d in lookup.find("port", network_id="net-a", device_owner="compute:nova")} == {"p1", "p2a"}
    assert lookup.find("port", fixed_ips=[{"subnet_id": "x"}]) == []  # unhashable value: no match, no crash
    assert len(lookup.find("router")) == 1


def test_store_lookup_gives_the_same_links_as_memory(tmp_path: Path) -> None:
    docs = cloud()
    with open_store(f"sqlite:///{tmp_path}/x.db") as store:
        store.upsert_objects(ENV, docs)
        lookup = StoreLookup(store, ENV)
        assert set(lookup.get(["p1", "nope"])) == {"p1"}
        assert lookup.get([]) == {}
        assert {d["id"] for d in lookup.find("port", network_id="net-b")} == {"rp-b", "p2b"}
        from_store = find_links(ENV, store.find_objects(ENV), lookup, load_link_finders())
        assert by_key(from_store) == by_key(all_links(docs))
        store.upsert_links(ENV, from_store)
        assert store.link_keys(ENV) == set(by_key(from_store))


def test_a_store_lookup_reads_each_object_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finders ask one lookup for the same objects in turn: it reads each id once, missing ones
    too, and never the objects it was given."""
    docs = cloud()
    with open_store(f"sqlite:///{tmp_path}/x.db") as store:
        store.upsert_objects(ENV, docs)
        holder = next(d for d in docs if d["id"] == "p1")
        lookup = StoreLookup(store, ENV, known=[holder])
        calls = record_calls(monkeypatch, store, "find_objects")
        assert lookup.get(["p1"]) == {"p1": holder} and calls == []
        assert set(lookup.get(["p2a", "nope", "p1"])) == {"p1", "p2a"}
        assert [c["ids"] for c in calls] == [["nope", "p2a"]]
        assert set(lookup.get(["nope", "p2a", "net-a"])) == {"p2a", "net-a"}
        assert [c["ids"] for c in calls] == [["nope", "p2a"], ["net-a"]]


@pytest.mark.parametrize("gateway_port", [True, False])
def test_a_router_relinked_alone_looks_for_its_gateway_port_in_the_store(tmp_path: Path, gateway_port: bool) -> None:
    """The gateway port's link wins over ``external_gateway_info``; the store is asked for the ports
    of the gateway network only (its folder), not for every port."""
    docs = [d for d in cloud() if gateway_port or d["id"] != "rp-gw"]
    with open_store(f"sqlite:///{tmp_path}/x.db") as store:
        store.upsert_objects(ENV, docs)
        router = next(d for d in docs if d["id"] == "r1")
        links = find_links(ENV, [router], StoreLookup(store, ENV), load_link_finders())
    assert (("r1", "ext") in keys(links, "router-network")) is not gateway_port


def test_incremental_update_from_one_changed_port(tmp_path: Path) -> None:
    """After a notification: the new port is the holder, everything else is read from the store."""
    docs = cloud()
    new_port = port("p3", "net-b", "sub-b", "10.1.0.9", "compute:nova", "vm1", security_groups=["sg-default"])
    with open_store(f"sqlite:///{tmp_path}/x.db") as store:
        store.upsert_objects(ENV, [*docs, new_port])
        links = find_links(ENV, [new_port], StoreLookup(store, ENV), load_link_finders())
    assert keys(links) == {("vm1", "p3"), ("p3", "net-b"), ("p3", "sg-default")}


def test_find_links_calls_each_finder_once_with_only_its_holders() -> None:
    seen: list[tuple[str, list[str]]] = []

    class Spy(LinkFinder):
        link_type = "port-network"
        source_type = "port"
        target_type = "network"
        supported_holder_types = ("port", "subnet")

        def find(self, holders: Any, lookup: Any, environment: str) -> list[Doc]:
            seen.append((environment, sorted(h["type"] for h in holders)))
            return []

    docs = cloud()
    find_links(ENV, docs, MemoryLookup(docs), [Spy(["subnet"])])
    assert seen == [(ENV, ["subnet"] * 3)]


# --------------------------------------------------------------------------------------------------
# configuration


def test_shipped_finders_load_and_own_their_link_types() -> None:
    finders = load_link_finders()
    assert link_types_of(finders) == [
        "host-instance", "instance-port", "port-network", "network-subnet", "router-network",
        "floatingip-port", "volume-instance", "loadbalancer-port", "port-security_group",
        # the host layer (stackmap/discovery/host/links.py)
        "instance-vnic", "vservice-vnic", "vnic-vconnector", "vnic-vedge", "vconnector-vedge",
        "vconnector-host_pnic", "vedge-host_pnic", "vedge-otep", "otep-vconnector", "otep-host_pnic",
        "host_pnic-network",
    ]
    router = next(f for f in finders if f.link_type == "router-network")
    assert router.holder_types == ("port", "router")
    assert router.holder_type == "port"
    assert {type(f).__name__ for f in finders} == set(FINDER_CLASSES)


def write(tmp_path: Path, content: Any) -> Path:
    path = tmp_path / "link_finders.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("[{", "invalid JSON"),
        ({"link_type": "host-instance"}, "expected a list"),
        ([{"link_type": "host-instance", "finder": "NoSuchFinder", "holder_type": "instance"}], "unknown finder"),
        ([{"link_type": "host-instance", "finder": "HostInstanceFinder", "holder_type": "instance"},
          {"link_type": "host-instance", "finder": "HostInstanceFinder", "holder_type": "instance"}], "given twice"),
        ([{"link_type": "port-network", "finder": "HostInstanceFinder", "holder_type": "instance"}], "produces"),
        ([{"link_type": "host-instance", "finder": "HostInstanceFinder", "holder_type": "port"}], "cannot find"),
        ([{"link_type": "host-instance", "finder": "HostInstanceFinder", "holder_type": 3}], "holder_type"),
        ([{"link_type": "hostinstance", "finder": "HostInstanceFinder"}], "link_type"),
        ([{"link_type": "host-instance", "finder": "HostInstanceFinder", "holdr_type": "x"}], "unknown key"),
    ],
)
def test_bad_link_finder_config_names_file_and_problem(tmp_path: Path, content: Any, problem: str) -> None:
    path = write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_link_finders(path)
    assert str(path) in str(err.value)
    assert problem in str(err.value)


def test_missing_link_finder_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_link_finders(tmp_path / "absent.json")
