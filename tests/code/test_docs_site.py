"""The documentation site builds from docs/ with every internal link and anchor resolving, and the README stays short."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_site_builds_strictly(tmp_path):
    # strict (mkdocs.yml): a broken link, a missing anchor or a page left out of the nav fails the build
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert (tmp_path / "site" / "index.html").exists()


def test_the_readme_is_a_first_screen_and_links_every_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 120
    assert "Research use only" in text
    assert re.search(r"^make serve\b", text, re.M) and re.search(r"^make test\b", text, re.M)
    nav = re.findall(r":\s*(\S+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    for page in nav:
        assert (ROOT / "docs" / page).exists(), page
        if page != "index.md":
            assert f"(docs/{page})" in text, f"README does not link docs/{page}"


def test_no_link_leaves_the_repository():
    for path in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            resolved = (path.parent / target.partition("#")[0]).resolve()
            assert resolved.is_relative_to(ROOT), f"{path.name} links outside the repository: {target}"
