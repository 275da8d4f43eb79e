"""vConnector check: the bridge exists, is a bridge, is up, and has ports.

Usage: ``vconnector BRIDGE [--min-ports N]``. Critical when missing or down; Warning when it has
fewer ports than expected or none of its ports has a carrier (Calipso looked at the learnt MACs,
which an idle bridge does not have; ports are what tell a broken bridge from a quiet one).
"""

from __future__ import annotations

import argparse
from typing import Any

from daemons.monitor_handler.checks.common import StackmapCheck, Verdict, ip_links, link_is_up
from daemons.monitor_handler.results import Status

BRIDGE_KINDS = ("bridge", "openvswitch")


def evaluate_vconnector(links: list[dict[str, Any]], ports: list[dict[str, Any]], name: str,
                        min_ports: int = 1) -> Verdict:
    if not links:
        return Status.CRITICAL, f"bridge {name} not found"
    link = links[0]
    kind = (link.get("linkinfo") or {}).get("info_kind")
    if kind is not None and kind not in BRIDGE_KINDS:
        return Status.WARNING, f"{name} is a {kind} interface, not a bridge"
    if "UP" not in set(link.get("flags") or []):
        return Status.CRITICAL, f"bridge {name} administratively down"
    up_ports = [p.get("ifname") for p in ports if link_is_up(p)[0]]
    summary = f"bridge {name}: {len(ports)} port(s), {len(up_ports)} up"
    if len(ports) < min_ports:
        return Status.WARNING, summary + f" (expected at least {min_ports})"
    if ports and not up_ports:
        return Status.WARNING, summary
    return Status.OK, summary


class VconnectorCheck(StackmapCheck):
    check_label = "stackmap_vconnector"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bridge")
        parser.add_argument("--min-ports", type=int, default=1)

    def evaluate(self) -> Verdict:
        name, timeout = self.options.bridge, self.options.timeout
        links = ip_links(dev=name, details=True, timeout=timeout)
        ports = ip_links(master=name, timeout=timeout) if links else []
        return evaluate_vconnector(links, ports, name, self.options.min_ports)


def main() -> None:
    VconnectorCheck()


if __name__ == "__main__":
    main()
