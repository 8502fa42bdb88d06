"""Classification at the stored risk-group thresholds (chosen on development data): sensitivity,
specificity, PPV and NPV, and observed against predicted risk per risk group."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd

from pipeline.stats.metrics import _as_binary, _as_score


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
