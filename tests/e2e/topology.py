"""A scripted topology on the real OpenStack rig, and the API's own view of it (the truth a map is
compared with). Uses openstacksdk's resource layer on purpose: an independent path from the scanner's."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import openstack
import openstack.connection

RIG_AUTH = {
    "auth_url": "http://127.0.0.1:5000/v3", "username": "admin", "password": "secret", "project_name": "admin",
    "user_domain_name": "Default", "project_domain_name": "Default",
}


def rig_environment(*sections: dict[str, Any]) -> dict[str, Any]:
    """The rig as a stackmap environment (named ``rig``), with any further configuration sections."""
    return {"name": "rig", "distribution": "Stock", "distribution_version": "Zed",
            "configuration": [{"name": "OpenStack", "auth_url": RIG_AUTH["auth_url"], "user": "admin",
                               "pwd": "secret", "project": "admin"}, *sections]}


def connect() -> openstack.connection.Connection:
    return openstack.connect(auth=RIG_AUTH, region_name="RegionOne", interface="public", identity_api_version="3")


def wait_for(check: Any, what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(1)
    raise TimeoutError(f"timed out waiting for {what}")


@dataclass
class Topology:
    """What the script created, by kind, so it can delete half of it and clean up after itself."""

    prefix: str = field(default_factory=lambda: f"sme2e-{uuid.uuid4().hex[:6]}")
    ids: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, oid: str) -> str:
        self.ids.setdefault(kind, []).append(oid)
        return oid


def build(conn: openstack.connection.Connection, topo: Topology) -> Topology:
    """Create the topology, recording each id in ``topo`` as soon as it exists (for cleanup on failure)."""
    p = topo.prefix
    net = conn.network
    # the rig has one flat physical network: share an external network someone already made
    ext = next(iter(net.networks(is_router_external=True)), None)
    if ext is None:
        ext = net.create_network(name=f"{p}-ext", is_router_external=True, provider_network_type="flat",
                                 provider_physical_network="physnet1")
        topo.add("network", ext.id)
        ext_sub = net.create_subnet(name=f"{p}-ext-sub", network_id=ext.id, ip_version=4,
                                    cidr="203.0.113.0/24", is_dhcp_enabled=False)
        topo.add("subnet", ext_sub.id)
    else:
        topo.add("shared_network", ext.id)
    router = net.create_router(name=f"{p}-router", external_gateway_info={"network_id": ext.id})
    topo.add("router", router.id)
    sg = net.create_security_group(name=f"{p}-sg")
    topo.add("security_group", sg.id)
    nets = []
    for i in (1, 2):
        n = net.create_network(name=f"{p}-net{i}")
        topo.add("network", n.id)
        s = net.create_subnet(name=f"{p}-sub{i}", network_id=n.id, ip_version=4, cidr=f"10.{60 + i}.0.0/24")
        topo.add("subnet", s.id)
        net.add_interface_to_router(router, subnet_id=s.id)
        nets.append(n)
    image = next(iter(conn.image.images(name="cirros-fake")))
    flavor = conn.compute.find_flavor("m1.tiny")
    servers = []
    for i, networks in enumerate(([nets[0]], [nets[1]], nets)):
        srv = conn.compute.create_server(name=f"{p}-vm{i}", image_id=image.id, flavor_id=flavor.id,
                                         networks=[{"uuid": n.id} for n in networks],
                                         security_groups=[{"name": sg.name}])
        topo.add("instance", srv.id)
        servers.append(srv)
    for srv in servers:
        conn.compute.wait_for_server(srv, status="ACTIVE", wait=180)
    port = next(iter(net.ports(device_id=servers[0].id)))
    fip = net.create_ip(floating_network_id=ext.id, port_id=port.id)
    topo.add("floating_ip", fip.id)
    if conn.has_service("block-storage") or conn.has_service("volumev3"):
        vol = conn.block_storage.create_volume(name=f"{p}-vol", size=1)
        topo.add("volume", vol.id)
        wait_for(lambda: conn.block_storage.get_volume(vol.id).status == "available", "volume available")
        conn.compute.create_volume_attachment(servers[2], volume_id=vol.id)
        wait_for(lambda: conn.block_storage.get_volume(vol.id).status == "in-use", "volume attached")
    return topo


def delete_half(conn: openstack.connection.Connection, topo: Topology) -> dict[str, list[str]]:
    """Delete one instance, one floating IP and one network (with its router interface): what was removed."""
    removed: dict[str, list[str]] = {}
    net = conn.network
    fip = topo.ids["floating_ip"][0]
    net.delete_ip(fip)
    removed["floating_ip"] = [fip]
    gone_server = topo.ids["instance"][0]  # on net1 only
    conn.compute.delete_server(gone_server)
    conn.compute.wait_for_delete(conn.compute.get_server(gone_server), wait=120)
    removed["instance"] = [gone_server]
    # net1's other users: vm2 (on both nets) keeps a port there; delete vm2 too so net1 can go
    both = topo.ids["instance"][2]
    for att in conn.compute.volume_attachments(both):
        conn.compute.delete_volume_attachment(both, att.volume_id if hasattr(att, "volume_id") else att.id)
    for vol in topo.ids.get("volume", []):
        wait_for(lambda v=vol: conn.block_storage.get_volume(v).status == "available", "volume detached")
        conn.block_storage.delete_volume(vol)
        removed.setdefault("volume", []).append(vol)
    conn.compute.delete_server(both)
    conn.compute.wait_for_delete(conn.compute.get_server(both), wait=120)
    removed["instance"].append(both)
    net1, sub1 = topo.ids["network"][-2], topo.ids["subnet"][-2]  # the first of the two internal networks
    router = net.get_router(topo.ids["router"][0])
    net.remove_interface_from_router(router, subnet_id=sub1)
    for port in net.ports(network_id=net1):
        if port.device_owner == "network:dhcp":
            continue
        net.delete_port(port)
    net.delete_network(net1)
    removed["network"] = [net1]
    removed["subnet"] = [sub1]
    for vol in topo.ids.get("volume", []):
        wait_for(lambda v=vol: conn.block_storage.find_volume(v) is None, "volume deleted")
    return removed


def cleanup(conn: openstack.connection.Connection, topo: Topology) -> None:
    """Remove everything the topology made, tolerating what is already gone."""
    net = conn.network
    p = topo.prefix

    def quietly(fn: Any, *args: Any, **kwargs: Any) -> None:
        with contextlib.suppress(Exception):  # best-effort teardown
            fn(*args, **kwargs)

    def volume_free(vid: str) -> bool:
        vol = conn.block_storage.find_volume(vid)
        return vol is None or vol.status in ("available", "error")

    for fip in net.ips():
        if fip.id in topo.ids.get("floating_ip", []):
            quietly(net.delete_ip, fip)
    for srv in conn.compute.servers(all_projects=True):
        if srv.name.startswith(p):
            quietly(conn.compute.delete_server, srv)
            quietly(conn.compute.wait_for_delete, srv, wait=120)
    for vol in topo.ids.get("volume", []):
        quietly(wait_for, lambda v=vol: volume_free(v), "volume free", 60)
        quietly(conn.block_storage.delete_volume, vol)
    for rid in topo.ids.get("router", []):
        router = net.find_router(rid)
        if router is None:
            continue
        for port in net.ports(device_id=rid):
            if port.device_owner.startswith("network:router_interface"):
                for ip in port.fixed_ips:
                    quietly(net.remove_interface_from_router, router, subnet_id=ip["subnet_id"])
        quietly(net.update_router, router, external_gateway_info=None)
        quietly(net.delete_router, router)
    for nid in reversed(topo.ids.get("network", [])):
        for port in net.ports(network_id=nid):
            if port.device_owner != "network:dhcp":
                quietly(net.delete_port, port)
        quietly(net.delete_network, nid)
    for sg in topo.ids.get("security_group", []):
        quietly(net.delete_security_group, sg)


def api_truth(conn: openstack.connection.Connection) -> dict[str, dict[str, dict[str, Any]]]:
    """Every object the scanner maps, as the APIs report it: type -> id -> facts to compare."""
    truth: dict[str, dict[str, dict[str, Any]]] = {}
    truth["instance"] = {s.id: {"host": s.compute_host, "project": s.project_id}
                         for s in conn.compute.servers(all_projects=True) if s.compute_host}
    truth["network"] = {n.id: {"project": n.project_id} for n in conn.network.networks()}
    truth["subnet"] = {s.id: {"network": s.network_id} for s in conn.network.subnets()}
    truth["port"] = {p.id: {"network": p.network_id, "device_id": p.device_id, "device_owner": p.device_owner}
                     for p in conn.network.ports()}
    truth["router"] = {r.id: {"project": r.project_id} for r in conn.network.routers()}
    truth["floating_ip"] = {f.id: {"project": f.project_id, "port": f.port_id} for f in conn.network.ips()}
    truth["security_group"] = {g.id: {"project": g.project_id} for g in conn.network.security_groups()}
    if conn.has_service("block-storage") or conn.has_service("volumev3"):
        truth["volume"] = {v.id: {"project": v.project_id,
                                  "servers": sorted(a["server_id"] for a in v.attachments or [])}
                           for v in conn.block_storage.volumes(all_projects=True)}
    return truth
