"""Intervals of cross-validated figures that hold the between-repeat spread as well as the patients.

Repeated cross-validation gives R full sets of out-of-fold risks (one per repeat: another fold
split, so other refits of the whole procedure). An interval from one repeat's bootstrap, moved to
the mean over repeats, leaves out how much the figure depends on the split and the refits; in a
shuffled-outcome cohort that shift decided the gate (issue 23, finding 4). Here every repeat is
bootstrapped (patients resampled, `n_boot / R` resamples each, the same resamples for every model
of that repeat so differences are paired) and the replicates of all repeats are pooled: the pooled
distribution's variance is the mean within-repeat bootstrap variance plus the variance of the
repeats' estimates, and its 2.5% and 97.5% quantiles are the interval. The point estimate is the
mean over repeats. Both parts are conservative rather than optimistic: the between-repeat spread
of a mean over R repeats is smaller than that of one repeat, and it is kept whole here.
"""

from __future__ import annotations

import numpy as np

from pipeline.stats.bootstrap import ALPHA, bootstrap_indices, bootstrap_replicates, percentile_ci, valid_resamples
from pipeline.evidence.calibration import _calibration_batch
from pipeline.stats.metrics import P_CLIP, auroc, brier

# replicates per repeat are n_boot // R, at least this many
MIN_BOOT_PER_REPEAT = 100

