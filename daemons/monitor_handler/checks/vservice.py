"""vService check: the service's network namespace exists and, for DHCP, a process runs in it.

Usage: ``vservice TYPE NAMESPACE`` with TYPE ``dhcp`` or ``router`` (others: namespace only), from
``ip netns list`` and ``ip netns pids``. Critical when the namespace is missing, or a DHCP
namespace has no process (dnsmasq died: instances get no addresses).
"""

from __future__ import annotations

import argparse

from daemons.monitor_handler.checks.common import CommandFailed, StackmapCheck, Verdict, run_command
from daemons.monitor_handler.results import Status

NEEDS_PROCESS = ("dhcp",)


def parse_netns_list(text: str) -> list[str]:
    """``ip netns list`` prints ``name`` or ``name (id: N)`` per line."""
    return [line.split()[0] for line in text.splitlines() if line.strip()]


def evaluate_vservice(namespaces: list[str], pids: list[int] | None, service_type: str, namespace: str) -> Verdict:
    if namespace not in namespaces:
        return Status.CRITICAL, f"{service_type} namespace {namespace} not found"
    if service_type in NEEDS_PROCESS:
        if not pids:
            return Status.CRITICAL, f"{service_type} namespace {namespace} has no running process"
        return Status.OK, f"{service_type} namespace {namespace}: {len(pids)} process(es)"
    return Status.OK, f"{service_type} namespace {namespace} present"


class VserviceCheck(StackmapCheck):
    check_label = "stackmap_vservice"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("service_type")
        parser.add_argument("namespace")

    def evaluate(self) -> Verdict:
        timeout, ns = self.options.timeout, self.options.namespace
        listing = run_command(["ip", "netns", "list"], timeout)
        if listing.returncode != 0:
            raise CommandFailed(f"ip netns list failed: {listing.stderr.strip()[:200]}")
        namespaces = parse_netns_list(listing.stdout)
        pids: list[int] | None = None
        if ns in namespaces and self.options.service_type in NEEDS_PROCESS:
            out = run_command(["ip", "netns", "pids", ns], timeout)
            if out.returncode != 0:
                raise CommandFailed(f"ip netns pids failed: {out.stderr.strip()[:200]}")
            pids = [int(tok) for tok in out.stdout.split() if tok.isdigit()]
        return evaluate_vservice(namespaces, pids, self.options.service_type, ns)


def main() -> None:
    VserviceCheck()


if __name__ == "__main__":
    main()
