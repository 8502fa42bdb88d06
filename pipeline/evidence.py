"""Validation evidence for one model on one held-out (or external) set, as TRIPOD+AI asks for it.

Pure functions on arrays and data frames: no MLflow, no plotting, no files. `build_evidence`
computes everything once and returns an `Evidence`; `Evidence.flat_metrics()` gives the MLflow
metric names (stable across runs) and `pipeline.report` draws and renders it.

What is here, and where it comes from:
- discrimination with percentile-bootstrap intervals (AUROC, AUPRC), and the paired bootstrap
  difference model - comparator on the SAME resamples (`pipeline.metrics.bootstrap_*`);
- calibration: calibration-in-the-large, logistic recalibration slope and intercept
  (`pipeline.metrics.calibration_slope_intercept`), a loess calibration curve and the integrated
  calibration index ICI / E50 / E90 / Emax (Austin & Steyerberg, Stat Med 2019;38:4051), Brier
  and scaled Brier (Steyerberg et al., Epidemiology 2010;21:128);
- decision curve analysis (Vickers & Elkin, Med Decis Making 2006;26:565);
- subgroup performance, with small subgroups flagged and never dropped;
- minimum sample size for model development (Riley et al., Stat Med 2019;38:1276 and BMJ
  2020;368:m441; the `pmsampsize` criteria 1-3 for a binary outcome);
- sensitivity / specificity / PPV / NPV at the stored risk-group thresholds;
- a learning curve on the synthetic generator, with the oracle AUROC as the ceiling.
"""

from __future__ import annotations

import math
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy.special import expit, logit
from scipy.stats import norm

from pipeline.contract import DEFAULT_OUTCOME, FEATURES_BY_NAME
from pipeline.metrics import (
    P_CLIP,
    _as_binary,
    _as_score,
    auprc,
    auroc,
    bootstrap_indices,
    bootstrap_replicates,
    brier,
    calibration_slope_intercept,
)

ALPHA = 0.05
DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)
# Decision-curve thresholds reported as MLflow metrics (net_benefit_at_<k>pct).
NET_BENEFIT_REPORTED = (0.05, 0.10, 0.20)
# A subgroup is flagged `small` (its figures are unstable) below either bound; it is never dropped.
SMALL_SUBGROUP_N = 100
SMALL_SUBGROUP_EVENTS = 10
# Anticipated C-statistic for the sample-size criteria: the lower end of what baseline-only scores
# reach for severe CAR-T toxicity (EASIX-type scores AUROC ~0.7-0.8; expected oracle 0.75-0.85;
# /work/shared/reference/clinical-evidence.md). Conservative on purpose: a lower C asks for more data.
ANTICIPATED_C = 0.75
# Bounded memory for the (resamples x distinct scores) count matrices.
_CELLS_PER_CHUNK = 4_000_000

# Names under which the comparators appear in `Evidence` and in the metric names (declared once,
# with their colours and display names, in pipeline.style).
from pipeline.style import EASIX, M_EASIX, MODEL, ORACLE, TREAT_ALL, TREAT_NONE  # noqa: E402,F401 - re-exported


# --------------------------------------------------------------------------- helpers


def safe_name(text: str) -> str:
    """A metric-name fragment: lower case, runs of anything but [a-z0-9] become one '_'.
    '4-1BB' -> '4_1bb', 'CD19/CD22' -> 'cd19_cd22'."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "x"


def _percentile_ci(values: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def _valid_resamples(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Same rule as pipeline.metrics.bootstrap_replicates: a resample needs both classes."""
    events = y[idx].sum(axis=1)
    return (events > 0) & (events < y.shape[0])


