"""Held-out performance of a risk model: discrimination, accuracy and calibration.

Pure functions on arrays: no I/O, no plotting, no tracking. sklearn.metrics does the work where it
already does it; only calibration slope / intercept is written here, because sklearn has no
recalibration fit with an offset. The bootstrap intervals of these metrics are `pipeline.stats.bootstrap`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.special import expit, log_expit, logit
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
)

# Probabilities are clipped before the logit so that a predictor that says exactly 0 or 1 gives a
# finite (very large) logit instead of +-inf.
P_CLIP = 1e-12

MetricFn = Callable[[np.ndarray, np.ndarray], float]


# --------------------------------------------------------------------------- input checks


def _as_binary(y: np.ndarray) -> np.ndarray:
    """Outcomes as a 1-d int array of 0/1; anything else is a caller bug, so raise."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"y must be 1-d, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.all(np.isin(arr, (0, 1))):
        raise ValueError("y must contain only 0/1 (or booleans)")
    return arr.astype(np.int64)


def _as_score(s: np.ndarray, n: int, *, probability: bool) -> np.ndarray:
    """Scores as a finite 1-d float array of length n (and within [0, 1] for probabilities)."""
    arr = np.asarray(s, dtype=float)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"predictions must be 1-d with {n} rows, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("predictions contain NaN or inf")
    if probability and (arr.min(initial=0.0) < 0.0 or arr.max(initial=0.0) > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    return arr


def _both_classes(y: np.ndarray) -> bool:
    return 0 < int(y.sum()) < y.shape[0]


# --------------------------------------------------------------------------- calibration


def _fit_logistic_offset(
    x: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100, tol: float = 1e-10
) -> np.ndarray | None:
    """Unpenalised logistic regression of y on design x with a fixed offset (Newton-Raphson
    with step halving). Returns the coefficients, or None if it does not converge (separation,
    singular design): the caller reports NaN rather than a meaningless huge number."""
    theta = np.zeros(x.shape[1])

    def loglik(t: np.ndarray) -> float:
        eta = offset + x @ t
        return float(np.sum(y * log_expit(eta) + (1 - y) * log_expit(-eta)))

    ll = loglik(theta)
    for _ in range(max_iter):
        mu = expit(offset + x @ theta)
        grad = x.T @ (y - mu)
        hess = (x * (mu * (1 - mu))[:, None]).T @ x
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        if not np.all(np.isfinite(step)):
            return None
        # Step halving keeps Newton monotone when the start is far from the optimum.
        t = 1.0
        while t > 1e-8:
            candidate = theta + t * step
            ll_new = loglik(candidate)
            if ll_new >= ll - 1e-12:
                break
            t /= 2
        theta, ll = candidate, ll_new
        if np.max(np.abs(t * step)) < tol:
            return theta
    return None


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """Calibration slope and calibration-in-the-large (intercept), on the logit scale.

    slope: b in logit P(y=1) = a + b * logit(p), unpenalised; b < 1 means the predictions are
    too extreme (overfitting), b > 1 too timid.
    intercept: a0 in logit P(y=1) = a0 + 1 * logit(p), i.e. logit(p) as an offset; a0 > 0 means
    the model under-predicts on average, a0 < 0 over-predicts.
    Perfect calibration gives (1, 0). Returns NaN where a value is not identifiable: one outcome
    class, constant predictions (slope only) or perfect separation.
    """
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    if not _both_classes(y):
        return float("nan"), float("nan")
    lp = logit(np.clip(p, P_CLIP, 1 - P_CLIP))
    ones = np.ones((y.shape[0], 1))

    intercept_fit = _fit_logistic_offset(ones, y, offset=lp)
    intercept = float(intercept_fit[0]) if intercept_fit is not None else float("nan")

    slope = float("nan")
    if np.ptp(lp) > 0:
        slope_fit = _fit_logistic_offset(np.column_stack([ones, lp]), y, offset=np.zeros_like(lp))
        if slope_fit is not None:
            slope = float(slope_fit[1])
    return slope, intercept


# --------------------------------------------------------------------------- point metrics


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """AUROC (sklearn), NaN instead of an exception when only one class is present, so a
    small held-out fold does not crash a report."""
    y = _as_binary(y)
    score = _as_score(score, y.shape[0], probability=False)
    return float(roc_auc_score(y, score)) if _both_classes(y) else float("nan")


def auprc(y: np.ndarray, score: np.ndarray) -> float:
    """Average precision (sklearn); NaN without positives. Read it against the prevalence,
    which is its no-skill value."""
    y = _as_binary(y)
    score = _as_score(score, y.shape[0], probability=False)
    return float(average_precision_score(y, score)) if _both_classes(y) else float("nan")


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Brier score (sklearn): mean squared error of the probability."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    return float(brier_score_loss(y, p, labels=[0, 1]))


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Discrimination only, for scores that are not probabilities (the clinical baselines such as
    EASIX): Brier, log-loss and calibration would be meaningless for them."""
    y = _as_binary(y)
    score = _as_score(score, y.shape[0], probability=False)
    return {
        "auroc": auroc(y, score),
        "auprc": auprc(y, score),
        "n": int(y.shape[0]),
        "events": int(y.sum()),
    }


def binary_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """All held-out metrics of a probability: discrimination (AUROC, AUPRC), overall accuracy
    (Brier, log-loss) and calibration (slope, intercept), plus the counts that give them
    meaning. Calibration is reported because the literature rarely does."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    slope, intercept = calibration_slope_intercept(y, p)
    return {
        "auroc": auroc(y, p),
        "auprc": auprc(y, p),
        "brier": brier(y, p),
        "log_loss": float(log_loss(y, np.clip(p, P_CLIP, 1 - P_CLIP), labels=[0, 1])),
        "calibration_slope": slope,
        "calibration_intercept": intercept,
        "prevalence": float(y.mean()) if y.shape[0] else float("nan"),
        "n": int(y.shape[0]),
        "events": int(y.sum()),
    }
