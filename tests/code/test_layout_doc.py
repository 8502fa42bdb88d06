"""The documentation's Layout page (docs/layout.md) is the tree: one entry per package folder, naming exactly the modules it holds.

An entry starts at the line's first column with the folder (`pipeline/data/`); its modules follow,
separated by commas, each optionally followed by what it holds in parentheses. A module counts as
named only in its own folder's entry and outside parentheses, so a word in a description names
nothing, and a name whose module is gone fails as a stale entry.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("core", "models", "pipeline", "serving", "cli")


def _layout() -> str:
    page = (ROOT / "docs" / "layout.md").read_text(encoding="utf-8")
    return page.split("# Layout", 1)[1].split("```", 2)[1]


def _entries(layout: str) -> dict[str, set[str]]:
    """folder -> the names its entry lists (descriptions in parentheses removed)."""
    entries: dict[str, str] = {}
    current = None
    for line in layout.splitlines():
        m = re.match(r"^(\S+/)\s*(.*)$", line)
        if m:
            current = m.group(1)
            entries[current] = m.group(2)
        elif current and line.strip():
            entries[current] += " " + line.strip()
    out = {}
    for folder, text in entries.items():
        while re.search(r"\([^()]*\)", text):
            text = re.sub(r"\([^()]*\)", "", text)
        out[folder] = {t.strip() for t in re.split(r"[,;:]", text) if t.strip()}
    return out


def _package_folders() -> dict[str, set[str]]:
    out = {}
    for top in OURS:
        for init in (ROOT / top).rglob("__init__.py"):
            folder = init.parent
            if "migrations" in folder.relative_to(ROOT).parts:
                continue
            out[folder.relative_to(ROOT).as_posix() + "/"] = {p.stem for p in folder.glob("*.py")} - {"__init__"}
    return out


def test_every_package_folder_has_an_entry_naming_exactly_its_modules() -> None:
    entries, folders = _entries(_layout()), _package_folders()
    assert folders, "no package folders found"
    missing_folders = sorted(set(folders) - set(entries))
    assert not missing_folders, f"package folders without a Layout entry: {missing_folders}"
    wrong = []
    for folder, modules in sorted(folders.items()):
        listed = {n for n in entries[folder] if not n.endswith("/")}
        if modules - listed:
            wrong.append(f"{folder}: not named: {sorted(modules - listed)}")
        if listed - modules:
            wrong.append(f"{folder}: named but not there: {sorted(listed - modules)}")
    assert not wrong, "docs/layout.md out of step with the tree:\n" + "\n".join(wrong)


def test_subfolders_named_in_an_entry_exist() -> None:
    entries = _entries(_layout())
    wrong = [f"{folder}{n}" for folder, names in entries.items() if folder.split("/")[0] in OURS
             for n in names if n.endswith("/") and not (ROOT / folder / n).is_dir()]
    assert not wrong, f"Layout names folders that do not exist: {wrong}"


def test_a_word_in_a_description_does_not_count_as_a_module() -> None:
    entries = _entries("pipeline/train/   (the stages: gate, promote): run (the orchestrator; gate and promote)\n")
    assert entries == {"pipeline/train/": {"run"}}
