"""Recalibration of a model's log-odds and Vergouwe's closed test among the updating methods.

Pure statistics, shared by local updating (`pipeline.update.run`) and monitoring (`pipeline.monitor.statistics`).

Vergouwe et al. (Stat Med 2017;36:4529, "A closed testing procedure to select an appropriate method
for updating prediction models") test every simpler update against the MOST extensive one, in
order, each by a likelihood-ratio test at level alpha: the most extensive against the original
(if not significant: keep the original), then against recalibration in the large (not
significant: that), then against logistic recalibration (not significant: that), else the most
extensive. Each step is reached only when the hypotheses it implies were rejected, so the chance
of choosing a more extensive update than the site needs stays at most alpha (closed testing).
`closed_test` runs it with logistic recalibration as the most extensive method;
`closed_test_with_revision` adds a model revision on top (see there).
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


def _fit_logistic(y: np.ndarray, offset: np.ndarray, Z: np.ndarray) -> tuple[np.ndarray, float]:
    """Unpenalised maximum-likelihood coefficients of logit p = offset + Z theta, and the log-likelihood."""
    def nll(theta: np.ndarray) -> tuple[float, np.ndarray]:
        z = offset + Z @ theta
        return -loglik(y, z), Z.T @ (expit(z) - y)

    res = minimize(nll, np.zeros(Z.shape[1]), jac=True, method="BFGS")
    return res.x, -float(res.fun)


def closed_test_with_revision(y: np.ndarray, lp: np.ndarray, revision_lp: np.ndarray, alpha: float) -> ClosedTest:
    """Vergouwe's closed test among (0) original, (1) recalibration in the large, (2) logistic
    recalibration and (3) revision, the revision tested against the original as well.

    `revision_lp` is the revision's OUT-OF-FOLD calibrated log-odds on the local patients (each
    patient's from a refit that never saw it). A tree revision has no parameter count and does not
    nest the recalibrations, so the most extensive model of the test is the one that nests them
    all: logit p = a + b lp + c revision_lp (3 parameters; c = 0 is (2), b = 1 and c = 0 is (1),
    a = 0, b = 1, c = 0 is (0)). Its likelihood-ratio tests against (0), (1) and (2) have 3, 2
    and 1 degrees of freedom, in Vergouwe's order. A site whose predictor effects differ but whose
    calibration is fine rejects all three through c and gets the revision; a site that needs
    no update rejects the first with probability at most alpha.
    """
    base = closed_test(y, lp, alpha)  # fits (0), (1), (2) and their own statistics
    Z = np.column_stack([np.ones_like(lp), lp, revision_lp])
    theta, ll_top = _fit_logistic(y, np.zeros_like(lp), Z)
    ll = {**base.loglik, "extended": ll_top}
    stats = dict(base.statistics)
    for other, df, key in ((NONE, 3, "original"), (INTERCEPT, 2, "intercept"), (LOGISTIC, 1, "logistic")):
        lr = max(0.0, 2 * (ll_top - ll[other]))
        stats[f"lr_extended_vs_{key}"] = lr
        stats[f"p_extended_vs_{key}"] = float(chi2.sf(lr, df))
    stats.update(extended_intercept=float(theta[0]), extended_slope=float(theta[1]),
                 extended_revision_coef=float(theta[2]))
    s = base.statistics
    if stats["p_extended_vs_original"] >= alpha:
        return ClosedTest(NONE, alpha, ll, stats)
    if stats["p_extended_vs_intercept"] >= alpha:
        return ClosedTest(INTERCEPT, alpha, ll, stats, intercept=s["fitted_intercept_only"], slope=1.0)
    if stats["p_extended_vs_logistic"] >= alpha:
        return ClosedTest(LOGISTIC, alpha, ll, stats, intercept=s["fitted_intercept"], slope=s["fitted_slope"])
    return ClosedTest(REVISION, alpha, ll, stats, intercept=s["fitted_intercept"], slope=s["fitted_slope"])
