"""The data of a calibration plot: quantile bins with Wilson intervals and the loess curve with a
percentile-bootstrap band."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.stats import norm

from pipeline.stats.bootstrap import ALPHA, bootstrap_indices
from pipeline.evidence.smoothing import loess, loess_fit, loess_geometry
from pipeline.stats.metrics import _as_binary, _as_score


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
            geometry = loess_geometry(p, grid, sort=True)
            yf = y.astype(float)
            reps = np.empty((n_boot, grid.size))
            for b in range(n_boot):
                w = np.bincount(idx[b], minlength=y.shape[0]).astype(float)
                reps[b] = loess_fit(geometry, yf, w, span, degree, unweighted=False)
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
