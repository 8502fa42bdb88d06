"""Recalibration of a model's log-odds and Vergouwe's closed test among the updating methods.

Pure statistics, shared by local updating (`pipeline.update`) and monitoring (`pipeline.monitoring`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import chi2

NONE, INTERCEPT, LOGISTIC, REVISION = "none", "recalibration_in_the_large", "logistic_recalibration", "revision"


def loglik(y: np.ndarray, lp: np.ndarray) -> float:
    return float(np.sum(y * lp - np.logaddexp(0.0, lp)))


def fit_recalibration(y: np.ndarray, lp: np.ndarray, with_slope: bool) -> tuple[float, float]:
    """Maximum-likelihood a (and b) of logit p = a + b lp (b = 1 without a slope)."""
    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = theta[0], (theta[1] if with_slope else 1.0)
        z = a + b * lp
        p = expit(z)
        grad = [np.sum(p - y)] + ([np.sum((p - y) * lp)] if with_slope else [])
        return -loglik(y, z), np.asarray(grad, dtype=float)

    start = np.array([0.0, 1.0] if with_slope else [0.0])
    res = minimize(nll, start, jac=True, method="BFGS")
    return float(res.x[0]), float(res.x[1]) if with_slope else 1.0


@dataclass
class ClosedTest:
    method: str
    alpha: float
    loglik: dict[str, float]
    statistics: dict[str, float]
    intercept: float = 0.0  # the recalibration a', b' on the champion's log-odds
    slope: float = 1.0
    notes: list[str] = field(default_factory=list)


def closed_test(y: np.ndarray, lp: np.ndarray, alpha: float) -> ClosedTest:
    """Vergouwe's closed test among (0), (1), (2)."""
    a1, _ = fit_recalibration(y, lp, with_slope=False)
    a2, b2 = fit_recalibration(y, lp, with_slope=True)
    ll = {NONE: loglik(y, lp), INTERCEPT: loglik(y, a1 + lp), LOGISTIC: loglik(y, a2 + b2 * lp)}
    lr_20 = max(0.0, 2 * (ll[LOGISTIC] - ll[NONE]))
    lr_21 = max(0.0, 2 * (ll[LOGISTIC] - ll[INTERCEPT]))
    lr_10 = max(0.0, 2 * (ll[INTERCEPT] - ll[NONE]))
    stats = {"lr_logistic_vs_original": lr_20, "p_logistic_vs_original": float(chi2.sf(lr_20, 2)),
             "lr_logistic_vs_intercept": lr_21, "p_logistic_vs_intercept": float(chi2.sf(lr_21, 1)),
             "lr_intercept_vs_original": lr_10, "p_intercept_vs_original": float(chi2.sf(lr_10, 1)),
             "fitted_intercept_only": a1, "fitted_intercept": a2, "fitted_slope": b2}
    if stats["p_logistic_vs_original"] >= alpha:
        return ClosedTest(NONE, alpha, ll, stats)
    if stats["p_logistic_vs_intercept"] >= alpha:
        return ClosedTest(INTERCEPT, alpha, ll, stats, intercept=a1, slope=1.0)
    return ClosedTest(LOGISTIC, alpha, ll, stats, intercept=a2, slope=b2)
