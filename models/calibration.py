"""Calibration on the log-odds scale, so that explanations still add up after it.

Platt scaling maps the raw margin m to a + b*m. Because that map is affine, the calibrated
log-odds are a + b*(bias + sum(phi)) = (a + b*bias) + sum(b*phi): scaling every SHAP value by b
and the base value by (a, b) keeps the explanation exact. An isotonic step would not.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression


class PlattOnMargin(BaseEstimator):
    """Logistic recalibration of a model's margin: calibrated log-odds = intercept_ + slope_*margin."""

    def fit(self, margin: np.ndarray, y: np.ndarray) -> "PlattOnMargin":
        lr = LogisticRegression(C=np.inf, max_iter=1000)
        lr.fit(np.asarray(margin, dtype=np.float64).reshape(-1, 1), np.asarray(y).astype(int))
        self.slope_ = float(lr.coef_[0, 0])
        self.intercept_ = float(lr.intercept_[0])
        if not np.isfinite(self.slope_) or self.slope_ <= 0:
            # a non-positive slope would reverse the model's ranking: refuse it, keep identity
            self.slope_, self.intercept_ = 1.0, 0.0
        return self

    def transform(self, margin: np.ndarray) -> np.ndarray:
        return self.intercept_ + self.slope_ * np.asarray(margin, dtype=np.float64)
