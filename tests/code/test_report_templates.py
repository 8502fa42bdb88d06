"""The report's templates (pipeline/report/templates) ship with the package and render what they should."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

from pipeline.report.document import lines, prose, to_html, to_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_every_template_is_package_data():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "pipeline.report.templates" in config["packages"]
    patterns = config["package-data"]["pipeline.report.templates"]
    templates = sorted(p.name for p in (ROOT / "pipeline" / "report" / "templates").iterdir() if p.is_file())
    assert templates
    assert all(any(fnmatch.fnmatch(t, pat) for pat in patterns) for t in templates), templates


def test_one_document_renders_to_markdown_and_html():
    sections = [("Heading <h>", [("p", "a `code` span"), ("ul", ["one", "two|three"]),
                                 ("table", ["a", "b|c"], [[1, "x|y"], [2, "z"]], [False, True]),
                                 ("note", "careful"), ("img", "figure", "/tmp/missing.png")])]
    markdown = to_markdown("T", sections, "BANNER")
    assert markdown == ("# T\n\n> **BANNER**\n\n## Heading <h>\n\na `code` span\n\n- one\n- two|three\n\n"
                        "| a | b\\|c |\n|---|---|\n| 1 | x\\|y |\n| 2 | z |\n\n> careful\n\n![figure](missing.png)\n")
    page = to_html("T <t>", sections, "BANNER")
    assert page.startswith("<!DOCTYPE html>\n") and page.endswith("</body></html>\n")
    assert "<title>T &lt;t&gt;</title>" in page and "<h2>Heading &lt;h&gt;</h2>" in page
    assert "<p>a <code>code</code> span</p>" in page
    assert '<tr class="small"><td>2</td><td>z</td></tr>' in page
    assert "<img" not in page  # an image without data is left out


def test_prose_macros_give_plain_text():
    items = lines(prose("model_card").metrics(123))
    assert len(items) == 4 and "(123 resamples)" in items[0]
    assert "CD19/CD22" in prose("model_card").factors("< 18 / >= 18", "4-1BB / CD28", "<= 20% / > 20%",
                                                      "CD19, CD22, CD19/CD22")
