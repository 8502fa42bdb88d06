"""The service's pages for people (the calculator, the explanation a CDS card links to): one
Jinja environment, one look, one result block, so both show an answer the same way.

Values are escaped by Jinja's autoescape; numbers and names come from core.display (one
rounding rule per kind of figure, the contract's names). Pages load nothing: styles are inline,
the waterfall is inline SVG, and the Content-Security-Policy forbids anything else.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from markupsafe import Markup

from core import display
from core.contract import INTENDED_USE, OUTCOMES

HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors *"
    ),
}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("serving", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(percent=display.percent, log_odds=display.log_odds)
    return env


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(notice=INTENDED_USE, **context)


def inline_svg(svg: bytes) -> Markup:
    """An SVG drawn by core.waterfall, inline: without its XML declaration and doctype.
    Trusted markup (drawn by matplotlib from numbers and the contract's names, never from a request's text)."""
    text = svg.decode("utf-8")
    return Markup(text[text.index("<svg"):])


def result(answer: dict[str, Any], outcome: str, thresholds: tuple[float, float], svg: bytes) -> dict[str, Any]:
    """What the result block shows of one answer: the risk and group, the interval in words, the
    groups' limits, the waterfall and its contributions as a table (for a screen reader)."""
    unc = answer.get("uncertainty")
    rows = [
        {"name": display.name(c["feature"]), "value": display.value(c["feature"], c.get("value")),
         "effect": display.log_odds(float(c["log_odds"])),
         "direction": "raises" if c["log_odds"] > 0 else "lowers" if c["log_odds"] < 0 else "no effect"}
        for c in answer["explanation"]["contributions"]
    ]
    return {
        "outcome": display.words(OUTCOMES[outcome].description if outcome in OUTCOMES else outcome),
        "risk": display.percent(float(answer["risk"])),
        "group": answer["risk_group"],
        "interval": display.interval_words(unc) if unc else None,
        "groups": (f"Risk groups of this model: low below {display.percent(thresholds[0])}, intermediate "
                   f"{display.percent(thresholds[0])} to {display.percent(thresholds[1])}, high from "
                   f"{display.percent(thresholds[1])}."),
        "svg": inline_svg(svg),
        "rows": rows,
        "model": f"{answer['model']['name']} version {answer['model']['version']}",
        "warnings": [display.words(w) for w in answer.get("warnings", [])],
    }
