"""The README's layout names every module of ours, so a newcomer finds each one from it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _layout() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Layout", 1)[1].split("```", 2)[1]


def test_every_module_and_package_is_named_in_the_readme_layout() -> None:
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", _layout()))
    missing = []
    for top in ("pipeline", "models", "serving"):
        for path in (ROOT / top).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if path.name == "__init__.py" or "migrations" in rel.parts:
                continue
            if path.stem not in words:
                missing.append(str(rel))
        for pkg in (ROOT / top).rglob("__init__.py"):
            if pkg.parent.name not in words and pkg.parent != ROOT / top:
                missing.append(str(pkg.parent.relative_to(ROOT)) + "/")
    assert not missing, f"not in the README's Layout section: {sorted(missing)}"
