"""The commands host fetchers ask the FactsSource to run, by key.

Machine-readable forms come first (``ip -j``, ``ovs-vsctl --format=json``): their output does not
change with locale, column widths or tool versions the way text tables do. VPP and libvirt offer no
JSON on their CLIs, so those are parsed as text/XML. Names that come from a host's own output
(namespaces, domains) are shell-quoted before they go back into a command line.
"""

from __future__ import annotations

import shlex

# key -> command line; one key per fact, so a fetcher can tell which fact failed
IP_ADDR = "ip_addr"
NETNS = "netns"
SPEED = "speed"
OVS_BRIDGES = "ovs_bridges"
OVS_PORTS = "ovs_ports"
OVS_INTERFACES = "ovs_interfaces"
VPP_INTERFACES = "vpp_interfaces"
VPP_HARDWARE = "vpp_hardware"
FDB = "fdb"

COMMANDS: dict[str, str] = {
    # every link with its kind (bridge, veth, vxlan, bond...), master, peer and addresses, in one call
    IP_ADDR: "ip -j -d addr show",
    NETNS: "ip -j netns list",
    # link speed in Mb/s; virtual devices refuse the read (grep -s keeps quiet), so never an error
    SPEED: "grep -sH . /sys/class/net/*/speed || true",
    OVS_BRIDGES: "ovs-vsctl --format=json --columns=name,ports,datapath_type list Bridge",
    OVS_PORTS: "ovs-vsctl --format=json --columns=_uuid,name,interfaces,tag list Port",
    OVS_INTERFACES: "ovs-vsctl --format=json --columns=_uuid,name,type,options,mac_in_use,link_state,admin_state "
                    "list Interface",
    # forwarding entries of VXLAN devices name the remote VTEPs (dst) the Linux bridge agent set up
    FDB: "bridge -j fdb show",
    VPP_INTERFACES: "vppctl show interface",
    VPP_HARDWARE: "vppctl show hardware-interfaces",
}


def pick(*keys: str) -> dict[str, str]:
    """The named commands, as a FactsSource ``commands`` mapping."""
    return {key: COMMANDS[key] for key in keys}


def ns_addr_key(namespace: str) -> str:
    return f"ns_addr:{namespace}"


def ns_addr(namespace: str) -> str:
    """The links and addresses inside one network namespace (a qdhcp-/qrouter- service)."""
    return f"ip -n {shlex.quote(namespace)} -j -d addr show"


def dumpxml_key(domain: str) -> str:
    return f"dumpxml:{domain}"


def dumpxml(domain: str) -> str:
    """One libvirt domain's live XML (its interfaces: tap device, MAC, bridge)."""
    return f"virsh dumpxml {shlex.quote(domain)}"
