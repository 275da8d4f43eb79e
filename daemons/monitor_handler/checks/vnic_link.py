"""Instance vNIC link check: the instance's tap interface is up, has the expected MAC, and is
attached to the expected bridge (the vnic-vconnector link).

Usage: ``vnic_link IFNAME [--bridge BRIDGE] [--mac MAC]``.
"""

from __future__ import annotations

import argparse
from typing import Any

from daemons.monitor_handler.checks.common import StackmapCheck, Verdict, ip_links, link_is_up
from daemons.monitor_handler.results import Status


def _norm_mac(mac: str) -> str:
    return mac.strip().lower().replace("-", ":")


def evaluate_vnic_link(links: list[dict[str, Any]], name: str, *, bridge: str | None = None,
                       mac: str | None = None) -> Verdict:
    if not links:
        return Status.CRITICAL, f"vNIC {name} not found"
    link = links[0]
    # a tap's own MAC differs from the guest's (fe:16:3e... vs fa:16:3e...): compare the last five octets
    if mac is not None and _norm_mac(str(link.get("address", "")))[3:] != _norm_mac(mac)[3:]:
        return Status.CRITICAL, f"vNIC {name} has MAC {link.get('address')}, expected {mac}"
    if bridge is not None and link.get("master") != bridge:
        return Status.CRITICAL, f"vNIC {name} is not attached to {bridge} (master: {link.get('master') or 'none'})"
    up, why = link_is_up(link)
    if not up:
        return Status.CRITICAL, f"vNIC {name} {why}"
    where = f" on {bridge}" if bridge else ""
    return Status.OK, f"vNIC {name} up{where}"


class VnicLinkCheck(StackmapCheck):
    check_label = "stackmap_vnic_link"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("interface")
        parser.add_argument("--bridge")
        parser.add_argument("--mac")

    def evaluate(self) -> Verdict:
        name = self.options.interface
        return evaluate_vnic_link(ip_links(dev=name, timeout=self.options.timeout), name,
                                  bridge=self.options.bridge, mac=self.options.mac)


def main() -> None:
    VnicLinkCheck()


if __name__ == "__main__":
    main()
