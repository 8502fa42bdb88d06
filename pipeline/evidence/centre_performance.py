"""One centre's performance with the standard errors a meta-analysis needs (Debray et al. 2017).

The same function serves the internal-external cross-validation (out-of-centre risks) and the
federated summary a centre computes at home (the served model's risks), so the two pool alike.

Per centre: n, events, AUROC with DeLong's standard error (pooled on the logit scale, SE by the
delta method), calibration slope and calibration-in-the-large with their model-based (Fisher
information) standard errors, O/E with SE(log O/E) = sqrt((1 - O/N) / O) (Debray 2017, table 2),
and net benefit at the risk-group thresholds with its multinomial standard error.

A centre with fewer than `MIN_CENTRE_EVENTS` events or non-events is reported (n, events, and
why) but not estimated: below ~10 events DeLong's SE and the calibration slope are unstable
(the slope is often not even identifiable), and such a centre would carry almost no weight in
the pooled estimate anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, logit

from pipeline.stats.metrics import P_CLIP, auroc, calibration_slope_intercept

MIN_CENTRE_EVENTS = 10
MEASURES = ("auroc", "calibration_slope", "calibration_intercept", "oe")


def delong_se(y: np.ndarray, p: np.ndarray) -> float:
    """DeLong (1988) standard error of the AUROC (structural components; ties count one half)."""
    pos, neg = p[y == 1], p[y == 0]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        return float("nan")
    psi = (pos[:, None] > neg[None, :]).astype(float) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(np.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n))


def _calibration_se(y: np.ndarray, p: np.ndarray, slope: float, intercept: float) -> tuple[float, float]:
    """Fisher-information SEs of the slope (from the logistic fit on logit p) and of the intercept
    (logit p as offset)."""
    lp = logit(np.clip(p, P_CLIP, 1 - P_CLIP))
    se_slope = float("nan")
    if np.isfinite(slope):
        a = _slope_fit_intercept(y, lp, slope)
        mu = expit(a + slope * lp)
        w = mu * (1 - mu)
        X = np.column_stack([np.ones_like(lp), lp])
        info = (X * w[:, None]).T @ X
        try:
            se_slope = float(np.sqrt(np.linalg.inv(info)[1, 1]))
        except np.linalg.LinAlgError:
            pass
    se_int = float("nan")
    if np.isfinite(intercept):
        mu = expit(intercept + lp)
        se_int = float(1.0 / np.sqrt(np.sum(mu * (1 - mu))))
    return se_slope, se_int


def _slope_fit_intercept(y: np.ndarray, lp: np.ndarray, slope: float) -> float:
    """The intercept of the slope fit, given the slope (one Newton solve: sum(y - mu) = 0)."""
    a = 0.0
    for _ in range(100):
        mu = expit(a + slope * lp)
        step = np.sum(y - mu) / max(np.sum(mu * (1 - mu)), 1e-12)
        a += step
        if abs(step) < 1e-12:
            break
    return float(a)


def net_benefit_se(y: np.ndarray, p: np.ndarray, t: float) -> tuple[float, float]:
    """NB(t) = TP/n - FP/n * t/(1-t) and its SE from the multinomial (TP, FP, rest) counts."""
    n = len(y)
    treat = p >= t
    tp, fp = float(np.mean(treat & (y == 1))), float(np.mean(treat & (y == 0)))
    odds = t / (1 - t)
    nb = tp - fp * odds
    var = (tp * (1 - tp) + odds**2 * fp * (1 - fp) + 2 * odds * tp * fp) / n
    return nb, float(np.sqrt(var))


def centre_row(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """The centre's figures and SEs; `estimable` False (and `reason`) when too few events to estimate."""
    y = np.asarray(y).astype(int)
    p = np.asarray(p, float)
    n, events = int(len(y)), int(y.sum())
    row: dict[str, Any] = {"n": n, "events": events, "estimable": True, "reason": ""}
    if min(events, n - events) < MIN_CENTRE_EVENTS:
        row.update(estimable=False, reason=f"fewer than {MIN_CENTRE_EVENTS} events or non-events: not estimated")
        return row
    slope, intercept = calibration_slope_intercept(y, p)
    se_slope, se_int = _calibration_se(y, p, slope, intercept)
    expected = float(p.sum())
    row.update(
        auroc=auroc(y, p), auroc_se=delong_se(y, p),
        calibration_slope=slope, calibration_slope_se=se_slope,
        calibration_intercept=intercept, calibration_intercept_se=se_int,
        oe=events / expected, oe_se=float(np.sqrt((1 - events / n) / events)),
        expected=expected,
    )
    for name, t in (thresholds or {}).items():
        nb, se = net_benefit_se(y, p, t)
        row[f"net_benefit_{name}"] = nb
        row[f"net_benefit_{name}_se"] = se
        row[f"threshold_{name}"] = float(t)
    return row
