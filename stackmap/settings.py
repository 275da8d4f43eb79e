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

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
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


class ScanManagerSettings(DaemonSettings):
    """The scan manager's knobs (``[scan_manager]`` / ``STACKMAP_SCAN_MANAGER__*``; README "Scan manager").

    A claimed scan carries a lease of ``lease_s`` that its manager renews about three times per
    lease while the scan runs; a scan whose lease ran out (its manager was killed) is taken back by
    any manager and re-queued, up to ``max_attempts`` runs in all, then failed with the reason.
    """

    metrics_addr: str = "127.0.0.1:9310"
    poll_interval_s: float = Field(default=2.0, ge=0.05,
                                   description="how often the queue and the schedules are read")
    lease_s: float = Field(default=60.0, ge=1.0, description="how long a claim lasts without renewal")
    scan_timeout_s: float = Field(default=3600.0, gt=0, description="a scan running longer is stopped and failed")
    max_attempts: int = Field(default=3, ge=1, description="runs of one scan (first + re-queues after lost leases)")
    stop_grace_s: float = Field(default=30.0, ge=0, description="on SIGTERM, wait this long for the running scan "
                                "to finish before stopping it and putting it back in the queue")
    schedules: bool = Field(default=True, description="turn due scheduled_scans into scan requests")
    store_retry_max_s: float = Field(default=30.0, gt=0,
                                     description="longest wait between tries while the store is down")
    metrics_refresh_s: float = Field(default=60.0, gt=0,
                                     description="how often object counts are re-read for /metrics")
    worker_start_method: Literal["forkserver", "spawn"] = Field(
        default="forkserver", description="how scan processes start: forkserver (preloaded, fast) or spawn")
    # The messages collection gets an entry for every event handled (and scan, and check result): on a
    # busy cloud, millions a day. The scan manager, which every installation runs, keeps it bounded.
    messages_max_age_days: float = Field(default=14.0, ge=0, description="messages older than this are "
                                         "deleted (0: kept however old)")
    messages_max_count: int = Field(default=1_000_000, ge=0, description="only the newest this many messages "
                                    "are kept, of all environments (0: no limit)")
    messages_prune_interval_s: float = Field(default=300.0, gt=0, description="how often messages are pruned")


class MonitorHandlerSettings(DaemonSettings):
    """The monitor handler's knobs (``[monitor_handler]`` / ``STACKMAP_MONITOR_HANDLER__*``).

    The broker is normally derived from the environments' ``Monitoring`` sections; ``broker_url``
    overrides that (it may hold a password, hence a secret type: it is never printed or logged).
    The handler binds its *own* durable queue to Sensu's ``results`` exchange, so it never competes
    with a Sensu server for the ``results`` queue, and bounds that queue (TTL, length) so that a
    stopped handler cannot fill the broker.
    """

    metrics_addr: str = "127.0.0.1:9312"
    broker_url: SecretStr | None = None
    environments: list[str] = Field(default_factory=list)
    rabbitmq_vhost: str = "/sensu"
    exchange: str = "results"
    queue: str = "stackmap.monitor.results"
    dead_letter_exchange: str = "stackmap.monitor.dead"
    queue_message_ttl_s: float = Field(default=600.0, gt=0)
    queue_max_length: int = Field(default=200_000, gt=0)
    prefetch: int = Field(default=2000, ge=1, le=65535)
    batch_size: int = Field(default=500, ge=1)
    batch_timeout_s: float = Field(default=0.2, gt=0)
    max_message_bytes: int = Field(default=1_048_576, ge=1024)
    status_text_limit: int = Field(default=4096, ge=64)
    last_seen_flush_s: float = Field(default=300.0, gt=0)
    derived_link_types: list[str] = Field(default_factory=lambda: ["vedge-host_pnic"])
    connect_max_retries: int | None = None


