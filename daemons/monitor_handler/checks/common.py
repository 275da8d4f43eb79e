"""What every check shares: the sensu_plugin base with one decision function, and command helpers.

A check's ``evaluate`` returns ``(Status, text)``; ``run`` turns that into sensu_plugin's
``ok()``/``warning()``/``critical()``/``unknown()`` (which print the line and exit with the status).
A check that cannot find out (a command missing or failing) says Unknown rather than Critical, so
an operator can tell "the thing is down" from "the check is broken".
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from sensu_plugin import SensuPluginCheck

from daemons.monitor_handler.results import Status

Verdict = tuple[Status, str]


class CommandFailed(Exception):
    """A command the check relies on is missing, timed out, or failed for a reason other than 'not found'."""


def run_command(args: list[str], timeout: float = 5.0) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(args[0])
    if exe is None:
        raise CommandFailed(f"command {args[0]!r} not found")
    try:
        return subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"{args[0]} timed out after {timeout:g} s") from None


def ip_links(*, dev: str | None = None, master: str | None = None, details: bool = False,
             timeout: float = 5.0) -> list[dict[str, Any]]:
    """``ip -j link show`` as parsed JSON; an interface that does not exist gives an empty list."""
    args = ["ip", "-j"] + (["-d"] if details else []) + ["link", "show"]
    if dev is not None:
        args += ["dev", dev]
    if master is not None:
        args += ["master", master]
    proc = run_command(args, timeout)
    if proc.returncode != 0:
        if "does not exist" in proc.stderr or "Cannot find device" in proc.stderr:
            return []
        raise CommandFailed(f"ip link show failed: {proc.stderr.strip()[:200]}")
    text = proc.stdout.strip()
    links = json.loads(text) if text else []
    return [link for link in links if isinstance(link, dict)]


def link_is_up(link: dict[str, Any]) -> tuple[bool, str]:
    """Administratively up and with a carrier; the reason when not. (Loopback reports operstate
    UNKNOWN, so the flags, not operstate, decide.)"""
    flags = set(link.get("flags") or [])
    if "UP" not in flags:
        return False, "administratively down"
    if "NO-CARRIER" in flags or "LOWER_UP" not in flags:
        return False, "no carrier"
    return True, "up"


def running_processes(proc_root: str = "/proc") -> dict[str, list[int]]:
    """Process names (``comm``) to pids, read from /proc without any external command."""
    found: dict[str, list[int]] = {}
    for entry in os.scandir(proc_root):
        if not entry.name.isdigit():
            continue
        try:
            name = Path(entry.path, "comm").read_text().strip()
        except OSError:
            continue  # the process ended meanwhile
        found.setdefault(name, []).append(int(entry.name))
    return found


class StackmapCheck(SensuPluginCheck):
    """Base of the check scripts: subclasses add arguments and implement ``evaluate``."""

    check_label = "stackmap"

    def setup(self) -> None:
        self.parser.add_argument("--timeout", type=float, default=5.0, help="seconds per command")
        self.add_arguments(self.parser)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Hook for the check's own arguments."""

    def evaluate(self) -> Verdict:
        raise NotImplementedError

    def run(self) -> None:
        self.check_name(self.check_label)
        try:
            status, text = self.evaluate()
        except CommandFailed as exc:
            status, text = Status.UNKNOWN, str(exc)
        except Exception as exc:  # a check must report, not crash with a traceback
            status, text = Status.UNKNOWN, f"check error: {type(exc).__name__}: {exc}"
        getattr(self, status.name.lower())(text)
