"""The package installs on every Python it claims, and claims every Python users have."""

import tomllib
from pathlib import Path

from packaging.specifiers import SpecifierSet

ROOT = Path(__file__).parents[1]


def test_python_3_11_and_every_newer_release_may_install_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    for spec in (project["requires-python"], lock["requires-python"]):
        assert all(version in SpecifierSet(spec) for version in ("3.11", "3.12", "3.13", "3.14"))
