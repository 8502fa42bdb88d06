"""TreeSHAP for the chosen model, in log-odds, exact.

The values come from `models.treeshap` (the same path-dependent algorithm as xgboost's
`pred_contribs` and shap's TreeExplainer, compiled; the tests check equality with both), so
neither a DMatrix nor shap is on the serving path. `margin` asks the library itself, as an
independent check that the explanation adds up to the model's own output.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.treeshap import FlatTrees, from_hist_gradient_boosting, from_xgboost, shap_values


class TreeExplainer:
    """Raw margin contributions: returns (contributions (n, m), bias (n,)), both float64."""

    def __init__(self, kind: str, estimator: Any, nthread: int = 1):
        self.kind = kind
        self.estimator = estimator
        if kind == "xgboost":
            estimator.set_param({"nthread": nthread})
            self.trees: FlatTrees = from_xgboost(estimator)
        elif kind == "hist_gradient_boosting":
            self.trees = from_hist_gradient_boosting(estimator)
        else:
            raise ValueError(f"no explainer for model kind '{kind}'")

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        phi, _, expected = shap_values(self.trees, X)
        return phi, np.full(len(phi), expected)

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The library's own raw margin (no SHAP)."""
        if self.kind == "xgboost":
            return self.estimator.inplace_predict(
                np.asarray(X, dtype=np.float32), predict_type="margin", missing=np.nan
            ).astype(np.float64)
        return np.asarray(self.estimator.decision_function(X), dtype=np.float64)
