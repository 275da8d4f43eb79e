"""Adding and reading environment configs: parse, validate, seal secrets, store.

Validation happens completely before the store is touched, so a bad file never leaves a
half-written environment behind.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Any

import yaml
from pydantic import ValidationError

from stackmap.errors import ConfigError, NotFound, SecretsUnavailable
from stackmap.model import EnvironmentConfig
from stackmap.secrets import SecretBox, stored_secret_count
from stackmap.settings import describe_validation_error
from stackmap.store import Store


def parse_environment_text(text: str, source: str) -> EnvironmentConfig:
    """Parse JSON or YAML in the environments_config shape, with errors that name the field."""
    try:
        data: Any = json.loads(text) if source.endswith(".json") else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"{source}: not valid YAML/JSON: {problem}{where}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected one environment document (a mapping), got {type(data).__name__}")
    data.pop("_id", None)  # a document exported from Calipso's MongoDB
    try:
        return EnvironmentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid environment config: {describe_validation_error(exc)}") from None


def read_environment_file(path: str, stdin: IO[str] | None = None) -> EnvironmentConfig:
    if path == "-":
        if stdin is None:
            raise ConfigError("no standard input to read the environment config from")
        return parse_environment_text(stdin.read(), "<stdin>")
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_environment_text(text, path)


RUNTIME_FIELDS = ("scanned", "last_scanned", "operational", "operational_reason", "monitoring_setup_done")


def add_environment(store: Store, box: SecretBox, env: EnvironmentConfig, *, replace: bool = False) -> dict[str, Any]:
    """Seal the config's secrets and insert it; refuses to mint a new key over secrets sealed by another.

    With ``replace`` an existing environment's configuration is replaced, but what stackmap itself
    recorded about it (scanned, last_scanned, operational...) is kept: the file does not know it.
    """
    if not box.has_key():
        sealed_elsewhere = [e["name"] for e in store.list_environments() if stored_secret_count(e)]
        if sealed_elsewhere:
            raise SecretsUnavailable(
                f"secret key file {box.key_file} is missing, but environment(s) {', '.join(sealed_elsewhere)} "
                "hold secrets sealed with a key: restore that key file before adding environments"
            )
    doc = box.seal_environment(env)
    existing = store.get_environment(env.name) if replace else None
    if existing is None:
        store.add_environment(doc)
    else:
        for field in RUNTIME_FIELDS:
            if field in existing:
                doc[field] = existing[field]
            else:
                doc.pop(field, None)
        store.replace_environment(doc)
    return doc


def load_environment(store: Store, name: str) -> EnvironmentConfig:
    """The stored environment as a model (secrets still sealed); NotFound with a clear message."""
    doc = store.get_environment(name)
    if doc is None:
        known = ", ".join(e["name"] for e in store.list_environments()) or "none"
        raise NotFound(f"unknown environment {name!r} (known: {known})")
    return EnvironmentConfig.model_validate(doc)
