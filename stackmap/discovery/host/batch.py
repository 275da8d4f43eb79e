"""All of one call's commands for a host as ONE shell script, and its output back per command.

One exec per host per call is what makes a big cloud affordable: each exec costs a channel open and
a round trip, and a sudo check. The script runs every command in turn under its own ``timeout``,
with stdin closed (the script itself arrives on ``sh -s``'s stdin) and stdout/stderr captured in
files, then prints each command's result as a length-prefixed frame::

    <marker> <index> <status> <stdout bytes> <stderr bytes>\\n<stdout><stderr>

Length prefixes, not end markers, so that no output (binary, or one that happens to print the
marker) can confuse the parser. ``status`` is the exit status, or ``sudo-refused`` when sudo was
asked for and refused (the command then did not run).
"""

from __future__ import annotations

import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from stackmap.discovery.host.facts import CommandOutput

SUDO_REFUSED = "sudo-refused"
TIMED_OUT = 124  # coreutils timeout's status
NOT_EXECUTABLE = 126
NOT_FOUND = 127
KILL_AFTER_S = 2  # grace between timeout's TERM and KILL


@dataclass(frozen=True)
class Batch:
    marker: str
    keys: list[str]
    commands: list[str]
    script: str
    timeout_s: float

    @property
    def budget_s(self) -> float:
        """How long the whole script may take on the host, the commands' timeouts added up."""
        return len(self.commands) * (self.timeout_s + KILL_AFTER_S) + 10.0


def build_batch(commands: Mapping[str, str], timeout_s: float, sudo: bool) -> Batch:
    """The script for ``sh -s``. With ``sudo`` the commands run under ``sudo -n`` (never prompting)
    unless the login is root already; if sudo refuses, every command reports that refusal."""
    marker = "STACKMAP-" + secrets.token_hex(8)
    keys = list(commands)
    lines = [
        "d=$(mktemp -d) || exit 97",
        "trap 'rm -rf \"$d\"' EXIT",
        "SUDO=",
    ]
    if sudo:
        lines += [
            'if [ "$(id -u)" != 0 ]; then',
            '  if sudo -n true </dev/null >/dev/null 2>"$d/sudo"; then SUDO="sudo -n"; else SUDO=refused; fi',
            "fi",
        ]
    secs = f"{timeout_s:g}"
    for index, key in enumerate(keys):
        quoted = shlex.quote(commands[key])
        out, err = f'"$d/o{index}"', f'"$d/e{index}"'
        lines += [
            'if [ "$SUDO" = refused ]; then',
            f'  s={SUDO_REFUSED}; : >{out}; cp "$d/sudo" {err}',
            "else",
            f"  timeout -k {KILL_AFTER_S} {secs} $SUDO sh -c {quoted} </dev/null >{out} 2>{err}; s=$?",
            "fi",
            f"set -- $(wc -c {out} {err})",  # one process for both sizes: "N1 path N2 path N total"
            f'printf "%s %s %s %s %s\\n" {marker} {index} "$s" "$1" "$3"',
            f"cat {out} {err}",
        ]
    script = "\n".join(lines) + "\n"
    return Batch(marker=marker, keys=keys, commands=[commands[k] for k in keys], script=script,
                 timeout_s=timeout_s)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _error_for(status: int, stderr: str, timeout_s: float, command: str) -> str | None:
    if status == 0:
        return None
    detail = _last_line(stderr)
    if status == TIMED_OUT:
        return f"timed out after {timeout_s:g} s"
    if status == NOT_FOUND:
        return "command not found" + (f" ({detail})" if detail else f": {command.split()[0]}")
    if status == NOT_EXECUTABLE:
        return "command not executable" + (f" ({detail})" if detail else "")
    return f"exit status {status}" + (f": {detail}" if detail else "")


def parse_batch(batch: Batch, stdout: bytes, script_stderr: str = "") -> dict[str, CommandOutput]:
    """Each command's output; a command whose frame is missing or garbled gets an ``error`` (the
    script was cut short, the output was truncated), never another command's bytes."""
    outputs: dict[str, CommandOutput] = {}
    header = re.compile(re.escape(batch.marker.encode()) + rb" (\d+) (\S+) (\d+) (\d+)\n")
    pos = 0
    while True:
        match = header.match(stdout, pos) or header.search(stdout, pos)
        if match is None:
            break
        index, status_text = int(match.group(1)), match.group(2).decode(errors="replace")
        out_len, err_len = int(match.group(3)), int(match.group(4))
        start = match.end()
        end = start + out_len + err_len
        if index >= len(batch.keys) or end > len(stdout):
            break  # truncated: the rest cannot be trusted
        key, command = batch.keys[index], batch.commands[index]
        out = stdout[start:start + out_len].decode(errors="replace")
        err = stdout[start + out_len:end].decode(errors="replace")
        if status_text == SUDO_REFUSED:
            reason = _last_line(err) or "no reason given"
            outputs[key] = CommandOutput(key, command, None, "", err, error=f"sudo refused: {reason}")
        elif status_text.isdigit():
            status = int(status_text)
            outputs[key] = CommandOutput(key, command, status, out, err,
                                         error=_error_for(status, err, batch.timeout_s, command))
        else:
            outputs[key] = CommandOutput(key, command, None, out, err, error=f"unreadable status {status_text!r}")
        pos = end
    reason = _last_line(script_stderr)
    for key, command in zip(batch.keys, batch.commands, strict=True):
        if key not in outputs:
            outputs[key] = CommandOutput(key, command, None, error="no result from the host (batch cut short"
                                         + (f": {reason})" if reason else ")"))
    return outputs
