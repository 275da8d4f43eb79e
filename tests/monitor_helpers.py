"""Shared test material for the monitor handler: a small monitored map, result builders, a store
wrapper that counts writes (how 'unchanged results write nothing' is proven)."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

from stackmap.model import EnvironmentConfig, InventoryObject, Link
from stackmap.store import Store

ENV = "mon"

OBJECTS = [
    {"id": "h1-OVS", "type": "vedge", "host": "h1", "agent_type": "Open vSwitch agent"},
    {"id": "h2-OVS", "type": "vedge", "host": "h2", "agent_type": "Open vSwitch agent"},
    {"id": "eth0-fa:16:3e:00:00:01", "type": "host_pnic", "host": "h1", "local_name": "eth0"},
    {"id": "h1-br_int-8000", "type": "vconnector", "host": "h1", "object_name": "h1-brq1"},
    {"id": "h1-qdhcp-net_1", "type": "vservice", "host": "h1", "local_service_id": "qdhcp-net_1",
     "service_type": "dhcp"},
    {"id": "h1-otep", "type": "otep", "host": "h1", "ip_address": "10.0.0.1"},
    {"id": "h2-otep", "type": "otep", "host": "h2", "ip_address": "10.0.0.2"},
    {"id": "h1-tap_1", "type": "vnic", "host": "h1", "name": "tap_1", "mac_address": "fa:16:3e:00:00:09"},
    {"id": "host1", "type": "host"},
]
LINKS = [
    ("vedge-host_pnic", "h1-OVS", "eth0-fa:16:3e:00:00:01"),
    ("vnic-vconnector", "h1-tap_1", "h1-br_int-8000"),
]


def seed(store: Store, env: str = ENV, *, monitoring: dict[str, Any] | None = None) -> None:
    config: dict[str, Any] = {"name": env, "environment_type": "Bare-metal", "enable_monitoring": True}
    if monitoring is not None:
        config["configuration"] = [{"name": "Monitoring", **monitoring}]
    store.add_environment(EnvironmentConfig.model_validate(config).to_doc())
    store.upsert_objects(env, [InventoryObject(environment=env, id_path=f"/{env}/{o['id']}", **o).to_doc()
                               for o in OBJECTS])
    store.upsert_links(env, [Link(environment=env, link_type=t, source_id=s, target_id=d).to_doc()
                             for t, s, d in LINKS])


def core_result(name: str, status: int, *, output: str = "out", executed: float | None = None,
                env: str | None = ENV, **meta: str) -> dict[str, Any]:
    check: dict[str, Any] = {"name": name, "status": status, "output": output,
                             "executed": int(executed if executed is not None else time.time()), "issued": 0}
    stackmap = ({"environment": env} if env else {}) | meta
    if stackmap:
        check["stackmap"] = stackmap
    return {"client": "h1", "check": check}


def go_event(name: str, status: int, *, output: str = "out", executed: float | None = None,
             labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "entity": {"metadata": {"name": "h1", "namespace": "default"}},
        "check": {"metadata": {"name": name, "namespace": "default", "labels": labels or {},
                               "annotations": annotations or {}},
                  "status": status, "output": output,
                  "executed": int(executed if executed is not None else time.time()), "issued": 0},
        "timestamp": int(time.time()),
    }


def body(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc).encode()


class CountingStore:
    """Delegates to a real store and counts the writes the monitor handler can make."""

    WRITES = ("update_object", "update_link", "update_objects", "update_links", "append_messages", "upsert_objects",
              "upsert_links")

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.fail_writes = 0  # make the next N writes raise (a store outage)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name not in self.WRITES:
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            if self.fail_writes > 0:
                self.fail_writes -= 1
                raise RuntimeError("store unavailable (test)")
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted

    @property
    def writes(self) -> int:
        return sum(self.calls.values())
