"""Encryption at rest for the secrets inside environment configs.

Secrets are sealed with Fernet as soon as a config enters stackmap and stay sealed in the store;
``SecretBox.reveal`` opens one only at the place that uses it (a connection). Sealed values are
strings marked with ``enc:v1:`` so a reader can tell them from a legacy plain-text Calipso value.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretStr

from stackmap.errors import SecretsUnavailable
from stackmap.model import SECTION_TYPES, EnvironmentConfig

SEALED_PREFIX = "enc:v1:"
MASK = "********"


def is_sealed(value: str) -> bool:
    return value.startswith(SEALED_PREFIX)


class SecretBox:
    """Holds the path of the key file; loads the key lazily so listing needs no key at all."""

    def __init__(self, key_file: Path) -> None:
        self.key_file = Path(key_file)
        self._fernet: Fernet | None = None

    # -- key management ---------------------------------------------------------------------------
    def has_key(self) -> bool:
        return self.key_file.is_file()

    def create_key(self) -> None:
        """Write a new key file readable by its owner only; never overwrite an existing one."""
        self.key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(Fernet.generate_key())

    def _load(self) -> Fernet:
        if self._fernet is None:
            if not self.has_key():
                raise SecretsUnavailable(
                    f"secret key file {self.key_file} does not exist: stored secrets cannot be decrypted "
                    "(restore the key file, or set STACKMAP_SECRET_KEY_FILE to it)"
                )
            try:
                self._fernet = Fernet(self.key_file.read_bytes().strip())
            except (ValueError, OSError) as exc:
                raise SecretsUnavailable(f"secret key file {self.key_file} is unreadable or not a key: "
                                         f"{type(exc).__name__}") from None
        return self._fernet

    # -- values -----------------------------------------------------------------------------------
    def seal(self, plain: str) -> str:
        if is_sealed(plain):
            return plain
        return SEALED_PREFIX + self._load().encrypt(plain.encode()).decode()

    def reveal(self, secret: SecretStr | str | None) -> str | None:
        """The plain text of a stored secret, for handing to a client library right away."""
        if secret is None:
            return None
        value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
        if not is_sealed(value):
            return value  # a legacy plain-text value (e.g. a Calipso document imported as is)
        try:
            return self._load().decrypt(value[len(SEALED_PREFIX):].encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable(
                f"a stored secret was not sealed with the key in {self.key_file}: cannot decrypt it"
            ) from None

    # -- whole environment documents --------------------------------------------------------------
    def seal_environment(self, env: EnvironmentConfig) -> dict[str, Any]:
        """The store document of ``env`` with every secret field sealed (a key is created if none)."""
        doc = env.to_doc()
        if _has_secrets(doc) and not self.has_key():
            self.create_key()
        for section in doc.get("configuration", []):
            for field in SECTION_TYPES[section["name"]].secret_fields:
                value = section.get(field)
                if value is None:
                    continue
                plain = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                section[field] = self.seal(plain)
        return doc


def _has_secrets(doc: dict[str, Any]) -> bool:
    return any(
        section.get(field) is not None
        for section in doc.get("configuration", [])
        for field in SECTION_TYPES[section["name"]].secret_fields
    )


def stored_secret_count(doc: dict[str, Any]) -> int:
    """How many sealed values a stored environment document holds."""
    return sum(
        1
        for section in doc.get("configuration", [])
        for field in SECTION_TYPES.get(section.get("name", ""), SECTION_TYPES["OpenStack"]).secret_fields
        if isinstance(section.get(field), str) and is_sealed(section[field])
    )


def masked_environment(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a stored environment document fit for display: every secret replaced by a mask."""
    out = dict(doc)
    sections = []
    for section in doc.get("configuration", []):
        shown = dict(section)
        kind = SECTION_TYPES.get(section.get("name", ""))
        for field in kind.secret_fields if kind else ():
            if shown.get(field) is not None:
                shown[field] = MASK
        sections.append(shown)
    out["configuration"] = sections
    return out
