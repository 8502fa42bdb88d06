"""Random-effects meta-analysis of per-centre performance (Riley et al. 2016; Debray et al. 2017).

Each measure is pooled on the scale where it is closest to normal: the C-statistic on the logit
scale, O/E on the log scale, calibration slope and calibration-in-the-large as they are, net
benefit as it is. Between-centre variance tau^2 by REML (metafor's Fisher scoring, started at the
Hedges estimate, threshold 1e-10 instead of metafor's 1e-5), the pooled estimate's interval by
Hartung-Knapp-Sidik-Jonkman (metafor `test="knha"`: the weighted residual variance s2w, not
truncated at 1, and a t distribution with k-1 df), I^2 with metafor's "typical" within-centre
variance ((k-1) / tr(P)), and the 95% prediction interval for a new centre,
mu +- t * sqrt(se^2 + tau^2): with Riley's k-2 df by default (Riley, Higgins & Deeks 2011;
metafor `predict(predtype="riley")`), or metafor's default k-1 (`pi_df="k-1"`).

Checked in tests/model/test_meta_analysis.py against metafor's published values for dat.bcg
(REML tau^2 to 1e-12, the cumulative REML estimates to their 6 printed decimals, the prediction
interval's formula to 1e-6 on its robust() example, the knha fit and interval to their printed
digits) and against statsmodels' `combine_effects` (the HKSJ "random effect wls" row) to 1e-8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Literal

import numpy as np
from scipy import stats
from scipy.special import expit, logit

Scale = Literal["identity", "logit", "log"]

# What each measure is pooled on (Debray et al. 2017, table 2).
MEASURE_SCALE: dict[str, Scale] = {
    "auroc": "logit",
    "oe": "log",
    "calibration_slope": "identity",
    "calibration_intercept": "identity",
}

_MAX_ITER = 1000
_THRESHOLD = 1e-10


@dataclass(frozen=True)
class Pooled:
    """A pooled measure, on the measure's own scale (back-transformed from the pooling scale)."""

    measure: str
    k: int
    estimate: float
    ci_low: float
    ci_high: float
    pi_low: float
    pi_high: float
    tau2: float  # on the pooling scale
    i2: float  # percent
    se: float  # HKSJ standard error, on the pooling scale
    scale: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _typical_variance(v: np.ndarray) -> float:
    w = 1.0 / v
    return float((len(v) - 1) / (w.sum() - (w**2).sum() / w.sum()))


def tau2_reml(y: np.ndarray, v: np.ndarray, threshold: float = _THRESHOLD) -> float:
    """REML estimate of tau^2 by Fisher scoring (metafor rma.uni, intercept-only model); metafor
    stops when a step changes tau^2 by less than 1e-5, we by default at 1e-10."""
    k = len(y)
    # Hedges (HE) start, as metafor: (RSS - tr(P V)) / (k - 1) with unweighted P
    resid = y - y.mean()
    tau2 = max(0.0, float((resid @ resid - (v.sum() - v.sum() / k)) / (k - 1)))
    for _ in range(_MAX_ITER):
        w = 1.0 / (v + tau2)
        # P = W - w w' / sum(w): for the intercept-only model
        py = w * y - w * (w @ y) / w.sum()
        tr_p = w.sum() - (w**2).sum() / w.sum()
        # tr(PP) = sum_i sum_j P_ij^2
        P = np.diag(w) - np.outer(w, w) / w.sum()
        tr_pp = float(np.sum(P * P))
        adj = float((py @ py - tr_p) / tr_pp)
        while tau2 + adj < 0:
            adj /= 2
        new = tau2 + adj
        if abs(new - tau2) <= threshold:
            return new
        tau2 = new
    raise ArithmeticError("REML estimation of tau^2 did not converge")


def tau2_dl(y: np.ndarray, v: np.ndarray) -> float:
    """DerSimonian-Laird tau^2 (for the statsmodels cross-check and tiny k)."""
    w = 1.0 / v
    mu = (w @ y) / w.sum()
    q = float(w @ (y - mu) ** 2)
    return max(0.0, (q - (len(y) - 1)) / (w.sum() - (w**2).sum() / w.sum()))


