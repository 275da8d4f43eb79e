"""The SSH command runner: a ``FactsSource`` over paramiko, one connection per host for a whole scan.

Why it is shaped like this:
- a cloud of hundreds of hosts must cost about as much as its slowest host, not their sum: hosts are
  worked on concurrently (``ssh.max_parallel``), each over ONE connection kept for the whole scan,
  and all the commands of one ``collect()`` call go to a host as ONE exec (``batch.py``);
- a host that cannot be read must not stop the others: every failure becomes that host's
  ``HostFacts.error`` (one line, never a secret) and a structured log entry;
- hosts are reached the way Calipso did: through the environment's CLI host as a jump host
  (``direct-tcpip`` channels over its connection) unless the target *is* that host or
  ``ssh.jump_via_cli_host`` is off; the same user and credentials everywhere.

Which address a host is reached at follows the CLI section's ``connection_policy``:
- ``local``: the host document's ``ip_address`` (the management address the hypervisor reports);
- ``public``: its ``public_ip`` if the document has one, else its name (``name``, else ``id``),
  resolved where the connection is made - by the jump host when going through it;
- ``auto``: ``local`` when the document has an ``ip_address``, ``public`` otherwise.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import paramiko
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from stackmap.discovery.host.batch import Batch, build_batch, parse_batch
from stackmap.discovery.host.facts import CommandOutput, HostFacts
from stackmap.discovery.host.hostkeys import HostKeyRefused, HostKeyVerifier, known_hosts_name
from stackmap.errors import StackmapError
from stackmap.logging import get_logger
from stackmap.model import CLISection
from stackmap.secrets import SecretBox
from stackmap.settings import SshSettings
from stackmap.store import Store

log = get_logger("stackmap.ssh")
# paramiko logs every failed handshake with a traceback at ERROR; the runner reports each failure once,
# as one line per host (HostFacts.error and a structured log entry), so its own logging is noise
logging.getLogger("paramiko").setLevel(logging.CRITICAL)


class SshError(Exception):
    """A host could not be reached or used; the message is one line, fit for HostFacts.error."""


class _Transient(SshError):
    """Worth another try: refused (sshd restarting), reset, no banner yet (sshd overloaded)."""


def choose_address(host: Mapping[str, Any], policy: str) -> str | None:
    """The address a host document is reached at under a connection policy (module docstring)."""
    local = host.get("ip_address") or None
    public = host.get("public_ip") or host.get("name") or host.get("id") or None
    if policy == "local":
        return str(local) if local else None
    if policy == "public":
        return str(public) if public else None
    return str(local or public) if (local or public) else None


def load_private_key(text: str) -> paramiko.PKey:
    """A private key from PEM/OpenSSH text, whatever its type."""
    for kind in (paramiko.Ed25519Key, paramiko.ECDSAKey, paramiko.RSAKey):
        try:
            return kind.from_private_key(io.StringIO(text))
        except (paramiko.SSHException, ValueError, TypeError, IndexError):
            continue
    raise SshError("the CLI section's key is not a usable private key (unsupported type, malformed, "
                   "or passphrase-protected)")


@dataclass
class RunnerStats:
    """What the runner did, for tests, benchmarks and the scan's log."""

    connects: Counter[str] = field(default_factory=Counter)  # by address
    execs: Counter[str] = field(default_factory=Counter)  # by host id
    host_seconds: dict[str, float] = field(default_factory=dict)  # last collect(), by host id
    active: int = 0
    max_active: int = 0  # most batches running at the same moment


@dataclass
class _Target:
    host_id: str
    address: str
    via_jump: bool


