"""One visual language for every figure: one colour and one name per series, everywhere.

Every figure of the project (the validation report's, the MLflow run's, the API's waterfall)
takes its series' colours and names from here, so that "the model" is the same blue line with
the same name in every picture, and m-EASIX is always the same orange "m-EASIX".
"""

from __future__ import annotations

import re

# Series keys as the evidence and training code name them (pipeline.evidence: MODEL, EASIX, ...;
# models.candidates: the candidate families, the keys of CANDIDATES; not imported from there, which
# would load scikit-learn into the service: tests/code/test_style_families.py checks they agree).
MODEL = "model"
EASIX = "easix"
M_EASIX = "m_easix"
ORACLE = "oracle"
TREAT_ALL = "treat all"
TREAT_NONE = "treat none"
LOGISTIC_MODEL = "logistic"  # the logistic-regression family and comparator (not logistic recalibration)
FAMILIES = ("xgboost", "hist_gradient_boosting", LOGISTIC_MODEL)
UNTUNED_HGB = "hgb_untuned"

NAMES: dict[str, str] = {
    MODEL: "model",
    EASIX: "EASIX",
    M_EASIX: "m-EASIX",
    ORACLE: "oracle: the generator's true risk, synthetic data only",
    TREAT_ALL: "treat all",
    TREAT_NONE: "treat none",
    "xgboost": "xgboost",
    "hist_gradient_boosting": "hist. gradient boosting",
    LOGISTIC_MODEL: "logistic regression",
    UNTUNED_HGB: "untuned hist. gradient boosting",
}

COLOURS: dict[str, str] = {
    MODEL: "#1f5fa8",  # blue
    EASIX: "#8c8c00",  # olive
    M_EASIX: "#d9822b",  # orange
    ORACLE: "#2ca02c",  # green
    TREAT_ALL: "#7f7f7f",  # grey
    TREAT_NONE: "#000000",
    "xgboost": "#1f5fa8",  # the family the model usually is: the same blue (learning curve, comparisons)
    "hist_gradient_boosting": "#17becf",  # cyan
    "logistic": "#9467bd",  # purple, everywhere
    UNTUNED_HGB: "#17becf",
    "chance": "#bdbdbd",
}

# The waterfall's and any signed effect's colours: raises the risk / lowers it.
RAISES = "#c0392b"
LOWERS = "#2e7d32"
NEUTRAL = "#555555"

RESEARCH_ONLY = "Research use only. Not a medical device. No treatment advice."
DPI = 110
CAPTION_SIZE = 8


def series(label: str) -> str:
    """The series key of a label as the training and evaluation code write it: "xgboost (chosen)"
    and "icans-risk v3" are the model, "oracle (p_true)" is the oracle."""
    if label.endswith(" (chosen)") or re.fullmatch(r".+ v\d+", label):
        return MODEL
    if label.startswith("oracle"):
        return ORACLE
    return label


def name(key: str) -> str:
    """The one display name of a series."""
    key = series(key)
    return NAMES.get(key, key.replace("_", " "))


def colour(key: str) -> str | None:
    return COLOURS.get(series(key))


def caption(fig, text: str) -> None:
    """A caption under the figure that says what to read from it (drawn inside the image, so it
    travels with the PNG wherever it is shown)."""
    import textwrap

    width = max(60, int(fig.get_figwidth() * 14))
    fig.text(0.01, 0.005, textwrap.fill(text, width), fontsize=CAPTION_SIZE, ha="left", va="bottom", color="#333333")
