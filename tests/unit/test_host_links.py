"""Host-layer link finders over documents in the host fetchers' shapes, in memory and in a real store."""

from __future__ import annotations

import pytest

from stackmap.discovery.host.links import HOST_FINDER_CLASSES
from stackmap.discovery.links import (
    FINDER_CLASSES,
    LinkFinder,
    MemoryLookup,
    StoreLookup,
    find_links,
    load_link_finders,
)
from stackmap.model import Link
from stackmap.store import Store
from tests.store_calls import record_calls
from tests.unit.host_layer import ENV, Doc, cloud, lxb_host, networks, ovs_host, sid

HOST_LINK_TYPES = [
    "instance-vnic", "vservice-vnic", "vnic-vconnector", "vnic-vedge", "vconnector-vedge", "vconnector-host_pnic",
    "vedge-host_pnic", "vedge-otep", "otep-vconnector", "otep-host_pnic", "host_pnic-network",
]


def host_finders() -> list[LinkFinder]:
    return [f for f in load_link_finders() if f.link_type in HOST_LINK_TYPES]


def links_of(docs: list[Doc], holders: list[Doc] | None = None) -> list[Doc]:
    return find_links(ENV, docs if holders is None else holders, MemoryLookup(docs), host_finders())


def keys(links: list[Doc], link_type: str) -> set[tuple[str, str]]:
    return {(lk["source_id"], lk["target_id"]) for lk in links if lk["link_type"] == link_type}


def by_key(links: list[Doc]) -> dict[tuple[str, str, str], Doc]:
    return {(lk["link_type"], lk["source_id"], lk["target_id"]): lk for lk in links}


OH, LH = "ovs-1", "lxb-1"
EXPECTED = {
    "instance-vnic": {("vm1", sid(OH, "tapp1-aa")), ("vm2", sid(LH, "tapp2-bb")), ("vm3", sid(LH, "tapp3-cc"))},
    "vservice-vnic": {(sid(OH, "qdhcp-net-a"), sid(OH, "qdhcp-net-a", "tapd-1"))},
    "vnic-vconnector": {(sid(OH, "tapp1-aa"), sid(OH, "qbrp1-aa")), (sid(LH, "tapp2-bb"), sid(LH, "brqnet-a")),
                        (sid(LH, "tapp3-cc"), sid(LH, "brqvlan-net"))},
    "vnic-vedge": {(sid(OH, "qdhcp-net-a", "tapd-1"), sid(OH, "OVS"))},
    "vconnector-vedge": {(sid(OH, "qbrp1-aa"), sid(OH, "OVS"))},
    "vconnector-host_pnic": {(sid(LH, "brqvlan-net"), sid(LH, "eth1"))},
    "vedge-host_pnic": {(sid(OH, "OVS"), sid(OH, "eth1")), (sid(OH, "OVS"), sid(OH, "eth2"))},
    "vedge-otep": {(sid(OH, "OVS"), sid(OH, "otep", "vxlan"))},
    "otep-vconnector": {(sid(LH, "otep", "vxlan-1001"), sid(LH, "brqnet-a"))},
    "otep-host_pnic": {(sid(OH, "otep", "vxlan"), sid(OH, "eth0")), (sid(LH, "otep", "vxlan-1001"), sid(LH, "eth0"))},
    "host_pnic-network": {(sid(OH, "eth0"), "net-a"), (sid(OH, "eth2"), "ext"), (sid(OH, "eth1"), "vlan-net"),
                          (sid(LH, "eth0"), "net-a"), (sid(LH, "eth1"), "vlan-net")},
}


def test_every_host_layer_link_type_is_found() -> None:
    links = links_of(cloud())
    for link_type, expected in EXPECTED.items():
        assert keys(links, link_type) == expected, link_type
    assert {lk["link_type"] for lk in links} == set(HOST_LINK_TYPES)
    assert len(links) == sum(len(v) for v in EXPECTED.values())


def test_host_links_are_model_documents_with_their_host() -> None:
    for link in links_of(cloud()):
        assert Link.model_validate(link).to_doc() == link
        assert link["host"] in (OH, LH) and link["state"] == "up"


def test_link_details() -> None:
    links = by_key(links_of(cloud()))
    vif = links[("instance-vnic", "vm1", sid(OH, "tapp1-aa"))]
    assert vif["attributes"] == {"network": "net-a", "port_id": "p1"}  # network from the neutron port
    assert vif["link_name"] == "fa:16:3e:00:00:01"
    dhcp = links[("vnic-vedge", sid(OH, "qdhcp-net-a", "tapd-1"), sid(OH, "OVS"))]
    assert dhcp["attributes"] == {"network": "net-a", "port": "tapd-1", "bridge": "br-int", "vlan": 1}
    qvb = links[("vconnector-vedge", sid(OH, "qbrp1-aa"), sid(OH, "OVS"))]
    assert qvb["attributes"] == {"interface": "qvbp1-aa", "port": "qvop1-aa", "bridge": "br-int", "vlan": 1}
    assert links[("vconnector-host_pnic", sid(LH, "brqvlan-net"), sid(LH, "eth1"))]["attributes"] == {
        "interface": "eth1.100", "vlan": 100}
    assert links[("otep-host_pnic", sid(OH, "otep", "vxlan"), sid(OH, "eth0"))]["attributes"] == {
        "ip_address": "10.0.0.1", "overlay_type": "vxlan"}
    vlan = links[("host_pnic-network", sid(OH, "eth1"), "vlan-net")]
    assert vlan["link_name"] == "Segment-100"
    assert vlan["attributes"] == {"network": "vlan-net", "network_type": "vlan", "segmentation_id": 100,
                                  "physical_network": "physnet1"}
    overlay = links[("host_pnic-network", sid(LH, "eth0"), "net-a")]
    assert overlay["attributes"] == {"network": "net-a", "network_type": "vxlan", "segmentation_id": 1001}


