"""A bed of throwaway "hosts" on this machine, for tests and benchmarks of host-level discovery.

A test host is a network namespace plus a private mount namespace, kept alive by one anchor
process. The private mount namespace matters: the commands the fetchers run (``ip netns list``,
``ovs-vsctl``) read files under ``/run/netns`` and ``/run/openvswitch``, and each host must see its
own, empty ones, not this machine's or another host's. Hosts hang off one root-namespace Linux bridge
by veth pairs (the host side is called ``eth0``); the root namespace has the bridge's first address,
so an SSH client running here reaches ``host.ip:22`` like a real management network.

Users needed by a test (a non-root login, a password) are added to the host only: its ``/etc/passwd``
and ``/etc/shadow`` are private copies bind-mounted in its mount namespace, so this machine's user
database is never touched.

Everything a bed creates carries its prefix, and ``close()`` kills every process living in its hosts'
network namespaces and deletes the links it made, so parallel runs and failed runs don't collide.
Hosts and their daemons are killed if the thread that created the bed dies (PR_SET_PDEATHSIG), so
create a bed in the thread that will close it. Needs root, ``unshare``/``nsenter`` (util-linux),
``ip``/``bridge``/``ss`` (iproute2), ``openssl`` (for passwords), and for ``start_sshd`` openssh-server
(``sshd``, ``ssh-keygen``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

SSHD = "/usr/sbin/sshd"
# mounted over with an empty tmpfs inside each host, so that the host's view of them is its own
PRIVATE_DIRS = ("/run/netns", "/run/openvswitch")
REQUIRED_TOOLS = ("unshare", "nsenter", "ip")
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a child between fork and exec only calls it


def missing_requirements(sshd: bool = True) -> str | None:
    """Why a bed cannot be built here, or None; tests skip with this reason."""
    if os.geteuid() != 0:
        return "the host bed needs root (network and mount namespaces)"
    tools = list(REQUIRED_TOOLS) + (["ssh-keygen"] if sshd else [])
    absent = [tool for tool in tools if shutil.which(tool) is None]
    if sshd and not Path(SSHD).exists():
        absent.append(SSHD + " (apt-get install openssh-server)")
    if absent:
        return "missing tools for the host bed: " + ", ".join(absent)
    return None


def _run(argv: Sequence[str], check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _die_with_parent() -> None:
    """In a child before exec: SIGKILL it when the thread that started it dies, so a test run killed
    outright does not leave hosts (and their namespaces, which vanish with their last process) behind."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _netns_inode(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _pids_in_netns(inode: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _netns_inode(int(entry)) == inode:
            pids.append(int(entry))
    return pids


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.0.0.0/8 that no route of this machine overlaps (random, so parallel beds differ)."""
    routes = json.loads(_run(["ip", "-j", "route", "show", "table", "all"]).stdout or "[]")
    taken = []
    for route in routes:
        dst = route.get("dst", "")
        if dst and dst != "default":
            with contextlib.suppress(ValueError):
                taken.append(ipaddress.ip_network(dst, strict=False))
    for _ in range(200):
        net = ipaddress.IPv4Network(f"10.{random.randint(100, 254)}.{random.randint(0, 255)}.0/24")
        if not any(isinstance(t, ipaddress.IPv4Network) and net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free private /24 for the host bed")


@dataclass
class TestHost:
    """One host of the bed. ``ip`` is where it is reached from the root namespace (or, for a host
    that is not on the bridge, its address on its first private link)."""

    __test__ = False  # not a pytest test class

    name: str
    pid: int  # the anchor process: its namespaces are the host's
    bed: HostBed = field(repr=False)
    ip: str = ""
    sshd_pid: int | None = None
    _sshd: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    users: dict[str, int] = field(default_factory=dict)

    def nsenter(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "-m", "--"]

    def exec(self, argv: Sequence[str], check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command inside the host (its network and mount namespaces) and wait for it."""
        return _run(self.nsenter() + list(argv), check=check, input=input)

    def popen(self, argv: Sequence[str], **kwargs: object) -> subprocess.Popen[bytes]:
        """A long-running process inside the host (a daemon); it dies with the bed's creator."""
        return subprocess.Popen(self.nsenter() + list(argv), preexec_fn=_die_with_parent,  # type: ignore[call-overload]
                                **kwargs)

    @property
    def dir(self) -> Path:
        path = self.bed.dir / self.name
        path.mkdir(exist_ok=True)
        return path

    def _private_user_db(self) -> tuple[Path, Path]:
        """This host's own /etc/passwd and /etc/shadow (bind-mounted copies), made on first need.

        Root's login shell in the copy is /bin/sh: sshd runs every session through the login shell,
        and this machine's root bash would source /root/.bashrc (here a pyenv init spawning dozens of
        processes) on each one, which measures the machine's dotfiles, not the runner.
        """
        passwd, shadow = self.dir / "passwd", self.dir / "shadow"
        if not passwd.exists():
            lines = []
            for line in Path("/etc/passwd").read_text().splitlines():
                fields = line.split(":")
                if fields[0] == "root" and len(fields) == 7:
                    fields[6] = "/bin/sh"
                lines.append(":".join(fields))
            passwd.write_text("\n".join(lines) + "\n")
            shadow.write_text(Path("/etc/shadow").read_text())
            shadow.chmod(0o640)
            self.exec(["mount", "--bind", str(passwd), "/etc/passwd"])
            self.exec(["mount", "--bind", str(shadow), "/etc/shadow"])
        return passwd, shadow

    def add_user(self, name: str, password: str | None = None, authorized_key: str | None = None,
                 shell: str = "/bin/sh") -> Path:
        """A login that exists on this host only (private passwd/shadow); returns its home directory."""
        home = self.dir / "home" / name
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        uid = 20000 + len(self.users)
        self.users[name] = uid
        if authorized_key:
            (home / ".ssh" / "authorized_keys").write_text(authorized_key.strip() + "\n")
        hashed = "*"
        if password is not None:
            hashed = _run(["openssl", "passwd", "-6", "-stdin"], input=password).stdout.strip()
        passwd, shadow = self._private_user_db()
        # appended in place (same inode), so that the bind mounts see the new user
        with passwd.open("a") as fh:
            fh.write(f"{name}:x:{uid}:100::{home}:{shell}\n")
        with shadow.open("a") as fh:
            fh.write(f"{name}:{hashed}:20000:0:99999:7:::\n")
        _run(["chown", "-R", f"{uid}:100", str(home)])
        return home

    def allow_sudo(self, user: str, rule: str = "ALL=(root) NOPASSWD: ALL") -> None:
        """Let ``user`` use sudo on this host only (a private /etc/sudoers.d bind-mounted over it)."""
        sudoers = self.dir / "sudoers.d"
        if not sudoers.exists():
            sudoers.mkdir(mode=0o750)
            self.exec(["mount", "--bind", str(sudoers), "/etc/sudoers.d"])
        entry = sudoers / f"hostbed-{user}"
        entry.write_text(f"{user} {rule}\n")
        entry.chmod(0o440)

    def start_sshd(self, authorized_key: str | None = None, host_key_path: Path | None = None,
                   extra_config: str = "") -> int:
        """A real OpenSSH sshd inside the host, on port 22 of all its addresses; root logs in by key.

        ``authorized_key`` (default: the bed's client key) is root's only authorized key, read from a
        file of the bed so this machine's /root/.ssh is not touched. Returns the sshd pid.
        """
        key_path = host_key_path or self.bed.host_key_path
        auth_keys = self.dir / "root_authorized_keys"
        auth_keys.write_text((authorized_key or self.bed.client_public_key).strip() + "\n")
        config = self.dir / "sshd_config"
        log = self.dir / "sshd.log"
        config.write_text(
            f"ListenAddress 0.0.0.0:22\n"
            f"HostKey {key_path}\n"
            f"PidFile {self.dir / 'sshd.pid'}\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication yes\n"
            "KbdInteractiveAuthentication no\n"
            "LogLevel VERBOSE\n"
            "MaxStartups 100:30:200\n"
            "MaxSessions 50\n"
            "AllowTcpForwarding yes\n"
            "Subsystem sftp internal-sftp\n"
            f"{extra_config}\n"
            "Match User root\n"
            f"    AuthorizedKeysFile {auth_keys}\n"
        )
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        self._private_user_db()
        with log.open("ab") as log_fh:
            proc = self.popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_fh, stderr=log_fh,
                              stdin=subprocess.DEVNULL)
        self.bed._procs.append(proc)
        self._wait_listening(proc)
        self.sshd_pid, self._sshd = proc.pid, proc
        return proc.pid

    def stop_sshd(self) -> None:
        """Stop the sshd (and so every connection to it) and wait until it is gone."""
        if self._sshd is None:
            return
        self.exec(["pkill", "-KILL", "-P", str(self._sshd.pid)], check=False)  # its connections
        self._sshd.kill()
        self._sshd.wait(10)
        self._sshd, self.sshd_pid = None, None

    def sshd_log(self) -> str:
        path = self.dir / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _wait_listening(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd on {self.name} exited ({proc.returncode}): {self.sshd_log()[-500:]}")
            listening = self.exec(["ss", "-Htln", "sport = :22"], check=False).stdout
            if listening.strip():
                return
            time.sleep(0.05)
        raise RuntimeError(f"sshd on {self.name} is not listening after {timeout}s")


class HostBed:
    """The bed: create hosts with ``add_host``, tear everything down with ``close()`` (or ``with``)."""

    def __init__(self, prefix: str | None = None, subnet: str | None = None) -> None:
        # interface names are limited to 15 characters: keep the prefix short
        self.prefix = (prefix or "sm")[:4] + uuid.uuid4().hex[:4]
        self.dir = Path(tempfile.mkdtemp(prefix=f"hostbed-{self.prefix}-"))
        self.dir.chmod(0o755)
        self.hosts: dict[str, TestHost] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._links: list[str] = []  # root-namespace links to delete
        self._inodes: list[int] = []
        self._link_nets = 0
        self._link_octet = random.randint(1, 254)  # link() subnets: 169.254.<this>.<4n>/30
        self.subnet = ipaddress.ip_network(subnet) if subnet else _free_subnet()
        self._addresses = self.subnet.hosts()
        self.bridge = f"{self.prefix}br"
        self.gateway = str(next(self._addresses))
        self._client_key: tuple[str, str] | None = None
        self._host_key: Path | None = None
        try:
            _run(["ip", "link", "add", self.bridge, "type", "bridge"])
            self._links.append(self.bridge)
            _run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
        except Exception:
            self.close()
            raise

    # -- hosts --------------------------------------------------------------------------------

    def add_host(self, name: str, bridged: bool = True) -> TestHost:
        """A new host; ``bridged=False`` leaves it off the bridge (reachable only over ``link()``)."""
        if name in self.hosts:
            raise ValueError(f"host {name} already exists")
        for path in PRIVATE_DIRS:
            Path(path).mkdir(parents=True, exist_ok=True)  # mount points
        script = "".join(f"mount -t tmpfs -o mode=0755 tmpfs {p} && " for p in PRIVATE_DIRS)
        script += "ip link set lo up && echo ready && exec sleep infinity"
        anchor = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            preexec_fn=_die_with_parent)
        self._procs.append(anchor)  # type: ignore[arg-type]
        assert anchor.stdout is not None
        if anchor.stdout.readline().strip() != "ready":
            anchor.wait(5)
            raise RuntimeError(f"host {name}: namespace anchor failed: {anchor.stderr.read() if anchor.stderr else ''}")
        inode = _netns_inode(anchor.pid)
        if inode is not None:
            self._inodes.append(inode)
        host = TestHost(name=name, pid=anchor.pid, bed=self)
        self.hosts[name] = host
        if bridged:
            index = len(self.hosts)
            outside, inside = f"{self.prefix}h{index}", f"{self.prefix}p{index}"
            address = str(next(self._addresses))
            _run(["ip", "link", "add", outside, "type", "veth", "peer", "name", inside])
            self._links.append(outside)
            _run(["ip", "link", "set", outside, "master", self.bridge])
            _run(["ip", "link", "set", outside, "up"])
            _run(["ip", "link", "set", inside, "netns", str(anchor.pid)])
            host.exec(["ip", "link", "set", inside, "name", "eth0"])
            host.exec(["ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0"])
            host.exec(["ip", "link", "set", "eth0", "up"])
            host.ip = address
        return host

    def link(self, a: TestHost, b: TestHost) -> tuple[str, str]:
        """A veth pair straight between two hosts, on a /30 the root namespace has no route to.

        Returns (address on a, address on b). A host created with ``bridged=False`` gets the address
        as its ``ip`` - it is reachable only through ``a`` (e.g. as an SSH jump host).
        """
        self._link_nets += 1
        n = self._link_nets
        if n >= 64:
            raise RuntimeError("at most 63 links per bed")
        # 169.254.x.y/30 pairs: link-local, never routed from the root namespace
        base = ipaddress.ip_address(f"169.254.{self._link_octet}.0") + 4 * n
        ip_a, ip_b = str(base + 1), str(base + 2)
        end_a, end_b = f"{self.prefix}a{n}", f"{self.prefix}b{n}"
        _run(["ip", "link", "add", end_a, "type", "veth", "peer", "name", end_b])
        _run(["ip", "link", "set", end_a, "netns", str(a.pid)])
        _run(["ip", "link", "set", end_b, "netns", str(b.pid)])
        for host, end, address in ((a, end_a, ip_a), (b, end_b, ip_b)):
            host.exec(["ip", "addr", "add", f"{address}/30", "dev", end])
            host.exec(["ip", "link", "set", end, "up"])
        if not b.ip:
            b.ip = ip_b
        return ip_a, ip_b

    # -- keys ---------------------------------------------------------------------------------

    def _keygen(self, name: str, kind: str = "ed25519") -> Path:
        path = self.dir / name
        _run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", f"hostbed-{self.prefix}", "-f", str(path)])
        return path

    @property
    def host_key_path(self) -> Path:
        """The throwaway sshd host key shared by this bed's hosts (unless a host is given its own)."""
        if self._host_key is None:
            self._host_key = self._keygen("ssh_host_ed25519_key")
        return self._host_key

    def new_host_key(self, name: str, kind: str = "ed25519") -> Path:
        return self._keygen(name, kind)

    def _client(self) -> tuple[str, str]:
        if self._client_key is None:
            path = self._keygen("client_key")
            self._client_key = (path.read_text(), path.with_suffix(".pub").read_text().strip())
        return self._client_key

    @property
    def client_key(self) -> str:
        """A throwaway client private key (OpenSSH PEM text), authorized for root on every sshd."""
        return self._client()[0]

    @property
    def client_public_key(self) -> str:
        return self._client()[1]

    def known_hosts_text(self, hosts: Sequence[TestHost] | None = None) -> str:
        """known_hosts lines for the hosts (default: all) with their addresses and names."""
        public = self.host_key_path.with_suffix(".pub").read_text().split()
        lines = []
        for host in hosts or list(self.hosts.values()):
            names = ",".join(n for n in (host.ip, host.name) if n)
            lines.append(f"{names} {public[0]} {public[1]}")
        return "\n".join(lines) + "\n"

    # -- teardown -----------------------------------------------------------------------------

    def close(self) -> None:
        """Kill every process in the bed's hosts and delete every link; safe to call twice."""
        for inode in self._inodes:
            for pid in _pids_in_netns(inode):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        deadline = time.monotonic() + 5
        while self._inodes and time.monotonic() < deadline:
            if not any(_pids_in_netns(inode) for inode in self._inodes):
                break
            time.sleep(0.05)
        for link in reversed(self._links):
            _run(["ip", "link", "del", link], check=False)
        self._procs.clear()
        self._links.clear()
        self._inodes.clear()
        self.hosts.clear()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> HostBed:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


@contextlib.contextmanager
def host_bed(prefix: str = "sm") -> Iterator[HostBed]:
    """For pytest fixtures: ``yield from`` / ``with host_bed() as bed``; skips nothing by itself."""
    bed = HostBed(prefix)
    try:
        yield bed
    finally:
        bed.close()
