"""The documents stackmap stores, as pydantic models.

Shapes follow Calipso's collections (environments_config, inventory, links, cliques, clique_types,
clique_constraints, scans, scheduled_scans, messages) so existing tooling can read them, with the
fixes a rewrite owes: links are keyed by (environment, link_type, source_id, target_id), ids are
stable (native ids, or a join of stable keys via ``stable_id``), and secrets are ``SecretStr`` so
they never print by accident.

The store speaks plain dicts for speed; these models validate at the edges (files an operator
writes, fetcher output, API payloads) and ``to_doc`` turns them into store documents.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

# --------------------------------------------------------------------------------------------------
# helpers


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


ID_SEPARATOR = "|"


def stable_id(*parts: str) -> str:
    """Build an id for an object that has no native id from the *stable keys* that identify it.

    Parts are things like a host's name and an interface name, never display names that can be
    renamed. Only the first part (often the owner's own id, itself possibly composite) may contain
    the separator; the others may not, so the id splits back unambiguously from the right and two
    different part lists never collide (Calipso's ``<a>-<b>`` ids did).
    """
    if not parts:
        raise ValueError("an id needs at least one part")
    for i, part in enumerate(parts):
        if not part or (i > 0 and ID_SEPARATOR in part):
            raise ValueError(f"id part {part!r} is empty or contains {ID_SEPARATOR!r}")
    return ID_SEPARATOR.join(parts)


def link_id(link_type: str, source_id: str, target_id: str) -> str:
    return f"{link_type}{ID_SEPARATOR}{source_id}{ID_SEPARATOR}{target_id}"


def _as_str(value: Any) -> Any:
    """Calipso wrote ports as strings or numbers; accept both and store a string."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


PortStr = Annotated[str, BeforeValidator(_as_str)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
NonEmpty = Annotated[str, StringConstraints(min_length=1)]


class _Doc(BaseModel):
    """Base of every stored document: ``to_doc`` gives the plain dict the store keeps."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, use_enum_values=True)

    def to_doc(self) -> dict[str, Any]:
        return self.model_dump(mode="python", exclude_none=True, by_alias=True)


# --------------------------------------------------------------------------------------------------
# environments_config


class _Section(BaseModel):
    """One entry of an environment's ``configuration`` list; ``name`` picks the section kind."""

    model_config = ConfigDict(extra="forbid")
    secret_fields: ClassVar[tuple[str, ...]] = ()


class OpenStackSection(_Section):
    name: Literal["OpenStack"]
    host: str | None = None
    port: PortStr = "5000"
    user: str | None = None
    pwd: SecretStr | None = None
    admin_token: SecretStr | None = None
    project: str = "admin"
    user_domain: str = "Default"
    project_domain: str = "Default"
    region: str | None = None
    auth_url: str | None = Field(None, description="full Keystone URL; overrides host/port/https")
    https: bool = False
    verify: bool = True
    ca_cert: str | None = None
    interface: Literal["public", "internal", "admin"] = "public"
    cloud: str | None = Field(None, description="a clouds.yaml cloud name instead of host/user/pwd")
    recording: str | None = Field(
        None, description="replay the HTTP exchanges `stackmap record` saved in this directory instead of "
        "contacting the cloud (demos, tests)")
    secret_fields: ClassVar[tuple[str, ...]] = ("pwd", "admin_token")

    @model_validator(mode="after")
    def _reachable(self) -> OpenStackSection:
        if self.cloud is None:
            missing = [f for f in ("user", "pwd") if getattr(self, f) is None]
            if self.host is None and self.auth_url is None:
                missing.insert(0, "host")
            if missing:
                raise ValueError(f"needs {', '.join(missing)} (or 'cloud' naming a clouds.yaml entry)")
        return self


class MysqlSection(_Section):
    name: Literal["mysql"]
    host: str
    port: PortStr = "3306"
    user: str
    pwd: SecretStr | None = None
    neutron_db: str = "neutron"
    nova_db: str = "nova"
    nova_api_db: str = Field("nova_api", description="nova's API database (host aggregates live there)")
    region: str | None = Field(None, description="the region whose databases these are, when there are several")
    connect_timeout_s: float = Field(5.0, gt=0, description="to open the TCP connection")
    read_timeout_s: float = Field(60.0, gt=0, description="for the server's greeting, and for each answer")
    attempts: int = Field(3, ge=1, le=10, description="tries when the connection, not the query, fails")
    secret_fields: ClassVar[tuple[str, ...]] = ("pwd",)


class CLISection(_Section):
    name: Literal["CLI"]
    host: str
    user: str
    port: PortStr = "22"
    pwd: SecretStr | None = None
    key: SecretStr | None = Field(None, description="private key (PEM text)")
    sudo: bool = False
    connection_policy: Literal["public", "local", "auto"] = "auto"
    secret_fields: ClassVar[tuple[str, ...]] = ("pwd", "key")


class AMQPSection(_Section):
    name: Literal["AMQP"]
    host: str
    port: PortStr = "5672"
    user: str
    pwd: SecretStr | None = None
    vhost: str = "/"
    ssl: bool = False
    secret_fields: ClassVar[tuple[str, ...]] = ("pwd",)


class MonitoringSection(_Section):
    name: Literal["Monitoring"]
    type: Literal["Sensu"] = "Sensu"
    server_ip: str
    server_name: str | None = None
    rabbitmq_port: PortStr = "5672"
    rabbitmq_user: str | None = None
    rabbitmq_pass: SecretStr | None = None
    ssh_port: PortStr = "22"
    ssh_user: str | None = None
    ssh_password: SecretStr | None = None
    api_port: PortStr = "4567"
    config_folder: str | None = None
    env_type: Literal["production", "development"] = "production"
    provision: Literal["None", "DB", "Files", "Deploy"] = "None"
    install_monitoring_client: bool = False
    secret_fields: ClassVar[tuple[str, ...]] = ("rabbitmq_pass", "ssh_password")


class ACISection(_Section):
    name: Literal["ACI"]
    host: str
    user: str
    pwd: SecretStr | None = None
    secret_fields: ClassVar[tuple[str, ...]] = ("pwd",)


class KubernetesSection(_Section):
    name: Literal["Kubernetes"]
    host: str
    port: PortStr = "6443"
    user: str | None = None
    token: SecretStr | None = None
    secret_fields: ClassVar[tuple[str, ...]] = ("token",)


class NFVProviderSection(_Section):
    name: Literal["NFV_provider"]
    host: str
    port: PortStr | None = None
    user: str | None = None
    pwd: SecretStr | None = None
    nfv_token: SecretStr | None = None
    secret_fields: ClassVar[tuple[str, ...]] = ("pwd", "nfv_token")


SECTION_TYPES: dict[str, type[_Section]] = {
    "OpenStack": OpenStackSection,
    "mysql": MysqlSection,
    "CLI": CLISection,
    "AMQP": AMQPSection,
    "Monitoring": MonitoringSection,
    "ACI": ACISection,
    "Kubernetes": KubernetesSection,
    "NFV_provider": NFVProviderSection,
}

Section = Annotated[
    OpenStackSection
    | MysqlSection
    | CLISection
    | AMQPSection
    | MonitoringSection
    | ACISection
    | KubernetesSection
    | NFVProviderSection,
    Field(discriminator="name"),
]

REQUIRED_SECTIONS: dict[str, tuple[str, ...]] = {
    "OpenStack": ("OpenStack",),
    "Kubernetes": ("Kubernetes",),
    "VMware": (),
    "Bare-metal": (),
}


class OperationalStatus(StrEnum):
    STOPPED = "stopped"
    RUNNING = "running"
    ERROR = "error"


class EnvironmentConfig(_Doc):
    """An ``environments_config`` document: one cloud stackmap maps."""

    name: Name
    type: Literal["environment"] = "environment"
    environment_type: Literal["OpenStack", "Kubernetes", "VMware", "Bare-metal"] = "OpenStack"
    distribution: str = "Stock"
    distribution_version: str = ""
    mechanism_drivers: list[str] = Field(default_factory=lambda: ["OVS"])
    type_drivers: str = "vxlan"
    listen: bool = False
    scanned: bool = False
    last_scanned: datetime | None = None
    operational: OperationalStatus = OperationalStatus.STOPPED
    operational_reason: str | None = None
    enable_monitoring: bool = False
    monitoring_setup_done: bool = False
    aci_enabled: bool = False
    app_path: str | None = None
    user: str | None = None
    auth: dict[str, list[str]] | None = None
    configuration: list[Section] = Field(default_factory=list)

    @field_validator("mechanism_drivers", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("type_drivers", mode="before")
    @classmethod
    def _join(cls, value: Any) -> Any:
        return ",".join(value) if isinstance(value, list) else value

    @field_validator("last_scanned", mode="before")
    @classmethod
    def _placeholder(cls, value: Any) -> Any:
        # Calipso examples carry "filled-by-scanning" here before the first scan.
        return None if value in ("", "filled-by-scanning") else value

    @model_validator(mode="after")
    def _sections(self) -> EnvironmentConfig:
        names = [s.name for s in self.configuration]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"configuration section(s) given twice: {', '.join(dupes)}")
        missing = [n for n in REQUIRED_SECTIONS[self.environment_type] if n not in names]
        if missing:
            raise ValueError(
                f"a {self.environment_type} environment needs configuration section(s): {', '.join(missing)}"
            )
        return self

    def section(self, name: str) -> Any:
        """The configuration section called ``name``, or None."""
        for sec in self.configuration:
            if sec.name == name:
                return sec
        return None


# --------------------------------------------------------------------------------------------------
# inventory, links, cliques


class InventoryObject(_Doc):
    """One object of the map; type-specific fields ride along as extra fields."""

    model_config = ConfigDict(extra="allow")

    environment: NonEmpty
    type: NonEmpty
    id: NonEmpty
    name: str = ""
    object_name: str = ""
    parent_id: str | None = None
    parent_type: str | None = None
    id_path: str = ""
    name_path: str = ""
    show_in_tree: bool = True
    last_scanned: datetime | None = None

    @model_validator(mode="after")
    def _defaults(self) -> InventoryObject:
        if not self.name:
            self.name = self.id
        if not self.object_name:
            self.object_name = self.name
        return self


class LinkState(StrEnum):
    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"


class Link(_Doc):
    """A directed edge of the map. Its key is (environment, link_type, source_id, target_id)."""

    model_config = ConfigDict(extra="allow")

    environment: NonEmpty
    link_type: NonEmpty
    source_id: NonEmpty
    target_id: NonEmpty
    source_type: str | None = None
    target_type: str | None = None
    id: str = ""
    link_name: str = ""
    state: LinkState = LinkState.UP
    link_weight: int = 0
    source_label: str = ""
    target_label: str = ""
    implicit: bool = False
    host: str | None = None
    attributes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _key(self) -> Link:
        expected = link_id(self.link_type, self.source_id, self.target_id)
        if self.id and self.id != expected:
            raise ValueError(f"link id {self.id!r} does not match its key ({expected!r})")
        self.id = expected
        return self


class Clique(_Doc):
    """The topology graph around one focal object; ``nodes`` lets a changed object find its cliques."""

    environment: NonEmpty
    focal_point: NonEmpty
    focal_point_type: NonEmpty
    clique_type: NonEmpty
    id: str = ""
    links: list[str] = Field(default_factory=list)
    links_detailed: list[dict[str, Any]] = Field(default_factory=list)
    nodes: list[str] = Field(default_factory=list)
    constraints: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _id(self) -> Clique:
        self.id = self.focal_point
        if self.focal_point not in self.nodes:
            self.nodes.insert(0, self.focal_point)
        return self


class CliqueType(_Doc):
    """Which link types to walk, in order, from a focal object type, and for which environments."""

    id: NonEmpty
    name: str = ""
    environment: str = "ANY"
    focal_point_type: NonEmpty
    link_types: list[NonEmpty] = Field(min_length=1)
    environment_type: str | None = None
    distribution: str | None = None
    distribution_version: str | None = None
    mechanism_drivers: list[str] | None = None
    type_drivers: str | None = None
    use_implicit_links: bool = False
    # Steps named in the walk's direction ("vnic-vedge": from the vNICs reached so far, over vnic-vedge
    # links or reversed vedge-vnic ones); without it a step follows its link type from either end.
    directed: bool | None = None

    @field_validator("mechanism_drivers", mode="before")
    @classmethod
    def _listify(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("link_types")
    @classmethod
    def _link_type_shape(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if t.count("-") < 1]
        if bad:
            raise ValueError(f"link types must look like 'source_type-target_type': {', '.join(bad)}")
        return value


class CliqueConstraint(_Doc):
    id: NonEmpty
    focal_point_type: NonEmpty
    constraints: list[NonEmpty]


# --------------------------------------------------------------------------------------------------
# scans, schedules, messages


class ScanStatus(StrEnum):
    DRAFT = "draft"
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPLETED_WITH_ERRORS = "completed_with_errors"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in FINISHED_SCAN_STATUSES


FINISHED_SCAN_STATUSES = frozenset(
    {ScanStatus.COMPLETED, ScanStatus.COMPLETED_WITH_ERRORS, ScanStatus.FAILED, ScanStatus.ABORTED}
)


class _ScanOptions(BaseModel):
    log_level: str = "INFO"
    clear: bool = False
    scan_only_inventory: bool = False
    scan_only_links: bool = False
    scan_only_cliques: bool = False
    object_id: str | None = None
    resource_types: list[str] | None = None

    @model_validator(mode="after")
    def _one_only(self) -> _ScanOptions:
        only = [f for f in ("scan_only_inventory", "scan_only_links", "scan_only_cliques") if getattr(self, f)]
        if len(only) > 1:
            raise ValueError(f"at most one of scan_only_inventory/links/cliques may be set, got {', '.join(only)}")
        return self


class Scan(_Doc, _ScanOptions):
    """A scan request and, once claimed, its progress and outcome."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_id)
    environment: NonEmpty
    status: ScanStatus = ScanStatus.PENDING
    inventory: str = "inventory"
    submit_timestamp: datetime = Field(default_factory=utcnow)
    start_timestamp: datetime | None = None
    end_timestamp: datetime | None = None
    owner: str | None = None
    lease_expires: datetime | None = None
    cancel_requested: bool = False
    scheduled_scan_id: str | None = None
    error: str | None = None
    summary: dict[str, Any] | None = None


class Frequency(StrEnum):
    HOURLY = "HOURLY"
    DAILY = "DAILY"
    WEEKLY = "WEEKLY"
    MONTHLY = "MONTHLY"
    YEARLY = "YEARLY"


class ScheduledScan(_Doc, _ScanOptions):
    """A recurring scan: a Calipso frequency, a fixed interval, or a cron expression."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_id)
    environment: NonEmpty
    freq: Frequency | None = None
    interval_seconds: float | None = Field(None, gt=0)
    cron: str | None = None
    submit_timestamp: datetime = Field(default_factory=utcnow)
    scheduled_timestamp: datetime | None = None
    last_run: datetime | None = None

    @model_validator(mode="after")
    def _one_cadence(self) -> ScheduledScan:
        given = [f for f in ("freq", "interval_seconds", "cron") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("exactly one of freq, interval_seconds or cron must be given")
        return self


class MessageLevel(StrEnum):
    EMERGENCY = "emergency"
    ALERT = "alert"
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    NOTICE = "notice"
    INFO = "info"
    DEBUG = "debug"

    @classmethod
    def coerce(cls, value: str) -> MessageLevel:
        """Map the spellings found in the wild (oslo priorities, 'warn') onto syslog levels."""
        lowered = value.lower()
        aliases = {"warn": "warning", "audit": "notice", "sample": "debug", "err": "error", "crit": "critical"}
        return cls(aliases.get(lowered, lowered))


class Message(_Doc):
    """An entry of the ``messages`` collection: what scans, events and checks did, for operators."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(default_factory=new_id)
    environment: str | None = None
    source_system: str = "stackmap"
    level: MessageLevel = MessageLevel.INFO
    message: Any = ""
    related_object: str | None = None
    related_object_type: str | None = None
    display_context: str | None = None
    timestamp: datetime = Field(default_factory=utcnow)
    received_timestamp: datetime | None = None
    finished_timestamp: datetime | None = None
    viewed: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _coerce_level(cls, value: Any) -> Any:
        return MessageLevel.coerce(value) if isinstance(value, str) else value