def random_effects(
    y: np.ndarray, se: np.ndarray, measure: str = "", scale: Scale = "identity", method: str = "REML",
    pi_df: Literal["k-2", "k-1"] = "k-2", threshold: float = _THRESHOLD,
) -> Pooled:
    """Pool estimates `y` with standard errors `se` (both on the pooling scale); returns the result
    back on the measure's scale. Needs k >= 2 (k >= 3 for Riley's prediction interval)."""
    y, se = np.asarray(y, float), np.asarray(se, float)
    ok = np.isfinite(y) & np.isfinite(se) & (se > 0)
    y, v = y[ok], se[ok] ** 2
    k = len(y)
    if k < 2:
        raise ValueError(f"{measure or 'measure'}: at least 2 centres with an estimate are needed to pool, got {k}")
    tau2 = tau2_reml(y, v, threshold) if method == "REML" else tau2_dl(y, v)
    w = 1.0 / (v + tau2)
    mu = float((w @ y) / w.sum())
    rss = float(w @ (y - mu) ** 2)
    s2w = rss / (k - 1) if rss > np.finfo(float).eps else 0.0
    se_mu = float(np.sqrt(s2w / w.sum()))
    crit = float(stats.t.ppf(0.975, k - 1))
    vt = _typical_variance(v)
    i2 = 100.0 * tau2 / (vt + tau2)
    pi = prediction_interval(mu, se_mu, tau2, k - 2 if pi_df == "k-2" else k - 1)
    back = _inverse(scale)
    return Pooled(measure, k, back(mu), back(mu - crit * se_mu), back(mu + crit * se_mu), back(pi[0]), back(pi[1]),
                  float(tau2), float(i2), se_mu, scale)


def prediction_interval(mu: float, se_mu: float, tau2: float, df: int, level: float = 0.95) -> tuple[float, float]:
    """The interval a new centre's true value should fall in: mu +- t(df) sqrt(se_mu^2 + tau^2), as
    metafor's predict.rma (R/predict.rma.r: pi.se = sqrt(vpred + tau2); crit = qt with the model's
    k-p df under test="knha", k-p-1 with predtype="riley"). NaN when df < 1."""
    if df < 1:
        return float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, df)) * float(np.sqrt(se_mu**2 + tau2))
    return mu - half, mu + half


def _inverse(scale: Scale) -> Callable[[float], float]:
    if scale == "logit":
        return lambda x: float(expit(x))
    if scale == "log":
        return lambda x: float(np.exp(x))
    return float


def to_scale(estimate: np.ndarray, se: np.ndarray, scale: Scale) -> tuple[np.ndarray, np.ndarray]:
    """Estimates and SEs on the pooling scale (delta method): logit C, SE/(C(1-C)); log O/E as is."""
    estimate, se = np.asarray(estimate, float), np.asarray(se, float)
    if scale == "logit":
        c = np.clip(estimate, 1e-6, 1 - 1e-6)
        return logit(c), se / (c * (1 - c))
    if scale == "log":
        return np.log(estimate), se  # the O/E row already carries SE(log O/E)
    return estimate, se


def pool_measures(rows: list[dict[str, float]], measures: tuple[str, ...] = tuple(MEASURE_SCALE),
                  pi_df: Literal["k-2", "k-1"] = "k-2") -> dict[str, Pooled]:
    """Pool every measure over the centres' rows (`<measure>` and `<measure>_se` per row); rows
    without a finite estimate for a measure are left out of that measure only."""
    out: dict[str, Pooled] = {}
    for m in measures:
        est = np.array([r.get(m, np.nan) for r in rows], float)
        se = np.array([r.get(f"{m}_se", np.nan) for r in rows], float)
        scale = MEASURE_SCALE.get(m, "identity")
        ok = np.isfinite(est) & np.isfinite(se) & (se > 0)
        if scale == "log":
            ok &= est > 0
        if ok.sum() < 2:
            continue
        y, s = to_scale(est[ok], se[ok], scale)
        out[m] = random_effects(y, s, m, scale, pi_df=pi_df)
    return out
