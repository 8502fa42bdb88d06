"""After go-live: is the served model still fit for the patients it now sees?

The statistics of monitoring, with no I/O (the store, the CLI and the service call them):

- `reference_summary`: what the bundle carries of its development data: per feature the counts of
  the development patients in bins fixed by their own deciles (numbers) or levels (categories),
  the missing count, and the same for the predicted risk, plus the mean |SHAP| per feature. Counts,
  never patient rows.
- `drift_tests`: each feature now against its reference, by a permutation test of homogeneity of
  the 2 x K table (reference bins against current bins; sequential Monte Carlo over tables with the
  observed margins, `scipy.stats.random_table`, Besag & Clifford 1991), and Fisher's exact test for
  the share missing. The p-values are adjusted by Holm's method across all tests of a run; a run
  tests at its share of the horizon's alpha (alpha / HORIZON_RUNS: 52 weekly runs a year), so a year
  of runs without drift has at most `alpha` chance of any drift alarm; and an alarm also needs an
  effect at or above a floor (PSI 0.1 for a distribution, |standardised difference| 0.1 for a share
  missing), so high volume never alarms on a trivial shift. At 50-100 patients a 10-bin PSI exceeds
  0.10 most of the time with no drift at all: the floor is a necessary condition, never the alarm.
- `calibration_now`: once outcomes exist, observed/expected, calibration intercept and slope,
  AUROC and Brier with bootstrap intervals, the events behind them, and a CUSUM of observed minus
  expected in time order (a description).
- `sequential_charts`: the outcome ALARM, risk-adjusted Bernoulli CUSUM charts (Steiner et al. 2000)
  against doubled odds, halved odds and a halved calibration slope, with decision limits set by
  simulation for a false-alarm probability over a planned horizon of patients with outcomes.
- `verdict`: the model-updating ladder in plain words, from the same closed test `make update` uses.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import chi2, fisher_exact, random_table

from core import display
from core.contract import FEATURES

N_BINS = 10
RISK = "predicted_risk"
# Effect-size floors of the drift alarms: below these no alarm is raised however many patients
# there are (PSI < 0.1 is the usual "no material shift"; 0.1 is the usual threshold of a negligible
# standardised difference, Austin 2009).
PSI_FLOOR = 0.1
SMD_FLOOR = 0.1
# The planned horizon of the drift tests: the false-alarm probability `alpha` is spent over this many
# runs (Bonferroni: alpha / HORIZON_RUNS a run), so a year of weekly runs without drift has at most
# `alpha` chance of any drift alarm.
HORIZON_RUNS = 52
EXTREME_P = 1e-12  # below this chi-squared tail probability a drift test draws no tables (see _permutation_p)


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


def _permutation_p(table: np.ndarray, n_mc: int, rng: np.random.Generator,
                   stop_after: int = 20) -> tuple[float, float]:
    """Chi-squared statistic of a 2 x K table and its sequential Monte Carlo p-value over tables with
    the same margins (Besag & Clifford 1991, Biometrika 78:301-304): tables are drawn in growing
    chunks until `stop_after` of them reach the observed statistic (p = stop_after / tables drawn)
    or `n_mc` tables are drawn (p = (1 + exceedances) / (n_mc + 1)). Either p-value is valid; a
    feature without drift stops early, and the ones that matter get the resolution a run's alpha
    spent over a year of weekly runs needs (below 1e-5). A statistic whose chi-squared tail
    probability is below `EXTREME_P` (1e-12) takes that tail probability: not one table in a million
    would reach it, and drawing them would cost seconds for a shift nobody doubts."""
    table = table[:, table.sum(axis=0) > 0]
    if table.shape[1] < 2 or table.sum(axis=1).min() == 0:
        return 0.0, 1.0

    def stat(t: np.ndarray) -> np.ndarray:
        expected = t.sum(axis=-2, keepdims=True) * t.sum(axis=-1, keepdims=True) / t.sum(axis=(-2, -1), keepdims=True)
        return np.sum((t - expected) ** 2 / expected, axis=(-2, -1))

    observed = float(stat(table))
    tail = float(chi2.sf(observed, table.shape[1] - 1))
    if tail < EXTREME_P:
        return observed, tail
    dist = random_table(table.sum(axis=1), table.sum(axis=0), seed=rng)
    drawn, hits, chunk = 0, 0, 199
    while drawn < n_mc:
        size = min(chunk, n_mc - drawn)
        exceed = stat(dist.rvs(size=size).astype(float)) >= observed - 1e-9
        if hits + int(exceed.sum()) >= stop_after:  # stop at the stop_after-th exceedance
            at = int(np.flatnonzero(exceed)[stop_after - hits - 1]) + 1
            return observed, stop_after / (drawn + at)
        hits += int(exceed.sum())
        drawn += size
        chunk = min(chunk * 10, 100_000)
    return observed, float((1 + hits) / (n_mc + 1))


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
                n_mc: int = 1_000_000, seed: int = 0, psi_floor: float = PSI_FLOOR,
                smd_floor: float = SMD_FLOOR) -> pd.DataFrame:
    """One row per test (distribution and missingness of each feature, distribution of the risk),
    with the raw and Holm-adjusted p-values, the effect size, and the alarm: Holm-adjusted p below
    `alpha` (family-wise, this run's share of the horizon's alpha) AND an effect at or above its floor
    (PSI `psi_floor` for a distribution, |standardised difference| `smd_floor` for a share missing),
    so a trivial shift never alarms however many patients there are."""
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
        psi = _psi(ref_counts.astype(float), now.astype(float)) if now.sum() else float("nan")
        rows.append({"feature": name, "test": "distribution", "statistic": stat, "p": p, "effect": psi,
                     "floor": psi_floor, "psi": psi,
                     "wasserstein": wasserstein, "n_now": int(now.sum()), "n_reference": int(ref_counts.sum())})
        n_now = int(len(values))
        if ref["missing"] or missing_now:
            table = [[ref["missing"], ref["n"] - ref["missing"]], [missing_now, n_now - missing_now]]
            share_ref, share_now = ref["missing"] / max(ref["n"], 1), missing_now / max(n_now, 1)
            rows.append({"feature": name, "test": "missingness", "statistic": share_now,
                         "p": float(fisher_exact(table).pvalue), "effect": _smd(share_ref, share_now),
                         "floor": smd_floor, "psi": float("nan"), "wasserstein": float("nan"),
                         "n_now": n_now, "n_reference": int(ref["n"]),
                         "missing_share_reference": ref["missing"] / max(ref["n"], 1)})
    out = pd.DataFrame(rows)
    out["p_holm"] = holm(out["p"].to_numpy()) if len(out) else []
    out["alarm"] = (out["p_holm"] < alpha) & (out["effect"] >= out["floor"]) if len(out) else []
    return out


def _smd(a: float, b: float) -> float:
    """|Standardised difference| of two proportions (Austin 2009): the difference over the pooled SD."""
    sd = np.sqrt((a * (1 - a) + b * (1 - b)) / 2)
    return float(abs(b - a) / sd) if sd > 0 else (0.0 if a == b else float("inf"))


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
    from pipeline.stats.bootstrap import bootstrap_indices
    from pipeline.evidence import calibration_intervals, discrimination_with_ci
    from pipeline.stats.metrics import brier, calibration_slope_intercept

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
            alpha: float = 0.05, retrain_alpha: float | None = None) -> dict[str, Any]:
    """The updating ladder in plain words: no action; recalibrate the intercept; recalibrate the
    intercept and slope; retrain; or too few events to say (and how many would be needed).
    `development_auroc`: the development estimate, or (estimate, 95% CI low, high): "retrain" needs a
    drop of more than 0.05 that is significant against both uncertainties, at `retrain_alpha` (default
    `alpha`; `make monitor` passes a run's share of the horizon's alpha, as it repeats over time)."""
    from pipeline.stats.metrics import auroc
    from pipeline.stats.recalibration import INTERCEPT, LOGISTIC, closed_test

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
        level = alpha if retrain_alpha is None else retrain_alpha
        if np.isfinite(z) and z < -norm.ppf(1 - level / 2) and now < dev[0] - 0.05:
            return {"verdict": "retrain", "events": events, "statistics": {**test.statistics, "auroc_drop_z": z},
                    "text": (f"discrimination has fallen: AUROC {display.figure_ci(d, 'auroc', '95% CI ')} against "
                             f"{display.figure('auroc', dev[0])} at development (z {z:.2f}); "
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


# ---------------------------------------------------------------------------------------------
# The outcome alarm: risk-adjusted Bernoulli CUSUM charts (Steiner, Cook, Farewell & Treasure 2000,
# Biostatistics 1:441-452). Patient t, with the risk the model gave p_t and outcome y_t, adds the
# log-likelihood ratio of the alternative against "the model is calibrated" (R0 = 1):
#   odds ratio R_A:  W_t = y_t log R_A - log(1 - p_t + R_A p_t)
#   slope b_A:       W_t = y_t log(q_t / p_t) + (1 - y_t) log((1 - q_t) / (1 - p_t)),
#                    logit q_t = c + b_A (logit p_t - c), c = the development patients' mean logit,
# and the chart is X_t = max(0, X_{t-1} + W_t), signalling the first time X_t >= h. Three charts: the
# odds doubled (R_A = 2), halved (R_A = 0.5), and the calibration slope halved (b_A = 0.5: risks too
# extreme). h is chosen by simulation, before any outcome is seen, from the development patients'
# predicted risks: the model calibrated, the chance that ANY of the three charts signals within the
# planned horizon of patients with outcomes is `alpha` (alpha / 3 per chart, Bonferroni).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CusumDesign:
    """The pre-specified design of the outcome alarm (what the report and the README state)."""

    odds_up: float = 2.0
    odds_down: float = 0.5
    slope: float = 0.5
    horizon: int = 1000  # patients with outcomes over which the false-alarm probability is `alpha`
    alpha: float = 0.05
    sims: int = 10_000

    def alternatives(self) -> dict[str, tuple[str, float]]:
        return {"odds_up": ("odds", self.odds_up), "odds_down": ("odds", self.odds_down),
                "slope": ("slope", self.slope)}


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return np.log(p) - np.log1p(-p)


def cusum_weights(y: np.ndarray, p: np.ndarray, kind: str, value: float, centre: float) -> np.ndarray:
    """Each patient's log-likelihood ratio of the alternative (`kind` "odds" or "slope") against R0 = 1."""
    y, p = np.asarray(y, dtype=float), np.clip(np.asarray(p, dtype=float), 1e-9, 1 - 1e-9)
    if kind == "odds":
        return y * np.log(value) - np.log1p(-p + value * p)
    q = 1 / (1 + np.exp(-(centre + value * (_logit(p) - centre))))
    return y * np.log(q / p) + (1 - y) * np.log((1 - q) / (1 - p))