def _calibration(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    slopes, intercepts = _calibration_batch(y, np.clip(p, P_CLIP, 1 - P_CLIP), idx)
    valid = valid_resamples(y, idx)
    slopes[~valid], intercepts[~valid] = np.nan, np.nan
    return slopes, intercepts


def net_benefit_replicates(y: np.ndarray, p: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    """Net benefit of treating 'p >= threshold' on each resample (TP/n - FP/n * t/(1-t))."""
    pos = p[idx] >= threshold
    yy = y[idx].astype(bool)
    n = idx.shape[1]
    tp = (pos & yy).sum(axis=1) / n
    fp = (pos & ~yy).sum(axis=1) / n
    return tp - fp * threshold / (1 - threshold)


def _per_repeat_boot(n_boot: int, repeats: int) -> int:
    return max(MIN_BOOT_PER_REPEAT, int(np.ceil(n_boot / max(repeats, 1))))


def metric_replicates(y: np.ndarray, predictions: np.ndarray, n_boot: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Pooled replicates of AUROC, calibration slope and intercept and Brier over the repeats
    (rows of `predictions`); repeat r uses the resamples `bootstrap_indices(n, b, seed + r)`."""
    y = np.asarray(y).astype(int)
    preds = np.atleast_2d(predictions)
    b = _per_repeat_boot(n_boot, preds.shape[0])
    out: dict[str, list[np.ndarray]] = {"auroc": [], "calibration_slope": [], "calibration_intercept": [], "brier": []}
    for r, p in enumerate(preds):
        idx = bootstrap_indices(len(y), b, seed + r)
        out["auroc"].append(bootstrap_replicates(y, p, auroc, b, seed + r))
        slopes, intercepts = _calibration(y, p, idx)
        out["calibration_slope"].append(slopes)
        out["calibration_intercept"].append(intercepts)
        out["brier"].append(bootstrap_replicates(y, p, brier, b, seed + r))
    return {k: np.concatenate(v) for k, v in out.items()}


def pooled_intervals(y: np.ndarray, predictions: np.ndarray, n_boot: int = 1000, seed: int = 0,
                     alpha: float = ALPHA) -> dict[str, float]:
    """`<metric>_ci_low` / `<metric>_ci_high` from the pooled replicates of every repeat."""
    out: dict[str, float] = {}
    for k, values in metric_replicates(y, predictions, n_boot, seed).items():
        out[f"{k}_ci_low"], out[f"{k}_ci_high"] = percentile_ci(values, alpha)
    return out


def paired_auroc_difference(y: np.ndarray, model: np.ndarray, other: np.ndarray, n_boot: int = 1000, seed: int = 0,
                            alpha: float = ALPHA) -> dict[str, float]:
    """AUROC(model) - AUROC(other) on the same patients, repeat by repeat (rows; a 1-D `other`,
    such as m-EASIX, is the same in every repeat), point = mean over repeats, interval from the
    pooled paired replicates (the same resamples for both within a repeat)."""
    y = np.asarray(y).astype(int)
    a = np.atleast_2d(model)
    o = np.atleast_2d(other)
    if o.shape[0] == 1 and a.shape[0] > 1:
        o = np.repeat(o, a.shape[0], axis=0)
    b = _per_repeat_boot(n_boot, a.shape[0])
    diffs, points, others = [], [], []
    for r in range(a.shape[0]):
        points.append(auroc(y, a[r]) - auroc(y, o[r]))
        others.append(auroc(y, o[r]))
        diffs.append(bootstrap_replicates(y, a[r], auroc, b, seed + r) - bootstrap_replicates(y, o[r], auroc, b, seed + r))
    low, high = percentile_ci(np.concatenate(diffs), alpha)
    return {"difference": float(np.mean(points)), "ci_low": low, "ci_high": high,
            "auroc_other": float(np.mean(others)), "auroc_model": float(np.mean(points) + np.mean(others))}


def paired_comparison(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, thresholds: dict[str, float],
                      n_boot: int = 1000, seed: int = 0, alpha: float = ALPHA) -> dict[str, dict[str, float]]:
    """Challenger minus champion, both out-of-fold on the same patients (rows: repeats), on the
    promotion's criteria: AUROC; calibration as the distance from ideal, |slope - 1| and |CITL|
    (so "worse" means further from ideal whichever side); net benefit at each threshold. Each
    with its point (mean over repeats) and pooled paired interval. For the distances a positive
    difference means the challenger is worse; for AUROC and net benefit a negative one."""
    y = np.asarray(y).astype(int)
    a, c = np.atleast_2d(challenger), np.atleast_2d(champion)
    b = _per_repeat_boot(n_boot, a.shape[0])
    reps: dict[str, list[np.ndarray]] = {}
    points: dict[str, list[float]] = {}
    values: dict[str, list[tuple[float, float]]] = {}

    def add(key: str, rep: np.ndarray, point_a: float, point_c: float) -> None:
        reps.setdefault(key, []).append(rep)
        points.setdefault(key, []).append(point_a - point_c)
        values.setdefault(key, []).append((point_a, point_c))

    full = np.arange(len(y))[None, :]
    for r in range(a.shape[0]):
        idx = bootstrap_indices(len(y), b, seed + r)
        valid = valid_resamples(y, idx)
        add("auroc", bootstrap_replicates(y, a[r], auroc, b, seed + r) - bootstrap_replicates(y, c[r], auroc, b, seed + r),
            auroc(y, a[r]), auroc(y, c[r]))
        sa, ia = _calibration(y, a[r], idx)
        sc, ic = _calibration(y, c[r], idx)
        (pa_s,), (pa_i,) = _calibration(y, a[r], full)
        (pc_s,), (pc_i,) = _calibration(y, c[r], full)
        add("calibration_slope_distance", np.abs(sa - 1) - np.abs(sc - 1), abs(pa_s - 1), abs(pc_s - 1))
        add("calibration_intercept_distance", np.abs(ia) - np.abs(ic), abs(pa_i), abs(pc_i))
        for name, t in thresholds.items():
            nb = net_benefit_replicates(y, a[r], idx, t) - net_benefit_replicates(y, c[r], idx, t)
            nb[~valid] = np.nan
            add(f"net_benefit_{name}", nb, float(net_benefit_replicates(y, a[r], full, t)[0]),
                float(net_benefit_replicates(y, c[r], full, t)[0]))
    out = {}
    for key in reps:
        low, high = percentile_ci(np.concatenate(reps[key]), alpha)
        va = float(np.nanmean([v[0] for v in values[key]]))
        vc = float(np.nanmean([v[1] for v in values[key]]))
        out[key] = {"difference": float(np.nanmean(points[key])), "ci_low": low, "ci_high": high,
                    "challenger": va, "champion": vc}
    return out
