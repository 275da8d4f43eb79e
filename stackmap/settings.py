"""One validated Settings model for every stackmap process.

Values come, highest priority first, from explicit overrides (CLI options), ``STACKMAP_*``
environment variables, then an optional TOML file (``--config`` / ``STACKMAP_CONFIG``, or
``/etc/stackmap/stackmap.toml`` when present). Errors name the offending field so an operator can
fix the file without reading code.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from stackmap import paths
from stackmap.errors import ConfigError

LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class DaemonSettings(BaseModel):
    """Per-daemon knobs; the metrics address is bound to loopback unless an operator widens it."""

    metrics_addr: str = "127.0.0.1:0"

    @field_validator("metrics_addr")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:9310")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="STACKMAP_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    store_url: str = Field(default_factory=paths.default_store_url)
    secret_key_file: Path = Field(default_factory=paths.default_secret_key_file)
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "auto"
    scan_manager: DaemonSettings = DaemonSettings(metrics_addr="127.0.0.1:9310")
    event_manager: DaemonSettings = DaemonSettings(metrics_addr="127.0.0.1:9311")
    monitor_handler: DaemonSettings = DaemonSettings(metrics_addr="127.0.0.1:9312")

    @field_validator("store_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite:///", "mongodb://", "mongodb+srv://", "mongomock://")):
            raise ValueError("must start with sqlite:/// or mongodb://")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_file = _config_file_in_use()
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)


_explicit_config_file: Path | None = None


def _config_file_in_use() -> Path | None:
    if _explicit_config_file is not None:
        return _explicit_config_file
    env_file = os.environ.get("STACKMAP_CONFIG")
    if env_file:
        return Path(env_file)
    if paths.SYSTEM_CONFIG_FILE.is_file():
        return paths.SYSTEM_CONFIG_FILE
    return None


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build Settings, turning every validation problem into one readable ConfigError."""
    global _explicit_config_file
    _explicit_config_file = Path(config_file) if config_file else None
    try:
        in_use = _config_file_in_use()
        if in_use is not None:
            if not in_use.is_file():
                raise ConfigError(f"config file {in_use} does not exist")
            try:
                with in_use.open("rb") as fh:
                    tomllib.load(fh)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"config file {in_use} is not valid TOML: {exc}") from None
        clean = {key: value for key, value in overrides.items() if value is not None}
        return Settings(**clean)
    except ValidationError as exc:
        raise ConfigError(f"invalid settings: {describe_validation_error(exc)}") from None
    finally:
        _explicit_config_file = None


def describe_validation_error(exc: ValidationError) -> str:
    """Render pydantic's errors as 'field.path: message; ...' without echoing input values."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "(document)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)
