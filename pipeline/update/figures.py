"""An update's figures on the local data that both fit and judge it, corrected for that.

A revision is judged on its out-of-fold risks (the closed test's: refit and calibration never saw the
patient); a recalibration's calibration slope and intercept are corrected by Harrell's bootstrap
optimism (exact for one or two parameters: no trees are refitted). The updated version then carries
its own figures and reference, never its parent's (`describe_bundle`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit

from models.artifact import ModelBundle
from models.baselines import SCORES
from models.calibration import calibrated_log_odds
from pipeline.stats.bootstrap import bootstrap_indices
from pipeline.evidence import paired_difference
from pipeline.stats.metrics import calibration_slope_intercept
from pipeline.stats.recalibration import INTERCEPT, LOGISTIC, REVISION, fit_recalibration


def local_figures(y: np.ndarray, p: np.ndarray, seed: int) -> dict[str, float]:
    """Calibration and discrimination on the local data, as monitoring reports them."""
    from pipeline.monitor.statistics import calibration_now

    return calibration_now(y, p, seed=seed).figures


def optimism(y: np.ndarray, lp: np.ndarray, method: str, seed: int, n_boot: int = 200) -> dict[str, float]:
    """Harrell's bootstrap optimism of the recalibration's calibration slope and intercept: the
    local data both fit and judge the update. (Exact for 1-2 parameters; no trees are refitted.)"""
    if method not in (INTERCEPT, LOGISTIC):
        return {"calibration_slope": 0.0, "calibration_intercept": 0.0}
    diffs = []
    for idx in bootstrap_indices(len(y), n_boot, seed):
        if not 0 < y[idx].sum() < len(idx):
            continue
        a, b = fit_recalibration(y[idx], lp[idx], with_slope=method == LOGISTIC)
        boot = calibration_slope_intercept(y[idx], expit(calibrated_log_odds(lp[idx], a, b)))
        orig = calibration_slope_intercept(y, expit(calibrated_log_odds(lp, a, b)))
        diffs.append(np.subtract(boot, orig))
    d = np.nanmean(np.asarray(diffs), axis=0)
    return {"calibration_slope": float(d[0]), "calibration_intercept": float(d[1])}


def validated_figures(y: np.ndarray, p1: np.ndarray, lp: np.ndarray, df: pd.DataFrame, method: str, seed: int,
                      revision_oof: np.ndarray | None) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    """The gate's figures for the update on the local data, corrected for the fit on the same data,
    the risks they are read from, and those risks' uncorrected figures. A revision is judged on its
    out-of-fold risks (`revision_oof`, the closed test's); a recalibration by Harrell's bootstrap optimism."""
    risk = expit(revision_oof) if method == REVISION else p1
    fig = local_figures(y, risk, seed)
    opt = optimism(y, lp, method, seed)
    v = {"auroc": fig["auroc"], "auroc_ci_low": fig["auroc_ci_low"], "auroc_ci_high": fig["auroc_ci_high"],
         "brier": fig["brier"], "brier_ci_low": fig["brier_ci_low"], "brier_ci_high": fig["brier_ci_high"]}
    for k in ("calibration_slope", "calibration_intercept"):
        v[k] = fig[k] - opt[k]
        v[f"{k}_ci_low"] = fig[f"{k}_ci_low"] - opt[k]
        v[f"{k}_ci_high"] = fig[f"{k}_ci_high"] - opt[k]
        v[f"optimism_{k}"] = opt[k]
    m_easix = SCORES["m_easix"](df)
    if np.all(np.isfinite(m_easix)):
        d = paired_difference(y, risk, m_easix, seed=seed)
        v.update(m_easix_auroc=d["auroc_other"], auroc_minus_m_easix=d["difference"],
                 auroc_minus_m_easix_ci_low=d["ci_low"], auroc_minus_m_easix_ci_high=d["ci_high"])
    return v, risk, dict(fig)


def describe_bundle(bundle: ModelBundle, validated: dict[str, float], df: pd.DataFrame, X: np.ndarray) -> None:
    """The updated version's own figures and reference, never its parent's: what /v1/model shows and
    what monitoring compares the site's patients with (the local patients it was updated on)."""
    from pipeline.monitor.statistics import reference_summary

    # full precision: machines read these (GET /v1/model); people read them rounded by core.display
    bundle.metadata["test_metrics"] = {f"validated_{k}": float(v) for k, v in validated.items() if np.isfinite(v)}
    ex = bundle.explain(X)
    bundle.metadata["reference"] = reference_summary(
        df, ex.risk, dict(zip(bundle.feature_names, np.mean(np.abs(ex.contributions), axis=0))))
