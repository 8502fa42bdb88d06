"""Each feature's direction in the model, against the direction the literature gives it.

A clinician stops believing a model the moment higher creatinine lowers the risk. The direction
is read from an all-else-equal sweep: every patient of the evaluation set is scored twice, with
the feature set to a low and to a high value (the 10th and 90th percentile of the observed values
for a number, false/true for a flag, the first/second level of a two-level category) and all else
as recorded; the mean difference in predicted risk is the feature's conditional effect. A
feature with a published direction whose effect has the opposite sign is flagged.

Under a monotone constraint the served model cannot go against the enforced direction, so that
check alone is a tautology. The table therefore also reads the same sweep from the same
configuration fitted WITHOUT any constraint on the same patients (`unconstrained_fit`): where that
fit goes against an enforced direction, the constraint is overriding these data (flagged
`constraint_against_data`); for a feature with no baseline direction in the evidence (creatinine,
the cytokines) both fitted directions are shown and nothing is enforced.

The costimulatory domain is swept only over patients whose product does not fix it ("other"):
switching a brexucabtagene (CD28) patient to 4-1BB describes no real patient.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pandas as pd

from core.contract import FEATURES_BY_NAME
from core.features import MATRIX_COLUMNS, MATRIX_NAMES

# A mean risk difference smaller than this is "no effect" (the trees never split on the feature,
# or its splits cancel out).
FLAT = 1e-4
SIGN_TEXT = {1: "raises risk", -1: "lowers risk", 0: "no effect"}
# A two-level feature that another feature fixes for most patients: swept only where it is free.
FREE_ONLY_WHERE = {"costimulatory_domain": "product=other"}


def unconstrained_fit(kind: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, seed: int
                      ) -> Callable[[np.ndarray], np.ndarray]:
    """The configuration fitted on (X, y) with every monotone constraint removed; its risk(X).
    Uncalibrated: a Platt map with a positive slope changes no sign, and only signs are compared."""
    from models.candidates import CANDIDATES

    model = CANDIDATES[kind].factory(seed, 1).set_params(**params)
    if CANDIDATES[kind].tree:  # the logistic family has no constraint to remove: the same fit
        model.set_params(**({"monotone_constraints": None} if kind == "xgboost" else {"monotonic_cst": None}))
    model.fit(X, y)
    return lambda Z: model.predict_proba(Z)[:, 1]


def feature_directions(X: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                       unconstrained: Callable[[np.ndarray], np.ndarray] | None = None,
                       constrained: bool = True) -> pd.DataFrame:
    """One row per single-column feature: feature, low, high, risk_low, risk_high, effect,
    model_direction, published_direction, enforced, contradiction, and (with `unconstrained`, the
    same configuration fitted without constraints) unconstrained_effect, unconstrained_direction,
    constraint_against_data. Multi-level categories (one-hot columns) have no single direction and
    are left out. `constrained=False` (a family without monotone constraints, the logistic one):
    nothing is enforced, so no constraint can go against the data."""
    rows = []
    for j, col in enumerate(MATRIX_COLUMNS):
        f = FEATURES_BY_NAME[col.feature]
        if f.kind == "category" and len(f.categories) > 2:
            continue
        rows_used = np.ones(len(X), dtype=bool)
        note = ""
        if f.name in FREE_ONLY_WHERE:
            rows_used = X[:, MATRIX_NAMES.index(FREE_ONLY_WHERE[f.name])] == 1
            note = f"swept over the {int(rows_used.sum())} patients with {FREE_ONLY_WHERE[f.name]} (elsewhere the product fixes it)"
        Xs = X[rows_used]
        if f.kind == "float":
            observed = Xs[:, j][np.isfinite(Xs[:, j])]
            if observed.size < 2:
                rows.append(_row(f.name, np.nan, np.nan, np.nan, np.nan, f.direction, note="no values in the data",
                                 constrained=constrained))
                continue
            low, high = (float(v) for v in np.percentile(observed, [10, 90]))
        else:
            low, high = 0.0, 1.0
        if high <= low or not len(Xs):
            rows.append(_row(f.name, low, high, np.nan, np.nan, f.direction,
                             note="constant in the data" if len(Xs) else "no patient where it is free",
                             constrained=constrained))
            continue
        X_low, X_high = Xs.copy(), Xs.copy()
        X_low[:, j], X_high[:, j] = low, high
        free = (float(np.mean(unconstrained(X_low))), float(np.mean(unconstrained(X_high)))) if unconstrained else None
        rows.append(_row(f.name, low, high, float(np.mean(predict(X_low))), float(np.mean(predict(X_high))),
                         f.direction, note=note, free=free, constrained=constrained))
    return pd.DataFrame(rows)


def _sign(effect: float) -> int:
    return 0 if not np.isfinite(effect) or abs(effect) < FLAT else int(np.sign(effect))


def _row(name: str, low: float, high: float, risk_low: float, risk_high: float, published: int,
         note: str = "", free: tuple[float, float] | None = None, constrained: bool = True) -> dict[str, object]:
    effect = risk_high - risk_low
    sign = _sign(effect)
    free_effect = free[1] - free[0] if free else np.nan
    free_sign = _sign(free_effect)
    return {
        "feature": name,
        "low": low,
        "high": high,
        "risk_low": risk_low,
        "risk_high": risk_high,
        "effect": effect,
        "model_direction": SIGN_TEXT[sign],
        "published_direction": SIGN_TEXT[published] if published else "none at baseline",
        "enforced": bool(published and constrained),
        "contradiction": bool(published and sign == -published),
        "unconstrained_effect": free_effect,
        "unconstrained_direction": SIGN_TEXT[free_sign] if free else "not fitted",
        "constraint_against_data": bool(constrained and free and published and free_sign == -published),
        "note": note,
    }
