"""After go-live: is the served model still fit for the patients it now sees?

The statistics of monitoring, with no I/O (the store, the CLI and the service call them):

- `reference_summary`: what the bundle carries of its development data: per feature the counts of
  the development patients in bins fixed by their own deciles (numbers) or levels (categories),
  the missing count, and the same for the predicted risk, plus the mean |SHAP| per feature. Counts,
  never patient rows.
- `drift_tests`: each feature now against its reference, by a permutation test of homogeneity of
  the 2 x K table (reference bins against current bins; Monte Carlo over tables with the observed
  margins, `scipy.stats.random_table`), and Fisher's exact test for the share missing. The p-values
  are adjusted by Holm's method across all tests of a run, so the chance of any false alarm when
  nothing has drifted stays at `alpha` at every sample size (a fixed PSI cut-off does not: at 50-100
  patients a 10-bin PSI exceeds 0.10 most of the time with no drift at all). PSI and the
  Wasserstein distance are reported beside them, as descriptions, never as the alarm.
- `calibration_now`: once outcomes exist, observed/expected, calibration intercept and slope,
  AUROC and Brier with bootstrap intervals, the events behind them, and a CUSUM of observed minus
  expected in time order.
- `verdict`: the model-updating ladder in plain words, from the same closed test `make update` uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import fisher_exact, random_table

from pipeline.contract import FEATURES

N_BINS = 10
RISK = "predicted_risk"


def _edges(values: np.ndarray) -> list[float]:
    """Inner bin edges at the deciles of the observed values (ties collapse bins)."""
    if values.size == 0:
        return []
    return sorted(set(float(v) for v in np.quantile(values, np.linspace(0, 1, N_BINS + 1)[1:-1])))


def _bin(values: np.ndarray, edges: list[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges, dtype=float), values, side="right")


def _numeric_summary(values: np.ndarray) -> dict[str, Any]:
    observed = values[np.isfinite(values)]
    edges = _edges(observed)
    counts = np.bincount(_bin(observed, edges), minlength=len(edges) + 1) if observed.size else np.zeros(1, int)
    quantiles = np.quantile(observed, np.linspace(0, 1, 21)).tolist() if observed.size else []
    return {"kind": "number", "edges": edges, "counts": counts.tolist(), "missing": int(values.size - observed.size),
            "n": int(values.size), "quantiles": quantiles}


def _category_summary(values: pd.Series) -> dict[str, Any]:
    present = values.dropna().astype(str)
    counts = present.value_counts()
    return {"kind": "category", "levels": counts.index.tolist(), "counts": counts.astype(int).tolist(),
            "missing": int(values.isna().sum()), "n": int(len(values))}


def reference_summary(frame: pd.DataFrame, risk: np.ndarray, mean_abs_shap: dict[str, float]) -> dict[str, Any]:
    """The development data in summary form (counts per bin), for the bundle."""
    features: dict[str, Any] = {}
    for f in FEATURES:
        column = frame[f.name] if f.name in frame else pd.Series([np.nan] * len(frame))
        if f.kind == "float":
            features[f.name] = _numeric_summary(pd.to_numeric(column, errors="coerce").to_numpy(float))
        else:
            features[f.name] = _category_summary(column)
    features[RISK] = _numeric_summary(np.asarray(risk, dtype=float))
    return {"n": int(len(frame)), "features": features, "mean_abs_shap": {k: float(v) for k, v in mean_abs_shap.items()}}


def _permutation_p(table: np.ndarray, n_mc: int, rng: np.random.Generator) -> tuple[float, float]:
    """Chi-squared statistic of a 2 x K table and its Monte Carlo p-value over tables with the same margins."""
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table.sum(axis=1).min() == 0:
        return 0.0, 1.0
    def stat(t: np.ndarray) -> np.ndarray:
        expected = t.sum(axis=-2, keepdims=True) * t.sum(axis=-1, keepdims=True) / t.sum(axis=(-2, -1), keepdims=True)
        return np.sum((t - expected) ** 2 / expected, axis=(-2, -1))
    observed = float(stat(table))
    dist = random_table(table.sum(axis=1), table.sum(axis=0), seed=rng)
    # a first pass of 199 tables; where the p-value may matter after Holm's adjustment, enough
    # tables for a p-value as small as the adjustment needs (the smallest is 1 / (n_mc + 1))
    for size in (199, n_mc):
        p = float((1 + np.sum(stat(dist.rvs(size=size).astype(float)) >= observed - 1e-9)) / (size + 1))
        if p > 0.05:
            break
    return observed, p


def _psi(ref: np.ndarray, now: np.ndarray) -> float:
    a = (ref + 0.5) / (ref.sum() + 0.5 * ref.size)
    b = (now + 0.5) / (now.sum() + 0.5 * now.size)
    return float(np.sum((b - a) * np.log(b / a)))


def _wasserstein(quantiles: list[float], values: np.ndarray) -> float:
    if not quantiles or values.size == 0:
        return float("nan")
    grid = np.linspace(0, 1, len(quantiles))
    return float(np.mean(np.abs(np.quantile(values, grid) - np.asarray(quantiles))))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence)."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    m = p.size
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def drift_tests(reference: dict[str, Any], frame: pd.DataFrame, risk: np.ndarray, alpha: float = 0.05,
                n_mc: int = 19_999, seed: int = 0) -> pd.DataFrame:
    """One row per test (distribution and missingness of each feature, distribution of the risk),
    with the raw and Holm-adjusted p-values and the alarm at `alpha` (family-wise)."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, ref in reference["features"].items():
        if name == RISK:
            values = np.asarray(risk, dtype=float)
        elif name in frame:
            values = frame[name]
        else:
            values = pd.Series([np.nan] * len(frame))
        if ref["kind"] == "number":
            v = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(float)
            observed = v[np.isfinite(v)]
            now = np.bincount(_bin(observed, ref["edges"]), minlength=len(ref["counts"]))[: len(ref["counts"])]
            missing_now = int(v.size - observed.size)
            wasserstein = _wasserstein(ref.get("quantiles", []), observed)
        else:
            s = pd.Series(values)
            present = s.dropna().astype(str)
            levels = list(ref["levels"]) + sorted(set(present) - set(ref["levels"]))
            now = np.array([int((present == lvl).sum()) for lvl in levels])
            missing_now = int(s.isna().sum())
            wasserstein = float("nan")
        ref_counts = np.asarray(ref["counts"], dtype=int)
        ref_counts = np.pad(ref_counts, (0, max(0, now.size - ref_counts.size)))
        stat, p = _permutation_p(np.vstack([ref_counts, now]), n_mc, rng)
        rows.append({"feature": name, "test": "distribution", "statistic": stat, "p": p,
                     "psi": _psi(ref_counts.astype(float), now.astype(float)) if now.sum() else float("nan"),
                     "wasserstein": wasserstein, "n_now": int(now.sum()), "n_reference": int(ref_counts.sum())})
        n_now = int(len(values))
        if ref["missing"] or missing_now:
            table = [[ref["missing"], ref["n"] - ref["missing"]], [missing_now, n_now - missing_now]]
            rows.append({"feature": name, "test": "missingness", "statistic": missing_now / max(n_now, 1),
                         "p": float(fisher_exact(table).pvalue), "psi": float("nan"), "wasserstein": float("nan"),
                         "n_now": n_now, "n_reference": int(ref["n"]),
                         "missing_share_reference": ref["missing"] / max(ref["n"], 1)})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    out["alarm"] = out["p_holm"] < alpha
    return out


