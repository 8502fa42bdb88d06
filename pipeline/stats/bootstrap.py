"""The percentile bootstrap of a held-out metric, vectorised: the one implementation of it.

Every interval in the metrics, the evidence and the monitoring comes from the resamples of
`bootstrap_indices(n, n_boot, seed)`, so two figures computed with the same (n_boot, seed) are on
the SAME resamples (a paired comparison is then just a difference of replicates). A resample with a
single outcome class gives NaN for every metric, so the set of resamples used does not depend on
the metric asked for. AUROC, AUPRC (`auprc_replicates`) and Brier are computed for all resamples
at once (calling scikit-learn 1,000 times is slow); any other metric falls back to a loop.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score

from pipeline.stats.metrics import MetricFn, _as_binary, _as_score, auprc, auroc, brier

# The interval level: (1 - ALPHA) percentile intervals.
ALPHA = 0.05
# Bounded memory for the (resamples x distinct scores) count matrices (and the other vectorised
# work matrices of the evidence: calibration fits on resamples, the loess).
CELLS_PER_CHUNK = 4_000_000


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """All resample indices at once, shape (n_boot, n). Public so that a test (or a paired
    comparison of two models) can use exactly the same resamples."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n))


def valid_resamples(y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Which resamples (rows of idx) hold both outcome classes: the others give NaN."""
    events = y[idx].sum(axis=1)
    valid: np.ndarray = (events > 0) & (events < y.shape[0])
    return valid


def percentile_ci(values: np.ndarray, alpha: float = ALPHA) -> tuple[float, float]:
    """The (alpha / 2, 1 - alpha / 2) quantiles of the finite replicates; (NaN, NaN) if none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


# --------------------------------------------------------------------------- vectorised metrics


def _auroc_batch(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """AUROC of every resample by the Mann-Whitney statistic, without re-sorting per resample.

    The original scores are sorted once; each resample is then a vector of counts per distinct
    score value (split by class), and AUROC = P(score_pos > score_neg) + 0.5 P(tie) is a
    cumulative sum over those counts. Integer counts keep it exact, so it agrees with sklearn's
    trapezoidal AUROC to rounding error.
    """
    n_boot = idx.shape[0]
    _, codes = np.unique(s, return_inverse=True)
    k = int(codes.max()) + 1
    flat = (np.arange(n_boot)[:, None] * k + codes[idx]).ravel()
    labels = y[idx].ravel().astype(bool)
    w_pos = np.bincount(flat[labels], minlength=n_boot * k).reshape(n_boot, k)
    w_neg = np.bincount(flat[~labels], minlength=n_boot * k).reshape(n_boot, k)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    wins = (w_pos * (2 * neg_below + w_neg)).sum(axis=1) / 2.0
    pairs = w_pos.sum(axis=1) * w_neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


def _auprc_batch(y: np.ndarray, s: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Average precision of every resample (rows of idx), without re-sorting per resample.

    As in `_auroc_batch`, the scores are ranked once; a resample is a vector of counts of
    positives and negatives per distinct score. Walking the distinct scores from the highest down,
    AP = sum_k (positives at k / all positives) x precision at k, which is sklearn's
    average_precision_score (step-wise, ties form one threshold) exactly.
    """
    _, codes = np.unique(s, return_inverse=True)
    k = int(codes.max()) + 1
    codes = (k - 1) - codes  # column 0 = highest score
    out = np.full(idx.shape[0], np.nan)
    step = max(1, CELLS_PER_CHUNK // k)
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


def _brier_batch(y: np.ndarray, p: np.ndarray, idx: np.ndarray) -> np.ndarray:
    scores: np.ndarray = np.mean((p[idx] - y[idx]) ** 2, axis=1)
    return scores


Batch = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# Metrics with a vectorised path; any other callable is evaluated resample by resample. (AUPRC's
# vectorised path is `auprc_replicates`; `bootstrap_replicates(.., auprc)` keeps sklearn's loop.)
_BATCH: dict[MetricFn, Batch] = {
    auroc: _auroc_batch,
    roc_auc_score: _auroc_batch,
    brier: _brier_batch,
    brier_score_loss: _brier_batch,
}


# --------------------------------------------------------------------------- replicates and intervals


def _replicates(y: np.ndarray, p: np.ndarray, metric_fn: MetricFn, batch: Batch | None, n_boot: int,
                seed: int) -> np.ndarray:
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=False)
    idx = bootstrap_indices(y.shape[0], n_boot, seed)
    valid = valid_resamples(y, idx)
    if batch is not None:
        values = np.asarray(batch(y, p, idx), dtype=float)
    else:
        values = np.full(n_boot, np.nan)
        for b in np.flatnonzero(valid):
            values[b] = float(metric_fn(y[idx[b]], p[idx[b]]))
    values[~valid] = np.nan
    return values


def bootstrap_replicates(
    y: np.ndarray,
    p: np.ndarray,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """The metric on each of n_boot resamples (rows of `bootstrap_indices(n, n_boot, seed)`).

    Resamples with a single outcome class are skipped (NaN), for every metric, so that the set
    of resamples does not depend on which metric is asked for.
    """
    return _replicates(y, p, metric_fn, _BATCH.get(metric_fn), n_boot, seed)


def auprc_replicates(y: np.ndarray, s: np.ndarray, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """AUPRC on the resamples of `bootstrap_indices(n, n_boot, seed)` (the same resamples as
    `bootstrap_replicates`), vectorised; NaN for resamples with one class."""
    return _replicates(y, s, auprc, _auprc_batch, n_boot, seed)


def bootstrap_ci(
    y: np.ndarray,
    p: np.ndarray,
    metric_fn: MetricFn,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = ALPHA,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of metric_fn(y, p) on a held-out set.

    A point estimate from a few hundred patients with a few dozen events is noisy; the interval
    says how noisy. AUROC (`pipeline.stats.metrics.auroc` or sklearn's roc_auc_score) and Brier are
    computed for all resamples at once; other metrics fall back to a loop. Returns (NaN, NaN) if
    no resample has both classes.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie in (0, 1)")
    return percentile_ci(bootstrap_replicates(y, p, metric_fn, n_boot=n_boot, seed=seed), alpha)