class SshRunner:
    """Runs named commands on hosts over SSH; ``close()`` (or ``with``) ends every connection."""

    def __init__(self, cli: CLISection, box: SecretBox, settings: SshSettings | None = None, *,
                 store: Store | None = None, environment: str = "") -> None:
        self.cli = cli
        self.settings = settings or SshSettings()
        self.environment = environment
        self.port = int(cli.port)
        self.stats = RunnerStats()
        self._verifier = HostKeyVerifier(self.settings, store, environment)
        self._password = box.reveal(cli.pwd) if cli.pwd is not None else None
        key_text = box.reveal(cli.key) if cli.key is not None else None
        self._secrets = [s for s in (self._password, key_text) if s]
        self._pkey = load_private_key(key_text) if key_text else None
        self._clients: dict[str, paramiko.SSHClient] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._jump_error: str | None = None

    # -- FactsSource -------------------------------------------------------------------------------
    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str]) -> dict[str, HostFacts]:
        if not hosts:
            return {}
        self._jump_error = None  # a jump host down at the last call may be back
        batch = build_batch(commands, self.settings.command_timeout_s, self.cli.sudo)
        workers = min(self.settings.max_parallel, len(hosts))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssh") as pool:
            results = list(pool.map(lambda host: self._collect_one(host, batch), hosts))
        return {facts.host: facts for facts in results}

    def close(self) -> None:
        with self._guard:
            clients, self._clients = self._clients, {}
        if clients:
            log.info("ssh connections closed", environment=self.environment, connections=len(clients),
                     connects=sum(self.stats.connects.values()), execs=sum(self.stats.execs.values()),
                     max_parallel_seen=self.stats.max_active)
        jump = clients.pop(self.cli.host, None)
        for client in [*clients.values(), *([jump] if jump else [])]:  # the jump host's last
            client.close()

    def __enter__(self) -> SshRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one host ----------------------------------------------------------------------------------
    def _collect_one(self, host: Mapping[str, Any], batch: Batch) -> HostFacts:
        host_id = str(host.get("id") or host.get("name") or "?")
        started = time.perf_counter()
        facts = HostFacts(host=host_id)
        try:
            target = self._target(host_id, host)
            facts.address = target.address
            facts.outputs = self._exec(target, batch)
        except SshError as exc:
            facts.error = self._scrub(str(exc))
        except Exception as exc:  # a bug or an unforeseen library error: this host only
            facts.error = self._scrub(f"unexpected {type(exc).__name__}: {exc}")[:300]
            log.exception("ssh runner failed on a host", environment=self.environment, host=host_id)
        finally:
            elapsed = time.perf_counter() - started
            with self._guard:
                self.stats.host_seconds[host_id] = elapsed
        if facts.error:
            log.warning("host unreadable over ssh", environment=self.environment, host=host_id,
                        address=facts.address, error=facts.error)
        else:
            failed = sorted(k for k, out in facts.outputs.items() if out.error)
            if failed:
                log.info("host commands failed", environment=self.environment, host=host_id, commands=failed,
                         first_error=facts.outputs[failed[0]].error)
        return facts

    def _target(self, host_id: str, host: Mapping[str, Any]) -> _Target:
        cli_host = self.cli.host
        names = {host_id, host.get("name"), host.get("ip_address"), host.get("public_ip")}
        if cli_host in names:
            return _Target(host_id, cli_host, via_jump=False)
        address = choose_address(host, self.cli.connection_policy)
        if address is None:
            raise SshError(f"no address for host {host_id} under connection policy {self.cli.connection_policy} "
                           "(no ip_address / public_ip / name)")
        return _Target(host_id, address, via_jump=self.settings.jump_via_cli_host and address != cli_host)

    def _exec(self, target: _Target, batch: Batch) -> dict[str, CommandOutput]:
        for attempt in (1, 2):
            client = self._client(target)
            try:
                return self._run_batch(client, target, batch)
            except TimeoutError:
                raise SshError(f"commands on {target.address} did not finish within {batch.budget_s:g} s") from None
            except (paramiko.SSHException, EOFError, OSError) as exc:
                reason = self._scrub(str(exc) or type(exc).__name__)[:200]
                if attempt == 2:
                    raise SshError(f"connection to {target.address} lost during the commands: {reason}") from None
                # the kept connection died (host rebooted, sshd restarted): one fresh try
                log.info("ssh connection lost, reconnecting", environment=self.environment, host=target.host_id,
                         error=reason)
                self._drop(target.address)
        raise AssertionError("unreachable")  # pragma: no cover

    def _run_batch(self, client: paramiko.SSHClient, target: _Target, batch: Batch) -> dict[str, CommandOutput]:
        transport = client.get_transport()
        if transport is None or not transport.is_active():
            raise paramiko.SSHException("connection closed")
        channel = transport.open_session(timeout=self.settings.connect_timeout_s)
        with self._guard:
            self.stats.execs[target.host_id] += 1
            self.stats.active += 1
            self.stats.max_active = max(self.stats.max_active, self.stats.active)
        try:
            channel.settimeout(batch.budget_s)
            channel.exec_command("/bin/sh -s")
            channel.sendall(batch.script.encode())
            channel.shutdown_write()
            stdout = channel.makefile("rb").read()
            stderr = channel.makefile_stderr("rb").read().decode(errors="replace")
            channel.recv_exit_status()
        finally:
            with self._guard:
                self.stats.active -= 1
            channel.close()
        return parse_batch(batch, stdout, stderr)

    # -- connections -------------------------------------------------------------------------------
    def _lock_for(self, address: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(address, threading.Lock())

    def _drop(self, address: str) -> None:
        with self._guard:
            client = self._clients.pop(address, None)
        if client is not None:
            client.close()

    def _pooled(self, address: str, connect: Callable[[], paramiko.SSHClient]) -> paramiko.SSHClient:
        """The kept connection to ``address``, made once (other threads wanting it wait for it)."""
        with self._lock_for(address):
            with self._guard:
                client = self._clients.get(address)
            if client is not None:
                transport = client.get_transport()
                if transport is not None and transport.is_active():
                    return client
                self._drop(address)
            client = connect()
            with self._guard:
                self._clients[address] = client
            return client

    def _client(self, target: _Target) -> paramiko.SSHClient:
        if not target.via_jump:
            return self._pooled(target.address, lambda: self._connect(target.address))
        jump = self._jump()

        def through_jump() -> paramiko.SSHClient:
            return self._connect(target.address, via=jump)

        return self._pooled(target.address, through_jump)

    def _jump(self) -> paramiko.SSHClient:
        if self._jump_error is not None:
            raise SshError(self._jump_error)
        try:
            return self._pooled(self.cli.host, lambda: self._connect(self.cli.host))
        except SshError as exc:
            self._jump_error = f"via jump host {self.cli.host}: {exc}"
            raise SshError(self._jump_error) from None

    def _connect(self, address: str, via: paramiko.SSHClient | None = None) -> paramiko.SSHClient:
        """A new authenticated connection, retried with backoff on transient failures only."""
        retrying = Retrying(
            stop=stop_after_attempt(1 + self.settings.connect_retries),
            wait=wait_exponential(multiplier=0.5, max=4),
            retry=retry_if_exception(lambda exc: isinstance(exc, _Transient)),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._connect_once(address, via)
        raise AssertionError("unreachable")  # pragma: no cover - tenacity reraises

    def _connect_once(self, address: str, via: paramiko.SSHClient | None) -> paramiko.SSHClient:
        timeout = self.settings.connect_timeout_s
        where = f"{address}:{self.port}"
        name = known_hosts_name(address, self.port)
        with self._guard:
            self.stats.connects[address] += 1
        client = paramiko.SSHClient()
        sock: socket.socket | paramiko.Channel | None = None
        try:
            self._verifier.prepare(client, name)
            if via is None:
                sock = socket.create_connection((address, self.port), timeout=timeout)
                # the handshake is a dozen small round trips: without this, Nagle + delayed ACKs add ~40 ms each
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                jump_transport = via.get_transport()
                if jump_transport is None or not jump_transport.is_active():
                    self._drop(self.cli.host)
                    raise _Transient(f"connection to jump host {self.cli.host} lost")
                try:
                    sock = jump_transport.open_channel("direct-tcpip", (address, self.port), ("127.0.0.1", 0),
                                                       timeout=timeout)
                except paramiko.ChannelException as exc:
                    raise SshError(f"jump host {self.cli.host} cannot reach {where}: {exc.text}") from None
                except paramiko.SSHException:  # no answer to the channel open in time
                    raise SshError(f"jump host {self.cli.host} cannot reach {where}: timed out after "
                                   f"{timeout:g} s") from None
            client.connect(hostname=address, port=self.port, username=self.cli.user, pkey=self._pkey,
                           password=self._password, timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           channel_timeout=timeout, look_for_keys=False, allow_agent=False, sock=sock)
            return client
        except BaseException as exc:
            client.close()
            if sock is not None:
                sock.close()
            if isinstance(exc, SshError):
                raise
            raise self._explain(exc, where) from None

    def _explain(self, exc: BaseException, where: str) -> SshError:
        """One clear line per failure kind, and whether it is worth a retry."""
        if isinstance(exc, HostKeyRefused):
            return SshError(str(exc))
        if isinstance(exc, paramiko.BadHostKeyException):
            return SshError(HostKeyVerifier.explain(exc))
        if isinstance(exc, paramiko.AuthenticationException):
            how = " and ".join(k for k, v in (("key", self._pkey), ("password", self._password)) if v) or "nothing"
            return SshError(f"authentication failed for {self.cli.user}@{where} (tried {how})")
        if isinstance(exc, ConnectionRefusedError):
            return _Transient(f"cannot connect to {where}: connection refused (no sshd?)")
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return SshError(f"cannot connect to {where}: no route to host")
        if isinstance(exc, TimeoutError | socket.timeout):
            return SshError(f"cannot connect to {where}: timed out after {self.settings.connect_timeout_s:g} s")
        if isinstance(exc, socket.gaierror):
            return SshError(f"cannot resolve {where.rsplit(':', 1)[0]}: {exc.strerror}")
        if isinstance(exc, ConnectionResetError | EOFError):
            return _Transient(f"connection to {where} closed during the handshake")
        if isinstance(exc, paramiko.SSHException) and "banner" in str(exc).lower():
            return _Transient(f"no SSH banner from {where} within {self.settings.connect_timeout_s:g} s")
        if isinstance(exc, OSError):
            return SshError(f"cannot connect to {where}: {exc.strerror or exc}")
        if isinstance(exc, paramiko.SSHException):
            return SshError(self._scrub(f"SSH error with {where}: {exc}")[:300])
        raise exc

    def _scrub(self, text: str) -> str:
        """Belt and braces: no message leaves the runner with a credential in it."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())


class HostsUnavailable:
    """A FactsSource for when no runner can be set up: every host gets the reason as its error, so
    fetchers treat it like unreachable hosts (their previous data kept) instead of an empty cloud."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def collect(self, hosts: Sequence[dict[str, Any]], commands: Mapping[str, str]) -> dict[str, HostFacts]:
        out = {}
        for host in hosts:
            host_id = str(host.get("id") or host.get("name") or "?")
            out[host_id] = HostFacts(host=host_id, error=self.reason)
        return out

    def close(self) -> None:
        pass


def open_runner(cli: CLISection, box: SecretBox, settings: SshSettings, *, store: Store | None,
                environment: str) -> SshRunner | HostsUnavailable:
    """The scan's runner, or why there cannot be one (logged; the message holds no secret)."""
    try:
        return SshRunner(cli, box, settings, store=store, environment=environment)
    except (SshError, HostKeyRefused, StackmapError) as exc:
        log.error("ssh runner unavailable", environment=environment, error=str(exc))
        return HostsUnavailable(f"SSH unavailable: {exc}")
