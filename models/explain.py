"""TreeSHAP for the chosen model, in log-odds, from the model's own exact algorithm.

xgboost computes TreeSHAP natively (`pred_contribs`, identical to shap's TreeExplainer, which
delegates to it); scikit-learn's HistGradientBoosting goes through shap's TreeExplainer, imported
only when such a model is explained so that shap stays off the xgboost serving path.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class TreeExplainer:
    """Raw margin contributions: returns (contributions (n, m), bias (n,)), both float64."""

    def __init__(self, kind: str, estimator: Any, nthread: int = 1):
        self.kind = kind
        self.estimator = estimator
        self.nthread = nthread
        self._shap: Any = None
        if kind == "xgboost":
            import xgboost as xgb

            self._xgb = xgb
            self.booster = estimator
            self.booster.set_param({"nthread": nthread})
        elif kind == "hist_gradient_boosting":
            import shap

            self._shap = shap.TreeExplainer(estimator)
        else:
            raise ValueError(f"no explainer for model kind '{kind}'")

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float32 if self.kind == "xgboost" else np.float64)
        if self.kind == "xgboost":
            dm = self._xgb.DMatrix(X, missing=np.nan, nthread=self.nthread)
            out = self.booster.predict(dm, pred_contribs=True).astype(np.float64)
            return out[:, :-1], out[:, -1]
        values = np.asarray(self._shap.shap_values(X), dtype=np.float64)
        base = np.asarray(self._shap.expected_value, dtype=np.float64).reshape(-1)[0]
        return values, np.full(len(X), base)

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The model's own raw margin (no SHAP), to check that contributions add up to it."""
        if self.kind == "xgboost":
            return self.booster.inplace_predict(
                np.asarray(X, dtype=np.float32), predict_type="margin", missing=np.nan
            ).astype(np.float64)
        return np.asarray(self.estimator.decision_function(X), dtype=np.float64)
