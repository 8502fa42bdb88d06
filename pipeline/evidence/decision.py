"""Decision curve analysis (Vickers & Elkin, Med Decis Making 2006;26:565): net benefit over
threshold probabilities for each model, 'treat all' and 'treat none', with a bootstrap band for the
model."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.stats.bootstrap import ALPHA, bootstrap_indices
from pipeline.evidence.names import MODEL, TREAT_ALL, TREAT_NONE
from pipeline.stats.metrics import _as_binary, _as_score

DEFAULT_THRESHOLDS = np.round(np.arange(0.01, 0.51, 0.01), 2)
# Decision-curve thresholds reported as MLflow metrics (net_benefit_at_<k>pct).
NET_BENEFIT_REPORTED = (0.05, 0.10, 0.20)


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


def decision_curve_with_band(y: np.ndarray, p_by_name: Mapping[str, np.ndarray], n_boot: int = 200,
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
