"""Host-layer documents in the shapes the host fetchers produce, for link and clique tests.

Two compute hosts of one cloud: ``ovs-N`` hosts (Open vSwitch, VXLAN tunnels, an instance on a
hybrid-plug qbr bridge with its qvb/qvo pair into br-int, a DHCP namespace whose tap is an OVS
internal port, a flat external network on br-ex and a VLAN physnet on br-vlan) and ``lxb-1``
(Linux bridge agent: the instance tap and a VXLAN device on a brq bridge, a VLAN sub-interface on
another). ``ovs_host`` can be called for several hosts, to check that query counts do not grow.
"""

from __future__ import annotations

from typing import Any

from stackmap.model import stable_id

ENV = "lab"
Doc = dict[str, Any]


def obj(type_: str, id_: str, **fields: Any) -> Doc:
    return {"environment": ENV, "type": type_, "id": id_, "name": fields.pop("name", id_), **fields}


def hobj(type_: str, host: str, *key: str, parent: str, parent_type: str, **fields: Any) -> Doc:
    """A host-layer object: id stable_id(host, *key), local_name the last key part."""
    return obj(type_, stable_id(host, *key), host=host, local_name=fields.pop("local_name", key[-1]),
               name=f"{host}-{key[-1]}", parent_id=parent, parent_type=parent_type, **fields)


def sid(host: str, *key: str) -> str:
    return stable_id(host, *key)


def networks() -> list[Doc]:
    return [
        obj("network", "net-a", network=["net-a"], status="ACTIVE", **{
            "provider:network_type": "vxlan", "provider:physical_network": None, "provider:segmentation_id": 1001}),
        obj("network", "net-b", network=["net-b"], status="ACTIVE", **{
            "provider:network_type": "vxlan", "provider:physical_network": None, "provider:segmentation_id": 1002}),
        obj("network", "ext", network=["ext"], status="ACTIVE", **{
            "provider:network_type": "flat", "provider:physical_network": "public",
            "provider:segmentation_id": None}),
        obj("network", "vlan-net", network=["vlan-net"], status="ACTIVE", **{
            "provider:network_type": "vlan", "provider:physical_network": "physnet1",
            "provider:segmentation_id": 100}),
        obj("subnet", "sub-a", network_id="net-a", cidr="192.168.1.0/24"),
    ]


def port(id_: str, network: str, host: str, owner: str, device: str, **fields: Any) -> Doc:
    return obj("port", id_, network_id=network, device_owner=owner, device_id=device, status="ACTIVE",
               fixed_ips=[], **{"binding:host_id": host}, **fields)


def ovs_host(h: str = "ovs-1", tunnel_ip: str = "10.0.0.1", vm: str = "vm1", vm_port: str = "p1") -> list[Doc]:
    tap, qbr, qvb, qvo = (f"{p}{vm_port}-aa" for p in ("tap", "qbr", "qvb", "qvo"))
    ns = "qdhcp-net-a"
    vedge = sid(h, "OVS")
    return [
        obj("host", h, host=h),
        obj("instance", vm, host=h, network=["net-a"], status="ACTIVE", parent_id=f"{h}-instances"),
        port(vm_port, "net-a", h, "compute:nova", vm),
        port(f"dhcp-{h}", "net-a", h, "network:dhcp", f"dhcp{h}"),
        # instance vNIC on the hybrid-plug bridge
        hobj("vnic", h, tap, parent=f"{vm}-vnics", parent_type="vnics_folder", vnic_type="instance_vnic",
             instance_id=vm, port_id=vm_port, master=qbr, peer=None, mac_address="fa:16:3e:00:00:01",
             state="up", ip_addresses=[]),
        hobj("vconnector", h, qbr, parent=f"{h}-vconnectors", parent_type="vconnectors_folder",
             connector_type="bridge", interfaces_names=[qvb, tap], mac_address="aa:00:00:00:00:01", state="up"),
        # DHCP namespace: its tap is an OVS internal port moved into the namespace
        hobj("vservice", h, ns, parent=f"{h}-vservices", parent_type="vservices_folder", service_type="dhcp",
             local_service_id="net-a", network=["net-a"]),
        hobj("vnic", h, ns, "tapd-1", parent=f"{sid(h, ns)}-vnics", parent_type="vnics_folder",
             vnic_type="vservice_vnic", namespace=ns, network="net-a", master=None, peer=None,
             mac_address="fa:16:3e:00:00:02", state="up", ip_addresses=["192.168.1.2/24"]),
        hobj("vedge", h, "OVS", parent=f"{h}-vedges", parent_type="vedges_folder", agent_type="Open vSwitch agent",
             local_name="OVS",
             configurations={"bridge_mappings": {"public": "br-ex", "physnet1": "br-vlan"},
                             "tunnel_types": ["vxlan"]},
             bridges={"br-int": {"datapath_type": "netdev", "ports": ["br-int", qvo, "tapd-1", "patch-tun"]},
                      "br-tun": {"datapath_type": "netdev", "ports": ["br-tun", "patch-int", "vxlan-0a000002"]},
                      "br-ex": {"datapath_type": "netdev", "ports": ["br-ex", "eth2"]},
                      "br-vlan": {"datapath_type": "netdev", "ports": ["br-vlan", "eth1"]}},
             ports={
                 "br-int": {"bridge": "br-int", "type": "internal", "tag": None, "options": {}, "state": "up"},
                 qvo: {"bridge": "br-int", "type": "", "tag": 1, "options": {}, "state": "up"},
                 "tapd-1": {"bridge": "br-int", "type": "internal", "tag": 1, "options": {}, "state": "up"},
                 "patch-tun": {"bridge": "br-int", "type": "patch", "tag": None,
                               "options": {"peer": "patch-int"}, "state": "up"},
                 "br-tun": {"bridge": "br-tun", "type": "internal", "tag": None, "options": {}, "state": "up"},
                 "patch-int": {"bridge": "br-tun", "type": "patch", "tag": None,
                               "options": {"peer": "patch-tun"}, "state": "up"},
                 "vxlan-0a000002": {"bridge": "br-tun", "type": "vxlan", "tag": None, "state": "unknown",
                                    "options": {"local_ip": tunnel_ip, "remote_ip": "10.0.0.2", "key": "flow"}},
                 "br-ex": {"bridge": "br-ex", "type": "internal", "tag": None, "options": {}, "state": "up"},
                 "eth2": {"bridge": "br-ex", "type": "", "tag": None, "options": {}, "state": "up"},
                 "br-vlan": {"bridge": "br-vlan", "type": "internal", "tag": None, "options": {}, "state": "up"},
                 "eth1": {"bridge": "br-vlan", "type": "system", "tag": None, "options": {}, "state": "up"},
             },
             tunnel_ports=["vxlan-0a000002"]),
        hobj("otep", h, "otep", "vxlan", parent=vedge, parent_type="vedge", local_name="vxlan",
             overlay_type="vxlan", ip_address=tunnel_ip, udp_port=4789, remote_ips=["10.0.0.2"],
             ports=["vxlan-0a000002"]),
        hobj("host_pnic", h, "eth0", parent=f"{h}-pnics", parent_type="pnics_folder", pnic_type="ethernet",
             mac_address="52:54:00:00:00:01", mtu=1500, state="up", speed=10000,
             ip_addresses=[f"{tunnel_ip}/24"], master=None, bond_members=[]),
        hobj("host_pnic", h, "eth1", parent=f"{h}-pnics", parent_type="pnics_folder", pnic_type="ethernet",
             mac_address="52:54:00:00:00:02", mtu=1500, state="up", speed=None, ip_addresses=[],
             master="ovs-system", bond_members=[]),
        hobj("host_pnic", h, "eth2", parent=f"{h}-pnics", parent_type="pnics_folder", pnic_type="ethernet",
             mac_address="52:54:00:00:00:03", mtu=1500, state="up", speed=1000, ip_addresses=[],
             master="ovs-system", bond_members=[]),
    ]


