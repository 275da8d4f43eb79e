"""vEdge check: the virtual switch's processes run (OVS: ovs-vswitchd and ovsdb-server; VPP: vpp).

Usage: ``vedge --type ovs|vpp`` or ``vedge --process NAME [--process NAME...]`` (``a|b`` accepts
either name). Reads /proc, so it needs no ``ps``. Critical when a required process is missing.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from daemons.monitor_handler.checks.common import StackmapCheck, Verdict, running_processes
from daemons.monitor_handler.results import Status

PROCESSES = {
    "ovs": ["ovs-vswitchd", "ovsdb-server"],
    "vpp": ["vpp|vpp_main"],
}


def evaluate_processes(running: Mapping[str, list[int]], required: list[str], what: str = "vEdge") -> Verdict:
    found, missing = [], []
    for entry in required:
        names = entry.split("|")
        pids = [pid for name in names for pid in running.get(name, [])]
        if pids:
            found.append(f"{names[0]} ({', '.join(str(p) for p in sorted(pids)[:3])})")
        else:
            missing.append(names[0])
    if missing:
        return Status.CRITICAL, f"{what} process(es) not running: {', '.join(missing)}"
    return Status.OK, f"{what} running: {', '.join(found)}"


class VedgeCheck(StackmapCheck):
    check_label = "stackmap_vedge"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--type", choices=sorted(PROCESSES), default="ovs")
        parser.add_argument("--process", action="append", help="a required process name (overrides --type)")

    def evaluate(self) -> Verdict:
        required = self.options.process or PROCESSES[self.options.type]
        return evaluate_processes(running_processes(), required)


def main() -> None:
    VedgeCheck()


if __name__ == "__main__":
    main()
