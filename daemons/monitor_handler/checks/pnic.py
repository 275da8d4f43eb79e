"""Host pNIC check: the physical interface exists, is up, and has a carrier (``ip -j link show``).

Usage: ``pnic IFNAME``. Critical when the interface is missing, down or without carrier.
"""

from __future__ import annotations

import argparse
from typing import Any

from daemons.monitor_handler.checks.common import StackmapCheck, Verdict, ip_links, link_is_up
from daemons.monitor_handler.results import Status


def evaluate_pnic(links: list[dict[str, Any]], name: str) -> Verdict:
    if not links:
        return Status.CRITICAL, f"interface {name} not found"
    link = links[0]
    up, why = link_is_up(link)
    detail = f"operstate {link.get('operstate', '?')}, mtu {link.get('mtu', '?')}, mac {link.get('address', '?')}"
    if not up:
        return Status.CRITICAL, f"interface {name} {why} ({detail})"
    return Status.OK, f"interface {name} up ({detail})"


class PnicCheck(StackmapCheck):
    check_label = "stackmap_pnic"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("interface")

    def evaluate(self) -> Verdict:
        name = self.options.interface
        return evaluate_pnic(ip_links(dev=name, timeout=self.options.timeout), name)


def main() -> None:
    PnicCheck()


if __name__ == "__main__":
    main()