def _auprc_batch(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average precision of every resample (rows of idx), without re-sorting per resample.

    As in metrics._auroc_batch, the scores are ranked once; a resample is a vector of counts of
    positives and negatives per distinct score. Walking the distinct scores from the highest down,
    AP = sum_k (positives at k / all positives) x precision at k, which is sklearn's
    average_precision_score (step-wise, ties form one threshold) exactly.
    """
    _, codes = np.unique(s, return_inverse=True)
    k = int(codes.max()) + 1
    codes = (k - 1) - codes  # column 0 = highest score
    out = np.full(idx.shape[0], np.nan)
    step = max(1, _CELLS_PER_CHUNK // k)
    for start in range(0, idx.shape[0], step):
        sub = idx[start : start + step]
        b = sub.shape[0]
        flat = (np.arange(b)[:, None] * k + codes[sub]).ravel()
        labels = y[sub].ravel().astype(bool)
        w_pos = np.bincount(flat[labels], minlength=b * k).reshape(b, k)
        w_neg = np.bincount(flat[~labels], minlength=b * k).reshape(b, k)
        tp = np.cumsum(w_pos, axis=1)
        fp = np.cumsum(w_neg, axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
            pos = tp[:, -1]
            out[start : start + b] = np.where(pos > 0, (w_pos * precision).sum(axis=1) / pos, np.nan)
    return out


def auprc_replicates(y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """AUPRC on the resamples of `bootstrap_indices(n, n_boot, seed)` (the same resamples as
    `bootstrap_replicates`), vectorised; NaN for resamples with one class."""
    y = _as_binary(y)
    s = _as_score(s, y.shape[0], probability=False)
    idx = bootstrap_indices(y.shape[0], n_boot, seed)
    values = _auprc_batch(y, s, idx)
    values[~_valid_resamples(y, idx)] = np.nan
    return values


def _calibration_batch(y: np.ndarray, p: np.ndarray, idx: np.ndarray, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Calibration slope and intercept (offset form) on every resample, by Newton-Raphson run on
    all resamples at once with the resample counts as weights. Same models as
    metrics.calibration_slope_intercept; resamples that do not converge give NaN."""
    n = y.shape[0]
    yf = y.astype(float)
    lp = logit(np.clip(p, P_CLIP, 1 - P_CLIP))
    slopes = np.full(idx.shape[0], np.nan)
    intercepts = np.full(idx.shape[0], np.nan)
    step_rows = max(1, _CELLS_PER_CHUNK // max(n, 1))
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


# --------------------------------------------------------------------------- discrimination


def discrimination_with_ci(
    y: np.ndarray, p: np.ndarray, n_boot: int = 1000, seed: int = 0, alpha: float = ALPHA, with_auprc: bool = True
) -> dict[str, float]:
    """AUROC and AUPRC with percentile-bootstrap (1 - alpha) intervals on the same resamples.

    `p` may be any score (EASIX is not a probability). AUPRC is read against the prevalence (its
    no-skill value), which is returned too. Vectorised: 1,000 resamples of 500 patients take a few
    milliseconds.
    """
    y = _as_binary(y)
    s = _as_score(p, y.shape[0], probability=False)
    out: dict[str, float] = {
        "auroc": auroc(y, s),
        "auprc": auprc(y, s),
        "n": int(y.shape[0]),
        "events": int(y.sum()),
        "prevalence": float(y.mean()) if y.shape[0] else float("nan"),
        "n_boot": int(n_boot),
    }
    if y.shape[0] == 0 or not 0 < y.sum() < y.shape[0]:
        out.update({k: float("nan") for k in ("auroc_ci_low", "auroc_ci_high", "auprc_ci_low", "auprc_ci_high")})
        return out
    out["auroc_ci_low"], out["auroc_ci_high"] = _percentile_ci(
        bootstrap_replicates(y, s, auroc, n_boot=n_boot, seed=seed), alpha
    )
    if with_auprc:
        out["auprc_ci_low"], out["auprc_ci_high"] = _percentile_ci(
            auprc_replicates(y, s, n_boot=n_boot, seed=seed), alpha
        )
    return out


def paired_difference(
    y: np.ndarray,
    p_model: np.ndarray,
    s_other: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
    *,
    model_replicates: np.ndarray | None = None,
) -> dict[str, float]:
    """AUROC(model) - AUROC(other) with a paired percentile-bootstrap interval: both AUROCs are
    computed on the SAME resamples (same seed -> same `bootstrap_indices`), so the interval
    reflects the correlation between the two scores on the same patients. A model compared with
    itself gives exactly 0 with interval [0, 0]. `share_model_better` is the share of resamples in
    which the model's AUROC is higher (a descriptive figure, not a p-value). `model_replicates`:
    the model's AUROC replicates for the same (n_boot, seed), when already computed."""
    y = _as_binary(y)
    a = _as_score(p_model, y.shape[0], probability=False)
    b = _as_score(s_other, y.shape[0], probability=False)
    auc_a, auc_b = auroc(y, a), auroc(y, b)
    out = {"auroc_model": auc_a, "auroc_other": auc_b, "difference": auc_a - auc_b, "n_boot": int(n_boot)}
    if not 0 < y.sum() < y.shape[0]:
        out.update(ci_low=float("nan"), ci_high=float("nan"), share_model_better=float("nan"))
        return out
    if model_replicates is None:
        model_replicates = bootstrap_replicates(y, a, auroc, n_boot, seed)
    diff = model_replicates - bootstrap_replicates(y, b, auroc, n_boot, seed)
    out["ci_low"], out["ci_high"] = _percentile_ci(diff, alpha)
    finite = diff[np.isfinite(diff)]
    out["share_model_better"] = float(np.mean(finite > 0)) if finite.size else float("nan")
    return out


# --------------------------------------------------------------------------- calibration


def loess(
    x: np.ndarray,
    y: np.ndarray,
    x_eval: np.ndarray,
    weights: np.ndarray | None = None,
    span: float = 0.75,
    degree: int = 2,
) -> np.ndarray:
    """Local polynomial regression (loess without robustness iterations, as R's
    `loess(y ~ x, span = 0.75, degree = 2)` with family "gaussian", evaluated directly rather
    than by R's kd-tree interpolation): at each x0, a weighted least-squares polynomial of
    `degree` on the nearest `span` share of the data (by weight), tricube kernel.

    Robustness iterations (as in R's `lowess`) are deliberately absent: for a 0/1 outcome they
    down-weight the events and bias the curve. Returns NaN where the local fit is singular.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x_eval = np.atleast_1d(np.asarray(x_eval, dtype=float))
    w0 = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    if not 0 < span <= 1:
        raise ValueError("span must lie in (0, 1]")
    if degree not in (1, 2):
        raise ValueError("degree must be 1 or 2")
    n, m = x.shape[0], x_eval.shape[0]
    out = np.full(m, np.nan)
    step = max(1, _CELLS_PER_CHUNK // max(n, 1) // 4)
    for start in range(0, m, step):
        xe = x_eval[start : start + step]
        geometry = _loess_geometry(x, xe, sort=weights is not None)
        out[start : start + xe.shape[0]] = _loess_fit(geometry, y, w0, span, degree, weights is None)
    return out


def _loess_geometry(x: np.ndarray, xe: np.ndarray, sort: bool) -> dict[str, np.ndarray]:
    """Signed and absolute distances from each evaluation point to each observation (and their
    order, needed for weighted spans); computed once and reused across bootstrap weights."""
    d = x[None, :] - xe[:, None]
    dist = np.abs(d)
    g = {"d": d, "dist": dist}
    if sort:
        g["order"] = np.argsort(dist, axis=1, kind="stable")
        g["sorted_dist"] = np.take_along_axis(dist, g["order"], axis=1)
    return g


def _loess_fit(g: dict[str, np.ndarray], y: np.ndarray, w0: np.ndarray, span: float, degree: int, unweighted: bool) -> np.ndarray:
    d, dist = g["d"], g["dist"]
    m, n = dist.shape
    if unweighted:
        # R: the q = floor(n span) nearest points get positive weight; h = distance to the q-th.
        q = min(max(int(math.floor(n * span)), degree + 1), n)
        h = np.partition(dist, q - 1, axis=1)[:, q - 1]
    else:
        cum = np.cumsum(w0[g["order"]], axis=1)
        k = np.minimum((cum < span * cum[:, -1:] - 1e-12).sum(axis=1), n - 1)
        h = g["sorted_dist"][np.arange(m), k]
    h = np.where(h > 0, h, np.max(dist, axis=1))
    h = np.maximum(h, 1e-12) * (1 + 1e-10)  # the q-th neighbour keeps a positive weight
    u = np.minimum(dist * (1.0 / h)[:, None], 1.0)
    t = 1.0 - u * u * u
    kern = t * t * t  # tricube; integer powers by multiplication (np.power is slow)
    if not unweighted:
        kern *= w0[None, :]
    # Moments sum_j K_j d_j^k (k <= 2 degree) and sum_j K_j d_j^k y_j, built by repeated products.
    terms = degree + 1
    moments, ymoments = [], []
    cur = kern
    for k in range(2 * degree + 1):
        moments.append(cur.sum(axis=1))
        if k < terms:
            ymoments.append(cur @ y)
        if k < 2 * degree:
            cur = cur * d
    A = np.empty((m, terms, terms))
    for i in range(terms):
        for j in range(terms):
            A[:, i, j] = moments[i + j]
    bvec = np.stack(ymoments, axis=1)
    fitted = np.full(m, np.nan)
    good = np.abs(np.linalg.det(A)) > 1e-300
    if good.any():
        fitted[good] = np.linalg.solve(A[good], bvec[good][..., None])[:, 0, 0]
    return fitted


def smoothed_observed(y: np.ndarray, p: np.ndarray, span: float = 0.75, degree: int = 2, grid: int = 200) -> np.ndarray:
    """The loess calibration curve evaluated at every patient's prediction, clipped to [0, 1].

    Evaluated exactly at up to `grid` distinct predictions and linearly interpolated in between
    (the curve is smooth, so the error is negligible), which keeps n = 20,000 fast."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    uniq = np.unique(p)
    nodes = uniq if uniq.size <= grid else np.unique(np.quantile(p, np.linspace(0, 1, grid)))
    curve = loess(p, y, nodes, span=span, degree=degree)
    if nodes.size == 1:
        return np.clip(np.full_like(p, curve[0]), 0, 1)
    return np.clip(np.interp(p, nodes, curve), 0, 1)


def calibration_summary(y: np.ndarray, p: np.ndarray, span: float = 0.75, degree: int = 2) -> dict[str, float]:
    """Calibration of a probability on a validation set.

    - calibration_in_the_large: mean(p) - mean(y), on the probability scale (> 0: over-predicts);
      observed_expected_ratio: mean(y) / mean(p).
    - calibration_intercept: a in logit P(y) = a + logit(p) (logit(p) as offset; the logistic form
      of calibration-in-the-large: > 0 under-predicts), and calibration_slope: b in
      logit P(y) = a' + b logit(p); both from `pipeline.metrics.calibration_slope_intercept`.
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
    valid = _valid_resamples(y, idx)
    slopes, intercepts = _calibration_batch(y, p, idx)
    slopes[~valid], intercepts[~valid] = np.nan, np.nan
    out["calibration_slope_ci_low"], out["calibration_slope_ci_high"] = _percentile_ci(slopes, alpha)
    out["calibration_intercept_ci_low"], out["calibration_intercept_ci_high"] = _percentile_ci(intercepts, alpha)
    out["brier_ci_low"], out["brier_ci_high"] = _percentile_ci(bootstrap_replicates(y, p, brier, n_boot, seed), alpha)
    return out


def _wilson(events: np.ndarray, n: np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval, exact at the edges: 0 events give a lower bound of exactly 0 and
    n events an upper bound of exactly 1 (in floating point `centre - half` is about 1e-17 off
    there), and the bounds always enclose the observed proportion."""
    z = norm.ppf(1 - alpha / 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = events / n
        centre = (phat + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        low = np.where(events <= 0, 0.0, np.clip(centre - half, 0.0, phat))
        high = np.where(events >= n, 1.0, np.clip(centre + half, phat, 1.0))
    return low, high


def calibration_curve_data(
    y: np.ndarray,
    p: np.ndarray,
    n_bins: int = 10,
    grid_size: int = 60,
    n_boot: int = 200,
    seed: int = 0,
    span: float = 0.75,
    degree: int = 2,
    alpha: float = ALPHA,
) -> dict[str, pd.DataFrame]:
    """The data of a calibration plot: quantile bins (as sklearn.calibration.calibration_curve
    with strategy="quantile", plus counts and Wilson intervals) and the loess curve on a grid
    between the 1st and 99th percentile of p, with a percentile-bootstrap band (resample counts
    enter the loess as weights, so the band costs n_boot weighted fits on a small grid)."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    edges = np.quantile(p, np.linspace(0, 1, n_bins + 1))
    bins = np.searchsorted(edges[1:-1], p)  # side="left", as sklearn
    rows = []
    for k in np.unique(bins):
        mask = bins == k
        rows.append({"bin": int(k), "n": int(mask.sum()), "events": int(y[mask].sum()),
                     "mean_predicted": float(p[mask].mean()), "observed": float(y[mask].mean())})
    binned = pd.DataFrame(rows)
    if len(binned):
        low, high = _wilson(binned["events"].to_numpy(float), binned["n"].to_numpy(float), alpha)
        binned["observed_ci_low"], binned["observed_ci_high"] = low, high

    smoothed = pd.DataFrame(columns=["predicted", "observed", "observed_ci_low", "observed_ci_high"])
    if y.shape[0] >= 10 and 0 < y.sum() < y.shape[0] and np.ptp(p) > 0:
        lo, hi = np.quantile(p, [0.01, 0.99])
        grid = np.linspace(lo, hi, grid_size) if hi > lo else np.array([lo])
        curve = np.clip(loess(p, y, grid, span=span, degree=degree), 0, 1)
        band_low = band_high = np.full(grid.shape, np.nan)
        if n_boot > 0:
            idx = bootstrap_indices(y.shape[0], n_boot, seed)
            geometry = _loess_geometry(p, grid, sort=True)
            yf = y.astype(float)
            reps = np.empty((n_boot, grid.size))
            for b in range(n_boot):
                w = np.bincount(idx[b], minlength=y.shape[0]).astype(float)
                reps[b] = _loess_fit(geometry, yf, w, span, degree, unweighted=False)
            reps = np.clip(reps, 0, 1)
            with np.errstate(all="ignore"), warnings.catch_warnings():
                # a grid point no resample could fit (all NaN) keeps a NaN band, silently
                warnings.simplefilter("ignore", RuntimeWarning)
                band_low = np.nanquantile(reps, alpha / 2, axis=0)
                band_high = np.nanquantile(reps, 1 - alpha / 2, axis=0)
        smoothed = pd.DataFrame(
            {"predicted": grid, "observed": curve, "observed_ci_low": band_low, "observed_ci_high": band_high}
        )
    return {"binned": binned, "smoothed": smoothed}


# --------------------------------------------------------------------------- decision curve


def _decision_curve_with_band(y: np.ndarray, p_by_name: Mapping[str, np.ndarray], n_boot: int = 200,
                              seed: int = 0, alpha: float = ALPHA) -> pd.DataFrame:
    """`decision_curve`, with a percentile-bootstrap band (patients resampled) of the model's net
    benefit in `nb_ci_low` / `nb_ci_high` (NaN for the other rows)."""
    table = decision_curve(y, p_by_name)
    table["nb_ci_low"] = np.nan
    table["nb_ci_high"] = np.nan
    if MODEL not in p_by_name or n_boot < 1 or not 0 < y.sum() < y.shape[0]:
        return table
    t = np.sort(table["threshold"].unique())
    p = _as_score(p_by_name[MODEL], y.shape[0], probability=True)
    idx = bootstrap_indices(y.shape[0], n_boot, seed)
    reps = np.empty((n_boot, t.size))
    for b in range(n_boot):
        yb, pb = y[idx[b]], p[idx[b]]
        treat = pb[None, :] >= t[:, None]
        reps[b] = ((treat & (yb == 1)).sum(axis=1) - (treat & (yb == 0)).sum(axis=1) * t / (1 - t)) / yb.shape[0]
    low, high = np.quantile(reps, alpha / 2, axis=0), np.quantile(reps, 1 - alpha / 2, axis=0)
    rows = table["model"] == MODEL
    position = np.searchsorted(t, table.loc[rows, "threshold"].to_numpy())
    table.loc[rows, "nb_ci_low"] = low[position]
    table.loc[rows, "nb_ci_high"] = high[position]
    return table



def net_benefit(y: np.ndarray, p: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Net benefit of treating patients with p >= t, for each threshold t (Vickers & Elkin 2006):
    NB(t) = TP/n - FP/n * t / (1 - t). The `>=` convention is that of `dcurves`."""
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    t = _check_thresholds(thresholds)
    n = y.shape[0]
    treat = p[None, :] >= t[:, None]
    tp = (treat & (y[None, :] == 1)).sum(axis=1)
    fp = (treat & (y[None, :] == 0)).sum(axis=1)
    return tp / n - fp / n * t / (1 - t)


def _check_thresholds(thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    t = np.atleast_1d(np.asarray(thresholds, dtype=float))
    if t.ndim != 1 or t.size == 0 or np.any((t <= 0) | (t >= 1)):
        raise ValueError("decision thresholds must lie strictly between 0 and 1")
    return t


def decision_curve(
    y: np.ndarray,
    p_by_name: Mapping[str, np.ndarray],
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
) -> pd.DataFrame:
    """Net benefit over threshold probabilities for each model, 'treat all' and 'treat none'.

    Tidy table: threshold, model, net_benefit, tp_rate (TP/n), fp_rate (FP/n), treated (share
    with p >= t). treat all: NB = prevalence - (1 - prevalence) t / (1 - t); treat none: 0. A model
    is clinically useful at t only where its NB exceeds both.
    """
    y = _as_binary(y)
    t = _check_thresholds(thresholds)
    n = y.shape[0]
    prevalence = y.mean()
    frames = []
    for name, p in p_by_name.items():
        p = _as_score(p, n, probability=True)
        treat = p[None, :] >= t[:, None]
        tp = (treat & (y[None, :] == 1)).sum(axis=1) / n
        fp = (treat & (y[None, :] == 0)).sum(axis=1) / n
        frames.append(pd.DataFrame({"threshold": t, "model": name, "net_benefit": tp - fp * t / (1 - t),
                                    "tp_rate": tp, "fp_rate": fp, "treated": treat.mean(axis=1)}))
    frames.append(pd.DataFrame({"threshold": t, "model": TREAT_ALL,
                                "net_benefit": prevalence - (1 - prevalence) * t / (1 - t),
                                "tp_rate": prevalence, "fp_rate": 1 - prevalence, "treated": 1.0}))
    frames.append(pd.DataFrame({"threshold": t, "model": TREAT_NONE, "net_benefit": 0.0,
                                "tp_rate": 0.0, "fp_rate": 0.0, "treated": 0.0}))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------- subgroups


@dataclass(frozen=True)
class SubgroupSpec:
    """One way of splitting patients: `assign(df)` returns a level slug per row."""

    name: str  # slug used in metric names
    label: str
    levels: tuple[tuple[str, str], ...]  # (slug, display) in display order
    assign: Callable[[pd.DataFrame], np.ndarray]


def _numeric_split(column: str, cut: float, below: tuple[str, str], above: tuple[str, str], closed_below: bool):
    def assign(df: pd.DataFrame) -> np.ndarray:
        x = pd.to_numeric(df[column].astype("Float64"), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        low = x <= cut if closed_below else x < cut
        return np.where(np.isnan(x), "missing", np.where(low, below[0], above[0])).astype(object)

    return assign


def _categorical(column: str):
    def assign(df: pd.DataFrame) -> np.ndarray:
        col = df[column].astype(object)
        return np.array([("missing" if pd.isna(v) else safe_name(v)) for v in col], dtype=object)

    return assign


def _category_spec(column: str, label: str) -> SubgroupSpec:
    cats = FEATURES_BY_NAME[column].categories
    return SubgroupSpec(column, label, tuple((safe_name(c), c) for c in cats), _categorical(column))


DEFAULT_SUBGROUPS: tuple[SubgroupSpec, ...] = (
    SubgroupSpec("age", "Age group", (("lt18", "< 18 y"), ("ge18", ">= 18 y")),
                 _numeric_split("age_years", 18.0, ("lt18", "< 18 y"), ("ge18", ">= 18 y"), closed_below=False)),
    _category_spec("costimulatory_domain", "Costimulatory domain"),
    _category_spec("product", "Product"),
    _category_spec("sex", "Sex"),
    SubgroupSpec("marrow_blasts", "Tumour burden (marrow blasts)", (("le20", "<= 20%"), ("gt20", "> 20%")),
                 _numeric_split("marrow_blasts_pct", 20.0, ("le20", "<= 20%"), ("gt20", "> 20%"), closed_below=True)),
)


def subgroups(
    df: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    specs: Sequence[SubgroupSpec] = DEFAULT_SUBGROUPS,
    n_boot: int = 1000,
    seed: int = 0,
    min_n: int = SMALL_SUBGROUP_N,
    min_events: int = SMALL_SUBGROUP_EVENTS,
) -> pd.DataFrame:
    """Performance by subgroup: every declared level (empty ones included, n = 0) plus any other
    level present (e.g. 'missing'), so the counts of each grouping sum to n.

    Columns: group, group_label, level, level_label, n, events, prevalence, mean_predicted, auroc
    (NaN with one class), auroc_ci_low/high (bootstrap), calibration_in_the_large (mean p - mean
    y), brier, small (n < min_n or events < min_events), small_reason. Small subgroups are flagged,
    never dropped: their figures are shown with that warning.
    """
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    if len(df) != y.shape[0]:
        raise ValueError(f"df has {len(df)} rows but y has {y.shape[0]}")
    rows = []
    for spec in specs:
        labels = spec.assign(df.reset_index(drop=True))
        declared = [slug for slug, _ in spec.levels]
        extra = sorted(set(labels) - set(declared))
        display = dict(spec.levels) | {e: e for e in extra}
        for level in declared + extra:
            mask = labels == level
            n, events = int(mask.sum()), int(y[mask].sum())
            row: dict[str, Any] = {"group": spec.name, "group_label": spec.label, "level": level,
                                   "level_label": display[level], "n": n, "events": events}
            if n:
                yy, pp = y[mask], p[mask]
                row.update(prevalence=events / n, mean_predicted=float(pp.mean()),
                           calibration_in_the_large=float(pp.mean() - yy.mean()), brier=brier(yy, pp))
                d = discrimination_with_ci(yy, pp, n_boot=n_boot, seed=seed, with_auprc=False)
                row.update(auroc=d["auroc"], auroc_ci_low=d["auroc_ci_low"], auroc_ci_high=d["auroc_ci_high"])
            else:
                row.update({k: float("nan") for k in ("prevalence", "mean_predicted", "calibration_in_the_large",
                                                      "brier", "auroc", "auroc_ci_low", "auroc_ci_high")})
            reasons = ([f"n < {min_n}"] if n < min_n else []) + ([f"events < {min_events}"] if events < min_events else [])
            row["small"] = bool(reasons)
            row["small_reason"] = "; ".join(reasons)
            rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- sample size


def max_cox_snell_r2(prevalence: float) -> float:
    """Largest Cox-Snell R2 a logistic model can reach at this outcome proportion:
    1 - exp(2 lnL_null / n), lnL_null / n = phi ln(phi) + (1 - phi) ln(1 - phi)
    (Riley et al., Stat Med 2019;38:1276, eq. 23; Nagelkerke R2 = R2_CS / this)."""
    phi = float(prevalence)
    if not 0 < phi < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1")
    return 1 - math.exp(2 * (phi * math.log(phi) + (1 - phi) * math.log(1 - phi)))


def cox_snell_r2_from_c(c_statistic: float, prevalence: float, nodes: int = 200) -> float:
    """Anticipated Cox-Snell R2 from an anticipated C-statistic (Riley, Van Calster & Collins,
    "A note on estimating the Cox-Snell R2 from a reported C statistic (AUROC) to inform sample
    size calculations for developing a prediction model with a binary outcome", Stat Med
    2021;40:859-864; `pmsampsize`'s `cstatistic` option).

    Their approximation assumes a linear predictor that is N(0, 1) in one outcome class and
    N(mu, 1) in the other, mu = sqrt(2) Phi^-1(C), and fits a logistic regression of the outcome on
    it in a simulated sample of 1,000,000. With equal variances that logistic model is exactly the
    true posterior, so the simulation converges to R2_CS = 1 - exp(-2 I), I the mutual
    information (nats) between outcome and linear predictor; it is computed here by Gauss-Hermite
    quadrature instead of simulation (deterministic; a test checks it against the simulation).
    """
    if not 0.5 <= c_statistic < 1:
        raise ValueError("C-statistic must lie in [0.5, 1)")
    phi = float(prevalence)
    if not 0 < phi < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1")
    mu = math.sqrt(2) * norm.ppf(c_statistic)
    z, w = np.polynomial.hermite_e.hermegauss(nodes)
    w = w / w.sum()  # expectation under N(0, 1)
    # llr(x) = log f_events(x) / f_non(x) = mu x - mu^2 / 2 ; events ~ N(mu, 1), non-events N(0, 1)
    # E_events[log f_events / m] = -E[log(phi + (1 - phi) exp(-llr))], x = mu + z
    llr_ev = mu * (mu + z) - mu * mu / 2
    llr_non = mu * z - mu * mu / 2
    term_ev = -np.logaddexp(math.log(phi), math.log(1 - phi) - llr_ev)
    term_non = -np.logaddexp(math.log(1 - phi), math.log(phi) + llr_non)
    info = phi * float(w @ term_ev) + (1 - phi) * float(w @ term_non)
    return float(1 - math.exp(-2 * info))


def _n_for_shrinkage(p: int, r2: float, s: float) -> float:
    """Riley et al. 2019 (Stat Med 38:1276) eq. 11 / BMJ 2020 criterion (i):
    n = p / ((S - 1) ln(1 - R2_CS / S))."""
    return p / ((s - 1) * math.log(1 - r2 / s))


def sample_size(
    n: int,
    events: int,
    n_params: int,
    anticipated_c: float | None = ANTICIPATED_C,
    anticipated_r2: float | None = None,
    prevalence: float | None = None,
    shrinkage: float = 0.9,
    nagelkerke_optimism: float = 0.05,
    intercept_margin: float = 0.05,
    round_like_pmsampsize: bool = True,
) -> dict[str, Any]:
    """Events per candidate predictor parameter and the minimum sample size for developing a
    binary-outcome prediction model (Riley et al., "Minimum sample size for developing a
    multivariable prediction model: Part II - binary and time-to-event outcomes", Stat Med
    2019;38:1276-1296; Riley et al., "Calculating the sample size required for developing a
    clinical prediction model", BMJ 2020;368:m441; R/Stata package `pmsampsize`).

    n_params: candidate predictor PARAMETERS (every dummy and non-linear term counts; for tree
    ensembles no exact count exists: pass the model matrix's column count as a lower bound).
    Anticipated Cox-Snell R2 (R2_CS): `anticipated_r2` if given; else from `anticipated_c` by
    `cox_snell_r2_from_c`; else (both None) 0.15 x max R2_CS, i.e. a Nagelkerke R2 of 0.15
    (the conservative default of Riley et al. 2020). phi = `prevalence`, by default events / n.

    Criteria (n_1..n_3, rounded up):
      1. expected uniform shrinkage >= S (0.9): n_1 = p / ((S - 1) ln(1 - R2_CS / S));
      2. small optimism in Nagelkerke R2 (<= delta = 0.05): S_2 = R2_CS / (R2_CS + delta max_R2_CS),
         n_2 = p / ((S_2 - 1) ln(1 - R2_CS / S_2)), max_R2_CS = 1 - exp(2 (phi ln phi + (1 - phi)
         ln(1 - phi)));
      3. overall risk estimated within +/- margin (0.05) with 95% confidence:
         n_3 = (1.96 / margin)^2 phi (1 - phi).
    Required n = max(n_1, n_2, n_3); required events = n phi; EPP = events / p.
    `round_like_pmsampsize` rounds max_R2_CS to 2 and S_2 to 3 decimals as pmsampsize 1.1.x does,
    so results match the reference software (Chagas example: R2_CS 0.288, 24 parameters,
    prevalence 0.174 -> 623 / 668 / 221; unrounded criterion 2 gives 662).

    Also returns expected_shrinkage: the S solving criterion 1 at the ACTUAL n (how much the
    coefficients of an unpenalised model would need shrinking), and `warning` (None when n and
    events meet every criterion).
    """
    if n_params < 1:
        raise ValueError("n_params must be >= 1")
    if n < 1 or not 0 <= events <= n:
        raise ValueError("need n >= 1 and 0 <= events <= n")
    phi = float(prevalence) if prevalence is not None else events / n
    if not 0 < phi < 1:
        raise ValueError("prevalence must lie strictly between 0 and 1 (no events or no non-events)")
    max_r2 = max_cox_snell_r2(phi)
    max_r2_used = round(max_r2, 2) if round_like_pmsampsize else max_r2
    if anticipated_r2 is not None:
        r2, r2_source = float(anticipated_r2), "stated Cox-Snell R2"
    elif anticipated_c is not None:
        r2 = cox_snell_r2_from_c(anticipated_c, phi)
        r2_source = f"anticipated C-statistic {anticipated_c:g} (Riley, Van Calster & Collins 2021)"
    else:
        r2, r2_source = 0.15 * max_r2, "0.15 x max Cox-Snell R2 (Nagelkerke R2 0.15; Riley et al. 2020)"
    if not 0 < r2 < min(shrinkage, max_r2):
        raise ValueError(f"anticipated Cox-Snell R2 {r2:.3f} must lie in (0, min(shrinkage, max R2 {max_r2:.3f}))")

    n1 = math.ceil(_n_for_shrinkage(n_params, r2, shrinkage))
    s2 = r2 / (r2 + nagelkerke_optimism * max_r2_used)
    if round_like_pmsampsize:
        s2 = round(s2, 3)
    n2 = math.ceil(_n_for_shrinkage(n_params, r2, s2))
    n3 = math.ceil((1.96 / intercept_margin) ** 2 * phi * (1 - phi))
    required = max(n1, n2, n3)
    events_required = required * phi

    expected_shrinkage = float("nan")
    lo, hi = r2 * (1 + 1e-9), 1 - 1e-12
    f = lambda s: _n_for_shrinkage(n_params, r2, s) - n  # noqa: E731  (increasing in s)
    if f(lo) < 0 < f(hi):
        expected_shrinkage = float(optimize.brentq(f, lo, hi, xtol=1e-10))
    elif f(hi) <= 0:
        expected_shrinkage = 1.0

    epp = events / n_params
    adequate = n >= required and events >= math.ceil(events_required - 1e-9)
    warning = None
    if not adequate:
        warning = (
            f"The development data (n = {n}, events = {events}, {epp:.1f} events per candidate "
            f"parameter) are smaller than the minimum sample size for {n_params} candidate "
            f"parameters (n >= {required}, events >= {math.ceil(events_required)}; Riley et al. "
            f"criteria with anticipated Cox-Snell R2 {r2:.3f}). Expect overfitting: an unpenalised "
            f"model's coefficients would need shrinking by a factor of about "
            f"{expected_shrinkage:.2f}. Use strong regularisation, fewer parameters, and read the "
            "held-out intervals, not the point estimates."
        )
    return {
        "n": int(n),
        "events": int(events),
        "n_params": int(n_params),
        "prevalence": phi,
        "events_per_parameter": epp,
        "anticipated_r2_cs": r2,
        "anticipated_r2_source": r2_source,
        "anticipated_c": anticipated_c if anticipated_r2 is None else None,
        "max_r2_cs": max_r2,
        "shrinkage_target": shrinkage,
        "shrinkage_criterion_2": s2,
        "n_required_shrinkage": n1,
        "n_required_optimism": n2,
        "n_required_intercept": n3,
        "n_required": required,
        "events_required": events_required,
        "epp_required": events_required / n_params,
        "expected_shrinkage": expected_shrinkage,
        "adequate": bool(adequate),
        "warning": warning,
    }


# --------------------------------------------------------------------------- thresholds


def thresholds_table(y_test: np.ndarray, p_test: np.ndarray, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Sensitivity, specificity, PPV and NPV of 'p >= threshold' at each stored risk-group
    threshold (chosen on development data) on the held-out set. NaN where a denominator is 0."""
    y = _as_binary(y_test)
    p = _as_score(p_test, y.shape[0], probability=True)
    rows = []
    for name, t in sorted(thresholds.items(), key=lambda kv: kv[1]):
        pos = p >= t
        tp = int((pos & (y == 1)).sum())
        fp = int((pos & (y == 0)).sum())
        fn = int((~pos & (y == 1)).sum())
        tn = int((~pos & (y == 0)).sum())
        rows.append({
            "name": name, "threshold": float(t), "n_at_or_above": tp + fp,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "sensitivity": tp / (tp + fn) if tp + fn else float("nan"),
            "specificity": tn / (tn + fp) if tn + fp else float("nan"),
            "ppv": tp / (tp + fp) if tp + fp else float("nan"),
            "npv": tn / (tn + fn) if tn + fn else float("nan"),
        })
    return pd.DataFrame(rows)


def risk_group_table(y_test: np.ndarray, p_test: np.ndarray, thresholds: Mapping[str, float]) -> pd.DataFrame:
    """Patients, events, observed and mean predicted risk per risk group. With thresholds
    {'low': a, 'high': b} the groups are low (p < a), intermediate (a <= p < b), high (p >= b),
    as `ModelBundle.risk_group` assigns them."""
    y = _as_binary(y_test)
    p = _as_score(p_test, y.shape[0], probability=True)
    cuts = sorted(thresholds.items(), key=lambda kv: kv[1])
    if not cuts:
        names = ["all"]
    elif [k for k, _ in cuts] == ["low", "high"]:
        names = ["low", "intermediate", "high"]
    else:
        names = [f"< {cuts[0][0]}"] + [f">= {k}" for k, _ in cuts]
    group = np.searchsorted(np.array([v for _, v in cuts], dtype=float), p, side="right")
    rows = []
    for g, name in enumerate(names):
        mask = group == g
        n = int(mask.sum())
        rows.append({"group": name, "n": n, "events": int(y[mask].sum()),
                     "observed_risk": float(y[mask].mean()) if n else float("nan"),
                     "mean_predicted": float(p[mask].mean()) if n else float("nan")})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- learning curve

LEARNING_CURVE_SIZES = (100, 150, 250, 500, 1000, 2000)
# The procedure each size is fitted with: the training's own (search of every family, family
# choice, Platt calibration), at the per-fold budget of repeated cross-validation.
LEARNING_CURVE_N_ITER = 4
LEARNING_CURVE_CV_FOLDS = 3

FitAndScore = Callable[[pd.DataFrame, pd.DataFrame], Mapping[str, float]]


def default_fit_and_score(train_df: pd.DataFrame, test_df: pd.DataFrame, outcome: str = DEFAULT_OUTCOME, seed: int = 0) -> dict[str, float]:
    """Held-out AUROC of: the tuned, calibrated model (the training procedure,
    `pipeline.validation.Procedure`), an untuned scikit-learn HistGradientBoosting, the tuned
    logistic comparator, and the raw EASIX and m-EASIX scores (not trained: their AUROC does not
    depend on the training size)."""
    from models.baselines import SCORES
    from pipeline.features import encode_frame
    from pipeline.validation import LOGISTIC, MODEL, UNTUNED_HGB, Procedure

    X_train, X_test = encode_frame(train_df), encode_frame(test_df)
    y_train = train_df[outcome].astype(int).to_numpy()
    y_test = test_df[outcome].astype(int).to_numpy()
    models = Procedure(LEARNING_CURVE_N_ITER, LEARNING_CURVE_CV_FOLDS)(X_train, y_train, seed)
    out = {"tuned model": auroc(y_test, models[MODEL](X_test)),
           "untuned HGB": auroc(y_test, models[UNTUNED_HGB](X_test)),
           "logistic": auroc(y_test, models[LOGISTIC](X_test))}
    for name, score in SCORES.items():
        out[name] = auroc(y_test, score(test_df))
    return out


def learning_curve(
    sizes: Sequence[int] = LEARNING_CURVE_SIZES,
    seed: int = 0,
    fit_and_score: FitAndScore | None = None,
    generator: Callable[[int, int], pd.DataFrame] | None = None,
    test_size: int = 2000,
    outcome: str = DEFAULT_OUTCOME,
    repeats: int = 1,
) -> pd.DataFrame:
    """Held-out AUROC against training size on synthetic data, with the oracle as the ceiling.

    One fixed synthetic test set (`generator(test_size, seed + 100_000)`); for each size (and
    repeat r) an independent training cohort `generator(size, seed + 1 + i + 1000 r)` is fitted once
    by `fit_and_score(train_df, test_df) -> {name: auroc}` (default `default_fit_and_score`).
    A single draw per size is noisy at 250-500 patients; `repeats` > 1 averages independent draws.
    The oracle row is the AUROC of `p_true` on the test set: the ceiling for any model. On this
    generator `p_true` contains a latent random effect that no feature carries, so the ceiling
    reachable from the features is lower still.

    Returns a tidy table: size, repeat, events_train, model, auroc, seconds (fit + score time).
    """
    if generator is None:
        from pipeline.cohort import generate_cohort as generator  # noqa: N813
    if fit_and_score is None:
        def fit_and_score(tr: pd.DataFrame, te: pd.DataFrame) -> Mapping[str, float]:
            return default_fit_and_score(tr, te, outcome=outcome, seed=seed)
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    test_df = generator(test_size, seed + 100_000)
    y_test = test_df[outcome].astype(int).to_numpy()
    oracle = auroc(y_test, test_df["p_true"].to_numpy(float)) if "p_true" in test_df else float("nan")
    rows = []
    for r in range(repeats):
        for i, size in enumerate(sizes):
            train_df = generator(int(size), seed + 1 + i + 1000 * r)
            started = time.perf_counter()
            scores = fit_and_score(train_df, test_df)
            seconds = time.perf_counter() - started
            events = int(train_df[outcome].astype(int).sum())
            common = {"size": int(size), "repeat": r, "events_train": events}
            for name, value in scores.items():
                rows.append({**common, "model": name, "auroc": float(value), "seconds": seconds})
            rows.append({**common, "model": ORACLE, "auroc": oracle, "seconds": 0.0})
    return pd.DataFrame(rows)


def learning_curve_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, min and max AUROC and mean training events per (size, model) over repeats."""
    return (table.groupby(["size", "model"], sort=False)
            .agg(auroc=("auroc", "mean"), auroc_min=("auroc", "min"), auroc_max=("auroc", "max"),
                 events_train=("events_train", "mean"), repeats=("auroc", "size"))
            .reset_index())


# --------------------------------------------------------------------------- the evidence


def _pct(t: float) -> str:
    return f"{round(t * 100):d}pct"


@dataclass
class Evidence:
    """Everything the validation report and the model card show, for one model on one set.

    discrimination: name -> `discrimination_with_ci` (MODEL, EASIX, M_EASIX raw scores, any other
      comparator, ORACLE when p_true is known);
    comparisons: name -> `paired_difference(model, name)`;
    calibration: name -> `calibration_summary` (+ `calibration_intervals` for the model), for the
      probabilities (model, m-EASIX rescaled on development data, other comparators);
    calibration_curves: name -> `calibration_curve_data`;
    decision_curve: `decision_curve` table; subgroups: `subgroups` table of the model;
    sample_size: `sample_size` (None without development data); thresholds: `thresholds_table`;
    risk_groups: `risk_group_table`; learning_curve: `learning_curve` table or None;
    development: out-of-fold discrimination + calibration on the development data, or None;
    notes: caveats found while computing (e.g. no m-EASIX probability model);
    meta: free context (model name, version, run id, data source) shown in the report header.
    The test outcomes and predictions are kept (y_test, predictions) for the plots; `to_dict`
    leaves them out so no patient-level data is written anywhere.
    """

    outcome: str
    n_boot: int
    discrimination: dict[str, dict[str, float]]
    comparisons: dict[str, dict[str, float]]
    calibration: dict[str, dict[str, float]]
    calibration_curves: dict[str, dict[str, pd.DataFrame]]
    decision_curve: pd.DataFrame
    subgroups: pd.DataFrame
    sample_size: dict[str, Any] | None
    thresholds: pd.DataFrame
    risk_groups: pd.DataFrame
    learning_curve: pd.DataFrame | None = None
    development: dict[str, dict[str, float]] | None = None
    notes: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    y_test: np.ndarray | None = field(default=None, repr=False)
    predictions: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    seconds: float = float("nan")
    # the validation design (split or optimism-corrected bootstrap) and the estimates the gate used
    validation: dict[str, Any] | None = None
    # each feature's direction in the model against its published direction (`feature_directions`)
    directions: pd.DataFrame | None = None

    def net_benefit_at(self, model: str, threshold: float) -> float:
        """Net benefit of `model` ('treat all' included) at one threshold, from the kept
        predictions (exact at 0.05 / 0.10 / 0.20, not read off the grid)."""
        if self.y_test is None:
            return float("nan")
        if model == TREAT_ALL:
            prev = float(np.mean(self.y_test))
            return prev - (1 - prev) * threshold / (1 - threshold)
        if model == TREAT_NONE:
            return 0.0
        return float(net_benefit(self.y_test, self.predictions[model], [threshold])[0])

    def flat_metrics(self, prefix: str = "test", finite_only: bool = True) -> dict[str, float]:
        """MLflow metrics with stable names. With prefix 'test' (training's held-out set):

        test_auroc, test_auroc_ci_low/high, test_auprc(_ci_low/high), test_n, test_events,
        test_prevalence; test_<comparator>_auroc / _auprc (+ _ci_low/high) for easix, m_easix,
        any other comparator and oracle; test_auroc_minus_<comparator> (+ _ci_low/high);
        test_calibration_slope / _intercept (+ _ci_low/high), test_calibration_in_the_large,
        test_observed_expected_ratio, test_ici, test_e50, test_e90, test_emax, test_brier
        (+ _ci_low/high), test_scaled_brier, and test_<comparator>_<same> for the comparators'
        probabilities; net_benefit_at_5pct/10pct/20pct, net_benefit_<comparator>_at_..,
        net_benefit_treat_all_at_..; threshold_<name>_sensitivity/specificity/ppv/npv;
        subgroup_<group>_<level>_n/events/auroc/brier/calibration_in_the_large;
        events_per_parameter, sample_size_required, sample_size_adequate (1/0),
        expected_shrinkage; dev_oof_auroc, dev_oof_calibration_slope, ... when development
        predictions were given. Another prefix (e.g. 'external') replaces 'test' and prefixes the
        net benefit, threshold and subgroup names as well. Non-finite values are left out when
        finite_only (MLflow cannot chart NaN).
        """
        out: dict[str, float] = {}
        pre = f"{prefix}_"
        other = "" if prefix == "test" else pre

        def put(name: str, value: Any) -> None:
            if value is None:
                return
            out[name] = float(value)

        for name, d in self.discrimination.items():
            stem = pre if name == MODEL else f"{pre}{safe_name(name)}_"
            for key in ("auroc", "auroc_ci_low", "auroc_ci_high", "auprc", "auprc_ci_low", "auprc_ci_high"):
                put(stem + key, d.get(key))
            if name == MODEL:
                put(pre + "n", d["n"])
                put(pre + "events", d["events"])
                put(pre + "prevalence", d["prevalence"])
        for name, c in self.comparisons.items():
            stem = f"{pre}auroc_minus_{safe_name(name)}"
            put(stem, c["difference"])
            put(stem + "_ci_low", c["ci_low"])
            put(stem + "_ci_high", c["ci_high"])
        cal_keys = ("calibration_slope", "calibration_slope_ci_low", "calibration_slope_ci_high",
                    "calibration_intercept", "calibration_intercept_ci_low", "calibration_intercept_ci_high",
                    "calibration_in_the_large", "observed_expected_ratio", "ici", "e50", "e90", "emax",
                    "brier", "brier_ci_low", "brier_ci_high", "scaled_brier")
        for name, c in self.calibration.items():
            stem = pre if name == MODEL else f"{pre}{safe_name(name)}_"
            for key in cal_keys:
                put(stem + key, c.get(key))
        if self.y_test is not None:
            for t in NET_BENEFIT_REPORTED:
                put(f"{other}net_benefit_at_{_pct(t)}", self.net_benefit_at(MODEL, t))
                put(f"{other}net_benefit_treat_all_at_{_pct(t)}", self.net_benefit_at(TREAT_ALL, t))
                for name in self.predictions:
                    if name != MODEL:
                        put(f"{other}net_benefit_{safe_name(name)}_at_{_pct(t)}", self.net_benefit_at(name, t))
        for row in self.thresholds.to_dict(orient="records"):
            for key in ("sensitivity", "specificity", "ppv", "npv"):
                put(f"{other}threshold_{safe_name(row['name'])}_{key}", row[key])
        for row in self.subgroups.to_dict(orient="records"):
            stem = f"{other}subgroup_{row['group']}_{row['level']}_"
            for key in ("n", "events", "auroc", "brier", "calibration_in_the_large"):
                put(stem + key, row[key])
        if self.sample_size is not None:
            s = self.sample_size
            put("events_per_parameter", s["events_per_parameter"])
            put("sample_size_required", s["n_required"])
            put("sample_size_adequate", 1.0 if s["adequate"] else 0.0)
            put("expected_shrinkage", s["expected_shrinkage"])
        if self.development is not None:
            for key, value in self.development.items():
                if key not in ("n_boot", "brier_null") and isinstance(value, (int, float, np.floating, np.integer)):
                    put(f"dev_oof_{key}", value)
        if finite_only:
            out = {k: v for k, v in out.items() if math.isfinite(v)}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (aggregates only, no patient-level values)."""

        def plain(v: Any) -> Any:
            if isinstance(v, pd.DataFrame):
                return [plain(r) for r in v.to_dict(orient="records")]
            if isinstance(v, dict):
                return {str(k): plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, (np.integer,)):
                return int(v)
            if isinstance(v, (float, np.floating)):
                return float(v) if math.isfinite(float(v)) else None
            if isinstance(v, np.bool_):
                return bool(v)
            return v

        return plain({
            "outcome": self.outcome, "n_boot": self.n_boot, "meta": self.meta, "notes": self.notes,
            "discrimination": self.discrimination, "comparisons": self.comparisons,
            "calibration": self.calibration, "decision_curve": self.decision_curve,
            "subgroups": self.subgroups, "sample_size": self.sample_size,
            "thresholds": self.thresholds, "risk_groups": self.risk_groups,
            "learning_curve": self.learning_curve, "development": self.development,
            "validation": self.validation, "directions": self.directions,
            "calibration_curves": {k: {"binned": v["binned"], "smoothed": v["smoothed"]} for k, v in self.calibration_curves.items()},
        })


def build_evidence(
    y_dev: np.ndarray | None,
    p_dev_oof: np.ndarray | None,
    dev_df: pd.DataFrame | None,
    y_test: np.ndarray,
    p_test: np.ndarray,
    test_df: pd.DataFrame,
    thresholds: Mapping[str, float],
    n_params: int,
    outcome: str = DEFAULT_OUTCOME,
    m_easix_model: Any | None = None,
    *,
    other_predictions: Mapping[str, np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    learning_curve: pd.DataFrame | None = None,
    anticipated_c: float | None = ANTICIPATED_C,
    curve_boot: int = 200,
    meta: Mapping[str, Any] | None = None,
) -> Evidence:
    """All the evidence for one model on one validation set.

    y_dev, p_dev_oof, dev_df: development outcomes, out-of-fold risks (or None) and rows; pass
      None for all three in an external validation (no sample-size section then).
    y_test, p_test, test_df: validation outcomes, the model's calibrated risks, and rows (contract
      columns; `p_true` is used as the oracle when present and the outcome is severe ICANS).
    thresholds: the risk-group thresholds chosen on development data, e.g. {'low': .., 'high': ..}.
    n_params: candidate predictor parameters (for events per parameter and the sample size).
    m_easix_model: m-EASIX -> probability (`models.baselines.ScoreToProbability('m_easix')`) fitted
      on development data; fitted here on dev_df when None and dev_df is given; without either
      m-EASIX enters discrimination only (noted).
    other_predictions: further comparators' probabilities on the validation set (e.g. {'logistic': p}).
    n_boot / seed: bootstrap resamples (>= 1,000 for the report) and their seed; curve_boot: the
      resamples for the band of the smoothed calibration curve.
    """
    from models.baselines import SCORES, ScoreToProbability

    started = time.perf_counter()
    y = _as_binary(y_test)
    p = _as_score(p_test, y.shape[0], probability=True)
    if len(test_df) != y.shape[0]:
        raise ValueError(f"test_df has {len(test_df)} rows but y_test has {y.shape[0]}")
    test_df = test_df.reset_index(drop=True)
    notes: list[str] = []

    discrimination = {MODEL: discrimination_with_ci(y, p, n_boot, seed)}
    model_reps = bootstrap_replicates(y, p, auroc, n_boot, seed) if 0 < y.sum() < y.shape[0] else None
    comparisons: dict[str, dict[str, float]] = {}
    for name, score in SCORES.items():
        s = np.asarray(score(test_df), dtype=float)
        if not np.all(np.isfinite(s)):
            notes.append(f"{name}: missing labs in the validation set; not evaluated")
            continue
        discrimination[name] = discrimination_with_ci(y, s, n_boot, seed)
        comparisons[name] = paired_difference(y, p, s, n_boot, seed, model_replicates=model_reps)

    probabilities: dict[str, np.ndarray] = {MODEL: p}
    if m_easix_model is None and dev_df is not None and y_dev is not None:
        m_easix_model = ScoreToProbability(score=M_EASIX).fit(dev_df, _as_binary(y_dev))
    if m_easix_model is not None:
        probabilities[M_EASIX] = m_easix_model.predict_proba(test_df)[:, 1]
    else:
        notes.append("m-EASIX: no probability model fitted on development data; decision curve and "
                     "calibration of m-EASIX omitted")
    for name, q in (other_predictions or {}).items():
        q = _as_score(q, y.shape[0], probability=True)
        probabilities[name] = q
        discrimination[name] = discrimination_with_ci(y, q, n_boot, seed)
        comparisons[name] = paired_difference(y, p, q, n_boot, seed, model_replicates=model_reps)

    if outcome == "severe_icans" and "p_true" in test_df and test_df["p_true"].notna().all():
        discrimination[ORACLE] = discrimination_with_ci(y, test_df["p_true"].to_numpy(float), n_boot, seed)

    # the decision curve shows EASIX too (rescaled on the development data, as m-EASIX)
    dc_probabilities = dict(probabilities)
    if dev_df is not None and y_dev is not None and np.all(np.isfinite(SCORES[EASIX](test_df))):
        easix_model = ScoreToProbability(score=EASIX).fit(dev_df, _as_binary(y_dev))
        dc_probabilities[EASIX] = easix_model.predict_proba(test_df)[:, 1]

    calibration = {name: calibration_summary(y, q) for name, q in probabilities.items()}
    calibration[MODEL].update(calibration_intervals(y, p, n_boot, seed))
    curves = {name: calibration_curve_data(y, q, n_boot=curve_boot if name == MODEL else 0, seed=seed)
              for name, q in probabilities.items()}

    size = None
    development = None
    if y_dev is not None:
        yd = _as_binary(y_dev)
        if 0 < yd.sum() < yd.shape[0]:
            size = sample_size(int(yd.shape[0]), int(yd.sum()), n_params, anticipated_c=anticipated_c)
            if size["warning"]:
                notes.append(size["warning"])
        if p_dev_oof is not None:
            pd_oof = _as_score(p_dev_oof, yd.shape[0], probability=True)
            development = {**discrimination_with_ci(yd, pd_oof, n_boot, seed), **calibration_summary(yd, pd_oof)}

    small = subgroups(test_df, y, p, n_boot=n_boot, seed=seed)
    if small["small"].any():
        notes.append(f"{int(small['small'].sum())} subgroup level(s) are small (n < {SMALL_SUBGROUP_N} or "
                     f"events < {SMALL_SUBGROUP_EVENTS}): their figures are unstable")

    return Evidence(
        outcome=outcome,
        n_boot=n_boot,
        discrimination=discrimination,
        comparisons=comparisons,
        calibration=calibration,
        calibration_curves=curves,
        decision_curve=_decision_curve_with_band(y, dc_probabilities, n_boot=min(n_boot, 200), seed=seed),
        subgroups=small,
        sample_size=size,
        thresholds=thresholds_table(y, p, thresholds),
        risk_groups=risk_group_table(y, p, thresholds),
        learning_curve=learning_curve,
        development=development,
        notes=notes,
        meta=dict(meta or {}),
        y_test=y,
        predictions=probabilities,
        seconds=time.perf_counter() - started,
    )
