"""Internal-external cross-validation by centre (Royston 2004; Steyerberg & Harrell 2016).

Each centre in turn is left out; the WHOLE procedure (`pipeline.train.validation.Procedure`: tuning of
every family, family choice, Platt calibration) is run on the other centres, and the left-out
centre is predicted by a model that never saw it. Each centre's performance and its SE
(`pipeline.evidence.centre_performance`) is then pooled by random-effects meta-analysis
(`pipeline.stats.meta_analysis`): the pooled estimate, tau^2, I^2 and the 95% prediction interval of
what a new centre should expect. The served model is still the one fitted on all centres.

When: a cohort file with a `centre` column and at least `MIN_CENTRES` (3) centres with at least
`MIN_CENTRE_EVENTS` (10) events and non-events each. Why 3: with two centres tau^2 has one degree
of freedom and no prediction interval exists (Riley's t has k-2 df); why 10 events: below it a
centre's AUROC SE and calibration slope are unstable (docs/multi-centre.md). IECV runs BESIDE the
design `pipeline.train.validation` chose (split or repeated CV): that design estimates the average
performance the gate uses; IECV answers a different question, how the model transports.

The centres run as parallel tasks through joblib, on a Dask cluster when ICANS_CLUSTER is set
(`pipeline.train.cluster`); each task's seed is fixed by the centre's position, not by the worker.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.evidence.centre_performance import MEASURES, MIN_CENTRE_EVENTS, centre_row
from core.contract import CENTRE_COLUMN
from pipeline.stats.meta_analysis import Pooled, pool_measures

log = logging.getLogger(__name__)

MIN_CENTRES = 3
# Heterogeneity too large for one model (issue 27): the slope's prediction interval wholly
# outside 0.7-1.3, i.e. a new centre would very likely need its own recalibration.
SLOPE_ACCEPTABLE = (0.7, 1.3)


class IECVRefused(ValueError):
    """The file cannot support IECV; the message names the rule (never a centre's code)."""


@dataclass
class IECVResult:
    rows: list[dict[str, Any]]  # one per centre, sorted by code; `centre` names it
    pooled: dict[str, Pooled]
    predictions: np.ndarray  # out-of-centre risks, in the frame's row order
    seconds: float
    task_seconds: list[float] = field(default_factory=list)
    where: str = "in-process"  # or "dask (N workers)"
    task_cpu_seconds: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """MLflow metrics: centre_<code>_<measure>[_se], centre_<code>_n/_events, iecv_<measure>
        with _ci_low/_ci_high/_pi_low/_pi_high/_tau2/_i2, iecv_centres."""
        out: dict[str, float] = {"iecv_centres": float(len(self.rows)),
                                 "iecv_centres_estimated": float(sum(r["estimable"] for r in self.rows))}
        for r in self.rows:
            c = r["centre"]
            out[f"centre_{c}_n"] = float(r["n"])
            out[f"centre_{c}_events"] = float(r["events"])
            for k, v in r.items():
                if (k.startswith(MEASURES) or k.startswith("net_benefit_")) and np.isfinite(v):
                    out[f"centre_{c}_{k}"] = float(v)
        for m, p in self.pooled.items():
            out[f"iecv_{m}"] = p.estimate
            for part in ("ci_low", "ci_high", "pi_low", "pi_high", "tau2", "i2"):
                out[f"iecv_{m}_{part}"] = float(getattr(p, part))
        return {k: v for k, v in out.items() if np.isfinite(v)}

    def heterogeneity_too_large(self) -> bool:
        s = self.pooled.get("calibration_slope")
        lo, hi = SLOPE_ACCEPTABLE
        return s is not None and bool(np.isfinite(s.pi_low)) and (s.pi_high < lo or s.pi_low > hi)

    def transport_sentence(self) -> str:
        """How the model transports, in one paragraph for the run description."""
        small = [r for r in self.rows if not r["estimable"]]
        parts = [f"Internal-external cross-validation over {len(self.rows)} centres"
                 + (f" ({len(small)} too small to estimate, reported but not pooled)" if small else "") + ":"]
        a, s, oe = (self.pooled.get(m) for m in ("auroc", "calibration_slope", "oe"))
        if a is not None:
            parts.append(f"pooled AUROC {a.estimate:.3f} (95% CI {a.ci_low:.3f}-{a.ci_high:.3f}); a new centre "
                         f"should expect {a.pi_low:.3f}-{a.pi_high:.3f} (95% prediction interval), I2 {a.i2:.0f}%.")
        if s is not None:
            parts.append(f"Calibration slope {s.estimate:.2f} (prediction interval {s.pi_low:.2f}-{s.pi_high:.2f}).")
        if oe is not None:
            parts.append(f"O/E {oe.estimate:.2f} (prediction interval {oe.pi_low:.2f}-{oe.pi_high:.2f}).")
        if self.heterogeneity_too_large():
            parts.append("Between-centre heterogeneity is too large for one model as it is: the calibration "
                         "slope's prediction interval lies wholly outside 0.7-1.3; a new centre should validate "
                         "and update it locally (make update) before use.")
        elif oe is not None and np.isfinite(oe.pi_low) and (oe.pi_low < 0.8 or oe.pi_high > 1.25):
            parts.append("Calibration-in-the-large varies between centres: a new centre should check it on its "
                         "own patients and recalibrate the intercept if needed (make update).")
        return " ".join(parts)


def centres_with_events(df: pd.DataFrame, outcome: str) -> tuple[int, int]:
    """(centres in the file, centres with enough events and non-events to estimate)."""
    if CENTRE_COLUMN not in df:
        return 0, 0
    y = df[outcome].astype(int)
    per = y.groupby(df[CENTRE_COLUMN]).agg(["sum", "count"])
    ok = (per["sum"] >= MIN_CENTRE_EVENTS) & (per["count"] - per["sum"] >= MIN_CENTRE_EVENTS)
    return len(per), int(ok.sum())


def _no_events_note(df: pd.DataFrame, outcome: str) -> str:
    events = df[outcome].astype(int).groupby(df[CENTRE_COLUMN]).sum()
    none = int((events == 0).sum())
    return f" ({none} with no events at all)" if none else ""


def applies(df: pd.DataFrame, outcome: str) -> bool:
    """IECV is the design for this file: a centre column with >= MIN_CENTRES estimable centres."""
    return centres_with_events(df, outcome)[1] >= MIN_CENTRES


def _leave_out(X: np.ndarray, y: np.ndarray, train_idx: np.ndarray, test_idx: np.ndarray, procedure: Any,
               seed: int) -> tuple[np.ndarray, float, float]:
    """One task: the procedure on the other centres, the left-out centre's risks (no logging),
    its wall seconds and the CPU seconds of its process (the cost on a dedicated core)."""
    from threadpoolctl import threadpool_limits

    from pipeline.train.validation import MODEL

    t0, cpu0 = time.perf_counter(), time.process_time()
    with threadpool_limits(1):
        models = procedure(X[train_idx], y[train_idx], seed)
        risk = models[MODEL](X[test_idx])
    return risk, time.perf_counter() - t0, time.process_time() - cpu0


def run_iecv(df: pd.DataFrame, outcome: str, settings: Any, thresholds: dict[str, float] | None = None,
             n_jobs: int = 1) -> IECVResult:
    """Leave each centre out in turn; per-centre figures and their random-effects pooling."""
    from joblib import Parallel, delayed

    from pipeline.train.cluster import jobs, joblib_backend, task, where
    from core.features import encode_frame
    from pipeline.train.validation import Procedure

    total, estimable = centres_with_events(df, outcome)
    if total == 0:
        raise IECVRefused(f"IECV needs a '{CENTRE_COLUMN}' column naming each patient's centre")
    if estimable < MIN_CENTRES:
        raise IECVRefused(
            f"IECV needs at least {MIN_CENTRES} centres with at least {MIN_CENTRE_EVENTS} events and "
            f"{MIN_CENTRE_EVENTS} patients without the outcome each; this file has {estimable} of {total} centres"
            f"{_no_events_note(df, outcome)}"
        )
    started = time.perf_counter()
    X, y = encode_frame(df), df[outcome].astype(int).to_numpy()
    codes = sorted(df[CENTRE_COLUMN].astype(str).unique())
    centre = df[CENTRE_COLUMN].astype(str).to_numpy()
    procedure = Procedure(settings.n_iter, settings.search_cv_folds, space_events=int(y.sum()),
                          families=tuple(settings.families))
    tasks = []
    for i, code in enumerate(codes):
        test_idx = np.flatnonzero(centre == code)
        train_idx = np.flatnonzero(centre != code)
        tasks.append((train_idx, test_idx, settings.seed + 10_000 * (i + 1)))  # the task's seed, not the worker's
    with joblib_backend(settings.cluster, settings.cluster_workers) as client:
        done = Parallel(n_jobs=jobs(client, n_jobs, len(tasks)))(
            delayed(task(_leave_out, client))(X, y, tr, te, procedure, seed) for tr, te, seed in tasks)
        ran_on = where(client)
    predictions = np.full(len(y), np.nan)
    rows = []
    for code, (_, test_idx, _), (risk, _, _) in zip(codes, tasks, done):
        predictions[test_idx] = risk
        rows.append({"centre": code, **centre_row(y[test_idx], risk, thresholds)})
    pooled = pool_measures([r for r in rows if r["estimable"]],
                           MEASURES + tuple(f"net_benefit_{k}" for k in (thresholds or {})))
    return IECVResult(rows, pooled, predictions, time.perf_counter() - started, [s for _, s, _ in done], ran_on,
                      [c for _, _, c in done])


def validate_by_centre(df: pd.DataFrame, outcome: str, settings: Any, bundle: Any, n_jobs: int = 1) -> list[str]:
    """The hook `make train` calls inside its MLflow run: when the file has >= 3 estimable centres,
    run IECV, log per-centre and pooled metrics, the forest plots and the table, and return the
    transport sentence for the run description (an empty list otherwise: nothing logged)."""
    if not applies(df, outcome):
        total, _ = centres_with_events(df, outcome)
        if total:
            return [f"IECV not run: fewer than {MIN_CENTRES} centres with {MIN_CENTRE_EVENTS} events each "
                    f"({total} centres in the file)."]
        return []
    import mlflow

    from pipeline.report.forest_plot import forest_plots

    thresholds = {"low": float(bundle.low_threshold), "high": float(bundle.high_threshold)}
    result = run_iecv(df, outcome, settings, thresholds, n_jobs)
    mlflow.log_metrics(result.metrics())
    mlflow.log_metric("iecv_seconds", result.seconds)
    sentence = result.transport_sentence()
    mlflow.set_tags({"validation_iecv": "true", "iecv_transport": sentence[:5000],
                     "iecv_heterogeneity_too_large": str(result.heterogeneity_too_large()).lower()})
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        forest_plots(result.rows, result.pooled, t)
        pd.DataFrame(result.rows).to_csv(t / "iecv_centres.csv", index=False)
        pd.DataFrame([p.to_dict() for p in result.pooled.values()]).to_csv(t / "iecv_pooled.csv", index=False)
        mlflow.log_artifacts(str(t), artifact_path="iecv")
    return [sentence]


def run_standalone(settings: Any, data: Path, outcome: str, on_invalid: str) -> tuple[IECVResult, str]:
    """`icans-risk iecv`: IECV of a file in its own MLflow run (training experiment), no model
    registered; net benefit is not estimated (no served model's thresholds)."""
    import mlflow

    from pipeline.report.forest_plot import forest_plots
    from pipeline.data.loading import load_cohort
    from pipeline.tracking.runs import setup_mlflow

    cohort, _, _ = load_cohort(settings, data, outcome, on_invalid)
    df = cohort.data
    total, estimable = centres_with_events(df, outcome)
    if estimable < MIN_CENTRES:  # before any run is opened
        run_iecv(df, outcome, settings)  # raises IECVRefused with the rule
    experiment_id = setup_mlflow(settings, settings.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"iecv-{outcome}") as run:
        mlflow.log_params({"data_sha256": cohort.sha256, "outcome": outcome, "seed": settings.seed,
                           "n_iter": settings.n_iter, "cluster": settings.cluster or "in-process"})
        result = run_iecv(df, outcome, settings, None, max(1, os.cpu_count() or 1))
        mlflow.log_metrics(result.metrics())
        mlflow.log_metric("iecv_seconds", result.seconds)
        mlflow.set_tag("mlflow.note.content", result.transport_sentence())
        with tempfile.TemporaryDirectory() as tmp:
            forest_plots(result.rows, result.pooled, Path(tmp))
            pd.DataFrame(result.rows).to_csv(Path(tmp) / "iecv_centres.csv", index=False)
            mlflow.log_artifacts(tmp, artifact_path="iecv")
        return result, run.info.run_id
