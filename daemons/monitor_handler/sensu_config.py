"""Sensu client and check definitions for every monitorable object of an environment.

One check per vEdge, host pNIC, vConnector, vService and OTEP, and per instance vNIC link
(``vnic-vconnector``), each running on the object's host and carrying the *structured* mapping
(environment, object type and id, or link type, source and target) that the handler reads: as a
``stackmap`` attribute of a Sensu Core check definition, as ``stackmap_*`` labels and annotations
of a Sensu Go CheckConfig. Check names still follow Calipso's ``<type>_<id>`` /
``link_<type>_<src>_<dst>`` shape for people reading a dashboard, made safe for Sensu's name rules
(with a short hash when an id had to be changed), but nothing depends on parsing them.

Object fields are Calipso's (``host``, ``local_name``, ``local_service_id``, ``service_type``,
``ip_address``, ``mac_address``); objects lacking what their check needs are skipped and reported.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stackmap.model import EnvironmentConfig
from stackmap.store import Store

MONITORED_TYPES = ("vedge", "host_pnic", "vconnector", "vservice", "otep")
MONITORED_LINK_TYPES = ("vnic-vconnector",)
DEFAULT_CHECK_COMMAND = "python3 -m daemons.monitor_handler.checks"
HANDLER_NAME = "stackmap"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


@dataclass(frozen=True)
class CheckSpec:
    name: str
    host: str
    command: str
    metadata: dict[str, str]


@dataclass
class CheckPlan:
    environment: str
    checks: list[CheckSpec] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    @property
    def hosts(self) -> list[str]:
        return sorted({c.host for c in self.checks})


def check_name(*parts: str) -> str:
    """Calipso's name shape, restricted to Sensu's ``[A-Za-z0-9_.-]``; a hash keeps changed names unique."""
    raw = "_".join(parts)
    safe = _UNSAFE.sub("-", raw)
    if safe != raw:
        safe += "-" + hashlib.blake2b(raw.encode(), digest_size=4).hexdigest()
    return safe


def _strip_host(name: str, host: str) -> str:
    return name[len(host) + 1:] if host and name.startswith(host + "-") else name


def plan_checks(store: Store, env: EnvironmentConfig, *, check_command: str = DEFAULT_CHECK_COMMAND) -> CheckPlan:
    plan = CheckPlan(env.name)
    objects = {t: store.find_objects(env.name, type=t) for t in MONITORED_TYPES}
    vpp = "VPP" in [d.upper() for d in env.mechanism_drivers]
    otep_ips = {o["id"]: o.get("ip_address") for o in objects["otep"] if o.get("ip_address")}

    def command(script: str, *args: str) -> str:
        return f"{check_command}.{script} " + " ".join(shlex.quote(a) for a in args)

    builders: dict[str, Callable[[dict[str, Any], str], str | None]] = {
        "vedge": lambda o, host: command(
            "vedge", "--type", "vpp" if vpp or "VPP" in str(o.get("agent_type", "")).upper() else "ovs"),
        "host_pnic": lambda o, host: command("pnic", str(o.get("local_name") or o.get("name") or "")) if (
            o.get("local_name") or o.get("name")) else None,
        "vconnector": lambda o, host: command("vconnector", _bridge_name(o, host)),
        "vservice": lambda o, host: _vservice_command(o, host, command),
        "otep": lambda o, host: command(
            "otep", "--source", str(otep_ips[o["id"]]),
            *sorted({str(ip) for oid, ip in otep_ips.items() if oid != o["id"] and ip != otep_ips[o["id"]]}))
        if o["id"] in otep_ips else None,
    }
    for otype in MONITORED_TYPES:
        for obj in objects[otype]:
            host = obj.get("host")
            cmd = builders[otype](obj, host) if isinstance(host, str) and host else None
            if not isinstance(host, str) or cmd is None:
                plan.skipped.append(f"{otype} {obj['id']}: " + ("no host" if not host else "missing fields"))
                continue
            plan.checks.append(CheckSpec(
                check_name(otype, obj["id"]), host, cmd,
                {"environment": env.name, "object_type": otype, "object_id": obj["id"]}))
    for link_type in MONITORED_LINK_TYPES:
        links = store.find_links(env.name, link_type=link_type)
        ends = {o["id"]: o for o in store.find_objects(
            env.name, ids={lk["source_id"] for lk in links} | {lk["target_id"] for lk in links})} if links else {}
        for lk in links:
            vnic, vconnector = ends.get(lk["source_id"]), ends.get(lk["target_id"])
            host = (vnic or {}).get("host") or lk.get("host")
            iface = (vnic or {}).get("local_name") or (vnic or {}).get("name")
            if vnic is None or vconnector is None or not host or not iface:
                plan.skipped.append(f"link {link_type} {lk['source_id']} -> {lk['target_id']}: missing endpoint fields")
                continue
            args = [str(iface), "--bridge", _bridge_name(vconnector, host)]
            if vnic.get("mac_address"):
                args += ["--mac", str(vnic["mac_address"])]
            plan.checks.append(CheckSpec(
                check_name("link", link_type, lk["source_id"], lk["target_id"]), host, command("vnic_link", *args),
                {"environment": env.name, "link_type": link_type, "source_id": lk["source_id"],
                 "target_id": lk["target_id"]}))
    return plan


def _bridge_name(obj: dict[str, Any], host: str) -> str:
    return str(obj.get("bridge") or _strip_host(str(obj.get("object_name") or obj.get("name") or obj["id"]), host))


def _vservice_command(obj: dict[str, Any], host: str, command: Callable[..., str]) -> str | None:
    namespace = obj.get("local_service_id") or _strip_host(str(obj["id"]), host)
    service_type = obj.get("service_type") or ("dhcp" if namespace.startswith("qdhcp-") else
                                               "router" if namespace.startswith("qrouter-") else "service")
    return command("vservice", str(service_type), str(namespace))


# -- Sensu Core -------------------------------------------------------------------------------------

def sensu_core_config(plan: CheckPlan, env: EnvironmentConfig, *, vhost: str = "/sensu", interval: int = 15,
                      password: str | None = None) -> dict[str, dict[str, Any]]:
    """Per host: ``client.json`` (client, transport) and ``checks.json`` (standalone checks)."""
    monitoring = env.section("Monitoring")
    out: dict[str, dict[str, Any]] = {}
    for host in plan.hosts:
        client: dict[str, Any] = {"client": {"name": host, "address": host, "subscriptions": [HANDLER_NAME],
                                             "stackmap": {"environment": plan.environment}}}
        if monitoring is not None:
            client["transport"] = {"name": "rabbitmq"}
            client["rabbitmq"] = {"host": monitoring.server_ip, "port": int(monitoring.rabbitmq_port), "vhost": vhost,
                                  "user": monitoring.rabbitmq_user or "sensu",
                                  "password": password if password is not None else "CHANGE-ME"}
        checks = {c.name: {"command": c.command, "standalone": True, "interval": interval,
                           "stackmap": dict(c.metadata)}
                  for c in plan.checks if c.host == host}
        out[host] = {"client.json": client, "checks.json": {"checks": checks}}
    return out


# -- Sensu Go ---------------------------------------------------------------------------------------

def sensu_go_resources(plan: CheckPlan, *, namespace: str = "default", interval: int = 15,
                       handler_command: str = "stackmap-sensu-handler") -> list[dict[str, Any]]:
    """A pipe Handler plus one CheckConfig per check (labels for filtering, annotations for ids)."""
    resources: list[dict[str, Any]] = [{
        "type": "Handler", "api_version": "core/v2",
        "metadata": {"name": HANDLER_NAME, "namespace": namespace},
        "spec": {"type": "pipe", "command": f"{handler_command} --environment {shlex.quote(plan.environment)}",
                 "timeout": 10},
    }]
    short = ("environment", "object_type", "link_type")
    for c in plan.checks:
        labels = {f"stackmap_{k}": v for k, v in c.metadata.items() if k in short}
        annotations = {f"stackmap_{k}": v for k, v in c.metadata.items()}
        resources.append({
            "type": "CheckConfig", "api_version": "core/v2",
            "metadata": {"name": c.name, "namespace": namespace, "labels": labels, "annotations": annotations},
            "spec": {"command": c.command, "interval": interval, "publish": True,
                     "subscriptions": [f"entity:{c.host}"], "handlers": [HANDLER_NAME]},
        })
    return resources