def explanation_drift(reference: dict[str, Any], contributions: np.ndarray, names: list[str]) -> pd.DataFrame:
    """Mean |SHAP| per feature now against development (a description; no test)."""
    now = np.mean(np.abs(contributions), axis=0) if len(contributions) else np.full(len(names), np.nan)
    ref = reference.get("mean_abs_shap", {})
    return pd.DataFrame({"feature": names, "mean_abs_shap_reference": [ref.get(n, np.nan) for n in names],
                         "mean_abs_shap_now": now})


@dataclass
class Calibration:
    figures: dict[str, float]
    cusum: np.ndarray  # cumulative observed - expected, in time order


def calibration_now(y: np.ndarray, p: np.ndarray, seed: int = 0) -> Calibration:
    """O/E, intercept, slope, AUROC and Brier with 95% bootstrap intervals; the O - E CUSUM."""
    from pipeline.bootstrap import bootstrap_indices
    from pipeline.evidence import calibration_intervals, discrimination_with_ci
    from pipeline.metrics import brier, calibration_slope_intercept

    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    figures: dict[str, float] = {"n": float(len(y)), "events": float(y.sum()), "expected_events": float(p.sum())}
    figures["observed_expected"] = float(y.sum() / p.sum()) if p.sum() > 0 else float("nan")
    oe = [y[i].sum() / p[i].sum() for i in bootstrap_indices(len(y), 1000, seed) if p[i].sum() > 0]
    figures["observed_expected_ci_low"], figures["observed_expected_ci_high"] = (
        (float(np.quantile(oe, 0.025)), float(np.quantile(oe, 0.975))) if len(y) else (np.nan, np.nan))
    if 0 < y.sum() < len(y):
        slope, intercept = calibration_slope_intercept(y, p)
        figures.update(calibration_slope=slope, calibration_intercept=intercept, brier=brier(y, p))
        figures.update(discrimination_with_ci(y, p, seed=seed, with_auprc=False))
        figures.update(calibration_intervals(y, p, seed=seed))
    return Calibration(figures, np.cumsum(y - p))


