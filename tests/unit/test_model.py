"""Document models: the shapes and rules the store relies on."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stackmap.model import (
    Clique,
    CliqueType,
    EnvironmentConfig,
    InventoryObject,
    Link,
    Message,
    Scan,
    ScheduledScan,
    link_id,
    stable_id,
)


def test_calipso_environment_document_is_accepted() -> None:
    # the admin guide's example, as Calipso's MongoDB holds it (ports as strings, placeholder dates)
    doc = {
        "name": "DEMO-ENVIRONMENT-SCHEME", "enable_monitoring": True, "last_scanned": "filled-by-scanning",
        "app_path": "/home/scan/calipso_prod/app", "type": "environment", "distribution": "Mirantis",
        "distribution_version": "8.0", "mechanism_drivers": ["OVS"], "type_drivers": "vxlan",
        "operational": "stopped", "listen": True, "scanned": False,
        "configuration": [
            {"name": "OpenStack", "port": "5000", "user": "adminuser", "pwd": "dummy_pwd", "host": "10.0.0.1",
             "admin_token": "dummy_token"},
            {"name": "mysql", "pwd": "dummy_pwd", "host": "10.0.0.1", "port": "3307", "user": "mysqluser"},
            {"name": "CLI", "user": "sshuser", "host": "10.0.0.1", "pwd": "dummy_pwd"},
            {"name": "AMQP", "pwd": "dummy_pwd", "host": "10.0.0.1", "port": "5673", "user": "rabbitmquser"},
            {"name": "Monitoring", "ssh_user": "root", "server_ip": "10.0.0.1", "ssh_password": "dummy_pwd",
             "rabbitmq_pass": "dummy_pwd", "rabbitmq_user": "sensu", "rabbitmq_port": "5671", "provision": "None",
             "env_type": "production", "ssh_port": "20022", "config_folder": "/local_dir/sensu_config",
             "server_name": "sensu_server", "type": "Sensu", "api_port": 4567},
            {"name": "ACI", "user": "admin", "host": "10.1.1.104", "pwd": "dummy_pwd"},
        ],
        "user": "wNLeBJxNDyw8G7Ssg", "auth": {"view-env": ["wNLeBJxNDyw8G7Ssg"], "edit-env": ["wNLeBJxNDyw8G7Ssg"]},
    }
    env = EnvironmentConfig.model_validate(doc)
    assert env.last_scanned is None
    assert env.section("Monitoring").api_port == "4567"
    assert "dummy_pwd" not in repr(env)


def test_stable_ids_cannot_collide() -> None:
    assert stable_id("host-1", "eth0") != stable_id("host", "1-eth0")
    with pytest.raises(ValueError):
        stable_id("a", "b|c")
    assert stable_id("az|r1|nova", "hosts") == "az|r1|nova|hosts"  # an owner's composite id may lead
    with pytest.raises(ValueError):
        stable_id("", "c")


def test_link_id_follows_its_key() -> None:
    lk = Link(environment="e", link_type="instance-vnic", source_id="i", target_id="v")
    assert lk.id == link_id("instance-vnic", "i", "v")
    with pytest.raises(ValidationError, match="does not match its key"):
        Link(environment="e", link_type="instance-vnic", source_id="i", target_id="v", id="other")
    assert Link(environment="e", link_type="a-b", source_id="i", target_id="v", state="down").to_doc()["state"] \
        == "down"


def test_inventory_object_keeps_type_specific_fields() -> None:
    o = InventoryObject(environment="e", type="port", id="p1", mac_address="fa:16:3e:00:00:01")
    doc = o.to_doc()
    assert doc["mac_address"] == "fa:16:3e:00:00:01" and doc["name"] == "p1" and doc["object_name"] == "p1"
    with pytest.raises(ValidationError):
        InventoryObject(environment="e", type="port", id="")


def test_clique_includes_its_focal_point_among_nodes() -> None:
    c = Clique(environment="e", focal_point="i1", focal_point_type="instance", clique_type="t", nodes=["v1"])
    assert c.id == "i1" and c.nodes == ["i1", "v1"]


def test_clique_type_link_types_are_checked() -> None:
    with pytest.raises(ValidationError, match="source_type-target_type"):
        CliqueType(id="x", focal_point_type="instance", link_types=["instancevnic"])
    with pytest.raises(ValidationError):
        CliqueType(id="x", focal_point_type="instance", link_types=[])


def test_scan_options_are_exclusive() -> None:
    with pytest.raises(ValidationError, match="at most one"):
        Scan(environment="e", scan_only_links=True, scan_only_cliques=True)
    assert Scan(environment="e").status == "pending"


def test_schedule_needs_exactly_one_cadence() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        ScheduledScan(environment="e")
    with pytest.raises(ValidationError, match="exactly one"):
        ScheduledScan(environment="e", freq="DAILY", interval_seconds=60)
    assert ScheduledScan(environment="e", freq="DAILY").freq == "DAILY"


def test_message_levels_accept_the_spellings_in_the_wild() -> None:
    assert Message(level="warn").level == "warning"
    assert Message(level="INFO").level == "info"
    assert Message(level="audit").level == "notice"
    with pytest.raises(ValidationError):
        Message(level="loud")
