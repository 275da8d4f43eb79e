"""setup.cfg lists packages by hand (config/ ships as stackmap.defaults); keep that list complete."""

from __future__ import annotations

import configparser
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_is_listed_in_setup_cfg() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    listed = {line.strip() for line in cfg["options"]["packages"].splitlines() if line.strip()}
    found = set(find_packages(str(ROOT), include=["stackmap", "stackmap.*", "daemons", "daemons.*",
                                                  "handlers", "handlers.*"]))
    assert found | {"stackmap.defaults"} == listed


def test_console_scripts_point_at_real_callables() -> None:
    import importlib

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = [line.strip() for line in cfg["options.entry_points"]["console_scripts"].splitlines() if line.strip()]
    assert scripts
    for script in scripts:
        _name, target = (part.strip() for part in script.split("="))
        module, func = target.split(":")
        assert callable(getattr(importlib.import_module(module), func))
