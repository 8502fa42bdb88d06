"""Numbers and names as people read them: one rounding rule for each kind of figure.

Machines read the JSON (full precision, contract names); people read the waterfall, the
explanation page, the calculator and the CDS card, which all format through here, so the same
value is printed the same way everywhere. The names and units come from the contract's DISPLAY.
"""

from __future__ import annotations

import math
from typing import Any

from core.contract import FEATURES_BY_NAME

NOT_MEASURED = "not measured"


def percent(p: float) -> str:
    """A risk in percent: one decimal below 10%, whole percents above (two significant figures
    at most, what a bootstrap interval supports), '<0.1%' and '>99%' at the ends."""
    if p < 0.001:
        return "<0.1%"
    if p > 0.995:
        return ">99%"
    if p < 0.1:
        return f"{p * 100:.1f}%"
    return f"{p * 100:.0f}%"


def percent_range(lo: float, hi: float) -> str:
    """'12-25%' (or '3.1-8.0%'): an interval in the percent rule."""
    a, b = percent(lo), percent(hi)
    return f"{a}-{b}" if a.startswith("<") else f"{a.rstrip('%')}-{b}"


def number(v: float) -> str:
    """A measured value: three significant figures, whole numbers from 1,000 (no exponent)."""
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    text = f"{v:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def log_odds(x: float) -> str:
    """A contribution or a total on the log-odds scale: two decimals, signed ('0.00' unsigned)."""
    text = f"{x:+.2f}"
    return "0.00" if text in ("+0.00", "-0.00") else text


def words(text: str) -> str:
    """A machine's sentence for people: the contract's column names as people name them, '>=' as '≥'."""
    for f in sorted(FEATURES_BY_NAME.values(), key=lambda f: -len(f.name)):
        text = text.replace(f.name, f.display_name)
    return text.replace(">=", "≥").replace("<=", "≤")


def name(feature: str) -> str:
    """A contract column as people name it ('CRP', 'CAR T-cell dose')."""
    f = FEATURES_BY_NAME.get(feature)
    return f.display_name if f is not None else feature


def value(feature: str, v: Any) -> str:
    """A value with its unit as people read it: '8 mg/L', 'yes', 'brexucabtagene autoleucel'."""
    if v is None:
        return NOT_MEASURED
    f = FEATURES_BY_NAME.get(feature)
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        text = number(float(v))
        unit = f.unit_text if f is not None else ""
        if not unit:
            return text
        return f"{text}{unit}" if unit == "%" else f"{text} {unit}"
    return f.category_text(str(v)) if f is not None else str(v)


def label(feature: str, v: Any) -> str:
    """One line of a waterfall or a table: 'CRP 8 mg/L'."""
    return f"{name(feature)}: {value(feature, v)}"


def interval_words(unc: dict[str, Any]) -> str:
    """The model-development interval in one sentence a clinician can read."""
    return (
        f"Models developed the same way on other samples of the development patients give this patient "
        f"between {percent(float(unc['interval'][0]))} and {percent(float(unc['interval'][1]))} "
        f"({unc.get('level', 0.95):.0%} of them); {float(unc['risk_group_change_probability']):.0%} of them would "
        "put this patient in another risk group. This is the uncertainty of the model, not a range for the "
        "patient's outcome."
    )