def cusum_path(w: np.ndarray) -> np.ndarray:
    """X_t = max(0, X_{t-1} + W_t), X_0 = 0 (along the last axis)."""
    w = np.asarray(w, dtype=float)
    out = np.empty_like(w)
    x = np.zeros(w.shape[:-1])
    for t in range(w.shape[-1]):
        x = np.maximum(0.0, x + w[..., t])
        out[..., t] = x
    return out


def sample_reference_risk(reference: dict[str, Any], size: int | tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Risks drawn from the development patients' predicted-risk distribution (inverse CDF through the
    20-quantile summary the bundle carries, linear between quantiles)."""
    q = np.asarray(reference["features"][RISK]["quantiles"], dtype=float)
    return np.interp(rng.random(size), np.linspace(0, 1, q.size), q)


def reference_centre(reference: dict[str, Any]) -> float:
    """The development patients' mean logit risk: the pivot of the slope chart."""
    return float(np.mean(_logit(sample_reference_risk(reference, 20_000, np.random.default_rng(0)))))


def decision_limits(reference: dict[str, Any], design: CusumDesign = CusumDesign(), seed: int = 0) -> dict[str, float]:
    """h of each chart: the (1 - alpha/3) quantile, over `design.sims` simulated in-control horizons
    (risks from the development distribution, outcomes drawn from them), of the chart's maximum.
    Deterministic for a model (its reference risks), so computed once per process and design."""
    quantiles = tuple(float(q) for q in reference["features"][RISK]["quantiles"])
    return dict(_decision_limits(quantiles, design, seed))


