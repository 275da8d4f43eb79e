"""``config/scanners.json``: the declarative hierarchy a scan walks (Calipso's format).

Each scanner is an ordered list of entries ``{type, fetcher, children_scanner?, environment_condition?}``;
``fetcher`` is a fetcher class name or a folder spec ``{folder: true, types_name, parent_type, text}``.
The loader checks the whole file up front (names, references, cycles) so a bad file fails the scan
with a message naming the scanner and entry, before any API is called.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from stackmap import paths
from stackmap.errors import ConfigError
from stackmap.settings import describe_validation_error

ROOT_SCANNER = "ScanEnvironment"


class FolderSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    folder: Literal[True]
    types_name: str = Field(min_length=1)
    parent_type: str = Field(min_length=1)
    text: str | None = None


class ScannerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: str = Field(min_length=1)
    fetcher: str | FolderSpec
    children_scanner: str | None = None
    environment_condition: dict[str, Any] | None = None

    @property
    def is_folder(self) -> bool:
        return isinstance(self.fetcher, FolderSpec)


class ScannersConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scanners_package: str | None = None  # Calipso's files carry it; unused here
    scanners: dict[str, list[ScannerEntry]]

    @model_validator(mode="after")
    def _references(self) -> ScannersConfig:
        # importing them registers the DB and host fetchers (Fetcher subclasses register themselves)
        import stackmap.discovery.db.fetchers
        import stackmap.discovery.host.fetchers  # noqa: F401
        from stackmap.discovery.api.fetchers import Fetcher

        if ROOT_SCANNER not in self.scanners:
            raise ValueError(f"no {ROOT_SCANNER} scanner (the root of every scan)")
        for name, entries in self.scanners.items():
            for i, entry in enumerate(entries):
                where = f"scanner {name} entry {i} ({entry.type})"
                if entry.children_scanner and entry.children_scanner not in self.scanners:
                    raise ValueError(f"{where}: children_scanner {entry.children_scanner!r} is not defined")
                if isinstance(entry.fetcher, str) and entry.fetcher not in Fetcher.registry:
                    raise ValueError(f"{where}: unknown fetcher {entry.fetcher!r}")
        self._check_cycles()
        return self

    def _check_cycles(self) -> None:
        state: dict[str, int] = {}

        def visit(name: str, trail: list[str]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ValueError(f"scanner cycle: {' -> '.join([*trail, name])}")
            state[name] = 1
            for entry in self.scanners[name]:
                if entry.children_scanner:
                    visit(entry.children_scanner, [*trail, name])
            state[name] = 2

        visit(ROOT_SCANNER, [])

    def entries_for_type(self, object_type: str) -> list[ScannerEntry]:
        return [e for entries in self.scanners.values() for e in entries if e.type == object_type]


def load_scanners(path: str | Path | None = None) -> ScannersConfig:
    file = Path(path) if path else paths.defaults_dir() / "scanners.json"
    try:
        data = json.loads(file.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read scanners file {file}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"scanners file {file} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    try:
        return ScannersConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"scanners file {file} is invalid: {describe_validation_error(exc)}") from None


def condition_matches(condition: dict[str, Any] | None, env: dict[str, Any]) -> bool:
    """Whether a scanner entry applies to an environment (mechanism drivers match if the lists intersect;
    ``sections`` lists configuration sections the environment must all have, e.g. ``["mysql"]``)."""
    if not condition:
        return True
    for key, wanted in condition.items():
        if key == "sections":
            have_sections = {s.get("name") for s in env.get("configuration") or [] if isinstance(s, dict)}
            if not set(wanted if isinstance(wanted, list) else [wanted]) <= have_sections:
                return False
        elif key == "environment_type":
            if env.get("environment_type", "OpenStack") != wanted:
                return False
        elif key == "mechanism_drivers":
            have = {str(d).lower() for d in env.get("mechanism_drivers") or []}
            want = {str(d).lower() for d in (wanted if isinstance(wanted, list) else [wanted])}
            if not have & want:
                return False
        else:
            value = env.get(key)
            if isinstance(wanted, list):
                if value not in wanted:
                    return False
            elif value != wanted:
                return False
    return True
