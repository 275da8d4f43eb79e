"""End-to-end tests against the real OpenStack rig (../shared/rig/openstack, brought up by
tests/e2e/rig_up.sh). They run only with STACKMAP_E2E=1, and then a missing rig is a failure."""

from __future__ import annotations

import os

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("STACKMAP_E2E") == "1":
        return
    skip = pytest.mark.skip(reason="end-to-end: set STACKMAP_E2E=1 with the rig up (bash tests/e2e/rig_up.sh)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)
