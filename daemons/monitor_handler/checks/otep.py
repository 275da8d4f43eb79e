"""OTEP reachability check: this host's tunnel endpoint answers pings to the other endpoints.

Usage: ``otep [--source IP] [--count N] [--wait S] TARGET_IP...``. OK when every target answers,
Warning when some do, Critical when none does. (Calipso's rollup read its labels from a constant
that did not exist, so it always said Critical.)

Pings are sent from Python: an unprivileged ICMP datagram socket where the kernel allows one
(``net.ipv4.ping_group_range``), else a raw socket (root), else the ``ping`` command, so the check
runs on hosts without iputils.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable

from daemons.monitor_handler.checks.common import CommandFailed, StackmapCheck, Verdict, run_command
from daemons.monitor_handler.results import Status

ECHO_REQUEST, ECHO_REPLY = 8, 0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def _packet(ident: int, seq: int) -> bytes:
    payload = b"stackmap-otep" + struct.pack("!d", time.time())
    header = struct.pack("!BBHHH", ECHO_REQUEST, 0, 0, ident, seq)
    return struct.pack("!BBHHH", ECHO_REQUEST, 0, checksum(header + payload), ident, seq) + payload


def _open_socket() -> tuple[socket.socket, bool]:
    """(socket, raw): a datagram ICMP socket if allowed, else a raw one; OSError if neither."""
    try:
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP), False
    except OSError:
        return socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP), True


def icmp_ping(target: str, *, wait: float = 1.0, source: str | None = None, seq: int = 1) -> float | None:
    """Round-trip seconds of one echo to ``target``, or None without an answer in ``wait`` seconds."""
    sock, raw = _open_socket()
    ident = os.getpid() & 0xFFFF
    try:
        if source:
            sock.bind((source, 0))
        started = time.monotonic()
        try:
            sock.sendto(_packet(ident, seq), (target, 0))
        except OSError as exc:
            if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
                return None  # no route: as lost as a ping that gets no answer
            raise
        while True:
            left = wait - (time.monotonic() - started)
            if left <= 0:
                return None
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                return None
            data, addr = sock.recvfrom(2048)
            if raw:
                data = data[(data[0] & 0x0F) * 4:]  # strip the IP header
            if len(data) < 8:
                continue
            kind, _code, _sum, rid, rseq = struct.unpack("!BBHHH", data[:8])
            # a datagram socket's id is rewritten by the kernel, so only a raw socket checks it
            if kind == ECHO_REPLY and rseq == seq and addr[0] == target and (not raw or rid == ident):
                return time.monotonic() - started
    finally:
        sock.close()


def command_ping(target: str, *, wait: float = 1.0, source: str | None = None, seq: int = 1) -> float | None:
    """The fallback: one ``ping`` process per target."""
    args = ["ping", "-n", "-c", "1", "-W", str(max(1, round(wait)))] + (["-I", source] if source else []) + [target]
    started = time.monotonic()
    proc = run_command(args, timeout=wait + 5)
    return time.monotonic() - started if proc.returncode == 0 else None


def pick_pinger() -> Callable[..., float | None]:
    try:
        sock, _raw = _open_socket()
        sock.close()
        return icmp_ping
    except OSError:
        return command_ping


def evaluate_otep(answers: dict[str, float | None], source: str | None = None) -> Verdict:
    if not answers:
        return Status.UNKNOWN, "no target endpoints given"
    reached = {t: rtt for t, rtt in answers.items() if rtt is not None}
    lost = [t for t, rtt in answers.items() if rtt is None]
    origin = f" from {source}" if source else ""
    text = f"{len(reached)}/{len(answers)} tunnel endpoints reachable{origin}"
    if reached:
        text += "; " + ", ".join(f"{t} {rtt * 1000:.1f} ms" for t, rtt in sorted(reached.items())[:10])
    if lost:
        text += "; unreachable: " + ", ".join(sorted(lost)[:20])
    if not lost:
        return Status.OK, text
    return (Status.WARNING if reached else Status.CRITICAL), text


class OtepCheck(StackmapCheck):
    check_label = "stackmap_otep"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("targets", nargs="*")
        parser.add_argument("--source", help="this endpoint's address (pings are sent from it)")
        parser.add_argument("--count", type=int, default=2, help="attempts per target before calling it lost")
        parser.add_argument("--wait", type=float, default=1.0, help="seconds to wait for each answer")

    def evaluate(self) -> Verdict:
        pinger = pick_pinger()
        answers: dict[str, float | None] = {}
        for target in dict.fromkeys(self.options.targets):
            rtt = None
            for seq in range(1, max(1, self.options.count) + 1):
                try:
                    rtt = pinger(target, wait=self.options.wait, source=self.options.source, seq=seq)
                except OSError as exc:
                    raise CommandFailed(f"cannot ping {target}: {exc}") from None
                if rtt is not None:
                    break
            answers[target] = rtt
        return evaluate_otep(answers, self.options.source)


def main() -> None:
    OtepCheck()


if __name__ == "__main__":
    main()
