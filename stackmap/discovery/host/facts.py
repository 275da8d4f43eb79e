"""What the host-level fetchers read: the outputs of commands run on each host.

The fetchers never talk SSH themselves. For a whole hierarchy level they ask a ``FactsSource`` for
the outputs of a set of named commands on all of that level's hosts at once, so the source can run
hosts concurrently over one connection each; the fetchers then only parse. A host that could not be
read at all carries ``error`` and its previous data must be kept; a single command that failed carries
its own ``error`` (command missing, sudo refused, timeout) and only what depends on it is lost.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class CommandOutput:
    key: str
    command: str
    exit_status: int | None
    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # why the output cannot be trusted; None when exit_status == 0

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0


@dataclass
class HostFacts:
    host: str  # the host object's id
    address: str | None = None  # where it was reached
    outputs: dict[str, CommandOutput] = field(default_factory=dict)
    error: str | None = None  # the host could not be read at all (unreachable, host key mismatch, auth)

    def output(self, key: str) -> CommandOutput | None:
        return self.outputs.get(key)


@dataclass(frozen=True)
class HostFailure:
    """A host (or one of its facts) could not be read: its objects of ``types``, and everything under
    them, are kept from the previous scan instead of being pruned."""

    host: str
    types: tuple[str, ...]
    message: str


class FactsSource(Protocol):
    """Runs named commands on hosts. ``commands`` maps a key to a shell command line; a command that
    must run once per item (per namespace, per domain) is asked for by the fetcher in a second call."""

    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str]) -> dict[str, HostFacts]: ...


class PerHostFactsSource(Protocol):
    """A FactsSource that also takes commands for single hosts (an optional extension).

    ``per_host`` maps a host id to {key: command line} run with that host's ``commands`` over the
    same connection; hosts absent from it run ``commands`` only; a host left with no command at all
    is not contacted. Fetchers use it for per-item commands (one per namespace, one per libvirt
    domain) so that those still cost one call for all hosts; with a plain FactsSource they fall back
    to one call per distinct command set.
    """

    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str],
                per_host: Mapping[str, Mapping[str, str]] | None = None) -> dict[str, HostFacts]: ...


def takes_per_host(source: FactsSource) -> bool:
    """Whether a source's ``collect`` accepts ``per_host`` (see PerHostFactsSource)."""
    try:
        return "per_host" in inspect.signature(source.collect).parameters
    except (TypeError, ValueError):
        return False