def test_overlay_network_needs_a_port_bound_to_the_host() -> None:
    # net-b has no port on either host: no pNIC carries it
    assert not [lk for lk in links_of(cloud()) if lk["target_id"] == "net-b"]
    docs = [*cloud(), {"environment": ENV, "type": "port", "id": "pb", "network_id": "net-b",
                       "binding:host_id": LH, "device_owner": "compute:nova", "device_id": "vm2", "name": "pb"}]
    assert keys(links_of(docs), "host_pnic-network") >= {(sid(LH, "eth0"), "net-b")}
    assert (sid(OH, "eth0"), "net-b") not in keys(links_of(docs), "host_pnic-network")


def test_state_comes_from_what_the_host_reported() -> None:
    docs = cloud()
    for doc in docs:
        if doc["id"] == sid(OH, "eth1"):
            doc["state"] = "down"
        if doc["id"] == sid(LH, "tapp2-bb"):
            doc["state"] = "down"
        if doc["type"] == "vedge":
            doc["ports"]["qvop1-aa"]["state"] = "down"
    links = by_key(links_of(docs))
    assert links[("vedge-host_pnic", sid(OH, "OVS"), sid(OH, "eth1"))]["state"] == "down"
    assert links[("host_pnic-network", sid(OH, "eth1"), "vlan-net")]["state"] == "down"
    assert links[("instance-vnic", "vm2", sid(LH, "tapp2-bb"))]["state"] == "down"
    assert links[("vnic-vconnector", sid(LH, "tapp2-bb"), sid(LH, "brqnet-a"))]["state"] == "down"
    assert links[("vconnector-vedge", sid(OH, "qbrp1-aa"), sid(OH, "OVS"))]["state"] == "down"  # the qvo port
    assert links[("vedge-host_pnic", sid(OH, "OVS"), sid(OH, "eth2"))]["state"] == "up"
    # "unknown" (a tunnel port, a bridge) is not "down"
    assert links[("vedge-otep", sid(OH, "OVS"), sid(OH, "otep", "vxlan"))]["state"] == "up"


@pytest.mark.parametrize("gone", [
    sid(OH, "qbrp1-aa"), sid(OH, "OVS"), sid(LH, "eth0"), "vm1", sid(OH, "qdhcp-net-a"), "vlan-net",
    sid(LH, "brqnet-a"),
])
def test_no_link_when_an_end_is_missing(gone: str) -> None:
    links = links_of([d for d in cloud() if d["id"] != gone])
    assert not [lk for lk in links if gone in (lk["source_id"], lk["target_id"])]
    # and the links not touching it are all still there
    full = {k for k in by_key(links_of(cloud())) if gone not in k}
    # except those whose *derivation* went through the missing object (the otep's IP on eth0 for the
    # overlay networks of lxb-1; the OVS bridge for the physnet mapping of its pNICs)
    derived = {k for k in full if (gone == sid(LH, "eth0") and k[1] == sid(LH, "eth0"))
               or (gone == sid(OH, "OVS") and k[0] == "host_pnic-network"
                   and k[1] in (sid(OH, "eth1"), sid(OH, "eth2")))}
    assert full - derived == set(by_key(links))


def test_references_that_name_nothing_or_the_wrong_type_give_no_link() -> None:
    h = "ovs-9"
    docs = [*networks(), *ovs_host(h, "10.9.9.9", vm="vm9", vm_port="p9")]
    for doc in docs:
        if doc["type"] == "vnic" and doc["vnic_type"] == "instance_vnic":
            doc.update(instance_id="p9", master="ovs-system")  # a port, not an instance; OVS, not a bridge
        if doc["type"] == "otep":
            doc["ip_address"] = "10.9.9.10"  # on no pNIC
        if doc["type"] == "host_pnic" and doc["local_name"] == "eth2":
            doc["local_name"] = "bad|name"  # cannot form an id: no link, no crash
    links = links_of(docs)
    assert not keys(links, "instance-vnic") and not keys(links, "vnic-vconnector")
    assert not keys(links, "otep-host_pnic")
    assert keys(links, "vedge-otep")
    assert not keys(links, "host_pnic-network") - {(sid(h, "eth1"), "vlan-net"), (sid(h, "eth2"), "ext")}


