"""Calibration on the log-odds scale, so that explanations still add up after it.

Platt scaling maps the raw margin m to a + b*m. Because that map is affine, the calibrated
log-odds are a + b*(bias + sum(phi)) = (a + b*bias) + sum(b*phi): scaling every SHAP value by b
and the base value by (a, b) keeps the explanation exact. An isotonic step would not.
"""

from __future__ import annotations

import numpy as np


class PlattOnMargin:
    """Logistic recalibration of a model's margin: calibrated log-odds = intercept_ + slope_*margin.

    A plain class (scikit-learn is imported by `fit` only): a loaded bundle applies its calibration
    through the functions below without importing scikit-learn.
    """

    def fit(self, margin: np.ndarray, y: np.ndarray) -> "PlattOnMargin":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=np.inf, max_iter=1000)
        lr.fit(np.asarray(margin, dtype=np.float64).reshape(-1, 1), np.asarray(y).astype(int))
        self.slope_ = float(lr.coef_[0, 0])
        self.intercept_ = float(lr.intercept_[0])
        if not np.isfinite(self.slope_) or self.slope_ <= 0:
            # a non-positive slope would reverse the model's ranking: refuse it, keep identity
            self.slope_, self.intercept_ = 1.0, 0.0
        return self

    def transform(self, margin: np.ndarray) -> np.ndarray:
        return calibrated_log_odds(np.asarray(margin, dtype=np.float64), self.intercept_, self.slope_)

    def __repr__(self) -> str:
        return "PlattOnMargin()"


# -- applying a fitted calibration (the one place that does; a bundle stores intercept and slope) --


def calibrated_log_odds(margin: np.ndarray, intercept: float, slope: float) -> np.ndarray:
    """Calibrated log-odds of a raw margin: intercept + slope * margin."""
    return intercept + slope * margin


def calibrated_explanation(
    contributions: np.ndarray, bias: np.ndarray, intercept: float, slope: float
) -> tuple[np.ndarray, np.ndarray]:
    """(base, contributions) on the calibrated log-odds scale: the affine map spread over the terms.

    base + contributions.sum(axis=1) is calibrated_log_odds(bias + the raw contributions' sum), up to rounding.
    """
    return intercept + slope * bias, contributions * slope


def risk_of(log_odds: np.ndarray) -> np.ndarray:
    """The probability of calibrated log-odds (the logistic function)."""
    return 1.0 / (1.0 + np.exp(-log_odds))
