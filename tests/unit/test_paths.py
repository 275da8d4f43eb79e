"""Where the shipped defaults are found, in a checkout and in an installed wheel."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from stackmap import paths


def test_a_namespace_package_directory_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what setuptools installs config/ as: stackmap.defaults without an __init__.py
    pkg = tmp_path / "smfakepkg"
    (pkg / "defaults").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "defaults" / "scanners.json").write_text("{}")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("smfakepkg", None)
    assert paths.package_dir("smfakepkg.defaults") == pkg / "defaults"
    assert paths.package_dir("smfakepkg.nothing") is None


def test_defaults_dir_holds_the_shipped_configuration() -> None:
    found = paths.defaults_dir()
    for name in ("scanners.json", "link_finders.json", "clique_types.json", "events.json",
                 "recordings/demo/exchanges.json"):
        assert (found / name).is_file(), name
