"""The distribution ships every package of the source tree (a wheel, as the Docker image builds
it, contains only what pyproject.toml lists)."""

from __future__ import annotations

import tomllib

from conftest import ROOT


def test_every_package_directory_is_listed() -> None:
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(settings["packages"])
    mapping = settings["package-dir"]
    found = set()
    for package, folder in mapping.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            found.add(".".join([package, *relative.parts]))
    assert found == listed