@functools.lru_cache(maxsize=16)
def _decision_limits(quantiles: tuple[float, ...], design: CusumDesign, seed: int) -> tuple[tuple[str, float], ...]:
    reference = {"features": {RISK: {"quantiles": list(quantiles)}}}
    rng = np.random.default_rng(seed)
    centre = reference_centre(reference)
    peaks: dict[str, list[np.ndarray]] = {name: [] for name in design.alternatives()}
    for start in range(0, design.sims, 2000):  # blocks: memory stays ~100 MB at any horizon
        p = sample_reference_risk(reference, (min(2000, design.sims - start), design.horizon), rng)
        y = (rng.random(p.shape) < p).astype(float)
        for name, (kind, value) in design.alternatives().items():
            peaks[name].append(_cusum_peak(cusum_weights(y, p, kind, value, centre)))
    level = 1 - design.alpha / len(design.alternatives())
    return tuple((name, float(np.quantile(np.concatenate(v), level))) for name, v in peaks.items())


def _cusum_peak(w: np.ndarray) -> np.ndarray:
    """The maximum of each row's CUSUM path (without keeping the paths)."""
    x = np.zeros(w.shape[0])
    peak = np.zeros(w.shape[0])
    for t in range(w.shape[1]):
        x = np.maximum(0.0, x + w[:, t])
        np.maximum(peak, x, out=peak)
    return peak


@dataclass
class SequentialResult:
    """The charts on the outcomes so far: per chart its path, h, and the patient (1-based) of the first signal."""

    limits: dict[str, float]
    paths: dict[str, np.ndarray]
    signals: dict[str, int | None]
    design: CusumDesign

    @property
    def signalled(self) -> list[str]:
        return [name for name, at in self.signals.items() if at is not None]


def sequential_charts(y: np.ndarray, p: np.ndarray, reference: dict[str, Any],
                      design: CusumDesign = CusumDesign(), limits: dict[str, float] | None = None,
                      seed: int = 0) -> SequentialResult:
    """The three risk-adjusted CUSUM charts over the patients with outcomes, in the order given."""
    limits = limits if limits is not None else decision_limits(reference, design, seed)
    centre = reference_centre(reference)
    paths, signals = {}, {}
    for name, (kind, value) in design.alternatives().items():
        path = cusum_path(cusum_weights(y, p, kind, value, centre)) if len(y) else np.zeros(0)
        paths[name] = path
        crossed = np.flatnonzero(path >= limits[name])
        signals[name] = int(crossed[0]) + 1 if crossed.size else None
    return SequentialResult(limits, paths, signals, design)


CHART_WORDS = {"odds_up": "more events than predicted (odds ratio 2)",
               "odds_down": "fewer events than predicted (odds ratio 0.5)",
               "slope": "risks too extreme (calibration slope 0.5)"}
