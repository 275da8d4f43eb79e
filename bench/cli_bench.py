"""Host-level collection over SSH: one ``collect()`` over many hosts, each a namespace with a real sshd.

    python bench/cli_bench.py [--hosts 50 | --small] [--parallel 16] [--jump]

Builds ``--hosts`` test hosts (tests/hostbed.py: network + mount namespaces on a bridge, each with
its own OpenSSH sshd and a little to report: a Linux bridge, veths, network namespaces), then runs
the real ``SshRunner`` with a realistic command set, as a scan's host level would. Figures:

- total: one ``collect()`` over all hosts, connections included (a scan's first call);
- per host: each host's own time in that call (connect + its one batched exec), min / p50 / max;
- alone: the same call on a single host with no other host running (the fastest a host can be read);
- the ratios total / slowest host and total / alone. The target is total <= 3 x the slowest single
  host: a big cloud must cost about one host, not the sum of all hosts;
- the CPU floor: machine-wide busy CPU time during the call over the number of CPUs. All bed hosts
  run on this machine's CPUs (their sshds, shells and commands), so the total cannot go below it,
  whereas a real cloud's hosts each bring their own; compare the total with max(alone, floor).

Also prints a second ``collect()`` over the kept connections (what every later call of a scan costs).
Prints figures only; the target is checked by a person reading them. Needs root and openssh-server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/cli_bench.py` from the repo root, without installing
    sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402

from stackmap.discovery.host.ssh import SshRunner  # noqa: E402
from stackmap.logging import configure_logging  # noqa: E402
from stackmap.model import CLISection  # noqa: E402
from stackmap.secrets import SecretBox  # noqa: E402
from stackmap.settings import SshSettings  # noqa: E402
from stackmap.store import open_store  # noqa: E402
from tests.hostbed import HostBed, TestHost, missing_requirements  # noqa: E402

COMMANDS = {
    "links": "ip -j -d link show",
    "addresses": "ip -j addr show",
    "routes": "ip -j route show",
    "netns": "ip netns list",
    "bridge_links": "bridge -j link show",
    "bonding": "cat /proc/net/bonding/* 2>/dev/null",
    "os_release": "cat /etc/os-release",
    "arch": "uname -m",
    "ovs": "ovs-vsctl --timeout=2 show 2>/dev/null",
}


def furnish(host: TestHost, index: int) -> None:
    """Something for the commands to report, like a small compute node: a bridge, veths, namespaces."""
    script = (
        "ip link add br-ex type bridge && ip link set br-ex up && "
        "ip link add tap0 type veth peer name tap0p && ip link set tap0 master br-ex && "
        "ip link set tap0 up && ip link set tap0p up && "
        f"ip netns add qrouter-{index:04d} && ip netns add qdhcp-{index:04d}"
    )
    host.exec(["sh", "-c", script])


def busy_cpu_seconds() -> float:
    """CPU time this whole machine spent busy so far (all processes: the hosts' sshds and commands too)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=int(os.environ.get("STACKMAP_BENCH_HOSTS", "50")))
    parser.add_argument("--small", action="store_true", help="5 hosts (a quick check)")
    parser.add_argument("--parallel", type=int, default=SshSettings().max_parallel, help="ssh.max_parallel")
    parser.add_argument("--jump", action="store_true", help="reach hosts through the first one (direct-tcpip)")
    args = parser.parse_args(argv)
    count = 5 if args.small else args.hosts
    configure_logging("WARNING", "console")  # the per-host "command failed" notes would drown the figures
    problem = missing_requirements()
    if problem:
        print(f"cli_bench: cannot run: {problem}", file=sys.stderr)
        return 2
    if count < 1:
        print("cli_bench: --hosts must be at least 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp, HostBed("cb") as bed:
        started = time.perf_counter()
        hosts = [bed.add_host(f"node-{i:03d}") for i in range(count)]
        for i, host in enumerate(hosts):
            furnish(host, i)
            host.start_sshd()
        print(f"{count} hosts with sshd ready in {time.perf_counter() - started:.1f} s "
              f"(max_parallel {args.parallel}, {'through a jump host' if args.jump else 'direct'}, "
              f"{os.cpu_count()} CPUs)")
        box = SecretBox(Path(tmp) / "secret.key")
        box.create_key()
        store = open_store(f"sqlite:///{tmp}/store.db")
        cli = CLISection(name="CLI", host=hosts[0].ip, user="root", key=SecretStr(box.seal(bed.client_key)))
        settings = SshSettings(max_parallel=args.parallel, jump_via_cli_host=args.jump)
        docs = [{"id": h.name, "name": h.name, "type": "host", "ip_address": h.ip} for h in hosts]

        def one_run(targets: list[dict[str, str]]) -> tuple[float, dict[str, float], int, SshRunner]:
            runner = SshRunner(cli, box, settings, store=store, environment="bench")
            t0 = time.perf_counter()
            facts = runner.collect(targets, COMMANDS)
            total = time.perf_counter() - t0
            failed = [f"{f.host}: {f.error}" for f in facts.values() if f.error]
            if failed:
                print("  hosts failed: " + "; ".join(failed[:5]), file=sys.stderr)
            return total, dict(runner.stats.host_seconds), len(failed), runner

        # alone: a host read with nothing else running (a warm-up for the pins as well)
        alone = []
        for doc in docs[1:4] if len(docs) > 1 else docs:
            seconds, _, _, runner = one_run([doc])
            runner.close()
            alone.append(seconds)
        slowest_alone = max(alone)
        busy = busy_cpu_seconds()
        total, per_host, failed, runner = one_run(docs)
        busy = busy_cpu_seconds() - busy
        t0 = time.perf_counter()
        runner.collect(docs, COMMANDS)
        again = time.perf_counter() - t0
        execs, connects, peak = sum(runner.stats.execs.values()), sum(runner.stats.connects.values()), \
            runner.stats.max_active
        runner.close()
        store.close()
        times = list(per_host.values())
        print(f"  commands per host             {len(COMMANDS)} (one batched exec per host per call)")
        print(f"  total, {count} hosts (first call)  {total:7.3f} s   failed hosts: {failed}")
        print(f"  per host min / p50 / max       {min(times):7.3f} / {statistics.median(times):.3f} / "
              f"{max(times):.3f} s   (mean {statistics.fmean(times):.3f}, p90 {percentile(times, 0.9):.3f})")
        print(f"  single host alone (max of {len(alone)})    {slowest_alone:7.3f} s")
        print(f"  serial estimate (sum)          {sum(times):7.3f} s")
        print(f"  ratio total / slowest host     {total / max(times):7.2f}")
        print(f"  ratio total / host alone       {total / slowest_alone:7.2f}")
        cores = os.cpu_count() or 1
        print(f"  CPU floor on this machine      {busy / cores:7.3f} s   ({busy:.2f} CPU-s busy during the call over "
              f"{cores} CPUs: every bed host's sshd and commands share them, unlike a real cloud's hosts)")
        print(f"  second call, kept connections  {again:7.3f} s   ({execs} execs, {connects} connects over both "
              f"calls, at most {peak} hosts at once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