def lxb_host(h: str = "lxb-1", tunnel_ip: str = "10.0.0.2") -> list[Doc]:
    brq, brq_vlan = "brqnet-a", "brqvlan-net"
    return [
        obj("host", h, host=h),
        obj("instance", "vm2", host=h, network=["net-a"], status="ACTIVE"),
        obj("instance", "vm3", host=h, network=["vlan-net"], status="ACTIVE"),
        port("p2", "net-a", h, "compute:nova", "vm2"),
        port("p3", "vlan-net", h, "compute:nova", "vm3"),
        hobj("vnic", h, "tapp2-bb", parent="vm2-vnics", parent_type="vnics_folder", vnic_type="instance_vnic",
             instance_id="vm2", port_id="p2", master=brq, peer=None, mac_address="fa:16:3e:00:00:03", state="up",
             ip_addresses=[]),
        hobj("vnic", h, "tapp3-cc", parent="vm3-vnics", parent_type="vnics_folder", vnic_type="instance_vnic",
             instance_id="vm3", port_id="p3", master=brq_vlan, peer=None, mac_address="fa:16:3e:00:00:04",
             state="up", ip_addresses=[]),
        hobj("vconnector", h, brq, parent=f"{h}-vconnectors", parent_type="vconnectors_folder",
             connector_type="bridge", interfaces_names=["tapp2-bb", "vxlan-1001"], state="up"),
        hobj("vconnector", h, brq_vlan, parent=f"{h}-vconnectors", parent_type="vconnectors_folder",
             connector_type="bridge", interfaces_names=["eth1.100", "tapp3-cc"], state="up"),
        hobj("otep", h, "otep", "vxlan-1001", parent=sid(h, brq), parent_type="vconnector", local_name="vxlan-1001",
             overlay_type="vxlan", ip_address=tunnel_ip, udp_port=8472, remote_ips=["10.0.0.1"],
             ports=["vxlan-1001"], vconnector=brq),
        hobj("host_pnic", h, "eth0", parent=f"{h}-pnics", parent_type="pnics_folder", pnic_type="ethernet",
             mac_address="52:54:00:00:01:01", mtu=1500, state="up", speed=10000,
             ip_addresses=[f"{tunnel_ip}/24"], master=None, bond_members=[]),
        hobj("host_pnic", h, "eth1", parent=f"{h}-pnics", parent_type="pnics_folder", pnic_type="ethernet",
             mac_address="52:54:00:00:01:02", mtu=1500, state="up", speed=None, ip_addresses=[], master=None,
             bond_members=[]),
        obj("network_agent", f"agent-{h}", host=h, agent_type="Linux bridge agent",
            configurations={"interface_mappings": {"physnet1": "eth1"}}),
    ]


def cloud() -> list[Doc]:
    return [*networks(), *ovs_host(), *lxb_host()]