def test_bond_carries_the_tunnel_ip_and_mappings_as_ini_strings() -> None:
    h = "ovs-2"
    docs = [*networks(), *ovs_host(h, "10.0.0.5", vm="vm5", vm_port="p5")]
    for doc in docs:
        if doc["type"] == "host_pnic" and doc["local_name"] == "eth0":
            doc.update(ip_addresses=[], master="bond0")
        if doc["type"] == "vedge":
            doc["configurations"] = {"bridge_mappings": "public:br-ex, physnet1:br-vlan"}
    bond = {"environment": ENV, "type": "host_pnic", "id": sid(h, "bond0"), "name": f"{h}-bond0", "host": h,
            "local_name": "bond0", "pnic_type": "bond", "bond_members": ["eth0"], "ip_addresses": ["10.0.0.5/24"],
            "state": "up", "master": None}
    links = links_of([*docs, bond])
    assert keys(links, "otep-host_pnic") == {(sid(h, "otep", "vxlan"), sid(h, "bond0"))}
    assert keys(links, "host_pnic-network") == {(sid(h, "bond0"), "net-a"), (sid(h, "eth2"), "ext"),
                                                (sid(h, "eth1"), "vlan-net")}


# --------------------------------------------------------------------------------------------------
# through a real store


def test_store_lookup_gives_the_same_links_as_memory(store: Store) -> None:
    docs = cloud()
    store.upsert_objects(ENV, docs)
    from_store = find_links(ENV, store.find_objects(ENV), StoreLookup(store, ENV), host_finders())
    assert by_key(from_store) == by_key(links_of(docs))
    store.upsert_links(ENV, from_store)
    assert {k for k in store.link_keys(ENV) if k[0] in HOST_LINK_TYPES} == set(by_key(from_store))


def _queries_per_finder(store: Store, monkeypatch: pytest.MonkeyPatch, hosts: int) -> dict[str, int]:
    docs = [*networks(), *lxb_host()]
    for n in range(hosts):
        docs += ovs_host(f"ovs-{n}", f"10.1.0.{n + 1}", vm=f"vm-{n}", vm_port=f"p{n}")
    store.upsert_objects(ENV, docs)
    holders = store.find_objects(ENV)
    lookup = StoreLookup(store, ENV)
    calls = record_calls(monkeypatch, store, "find_objects")
    counts = {}
    for finder in host_finders():
        before = len(calls)
        mine = [h for h in holders if h["type"] in finder.holder_types]
        assert finder.find(mine, lookup, ENV), finder.link_type
        counts[finder.link_type] = len(calls) - before
    monkeypatch.undo()
    return counts


def test_store_queries_do_not_grow_with_holders(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    few = _queries_per_finder(store, monkeypatch, hosts=1)
    many = _queries_per_finder(store, monkeypatch, hosts=6)
    assert few == many
    assert max(many.values()) <= 6
    assert many["host_pnic-network"] <= 6 and many["vnic-vconnector"] == 1


def test_host_finders_are_registered_and_shipped() -> None:
    assert set(HOST_FINDER_CLASSES) <= set(FINDER_CLASSES)
    shipped = {f.link_type: type(f).__name__ for f in load_link_finders()}
    for link_type in HOST_LINK_TYPES:
        assert shipped[link_type] in HOST_FINDER_CLASSES


def test_fields_the_host_fetchers_add_are_used() -> None:
    """The otep's ``vedge``, a VLAN member's reported ``parent``, a VXLAN device's ``device``."""
    docs = cloud()
    for doc in docs:
        if doc["id"] == sid(OH, "otep", "vxlan"):
            doc.pop("parent_type")
            doc.update(parent_id="elsewhere", vedge=sid(OH, "OVS"))
        if doc["id"] == sid(LH, "brqvlan-net"):
            doc.update(interfaces_names=["tapp3-cc", "vlan100"],
                       interfaces={"vlan100": {"kind": "vlan", "parent": "eth1", "vlan_id": 100, "state": "up"},
                                   "tapp3-cc": {"kind": "tun", "state": "up"}})
        if doc["id"] == sid(LH, "otep", "vxlan-1001"):
            doc.update(ip_address=None, device="eth0")
    links = by_key(links_of(docs))
    assert ("vedge-otep", sid(OH, "OVS"), sid(OH, "otep", "vxlan")) in links
    assert links[("vconnector-host_pnic", sid(LH, "brqvlan-net"), sid(LH, "eth1"))]["attributes"] == {
        "interface": "vlan100", "vlan": 100}
    assert links[("otep-host_pnic", sid(LH, "otep", "vxlan-1001"), sid(LH, "eth0"))]["link_name"] == "eth0"
    assert ("host_pnic-network", sid(LH, "eth0"), "net-a") in links  # the tunnel's device carries net-a
    # an otep under a Linux bridge is no vEdge's
    assert not [k for k in links if k[0] == "vedge-otep" and k[2].startswith(LH)]
