"""The package installs on every Python it claims, and claims every Python users have; pip
installs it as uv does."""

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parents[1]


def test_python_3_11_and_every_newer_release_may_install_it():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    for spec in (project["requires-python"], lock["requires-python"]):
        assert all(version in SpecifierSet(spec) for version in ("3.11", "3.12", "3.13", "3.14"))


def test_pip_installs_the_dependencies_that_uv_installs_with_overrides():
    """uv overrides a requirement that a dependency declares wrongly (hydra-optuna-sweeper's
    optuna<3, in the `sweep` extra); pip has no overrides, so no package that uv overrides may
    be among what the project needs without extras, or `pip install -e .` finds no solution."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    overridden = {Requirement(r).name for r in pyproject["tool"]["uv"]["override-dependencies"]}
    packages = {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    to_visit = [  # as the lock writes a dependency: its name and the extras asked of it
        {"name": r.name, "extra": sorted(r.extras)}
        for r in map(Requirement, pyproject["project"]["dependencies"])
    ]
    needed = set()  # every package the dependencies need, from the lock
    while to_visit:
        dependency = to_visit.pop()
        name, extras = canonicalize_name(dependency["name"]), dependency.get("extra", [])
        if (name, *extras) in needed:
            continue
        needed.add((name, *extras))
        to_visit += packages[name].get("dependencies", [])
        for extra in extras:
            to_visit += packages[name].get("optional-dependencies", {}).get(extra, [])
    assert len(needed) > 50  # torch, Lightning, datasets... and theirs
    assert overridden.isdisjoint(name for name, *_ in needed)
