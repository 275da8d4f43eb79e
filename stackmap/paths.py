"""Where stackmap keeps its files on a host.

The CLI and the three daemons must agree on one SQLite file and one key file without any setting,
so the defaults are derived here once: the system location when it is writable (how the systemd
units run), otherwise the user's data directory (a first run as a normal user).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import platformdirs

SYSTEM_DATA_DIR = Path("/var/lib/stackmap")
SYSTEM_CONFIG_FILE = Path("/etc/stackmap/stackmap.toml")


def _writable_dir(path: Path) -> bool:
    if path.is_dir():
        return os.access(path, os.W_OK | os.X_OK)
    parent = path.parent
    return parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)


def data_dir() -> Path:
    """The directory holding the default database and key file on this host."""
    override = os.environ.get("STACKMAP_DATA_DIR")
    if override:
        return Path(override)
    if _writable_dir(SYSTEM_DATA_DIR):
        return SYSTEM_DATA_DIR
    return Path(platformdirs.user_data_dir("stackmap", appauthor=False))


def default_store_url() -> str:
    return f"sqlite:///{data_dir() / 'stackmap.db'}"


def default_secret_key_file() -> Path:
    return data_dir() / "secret.key"


def defaults_dir() -> Path:
    """The shipped default configuration (scanners, link finders, clique types, events).

    Installed wheels carry it as ``stackmap.defaults``; a source checkout reads ``config/`` directly.
    """
    installed = package_dir("stackmap.defaults")
    if installed is not None:
        return installed
    return Path(__file__).resolve().parent.parent / "config"


def package_dir(name: str) -> Path | None:
    """The directory of a package, including a namespace package (no ``__init__.py``, which is what
    setuptools installs ``config/`` as): ``importlib.resources`` gives those a multiplexed path whose
    ``str`` is not a directory, so the import system's own search location is used."""
    try:
        spec = importlib.util.find_spec(name)
    except ModuleNotFoundError:
        return None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if Path(location).is_dir():
            return Path(location)
    return None