class EventManagerSettings(DaemonSettings):
    """The event manager and its listeners (one per environment; see README "Event manager").

    The queue bounds exist so that a long listener outage cannot fill the broker: RabbitMQ drops
    the oldest messages past ``queue_max_length`` or ``queue_message_ttl_s`` (a full scan catches the
    map up afterwards). Queue arguments are fixed when a queue is first declared: changing these
    later needs the queue deleted (or a RabbitMQ policy) to take effect.
    """

    # the class default, not only the field default below: a partial [event_manager] table or a single
    # STACKMAP_EVENT_MANAGER__* variable builds this model from scratch
    metrics_addr: str = "127.0.0.1:9311"
    broker_url: SecretStr | None = Field(
        default=None, description="amqp://... used instead of each environment's AMQP section (tests, one broker)")
    trust_payloads: bool = Field(
        default=False, description="place neutron objects from notification payloads instead of re-reading "
        "them from the API: far faster, but fields only a payload carries can differ from a scan's")
    read_ahead_threads: int = Field(
        default=16, ge=0, le=256, description="API reads of waiting events made concurrently, ahead of their "
        "handling (0: each handler reads when its turn comes); worth most where the API answers slowly")
    api_timeout_s: float = Field(
        default=10.0, gt=0, description="longest wait for one API answer while handling an event; an API that "
        "does not answer makes its events retried, and is not asked again for a few seconds")
    api_outage_max_s: float = Field(
        default=3600.0, ge=0, description="how long an event is retried while an API it needs is away "
        "(no answer, 5xx...), however many retries that takes; then it is dead-lettered")
    prefetch: int = Field(default=500, ge=1, le=65535)
    batch_size: int = Field(default=200, ge=1, description="acknowledge after this many messages, with one ack")
    batch_max_delay_ms: int = Field(default=3, ge=0, description="...or after this long, whichever is first")
    batch_backlog_delay_ms: int = Field(
        default=500, ge=0, description="...but while a backlog (a quarter of a batch or more) waits behind the batch, "
        "after this long: those messages are late already, and one commit (and one clique rebuild) for many events "
        "drains it faster")
    retry_limit: int = Field(default=10, ge=0, description="attempts after the first, then dead-lettered")
    retry_delay_s: float = Field(default=1.0, gt=0, description="delay before the first retry; doubles per attempt")
    retry_delay_max_s: float = Field(default=60.0, gt=0)
    # queue bounds; 0 means none
    queue_message_ttl_s: int = Field(default=86400, ge=0)
    queue_max_length: int = Field(default=100_000, ge=0)
    queue_expires_s: int = Field(default=7 * 86400, ge=0, description="delete the queue after this long unused")
    dead_letter_max_length: int = Field(default=100_000, ge=0)
    heartbeat_s: int = Field(default=60, ge=0, description="AMQP heartbeat; one handler call must not take 2x this")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    reconnect_delay_max_s: float = Field(default=30.0, gt=0)
    store_busy_timeout_s: float = Field(default=5.0, gt=0, description="how long one SQLite write waits for its lock")
    store_retry_max_s: float = Field(default=30.0, gt=0, description="longest wait between tries, store down")
    poll_interval_s: float = Field(default=5.0, gt=0, description="how often environments are re-read")
    restart_delay_max_s: float = Field(default=60.0, gt=0, description="longest wait before restarting a listener")
    stall_timeout_s: float = Field(default=120.0, gt=0, description="a listener silent this long is restarted")


class SshSettings(BaseModel):
    """How host-level discovery reaches hosts over SSH (``[ssh]`` / ``STACKMAP_SSH__*``).

    Host keys are always verified. ``known_hosts``: only keys listed in the ``known_hosts`` file are
    accepted (an operator-managed file, OpenSSH format). ``pin``: trust on first use, but recorded in
    the store (``host_keys``) and logged; a later different key is refused with both fingerprints in
    the error, until an operator removes the pin. Commands on one host run in one batch, each under
    ``command_timeout_s``; at most ``max_parallel`` hosts are worked on at once.
    """

    host_key_policy: Literal["known_hosts", "pin"] = "pin"
    known_hosts: Path | None = Field(default=None, description="OpenSSH known_hosts file (policy known_hosts)")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="TCP connect, banner and auth, per try")
    command_timeout_s: float = Field(default=60.0, gt=0, description="per command, enforced on the host")
    max_parallel: int = Field(default=16, ge=1, le=1024, description="hosts worked on at once")
    connect_retries: int = Field(default=2, ge=0, description="extra tries on transient connect errors only")
    jump_via_cli_host: bool = Field(default=True, description="reach other hosts through the CLI section's "
                                    "host (direct-tcpip); False connects to every host directly")

    @field_validator("known_hosts")
    @classmethod
    def _expand(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None


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
    scan_manager: ScanManagerSettings = ScanManagerSettings()
    event_manager: EventManagerSettings = EventManagerSettings(metrics_addr="127.0.0.1:9311")
    monitor_handler: MonitorHandlerSettings = MonitorHandlerSettings()
    ssh: SshSettings = SshSettings()

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
