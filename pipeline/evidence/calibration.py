"""Calibration of a probability on a validation set: calibration-in-the-large, logistic
recalibration slope and intercept (`pipeline.stats.metrics.calibration_slope_intercept`), the integrated
calibration index ICI / E50 / E90 / Emax (Austin & Steyerberg, Stat Med 2019;38:4051), Brier and
scaled Brier (Steyerberg et al., Epidemiology 2010;21:128), and bootstrap intervals of slope,
intercept and Brier fitted on all resamples at once."""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from pipeline.stats.bootstrap import (
    ALPHA,
    CELLS_PER_CHUNK,
    bootstrap_indices,
    bootstrap_replicates,
    percentile_ci,
    valid_resamples,
)
from pipeline.evidence.smoothing import smoothed_observed
from pipeline.stats.metrics import P_CLIP, _as_binary, _as_score, brier, calibration_slope_intercept


def calibration_summary(y: np.ndarray, p: np.ndarray, span: float = 0.75, degree: int = 2) -> dict[str, float]:
    """Calibration of a probability on a validation set.

    - calibration_in_the_large: mean(p) - mean(y), on the probability scale (> 0: over-predicts);
      observed_expected_ratio: mean(y) / mean(p).
    - calibration_intercept: a in logit P(y) = a + logit(p) (logit(p) as offset; the logistic form
      of calibration-in-the-large: > 0 under-predicts), and calibration_slope: b in
      logit P(y) = a' + b logit(p); both from `pipeline.stats.metrics.calibration_slope_intercept`.
    - ici / e50 / e90 / emax: mean / median / 90th percentile / max of |p - s(p)| over patients,
      s = loess of y on p (span 0.75, degree 2, the R defaults used by Austin & Steyerberg,
      "The Integrated Calibration Index (ICI) and related metrics for quantifying the calibration
      of logistic regression models", Stat Med 2019;38:4051-4065).
    - brier, brier_null = prevalence (1 - prevalence) (the Brier score of predicting the
      prevalence to everyone), scaled_brier = 1 - brier / brier_null (Steyerberg et al.,
      Epidemiology 2010;21:128; 0 = no better than the prevalence, 1 = perfect).
    """
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    slope, intercept = calibration_slope_intercept(y, p)
    prevalence = float(y.mean()) if y.shape[0] else float("nan")
    mean_p = float(p.mean()) if y.shape[0] else float("nan")
    b = brier(y, p) if y.shape[0] else float("nan")
    b_null = prevalence * (1 - prevalence)
    out = {
        "n": int(y.shape[0]),
        "events": int(y.sum()),
        "prevalence": prevalence,
        "mean_predicted": mean_p,
        "calibration_in_the_large": mean_p - prevalence,
        "observed_expected_ratio": prevalence / mean_p if mean_p > 0 else float("nan"),
        "calibration_intercept": intercept,
        "calibration_slope": slope,
        "brier": b,
        "brier_null": b_null,
        "scaled_brier": 1 - b / b_null if b_null > 0 else float("nan"),
    }
    if y.shape[0] >= 10 and 0 < y.sum() < y.shape[0]:
        err = np.abs(p - smoothed_observed(y, p, span=span, degree=degree))
        out.update(
            ici=float(err.mean()),
            e50=float(np.median(err)),
            e90=float(np.quantile(err, 0.9)),
            emax=float(err.max()),
        )
    else:
        out.update(ici=float("nan"), e50=float("nan"), e90=float("nan"), emax=float("nan"))
    return out