# The fewest events behind a verdict on calibration: below this the verdict is "too few events".
MIN_EVENTS_FOR_VERDICT = 10
# Events for a calibration slope estimated to within about +-0.2 (Collins et al. 2016: 100 events
# for a validation; Riley et al. 2021 give 100-200 for precise calibration estimates).
EVENTS_FOR_PRECISE_CALIBRATION = 100


def verdict(y: np.ndarray, p: np.ndarray, development_auroc: float | tuple[float, float, float] | None,
            alpha: float = 0.05) -> dict[str, Any]:
    """The updating ladder in plain words: no action; recalibrate the intercept; recalibrate the
    intercept and slope; retrain; or too few events to say (and how many would be needed).
    `development_auroc`: the development estimate, or (estimate, 95% CI low, high): "retrain" needs a
    drop of more than 0.05 that is significant against both uncertainties."""
    from pipeline.metrics import auroc
    from pipeline.recalibration import INTERCEPT, LOGISTIC, closed_test

    y, p = np.asarray(y, dtype=int), np.asarray(p, dtype=float)
    events = int(y.sum())
    if events < MIN_EVENTS_FOR_VERDICT or len(y) - events < MIN_EVENTS_FOR_VERDICT:
        return {"verdict": "too few events to say",
                "text": (f"{events} events among {len(y)} patients with outcomes: at least {MIN_EVENTS_FOR_VERDICT} "
                         f"events (and non-events) are needed for any verdict, about {EVENTS_FOR_PRECISE_CALIBRATION} "
                         "for a precise one"), "events": events}
    lp = np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(1 - p, 1e-12, 1))
    test = closed_test(y, lp, alpha)
    now = auroc(y, p)
    dev = development_auroc if isinstance(development_auroc, tuple) else (development_auroc, np.nan, np.nan)
    if dev[0] is not None and np.isfinite(dev[0]):
        from scipy.stats import norm

        from pipeline.evidence import discrimination_with_ci

        d = discrimination_with_ci(y, p, with_auprc=False)
        # both estimates are uncertain: the development one too (a lucky held-out set reads high)
        se_now = (d["auroc_ci_high"] - d["auroc_ci_low"]) / (2 * norm.ppf(0.975))
        se_dev = (dev[2] - dev[1]) / (2 * norm.ppf(0.975)) if np.isfinite(dev[1]) and np.isfinite(dev[2]) else 0.0
        z = (now - dev[0]) / np.hypot(se_now, se_dev) if np.hypot(se_now, se_dev) > 0 else 0.0
        if np.isfinite(z) and z < -norm.ppf(1 - alpha / 2) and now < dev[0] - 0.05:
            return {"verdict": "retrain", "events": events, "statistics": {**test.statistics, "auroc_drop_z": z},
                    "text": (f"discrimination has fallen: AUROC {now:.3f} (95% CI {d['auroc_ci_low']:.3f}-"
                             f"{d['auroc_ci_high']:.3f}) against {dev[0]:.3f} at development (z {z:.2f}); "
                             "recalibration cannot restore it")}
    words = {INTERCEPT: ("recalibrate the intercept", "the risks are systematically too high or too low"),
             LOGISTIC: ("recalibrate intercept and slope", "the risks are too extreme or not extreme enough")}
    if test.method == INTERCEPT:
        words[INTERCEPT] = ("recalibrate the intercept", "the risks are systematically too "
                            + ("low: more events than predicted" if test.intercept > 0 else "high: fewer events than predicted"))
    if test.method in words:
        action, why = words[test.method]
        return {"verdict": action, "events": events, "statistics": test.statistics,
                "text": f"{why} (closed test at {alpha}); make update on the local outcomes would do it"}
    note = "" if events >= EVENTS_FOR_PRECISE_CALIBRATION else (
        f"; with {events} events only a large miscalibration would show (about {EVENTS_FOR_PRECISE_CALIBRATION} "
        "are needed for a precise check)")
    return {"verdict": "no action", "events": events, "statistics": test.statistics,
            "text": f"calibration is compatible with the model (closed test at {alpha}){note}"}
