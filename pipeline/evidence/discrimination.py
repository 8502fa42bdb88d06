"""Discrimination with percentile-bootstrap intervals: AUROC and AUPRC of a model or score, and the
paired difference model - comparator on the SAME resamples (`pipeline.stats.bootstrap`)."""

from __future__ import annotations

import numpy as np

from pipeline.stats.bootstrap import ALPHA, auprc_replicates, bootstrap_replicates, percentile_ci
from pipeline.stats.metrics import _as_binary, _as_score, auprc, auroc


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
    out["auroc_ci_low"], out["auroc_ci_high"] = percentile_ci(
        bootstrap_replicates(y, s, auroc, n_boot=n_boot, seed=seed), alpha
    )
    if with_auprc:
        out["auprc_ci_low"], out["auprc_ci_high"] = percentile_ci(
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
    out["ci_low"], out["ci_high"] = percentile_ci(diff, alpha)
    finite = diff[np.isfinite(diff)]
    out["share_model_better"] = float(np.mean(finite > 0)) if finite.size else float("nan")
    return out