def calibration_intervals(
    y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = ALPHA
) -> dict[str, float]:
    """Percentile-bootstrap intervals of calibration slope, intercept and Brier score on the
    resamples of `bootstrap_indices(n, n_boot, seed)` (the same as the AUROC's)."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    out: dict[str, float] = {}
    if not 0 < y.sum() < y.shape[0]:
        return {f"{k}_ci_{e}": float("nan") for k in ("calibration_slope", "calibration_intercept", "brier") for e in ("low", "high")}
    idx = bootstrap_indices(y.shape[0], n_boot, seed)
    valid = valid_resamples(y, idx)
    slopes, intercepts = _calibration_batch(y, p, idx)
    slopes[~valid], intercepts[~valid] = np.nan, np.nan
    out["calibration_slope_ci_low"], out["calibration_slope_ci_high"] = percentile_ci(slopes, alpha)
    out["calibration_intercept_ci_low"], out["calibration_intercept_ci_high"] = percentile_ci(intercepts, alpha)
    out["brier_ci_low"], out["brier_ci_high"] = percentile_ci(bootstrap_replicates(y, p, brier, n_boot, seed), alpha)
    return out


def _calibration_batch(y: np.ndarray, p: np.ndarray, idx: np.ndarray, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Calibration slope and intercept (offset form) on every resample, by Newton-Raphson run on
    all resamples at once with the resample counts as weights. Same models as
    metrics.calibration_slope_intercept; resamples that do not converge give NaN."""
    n = y.shape[0]
    yf = y.astype(float)
    lp = logit(np.clip(p, P_CLIP, 1 - P_CLIP))
    slopes = np.full(idx.shape[0], np.nan)
    intercepts = np.full(idx.shape[0], np.nan)
    step_rows = max(1, CELLS_PER_CHUNK // max(n, 1))
    for start in range(0, idx.shape[0], step_rows):
        sub = idx[start : start + step_rows]
        b = sub.shape[0]
        flat = (np.arange(b)[:, None] * n + sub).ravel()
        counts = np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)
        intercepts[start : start + b] = _newton_offset(counts, yf, lp, iters)
        slopes[start : start + b] = _newton_slope(counts, yf, lp, iters)
    return slopes, intercepts


def _newton_offset(counts: np.ndarray, y: np.ndarray, lp: np.ndarray, iters: int) -> np.ndarray:
    """a in logit P(y) = a + lp, per row of resample counts."""
    a = np.zeros(counts.shape[0])
    active = np.arange(counts.shape[0])
    converged = np.zeros(counts.shape[0], dtype=bool)
    for _ in range(iters):
        if active.size == 0:
            break
        c = counts[active]
        mu = expit(a[active, None] + lp[None, :])
        g = c @ y - (c * mu).sum(axis=1)
        h = (c * mu * (1 - mu)).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.clip(g / h, -5, 5)
        a[active] += step
        finished = ~(np.abs(step) >= 1e-10)  # NaN steps stop too (and stay unconverged)
        converged[active[finished]] = np.isfinite(step[finished])
        active = active[~finished]
    return np.where(converged, a, np.nan)


def _newton_slope(counts: np.ndarray, y: np.ndarray, lp: np.ndarray, iters: int) -> np.ndarray:
    """b in logit P(y) = c + b lp, per row of resample counts."""
    rows = counts.shape[0]
    c0, c1 = np.zeros(rows), np.zeros(rows)
    active = np.arange(rows)
    converged = np.zeros(rows, dtype=bool)
    for _ in range(iters):
        if active.size == 0:
            break
        c = counts[active]
        mu = expit(c0[active, None] + c1[active, None] * lp[None, :])
        r = c * (y[None, :] - mu)
        g0, g1 = r.sum(axis=1), r @ lp
        w = c * mu * (1 - mu)
        h00, h01, h11 = w.sum(axis=1), w @ lp, w @ (lp * lp)
        with np.errstate(invalid="ignore", divide="ignore"):
            det = h00 * h11 - h01**2
            s0 = (h11 * g0 - h01 * g1) / det
            s1 = (h00 * g1 - h01 * g0) / det
            size = np.maximum(np.hypot(s0, s1) / 5.0, 1.0)  # damp huge first steps
        s0, s1 = s0 / size, s1 / size
        c0[active] += s0
        c1[active] += s1
        finished = ~(np.maximum(np.abs(s0), np.abs(s1)) >= 1e-10)
        converged[active[finished]] = np.isfinite(s1[finished])
        active = active[~finished]
    return np.where(converged, c1, np.nan)
