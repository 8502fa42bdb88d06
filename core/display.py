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


# One rule per headline figure, wherever people read it (the model card, the validation report, the
# run's and the version's descriptions, the CLI, the decision block, the IECV and update summaries):
# the decimals each kind of figure is printed with. JSON for machines keeps full precision. A key is
# matched by its kind, so "validated_auroc", "m_easix_auroc" and "auroc_minus_m_easix" are AUROCs.
DECIMALS: dict[str, int] = {
    "auroc": 3,
    "auprc": 3,
    "calibration_slope": 2,
    "calibration_intercept": 2,
    "observed_expected_ratio": 2,
    "observed_expected": 2,  # O/E as the monitoring names it
    "oe": 2,  # and as the meta-analysis names it
    "brier": 4,
    "scaled_brier": 3,
    "net_benefit": 4,
    "calibration_in_the_large": 4,
    "ici": 4,
    "e50": 4,
    "e90": 4,
}
_KINDS = sorted(DECIMALS, key=len, reverse=True)


def decimals(key: str) -> int:
    """The decimals of a figure named by its key (or a key that contains its kind); 3 otherwise."""
    for kind in _KINDS:
        if key == kind or key.startswith(kind + "_") or key.endswith("_" + kind) or f"_{kind}_" in key:
            return DECIMALS[kind]
    return 3


def figure(key: str, v: Any, signed: bool = False) -> str:
    """A headline figure by its rule ('0.742', '0.95', '0.1234'); 'n/a' when missing or not finite."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(f):
        return "n/a"
    d = decimals(key)
    text = f"{f:+.{d}f}" if signed else f"{f:.{d}f}"
    return text.replace("-", "", 1) if float(text) == 0 and text.startswith("-") else text


def figure_ci(d: Any, key: str, label: str = "") -> str:
    """'0.742 (0.682 to 0.804)' from d[key] and d[key_ci_low], d[key_ci_high] (the point alone when
    either limit is missing); label heads the interval ('95% CI ')."""
    point = figure(key, d.get(key))
    low, high = figure(key, d.get(f"{key}_ci_low")), figure(key, d.get(f"{key}_ci_high"))
    return point if "n/a" in (low, high) else f"{point} ({label}{low} to {high})"


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
