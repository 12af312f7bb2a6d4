"""The conda environment and pyproject pin the same packages, and the installed set matches them."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for line in requirements:
        req = Requirement(line)
        spec = str(req.specifier)
        assert spec.startswith("=="), f"{line!r} is not an exact pin"
        pins[req.name.lower()] = spec[2:]
    return pins


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return _pins(project["dependencies"] + project["optional-dependencies"]["test"])


def conda_pins() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return _pins(pip_block)


def test_environment_yml_matches_pyproject():
    assert conda_pins() == pyproject_pins()


def test_installed_versions_match_pins():
    """An environment check that guards the numbers: results/ and the checked claims were computed with these
    versions, and the code follows their APIs (transformers 5.x renames, skops' trusted types). A package
    installed at another version (a bumped pin without `make install`, a hand-made environment) is named with
    both versions."""
    wrong = {name: (version(name).split("+")[0], pinned) for name, pinned in pyproject_pins().items()
             if version(name).split("+")[0] != pinned}
    assert not wrong, "installed vs pinned: " + ", ".join(f"{n} {v} != {p}" for n, (v, p) in wrong.items()) + \
        " — run `make install` (or pip install -e .[test])"
