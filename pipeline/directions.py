"""Each feature's direction in the model, against the direction the literature gives it.

A clinician stops believing a model the moment higher creatinine lowers the risk. The direction
is read from an all-else-equal sweep: every patient of the evaluation set is scored twice, with
the feature set to a low and to a high value (the 10th and 90th percentile of the observed values
for a number, false/true for a flag, the first/second level of a two-level category) and all else
as recorded; the mean difference in predicted risk is the feature's conditional effect. A
feature with a published direction whose effect has the opposite sign is flagged.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from pipeline.contract import FEATURES_BY_NAME
from pipeline.features import MATRIX_COLUMNS

# A mean risk difference smaller than this is "no effect" (the trees never split on the feature,
# or its splits cancel out).
FLAT = 1e-4
SIGN_TEXT = {1: "raises risk", -1: "lowers risk", 0: "no effect"}


def feature_directions(X: np.ndarray, predict: Callable[[np.ndarray], np.ndarray]) -> pd.DataFrame:
    """One row per single-column feature: feature, low, high, risk_low, risk_high, effect,
    model_direction, published_direction, contradiction. Multi-level categories (one-hot columns)
    have no single direction and are left out."""
    rows = []
    for j, col in enumerate(MATRIX_COLUMNS):
        f = FEATURES_BY_NAME[col.feature]
        if f.kind == "category" and len(f.categories) > 2:
            continue
        if f.kind == "float":
            observed = X[:, j][np.isfinite(X[:, j])]
            if observed.size < 2:
                rows.append(_row(f.name, np.nan, np.nan, np.nan, np.nan, f.direction, note="no values in the data"))
                continue
            low, high = (float(v) for v in np.percentile(observed, [10, 90]))
        else:
            low, high = 0.0, 1.0
        if high <= low:
            rows.append(_row(f.name, low, high, np.nan, np.nan, f.direction, note="constant in the data"))
            continue
        X_low, X_high = X.copy(), X.copy()
        X_low[:, j], X_high[:, j] = low, high
        rows.append(_row(f.name, low, high, float(np.mean(predict(X_low))), float(np.mean(predict(X_high))),
                         f.direction))
    return pd.DataFrame(rows)


def _row(name: str, low: float, high: float, risk_low: float, risk_high: float, published: int,
         note: str = "") -> dict[str, object]:
    effect = risk_high - risk_low
    sign = 0 if not np.isfinite(effect) or abs(effect) < FLAT else int(np.sign(effect))
    return {
        "feature": name,
        "low": low,
        "high": high,
        "risk_low": risk_low,
        "risk_high": risk_high,
        "effect": effect,
        "model_direction": SIGN_TEXT[sign],
        "published_direction": SIGN_TEXT[published] if published else "none established",
        "contradiction": bool(published and sign == -published),
        "note": note,
    }
