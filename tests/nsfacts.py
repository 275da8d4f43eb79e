"""A FactsSource that runs the commands inside test hosts' namespaces (``nsenter``), for real.

It stands where the SSH runner stands in production, minus SSH: the same named commands, each
host's commands run concurrently with the other hosts', real exit statuses and stderr. A host whose
anchor process is gone is unreachable (``HostFacts.error``), as an SSH host that does not answer.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from stackmap.discovery.host.facts import CommandOutput, HostFacts


class _Host(Protocol):
    pid: int
    ip: str


class NsFacts:
    def __init__(self, hosts: Mapping[str, _Host], timeout: float = 30.0, workers: int = 8) -> None:
        self.hosts = dict(hosts)  # host object id -> test host
        self.timeout = timeout
        self.workers = workers
        self.calls: list[tuple[list[str], dict[str, list[str]]]] = []  # (hosts, keys per host) per collect()

    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str],
                per_host: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, HostFacts]:
        plan = {}
        for doc in hosts:
            mine = dict(commands) | dict((per_host or {}).get(doc["id"], {}))
            if mine:
                plan[doc["id"]] = mine
        self.calls.append((sorted(plan), {h: sorted(c) for h, c in plan.items()}))
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(plan) or 1))) as pool:
            results = list(pool.map(lambda item: self._host(*item), plan.items()))
        return {facts.host: facts for facts in results}

    def _host(self, host_id: str, commands: Mapping[str, str]) -> HostFacts:
        host = self.hosts.get(host_id)
        if host is None:
            return HostFacts(host=host_id, error="no such test host")
        if not os.path.exists(f"/proc/{host.pid}/ns/net"):
            return HostFacts(host=host_id, address=host.ip, error=f"host {host.ip} unreachable (its namespace is gone)")
        facts = HostFacts(host=host_id, address=host.ip)
        for key, command in commands.items():
            facts.outputs[key] = self._run(host, key, command)
        return facts

    def _run(self, host: _Host, key: str, command: str) -> CommandOutput:
        try:
            done = subprocess.run(["nsenter", "-t", str(host.pid), "-n", "-m", "--", "sh", "-c", command],
                                  capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return CommandOutput(key, command, None, error=f"timed out after {self.timeout:g} s")
        error = None if done.returncode == 0 else \
            (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:200]
        return CommandOutput(key, command, done.returncode, done.stdout, done.stderr, error)


class NsFactsWithoutPerHost(NsFacts):
    """The same runner as a source that only knows the original contract (no ``per_host``)."""

    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str],  # type: ignore[override]
                ) -> dict[str, HostFacts]:
        return super().collect(hosts, commands)
