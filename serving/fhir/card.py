"""The CDS Hooks 2.0 card of one answer: the risk in words and numbers, its model-development
interval, the top contributing factors and where each input came from; informative, never directive.
Built from the predictor's answer, never recomputed.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from core import display
from core.contract import FEATURES_BY_NAME, INTENDED_USE, OUTCOMES
from core.display import percent
from serving.fhir.resources import (
    CARD_EXTENSION,
    INDICATOR,
    OUTCOME_SHORT,
    OVERRIDE_SYSTEM,
    TOP_FACTORS,
)

# Names and values as people read them, from the contract (core.display): the same words
# as the waterfall, the explanation page and the calculator.
feature_label = display.name
format_value = display.value


def _md(text: Any) -> str:
    """Untrusted text (from the EHR) made safe for one Markdown line or table cell."""
    s = re.sub(r"\s+", " ", str(text)).strip()
    return re.sub(r"([\\`*_\[\]<>|#!])", r"\\\1", s)


def summary(answer: dict[str, Any], outcome: str) -> str:
    group = answer["risk_group"]
    head = f"{group.capitalize()} risk of {OUTCOME_SHORT.get(outcome, outcome)}: {percent(answer['risk'])}"
    unc = answer.get("uncertainty")
    if unc:
        s = f"{head} (interval {interval_text(unc)}, research estimate)"
        if len(s) < 140:
            return s
    s = f"{head} (research estimate)"
    assert len(s) < 140, s
    return s


def interval_text(unc: dict[str, Any]) -> str:
    """"12-25%": the interval in the pages' rounding (core.display)."""
    return display.percent_range(float(unc["interval"][0]), float(unc["interval"][1]))


def card(
    answer: dict[str, Any],
    *,
    outcome: str,
    card_uuid: str,
    source_url: str | None,
    thresholds: tuple[float, float] | None = None,
    sources: dict[str, Any] | None = None,
    notes: list[str] | None = None,
    window: tuple[datetime, datetime] | None = None,
) -> dict[str, Any]:
    """The CDS Hooks 2.0 card for one answer: informative, never directive."""
    group = answer["risk_group"]
    model = answer["model"]
    lines = [
        f"**Estimated probability of {OUTCOMES[outcome].description}: {percent(answer['risk'])}** "
        f"(risk group: **{group}**).",
    ]
    unc = answer.get("uncertainty")
    if unc:
        lines.append(
            f"How sure: {unc['level']:.0%} model-development interval **{interval_text(unc)}**; "
            f"{unc['risk_group_change_probability']:.0%} of {unc['bootstrap_models']} models developed on bootstrap "
            "samples of the development cohort would put this patient in another risk group. This is the uncertainty "
            "of the model, not a range for the patient's outcome."
        )
    if thresholds is not None:
        low, high = thresholds
        lines.append(
            f"Risk groups of this model: low below {percent(low)}, intermediate {percent(low)} to "
            f"{percent(high)}, high from {percent(high)}."
        )
    lines += [
        "",
        "**Top contributing factors** (exact SHAP values on the log-odds scale; positive values raise the estimate):",
        "",
        "| factor | value | effect |",
        "|---|---|---|",
    ]
    for c in answer["explanation"]["contributions"][:TOP_FACTORS]:
        direction = "raises" if c["log_odds"] > 0 else "lowers" if c["log_odds"] < 0 else "no effect"
        lines.append(
            f"| {feature_label(c['feature'])} | {_md(format_value(c['feature'], c['value']))} | "
            f"{c['log_odds']:+.2f} ({direction}) |"
        )
    if sources:
        head = "**Data used**"
        if window is not None:
            head += f" (baseline window {window[0].date().isoformat()} to {window[1].date().isoformat()})"
        lines += ["", head + ":", ""]
        groups: dict[int, list[str]] = {}
        for name in FEATURES_BY_NAME:  # contract order; features sharing one source on one line
            if name in sources:
                groups.setdefault(id(sources[name]), []).append(name)
        for names in groups.values():
            src = sources[names[0]]
            labels = ", ".join(feature_label(n) for n in names)
            values = ", ".join(format_value(n, answer_value(answer, n)) for n in names)
            extra = []
            if src.original:
                extra.append(f"recorded as {_md(src.original)}")
            if src.text and src.text.lower() not in {feature_label(n).lower() for n in names} | {
                FEATURES_BY_NAME[n].description.lower() for n in names
            }:
                extra.append(_md(src.text))
            if src.time is not None:
                extra.append(src.time.date().isoformat())
            if src.reference:
                extra.append(_md(src.reference))
            lines.append(f"- {labels}: {values}" + (f" ({'; '.join(extra)})" if extra else ""))
    remarks = list(answer.get("warnings", [])) + [_md(n) for n in notes or []]  # notes may quote EHR text
    if remarks:
        lines += ["", "**Notes:**", ""] + [f"- {r}" for r in remarks]
    run = f", run {_md(model['run_id'])}" if model.get("run_id") else ""
    lines += ["", f"Model {_md(model['name'])} version {_md(model['version'])}{run}. {INTENDED_USE}"]
    source: dict[str, Any] = {"label": f"{model['name']} v{model['version']} (research use only)"}
    if source_url:
        source["url"] = source_url
    return {
        "uuid": card_uuid,
        "summary": summary(answer, outcome),
        "indicator": INDICATOR[group],
        "detail": "\n".join(lines),
        "source": source,
        "overrideReasons": [
            {"system": OVERRIDE_SYSTEM, "code": "data-incomplete", "display": "Record data incomplete or outdated"},
            {"system": OVERRIDE_SYSTEM, "code": "not-applicable", "display": "Model not applicable to this patient"},
            {"system": OVERRIDE_SYSTEM, "code": "already-known", "display": "Risk already known to the care team"},
        ],
        "extension": {
            CARD_EXTENSION: {
                "risk": answer["risk"],
                "risk_group": group,
                "log_odds": answer["log_odds"],
                "model": {k: v for k, v in model.items() if v is not None},
            }
        },
    }


def answer_value(answer: dict[str, Any], name: str) -> Any:
    for c in answer["explanation"]["contributions"]:
        if c["feature"] == name:
            return c["value"]
    return None
