"""Every package of ours is installed: `make install` is editable, the Dockerfile's install is not,
so a package missing from pyproject.toml would work here and fail in the image."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for top in ("core", "models", "pipeline", "serving", "cli")
        for p in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"not installed by a non-editable install: {sorted(found - listed)}"
