"""The one renderer of the validation report and the model card: a document model rendered by two
Jinja2 templates (pipeline/report/templates/document.md.j2 and document.html.j2), and the prose templates.

A document is a title and a list of sections (heading, blocks); a block is ("p", text),
("ul", [items]), ("table", headers, rows[, small-row flags]), ("img", alt, path) or ("note", text).
The same structure renders to Markdown and to HTML, so the two versions of the model card cannot
drift apart. Prose lives in templates (`prose("model_card")`), numbers are formatted here.
"""

from __future__ import annotations

import html
import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

import jinja2
import numpy as np

from core import display

BANNER = "Research use only. Not a medical device. No treatment advice."

Block = tuple
Section = tuple[str, list[Block]]


# --------------------------------------------------------------------------- numbers as text


def num(v: Any, digits: int = 3) -> str:
    """A number as the documents show it: fixed digits, integers as they are, "n/a" when missing."""
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return "n/a"
    return f"{f:.{digits}f}"


def rounded(key: str, v: Any) -> str:
    """A headline figure (AUROC, slope, intercept, Brier, O/E, net benefit...) by its one rounding
    rule (core.display.DECIMALS), the same in every document and message."""
    return display.figure(key, v)


def ci(d: Mapping[str, Any], key: str) -> str:
    """'0.741 (0.682 to 0.804)' from d[key], d[key_ci_low], d[key_ci_high], by the figure's rule."""
    return display.figure_ci(d, key)


def pct(v: Any, digits: int = 1) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * f:.{digits}f}%" if math.isfinite(f) else "n/a"


# --------------------------------------------------------------------------- templates


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _esc(text: Any) -> str:
    """HTML-escaped text whose `code spans` (Markdown backticks) become <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _table_rows(block: Block) -> list[tuple[Sequence[Any], bool]]:
    rows = block[2]
    flags = block[3] if len(block) > 3 else [False] * len(rows)
    return list(zip(rows, flags))


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    # No autoescape: the HTML template escapes every value itself (`esc`, `escape_text`), with the
    # standard library's html.escape, and the Markdown and prose templates are plain text.
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("pipeline.report", "templates"),
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(md_cell=_md_cell, esc=_esc, escape_text=lambda t: html.escape(str(t)),
                       basename=lambda p: Path(p).name, table_rows=_table_rows)
    return env


def prose(name: str) -> Any:
    """The macros of pipeline/report/templates/<name>.txt.j2, as callables returning text."""
    return _environment().get_template(f"{name}.txt.j2").module


def lines(text: str) -> list[str]:
    """A macro's list items, one per line."""
    return text.split("\n")


def to_markdown(title: str, sections: Sequence[Section], banner: str = BANNER) -> str:
    page = _environment().get_template("document.md.j2").render(title=title, sections=sections, banner=banner)
    return page.rstrip() + "\n"


def to_html(title: str, sections: Sequence[Section], banner: str = BANNER,
            images: Mapping[str, str] | None = None) -> str:
    """Self-contained HTML; images maps an img block's path to its base64 PNG (others are left out)."""
    return _environment().get_template("document.html.j2").render(
        title=title, sections=sections, banner=banner, images=images or {})
