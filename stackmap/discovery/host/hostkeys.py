"""Host key verification for the SSH runner: a known_hosts file, or first-use pins kept in the store.

Never paramiko's AutoAddPolicy: an unknown key is either refused (``known_hosts``) or pinned *and
recorded* (``pin``), so that a later change - a re-installed host, or someone in the middle - is
refused with both fingerprints named, until an operator removes the pin.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from stackmap.logging import get_logger
from stackmap.model import utcnow
from stackmap.settings import SshSettings
from stackmap.store import Store

log = get_logger("stackmap.ssh")


class HostKeyRefused(Exception):
    """The host's key is unknown (known_hosts policy) or differs from the recorded one; one line."""


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, as ``ssh-keygen -lf`` and ssh's own prompts print it."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


def known_hosts_name(address: str, port: int) -> str:
    """How known_hosts (and paramiko) name an address: bare on port 22, ``[addr]:port`` otherwise."""
    return address if port == 22 else f"[{address}]:{port}"


class _RejectUnknown(paramiko.MissingHostKeyPolicy):
    def __init__(self, source: Path | None) -> None:
        self.source = source

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise HostKeyRefused(f"host key of {hostname} ({key.get_name()} {fingerprint(key)}) is not in the "
                             f"known_hosts file {self.source}")


class _PinOnFirstUse(paramiko.MissingHostKeyPolicy):
    def __init__(self, store: Store, environment: str) -> None:
        self.store = store
        self.environment = environment

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        offered = fingerprint(key)
        pinned = self.store.pin_host_key({
            "environment": self.environment, "host": hostname, "key_type": key.get_name(),
            "key": key.get_base64(), "fingerprint": offered, "first_seen": utcnow()})
        if pinned["key_type"] != key.get_name() or pinned["key"] != key.get_base64():
            # another scan pinned a different key between our lookup and now
            raise HostKeyRefused(mismatch_message(hostname, pinned.get("fingerprint", "?"), offered))
        log.info("host key pinned on first use", environment=self.environment, host=hostname,
                 key_type=key.get_name(), fingerprint=offered)
        client.get_host_keys().add(hostname, key.get_name(), key)


def mismatch_message(hostname: str, expected: str, offered: str) -> str:
    return (f"host key mismatch for {hostname}: expected {expected}, host offered {offered}; refusing to connect "
            "(if the host was re-keyed: stackmap host-keys forget ENV HOST, or edit known_hosts)")


class HostKeyVerifier:
    """Prepares each SSHClient so that paramiko itself checks the server key during the handshake."""

    def __init__(self, settings: SshSettings, store: Store | None, environment: str) -> None:
        self.policy = settings.host_key_policy
        self.known_hosts = settings.known_hosts
        self.store = store
        self.environment = environment
        if self.policy == "known_hosts" and (self.known_hosts is None or not self.known_hosts.is_file()):
            raise HostKeyRefused(f"ssh.host_key_policy is known_hosts but the known_hosts file "
                                 f"{self.known_hosts or '(ssh.known_hosts not set)'} does not exist")
        if self.policy == "pin" and store is None:
            raise HostKeyRefused("ssh.host_key_policy pin needs a store to record the keys in")

    def prepare(self, client: paramiko.SSHClient, name: str) -> None:
        """``name`` as known_hosts names the host (see ``known_hosts_name``)."""
        if self.policy == "known_hosts":
            assert self.known_hosts is not None
            client.load_system_host_keys(str(self.known_hosts))  # read only: never written back
            client.set_missing_host_key_policy(_RejectUnknown(self.known_hosts))
            return
        assert self.store is not None
        pinned = self.store.get_host_key(self.environment, name)
        if pinned is not None:
            entry = HostKeyEntry.from_line(f"{name} {pinned['key_type']} {pinned['key']}")
            if entry is None or entry.key is None:
                raise HostKeyRefused(f"the key pinned for {name} in the store is unreadable")
            client.get_host_keys().add(name, pinned["key_type"], entry.key)
        client.set_missing_host_key_policy(_PinOnFirstUse(self.store, self.environment))

    @staticmethod
    def explain(exc: paramiko.BadHostKeyException) -> str:
        return mismatch_message(exc.hostname, fingerprint(exc.expected_key), fingerprint(exc.key))
