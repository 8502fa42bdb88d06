"""Training: validate (held-out split or repeated cross-validation), tune, choose, calibrate, log, register, promote.

Everything is tracked in MLflow: one parent run per training, one child run per candidate family.
The champion alias moves last, and only when the new model is at least as good as the current
champion on the new held-out set, so a crash or a worse model never replaces what is served.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

from models.artifact import ModelBundle
from models.baselines import SCORES, ScoreToProbability
from models.candidates import CANDIDATES, SMALL_DATA_EVENTS, make_untuned_hist_gradient_boosting
from pipeline import instability, plots
from pipeline.contract import (
    CONTRACT_VERSION,
    FEATURE_NAMES,
    FEATURES,
    OUTCOMES,
)
from pipeline.directions import feature_directions
from pipeline.evidence import (
    build_evidence,
    calibration_intervals,
    discrimination_with_ci,
    learning_curve,
    paired_difference,
)
from pipeline.features import N_MATRIX, encode_frame, training_ranges
from pipeline.io import Cohort, read_cohort
from pipeline.monitoring import reference_summary
from pipeline.metrics import binary_metrics, ranking_metrics
from pipeline.report import render_validation_report, save_plots, write_model_card
from pipeline.registry import BUNDLE_ARTIFACT, champion, load_bundle, promotion_lock
from pipeline.runs import end_interrupted, heartbeat, mark_alive, now_text, reconcile_tags, sweep
from pipeline.settings import Settings
from pipeline.validation import (
    LOGISTIC,
    METRICS,
    MODEL,
    RESAMPLING,
    SPLIT,
    UNTUNED_HGB,
    Design,
    Fitted,
    Procedure,
    Resampled,
    check_trainable,
    choose_design,
    fit_procedure,
    repeated_cv,
    tune,
)

log = logging.getLogger(__name__)

# Sensitivity kept above the low threshold, specificity kept above the high threshold.
LOW_GROUP_SENSITIVITY = 0.90
HIGH_GROUP_SPECIFICITY = 0.90


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    chosen: str
    metrics: dict[str, float] = field(default_factory=dict)
    design: str = SPLIT
    validated: dict[str, float] = field(default_factory=dict)


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def setup_mlflow(settings: Settings, experiment: str) -> str:
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    # A tracking server decides where artifacts go (with --serve-artifacts: mlflow-artifacts:/<id>,
    # proxied to its --artifacts-destination) unless ICANS_ARTIFACT_ROOT is set explicitly.
    remote = settings.tracking_uri.startswith(("http://", "https://"))
    location = (
        None
        if remote and "artifact_root" not in settings.model_fields_set
        else f"{settings.artifact_root.rstrip('/')}/{experiment}"
    )
    try:
        return client.create_experiment(experiment, artifact_location=location)
    except MlflowException as exc:  # another training created it between the lookup and here
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(experiment).experiment_id


def model_signature() -> ModelSignature:
    kinds = {"float": "double", "bool": "boolean", "category": "string"}
    inputs = Schema([ColSpec(kinds[f.kind], f.name, required=f.required) for f in FEATURES])
    outputs = Schema(
        [ColSpec("double", "risk"), ColSpec("string", "risk_group"), ColSpec("double", "log_odds")]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """The contract's example patient (never a real row: no patient data goes to MLflow)."""
    record = {f.name: f.example for f in FEATURES}
    return pd.DataFrame([record]).astype({f.name: float for f in FEATURES if f.kind == "float"})


def choose_thresholds(y: np.ndarray, risk: np.ndarray) -> tuple[float, float]:
    """Risk-group cut-offs from development (out-of-fold) risks only.

    low: below it lie at most 10% of the events (a "low" answer misses few events);
    high: at or above it lie at most 10% of the non-events (a "high" answer is specific).
    """
    events = np.sort(risk[y == 1])
    non_events = np.sort(risk[y == 0])
    low = float(np.quantile(events, 1 - LOW_GROUP_SENSITIVITY)) if len(events) else 0.5
    high = float(np.quantile(non_events, HIGH_GROUP_SPECIFICITY)) if len(non_events) else 0.5
    if high <= low:
        low = high
    return round(low, 4), round(high, 4)


def _prob(estimator: Any, X: np.ndarray) -> np.ndarray:
    return estimator.predict_proba(X)[:, 1]


@dataclass
class Evaluation:
    """What the chosen validation design says about the model, in one shape for both designs.

    validated: the estimates the gate and the champion comparison use (held-out in the split
      design, cross-validated in the repeated-CV design), with their 95% intervals;
    metrics: every figure logged to MLflow; y/X/frame/risk: the patients the plots and the
      evidence show (the held-out set, or all patients with out-of-fold risks);
    compare: scores a champion bundle against the new model on the same estimate.
    """

    design: Design
    validated: dict[str, float]
    metrics: dict[str, float]
    evidence: Any
    y: np.ndarray
    X: np.ndarray
    frame: pd.DataFrame
    risk: np.ndarray
    plot_scores: dict[str, np.ndarray]
    plot_probs: dict[str, np.ndarray]
    label: str
    compare: Callable[[Any], dict[str, float]]
    resampled: Resampled | None = None


VALIDATED_KEYS = (
    "auroc", "auroc_ci_low", "auroc_ci_high", "calibration_slope", "calibration_slope_ci_low",
    "calibration_slope_ci_high", "calibration_intercept", "calibration_intercept_ci_low",
    "calibration_intercept_ci_high", "brier", "brier_ci_low", "brier_ci_high", "m_easix_auroc",
    "auroc_minus_m_easix", "auroc_minus_m_easix_ci_low", "auroc_minus_m_easix_ci_high",
)


def _comparator_probs(
    dev: pd.DataFrame, y_dev: np.ndarray, frame: pd.DataFrame, X_dev: np.ndarray, X_eval: np.ndarray,
    logistic_params: dict[str, Any], settings: Settings, n_jobs: int, oof_cv: StratifiedKFold | None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, Any]]:
    """Comparators' probabilities on the evaluation patients (out-of-fold when they are the
    development patients) and the fitted comparators (for their apparent predictions)."""
    models = {
        "logistic": CANDIDATES["logistic"].factory(settings.seed, n_jobs).set_params(**logistic_params),
        UNTUNED_HGB: make_untuned_hist_gradient_boosting(settings.seed),
    }
    fitted = {name: clone(m).fit(X_dev, y_dev) for name, m in models.items()}
    if oof_cv is None:
        probs = {name: _prob(m, X_eval) for name, m in fitted.items()}
    else:
        probs = {name: cross_val_predict(clone(m), X_dev, y_dev, cv=oof_cv, method="predict_proba")[:, 1]
                 for name, m in models.items()}
    prob_models = {score: ScoreToProbability(score=score).fit(dev, y_dev) for score in SCORES}
    for score, model in prob_models.items():
        probs[score] = model.predict_proba(frame)[:, 1]
    return probs, fitted, prob_models


def _evaluate_split(
    fitted: Fitted, bundle: ModelBundle, dev: pd.DataFrame, test: pd.DataFrame, design: Design,
    settings: Settings, n_jobs: int, outcome: str, synthetic: bool, run_id: str, model_name: str,
) -> Evaluation:
    X_dev, X_test = encode_frame(dev), encode_frame(test)
    y_dev, y_test = dev[outcome].astype(int).to_numpy(), test[outcome].astype(int).to_numpy()
    risk_test = bundle.explain(X_test).risk
    probs, _, prob_models = _comparator_probs(dev, y_dev, test, X_dev, X_test, fitted.tuned["logistic"]["params"],
                                              settings, n_jobs, None)
    metrics = {f"test_{k}": v for k, v in binary_metrics(y_test, risk_test).items()}
    for name in ("logistic", UNTUNED_HGB):
        metrics.update({f"test_{name}_{k}": v for k, v in binary_metrics(y_test, probs[name]).items()})
    plot_scores = {f"{fitted.chosen} (chosen)": risk_test, "logistic": probs["logistic"]}
    for score in SCORES:
        metrics.update({f"test_{score}_{k}": v for k, v in ranking_metrics(y_test, SCORES[score](test)).items()
                        if k in ("auroc", "auprc")})
        metrics.update({f"test_{score}_{k}": v for k, v in binary_metrics(y_test, probs[score]).items()
                        if k in ("brier", "log_loss", "calibration_slope", "calibration_intercept")})
        plot_scores[score] = SCORES[score](test)
    if _has_oracle(test, outcome):
        metrics["test_oracle_auroc"] = ranking_metrics(y_test, test["p_true"].to_numpy(float))["auroc"]
        plot_scores["oracle (p_true)"] = test["p_true"].to_numpy(float)
    evidence = build_evidence(
        y_dev, fitted.oof_risk, dev, y_test, risk_test, test,
        {"low": bundle.low_threshold, "high": bundle.high_threshold}, N_MATRIX, outcome,
        prob_models["m_easix"], other_predictions={"logistic": probs["logistic"], UNTUNED_HGB: probs[UNTUNED_HGB]},
        seed=settings.seed,
        learning_curve=learning_curve(seed=settings.seed, outcome=outcome) if synthetic else None,
        meta={"run_id": run_id, "model": model_name, "kind": fitted.chosen},
    )
    metrics.update(evidence.flat_metrics())
    validated = {k: metrics.get(f"test_{k}", np.nan) for k in VALIDATED_KEYS}

    def compare(champ: ModelBundle) -> dict[str, Any]:
        d = paired_difference(y_test, risk_test, champ.predict_proba(X_test), seed=settings.seed)
        return _fair_comparison(champ, d, validated)

    return Evaluation(design, validated, metrics, evidence, y_test, X_test, test, risk_test, plot_scores,
                      {f"{fitted.chosen} (chosen)": risk_test, "logistic": probs["logistic"],
                       **{s: probs[s] for s in SCORES}},
                      "held-out set", compare)


def _evaluate_resampled(
    fitted: Fitted, bundle: ModelBundle, df: pd.DataFrame, design: Design, settings: Settings, n_jobs: int,
    outcome: str, synthetic: bool, run_id: str, model_name: str,
) -> Evaluation:
    """All patients fitted; every figure from repeated cross-validation of the whole procedure."""
    X, y = encode_frame(df), df[outcome].astype(int).to_numpy()
    _, comparators, prob_models = _comparator_probs(
        df, y, df, X, X, fitted.tuned["logistic"]["params"], settings, n_jobs, None
    )
    apparent = {MODEL: bundle.predict_proba(X), **{n: _prob(m, X) for n, m in comparators.items()}}
    heartbeat()
    procedure = Procedure(settings.resample_n_iter, settings.resample_cv_folds, space_events=int(y.sum()))
    resampled = repeated_cv(X, y, procedure, apparent,
                            design.repeats, settings.cv_folds, settings.seed, n_jobs)
    heartbeat()
    cv_risk = resampled.predictions[MODEL][0]  # the first repeat: every patient predicted out of fold
    others = {LOGISTIC: resampled.predictions[LOGISTIC][0], UNTUNED_HGB: resampled.predictions[UNTUNED_HGB][0]}
    evidence = build_evidence(
        y, cv_risk, df, y, cv_risk, df, {"low": bundle.low_threshold, "high": bundle.high_threshold}, N_MATRIX,
        outcome, prob_models["m_easix"], other_predictions=others, seed=settings.seed,
        learning_curve=learning_curve(seed=settings.seed, outcome=outcome) if synthetic else None,
        meta={"run_id": run_id, "model": model_name, "kind": fitted.chosen},
    )
    metrics = evidence.flat_metrics(prefix="cv")
    first_ci = {**discrimination_with_ci(y, cv_risk, seed=settings.seed, with_auprc=False),
                **calibration_intervals(y, cv_risk, seed=settings.seed)}
    estimate, first = resampled.estimate(MODEL), {k: v[0] for k, v in resampled.per_repeat[MODEL].items()}
    validated: dict[str, float] = {}
    for k in METRICS:
        shift = estimate[k] - first[k]
        validated[k] = estimate[k]
        validated[f"{k}_ci_low"] = first_ci.get(f"{k}_ci_low", np.nan) + shift
        validated[f"{k}_ci_high"] = first_ci.get(f"{k}_ci_high", np.nan) + shift
        metrics[f"apparent_{k}"] = resampled.apparent[MODEL][k]
        metrics[f"optimism_{k}"] = resampled.optimism(MODEL)[k]
        metrics[f"cv_{k}_sd_over_repeats"] = resampled.spread(MODEL)[k]
        for name in (LOGISTIC, UNTUNED_HGB):
            metrics[f"validated_{name}_{k}"] = resampled.estimate(name)[k]
    m_easix = SCORES["m_easix"](df)
    if np.all(np.isfinite(m_easix)):
        d = paired_difference(y, cv_risk, m_easix, seed=settings.seed)
        shift = estimate["auroc"] - first["auroc"]
        validated.update(m_easix_auroc=d["auroc_other"], auroc_minus_m_easix=d["difference"] + shift,
                         auroc_minus_m_easix_ci_low=d["ci_low"] + shift, auroc_minus_m_easix_ci_high=d["ci_high"] + shift)
    metrics["cv_repeats"] = resampled.repeats
    metrics["resampling_seconds"] = resampled.seconds
    plot_scores = {f"{fitted.chosen} (chosen)": cv_risk, "logistic": others[LOGISTIC],
                   **{score: SCORES[score](df) for score in SCORES}}
    if _has_oracle(df, outcome):
        plot_scores["oracle (p_true)"] = df["p_true"].to_numpy(float)
        metrics["oracle_auroc"] = ranking_metrics(y, df["p_true"].to_numpy(float))["auroc"]

    def compare(champ: ModelBundle) -> dict[str, Any]:
        # the new procedure's cross-validated risks against the champion on the same patients
        d = paired_difference(y, cv_risk, champ.predict_proba(X), seed=settings.seed)
        shift = estimate["auroc"] - first["auroc"]
        d.update(difference=d["difference"] + shift, ci_low=d["ci_low"] + shift, ci_high=d["ci_high"] + shift)
        return _fair_comparison(champ, d, validated)

    probs = {f"{fitted.chosen} (chosen)": cv_risk, "logistic": others[LOGISTIC],
             **{s: prob_models[s].predict_proba(df)[:, 1] for s in SCORES}}
    return Evaluation(design, validated, metrics, evidence, y, X, df, cv_risk, plot_scores, probs,
                      "all patients, out-of-fold risks of repeated cross-validation", compare, resampled)


def _fair_comparison(champ: ModelBundle, paired: dict[str, float], validated: dict[str, float]) -> dict[str, Any]:
    """The champion's AUROC for the comparison, without the advantage of having seen the patients.

    A champion may have been fitted on some of these patients (a retraining on a file with patients
    added): scored on them, its AUROC is optimistic. So it is held to the lower of its AUROC here
    and its own validated estimate (held-out or cross-validated, recorded in its bundle); when the
    latter is used, the difference's interval is the new model's own interval moved by it.
    """
    here = paired["auroc_other"]
    recorded = (champ.metadata.get("validation") or {}).get("estimates", {}).get("auroc")
    if recorded is None or not np.isfinite(recorded) or recorded >= here:
        return {"champion_auroc": here, "difference": paired["difference"], "ci_low": paired["ci_low"],
                "ci_high": paired["ci_high"], "basis": "on the same patients"}
    new = validated["auroc"]
    return {"champion_auroc": float(recorded), "difference": new - recorded,
            "ci_low": validated.get("auroc_ci_low", np.nan) - recorded,
            "ci_high": validated.get("auroc_ci_high", np.nan) - recorded,
            "basis": (f"against the champion's own validated AUROC (it scores {here:.3f} on these patients, "
                      "some of which it may have been fitted on)")}


def _instability(bundle: ModelBundle, fitted: Fitted, X: np.ndarray, y: np.ndarray, log_odds: np.ndarray,
                 settings: Settings, n_jobs: int) -> dict[str, float]:
    """Refit the chosen configuration on B bootstrap samples; keep the B models in the bundle (the
    service's uncertainty intervals) and log the instability analysis (pipeline.instability)."""
    if settings.instability_models <= 0:
        print("NOTE: ICANS_INSTABILITY_MODELS=0: no instability analysis, and answers carry no uncertainty interval.")
        return {}
    heartbeat()
    t0 = time.perf_counter()
    ensemble, redraws = instability.bootstrap_ensemble(
        fitted.chosen, fitted.params, X, y, settings.instability_models, settings.cv_folds, settings.seed, n_jobs
    )
    inst = instability.summarise(ensemble, X, log_odds, bundle.low_threshold, bundle.high_threshold, len(y))
    inst.summary["redrawn_samples"] = redraws
    inst.summary["seconds"] = round(time.perf_counter() - t0, 1)
    bundle.instability = ensemble
    bundle.metadata["instability"] = inst.summary
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_artifact(str(instability.instability_plot(inst, bundle.low_threshold, bundle.high_threshold,
                                                             Path(tmp) / "instability.png")), "plots")
    s = inst.summary
    print(f"instability: {s['models']} bootstrap models in {s['seconds']} s: MAPE {s['mape']:.3f} (mean risk "
          f"{s['mean_risk']:.3f}), median 95% interval width {s['median_interval_width']:.3f}, risk group changes "
          f"{s['group_change']:.0%}")
    if s["warning"]:
        print(f"WARNING: {instability.warning_text(s)}")
    return {**instability.metrics(s), "instability_seconds": s["seconds"]}


def _has_oracle(frame: pd.DataFrame, outcome: str) -> bool:
    return outcome == "severe_icans" and "p_true" in frame and bool(frame["p_true"].notna().all())


def _empty_features(df: pd.DataFrame) -> list[str]:
    """Contract features with no value in any row (absent or empty columns)."""
    return [f.name for f in FEATURES if f.name not in df or df[f.name].isna().all()]


def _log_datasets(frame: pd.DataFrame, outcome: str, source: str, context: str, name: str) -> None:
    """The cohort as an MLflow dataset input: its schema, size and digest, never its rows."""
    from mlflow.data import from_pandas

    columns = [c for c in (*FEATURE_NAMES, outcome) if c in frame]
    try:
        with warnings.catch_warnings():  # mlflow's "source can be interpreted in multiple ways" on a file name
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_pandas(frame[columns], source=source, targets=outcome, name=name)
        mlflow.log_input(dataset, context=context)
    except Exception as exc:  # the Datasets panel is a convenience; never fail a training on it
        log.warning("dataset input not logged: %s", exc)


def train(
    settings: Settings,
    data: Path | None = None,
    outcome: str | None = None,
    on_invalid: str = "refuse",
    n_patients: int | None = None,
) -> TrainResult:
    outcome = outcome or settings.outcome
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome '{outcome}': use one of {', '.join(OUTCOMES)}")
    started = time.perf_counter()
    synthetic = data is None
    if synthetic:
        from pipeline.cohort import generate_cohort
        from pipeline.data import write_synthetic_cohort

        data = write_synthetic_cohort(
            generate_cohort(n_patients or settings.default_cohort_size, settings.seed),
            settings.data_dir,
            n_patients or settings.default_cohort_size,
            settings.seed,
        )
    cohort = read_cohort(Path(data), outcome, on_invalid=on_invalid)  # raises before any logging
    # a canonical row order: the same patients in another order give the same folds, model and verdict
    df = cohort.data.sort_values(by=list(cohort.data.columns), kind="mergesort", na_position="last")
    df = df.reset_index(drop=True)
    y_all = df[outcome].astype(int).to_numpy()
    check_trainable(y_all, outcome, max(settings.min_events, 2 * settings.cv_folds))  # before any logging
    # what limits a design is the rarer class (events, or non-events above 50% prevalence)
    design = choose_design(int(min(y_all.sum(), len(y_all) - y_all.sum())), len(df), settings)
    if design.kind == SPLIT:
        dev, test = train_test_split(df, test_size=settings.test_fraction, stratify=y_all, random_state=settings.seed)
        dev, test = dev.reset_index(drop=True), test.reset_index(drop=True)
    else:
        dev, test = df, None
    model_name = OUTCOMES[outcome].registered_model
    experiment_id = setup_mlflow(settings, settings.experiment)
    client = MlflowClient()
    try:  # runs of trainings that died without a word are marked before this one starts
        swept = sweep(client, experiment_id, settings.stale_run_s, settings.champion_alias)
        if swept:
            print(f"NOTE: {len(swept)} run(s) of earlier trainings whose process had died were marked KILLED")
    except Exception as exc:  # the sweep is housekeeping; it never stops a training
        log.warning("sweep of dead runs failed: %s", exc)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{outcome}") as parent:
        try:
            mark_alive()
            return _train_in_run(settings, parent.info.run_id, experiment_id, client, cohort, Path(data), synthetic,
                                 outcome, on_invalid, design, dev, test, model_name, started)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through pipeline.runs.sigterm_interrupts
            end_interrupted(client, parent.info.run_id, str(exc) or "SIGINT")
            raise
        except Exception as exc:
            # a run that stops is never left without its reason
            mlflow.set_tag("failure_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise


def _train_in_run(
    settings: Settings, run_id: str, experiment_id: str, client: MlflowClient, cohort: Cohort, data: Path,
    synthetic: bool, outcome: str, on_invalid: str, design: Design, dev: pd.DataFrame, test: pd.DataFrame | None,
    model_name: str, started: float,
) -> TrainResult:
    df = cohort.data
    X_dev = encode_frame(dev)
    y_dev = dev[outcome].astype(int).to_numpy()
    n_jobs = max(1, os.cpu_count() or 1)
    empty = _empty_features(df)
    mlflow.set_tags(
        {
            "mlflow.source.git.commit": git_commit(),
            "outcome": outcome,
            "data_source": "synthetic" if synthetic else data.name,
            "contract_version": CONTRACT_VERSION,
            "validation_design": design.kind,
            "validation_reason": design.reason,
            "empty_columns": ", ".join(empty) if empty else "none",
        }
    )
    mlflow.log_params(
        {
            "outcome": outcome,
            "seed": settings.seed,
            "data_sha256": cohort.sha256,
            "data_file": data.name,
            "synthetic": synthetic,
            "on_invalid": on_invalid,
            "cv_folds": settings.cv_folds,
            "n_iter": settings.n_iter,
            "validation_design": design.kind,
            "test_fraction": settings.test_fraction if design.kind == SPLIT else 0.0,
            "cv_repeats": design.repeats if design.kind == RESAMPLING else 0,
            "search_space": "small-data" if y_dev.sum() < SMALL_DATA_EVENTS else "standard",
        }
    )
    mlflow.log_metrics(
        {
            "n_rows_file": cohort.report.n_rows,
            "n_rows_rejected": len(cohort.rejected),
            "n_rows_used": len(df),
            "n_dev": len(dev),
            "n_test": 0 if test is None else len(test),
            "events_dev": int(y_dev.sum()),
            "events_test": 0 if test is None else int(test[outcome].sum()),
            "n_empty_columns": len(empty),
        }
    )
    source = "synthetic cohort" if synthetic else data.name
    _log_datasets(dev, outcome, source, "training", f"{data.stem}-{'development' if test is not None else 'all'}")
    if test is not None:
        _log_datasets(test, outcome, source, "test", f"{data.stem}-held-out")
    if empty:
        print(f"NOTE: no value in any row for {', '.join(empty)}: every model is fitted without them "
              "(the trees never split on them, the logistic model imputes them); they change no answer.")
    if len(cohort.rejected):
        _log_quarantine(cohort)

    tuned: dict[str, dict[str, Any]] = {}
    for name in CANDIDATES:
        heartbeat()
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True):
            mark_alive()
            t0 = time.perf_counter()
            tuned[name] = tune(name, X_dev, y_dev, settings.n_iter, settings.cv_folds, settings.seed, n_jobs)
            mlflow.log_params({f"best_{k}": v for k, v in tuned[name]["params"].items()})
            mlflow.log_metrics(
                {
                    "cv_log_loss": tuned[name]["cv_log_loss"],
                    "cv_log_loss_std": tuned[name]["cv_log_loss_std"],
                    "cv_auroc": tuned[name]["cv_auroc"],
                    "tuning_seconds": time.perf_counter() - t0,
                }
            )
            mlflow.set_tag("family", name)
        log.info("%s: cv log-loss %.4f", name, tuned[name]["cv_log_loss"])

    fitted = fit_procedure(X_dev, y_dev, tuned, settings.cv_folds, settings.seed, n_jobs)
    chosen = fitted.chosen
    mlflow.set_tag("chosen_family", chosen)
    # the chosen candidate's hyperparameters and CV figures on the parent run too (the UI's run page)
    mlflow.log_params({f"chosen_{k}": _plain(v) for k, v in fitted.params.items()})
    mlflow.log_metrics({"chosen_cv_log_loss": tuned[chosen]["cv_log_loss"], "chosen_cv_auroc": tuned[chosen]["cv_auroc"]})
    low, high = choose_thresholds(y_dev, fitted.oof_risk)
    estimator = fitted.estimator.get_booster() if chosen == "xgboost" else fitted.estimator
    bundle = ModelBundle(
        kind=chosen,
        estimator=estimator,
        calibration_intercept=fitted.platt.intercept_,
        calibration_slope=fitted.platt.slope_,
        low_threshold=low,
        high_threshold=high,
        outcome=outcome,
        training_ranges=training_ranges(dev),
        metadata={
            "run_id": run_id,
            "trained_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
            "params": {k: _plain(v) for k, v in fitted.params.items()},
            "data_sha256": cohort.sha256,
            "n_dev": len(dev),
            "empty_features": empty,
        },
    )
    if design.kind == SPLIT:
        ev = _evaluate_split(fitted, bundle, dev, test, design, settings, n_jobs, outcome, synthetic, run_id, model_name)
    else:
        ev = _evaluate_resampled(fitted, bundle, dev, design, settings, n_jobs, outcome, synthetic, run_id,
                                 model_name)
    development = bundle.explain(X_dev)  # the reference monitoring compares the served patients with
    bundle.metadata["reference"] = reference_summary(
        dev, development.risk, dict(zip(bundle.feature_names, np.mean(np.abs(development.contributions), axis=0)))
    )
    metrics = ev.metrics
    metrics.update(_instability(bundle, fitted, X_dev, y_dev, development.log_odds, settings, n_jobs))
    metrics.update({f"validated_{k}": v for k, v in ev.validated.items()})
    explained = bundle.explain(ev.X)
    metrics["calibration_platt_slope"] = fitted.platt.slope_
    metrics["calibration_platt_intercept"] = fitted.platt.intercept_
    metrics["threshold_low"] = low
    metrics["threshold_high"] = high
    metrics["explanation_max_additivity_error"] = float(
        np.max(np.abs(explained.raw_margin - bundle.explainer.margin(ev.X)))
    )
    for name in CANDIDATES:
        metrics[f"cv_log_loss_{name}"] = tuned[name]["cv_log_loss"]
    gate_ok, gate_reason = quality_gate(ev.validated)
    # ALLOW_UNGATED serves a refused model only where nothing else could be served
    ungated = not gate_ok and settings.allow_ungated and champion(client, model_name, settings.champion_alias) is None
    bundle.metadata["test_metrics"] = {k: round(float(v), 4) for k, v in metrics.items() if np.isfinite(v)}
    bundle.metadata["gate"] = {"passed": gate_ok, "reason": gate_reason, "ungated": ungated}
    bundle.metadata["validation"] = {
        "design": design.kind,
        "description": design.reason,
        "estimates": {k: round(float(v), 4) for k, v in ev.validated.items() if np.isfinite(v)},
        "optimism": ({k: round(v, 4) for k, v in ev.resampled.optimism(MODEL).items()} if ev.resampled else {}),
    }
    ev.evidence.validation = _validation_section(ev, fitted)
    if empty:
        ev.evidence.notes.append(f"no value in any row for {', '.join(empty)}: every model was fitted without "
                                 "them, and they change no answer of this model")
    ev.evidence.directions = feature_directions(ev.X, bundle.predict_proba)
    contradictions = ev.evidence.directions.loc[ev.evidence.directions["contradiction"], "feature"].tolist()
    metrics["direction_contradictions"] = len(contradictions)
    if contradictions:
        mlflow.set_tag("direction_contradictions", ", ".join(contradictions))
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
    mlflow.set_tags({"quality_gate": "passed" if gate_ok else ("failed, ungated" if ungated else "failed"),
                     "quality_gate_reason": gate_reason})

    notes = _comparison_notes(ev, tuned, chosen)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        plots.roc_plot(ev.y, ev.plot_scores, tmp_path / "roc.png", f"ROC, {ev.label} ({outcome})")
        plots.shap_summary_plot(
            explained.contributions, explained.base, ev.frame, list(FEATURE_NAMES), tmp_path / "shap_summary.png"
        )
        save_plots(ev.evidence, tmp_path)
        mlflow.log_artifacts(str(tmp_path), artifact_path="plots")
        report_dir = tmp_path / "evidence"
        report_dir.mkdir()
        report_path = render_validation_report(ev.evidence, tmp_path, tmp_path / "report" / "validation_report.html")
        (report_dir / "evidence.json").write_text(json.dumps(ev.evidence.to_dict(), default=str))

        bundle_dir = bundle.save(tmp_path / BUNDLE_ARTIFACT)
        card_info = {
            "name": model_name,
            "version": None,  # numbered by the registry after the card is written: the card says where to look
            "run_id": run_id,
            "trained_at": bundle.metadata["trained_at"],
            "kind": chosen,
            "params": bundle.metadata["params"],
            "thresholds": {"low": low, "high": high},
            "contract_version": CONTRACT_VERSION,
            "git_commit": git_commit(),
            "n_params": N_MATRIX,
            "gate": bundle.metadata["gate"],
        }
        provenance = {
            "synthetic": synthetic,
            "sha256": cohort.sha256,
            "file": data.name,
            "n_rows": len(df),
            "n_dev": len(dev),
            "n_test": len(test) if test is not None else "none (repeated cross-validation on all patients)",
            "seed": settings.seed,
            "n_rows_rejected": len(cohort.rejected),
            "empty_columns": ", ".join(empty) if empty else "none",
        }
        write_model_card(ev.evidence, card_info, provenance, bundle_dir)  # ships with the model
        write_model_card(ev.evidence, card_info, provenance, report_dir)
        mlflow.log_artifacts(str(report_dir), artifact_path="evidence")
        mlflow.log_artifact(str(report_path))
        heartbeat()
        version = log_bundle_version(bundle_dir, model_name)
    client.set_model_version_tag(model_name, version, "outcome", outcome)
    v = ev.validated
    client.update_model_version(model_name, version, description=(
        f"{chosen} for {outcome}: {design.kind} AUROC {_fmt_ci(v, 'auroc')}, calibration slope "
        f"{_fmt_ci(v, 'calibration_slope', 2)}, Brier {v.get('brier', np.nan):.4f}; m-EASIX AUROC "
        f"{v.get('m_easix_auroc', np.nan):.3f}. Quality gate: {'passed' if gate_ok else 'failed'}. Model card: "
        f"artifact model/artifacts/{BUNDLE_ARTIFACT}/model_card.html of run {run_id} (also GET /v1/model/card). "
        "Research use only."))
    client.set_model_version_tag(model_name, version, "validation_design", design.kind)
    client.set_model_version_tag(model_name, version, "validated_auroc", f"{ev.validated['auroc']:.4f}")
    client.set_model_version_tag(model_name, version, "quality_gate", "passed" if gate_ok else "failed")
    if ungated:
        client.set_model_version_tag(model_name, version, "ungated", "true")

    # Under the lock, the comparison is with whatever is champion NOW (another training
    # may have promoted its model while this one trained).
    with promotion_lock(settings.lock_url or settings.tracking_uri, settings.data_dir, model_name):
        if gate_ok or (ungated and champion(client, model_name, settings.champion_alias) is None):
            promoted, reason, champ_auroc = _promote(client, settings, model_name, version, ev.compare,
                                                     ev.validated["auroc"])
            if ungated:
                reason = f"UNGATED (quality gate: {gate_reason}; ALLOW_UNGATED=1): {reason}"
                client.set_model_version_tag(model_name, version, "promotion_reason", reason)
        else:
            promoted, reason, champ_auroc = False, f"quality gate: {gate_reason}", None
            if settings.allow_ungated and champion(client, model_name, settings.champion_alias) is not None:
                reason += ". ALLOW_UNGATED applies only while no champion exists; the champion stays"
            elif champion(client, model_name, settings.champion_alias) is None:
                reason += (". No champion exists: to score with this model anyway, retrain with ALLOW_UNGATED=1 "
                           "(make train ... ALLOW_UNGATED=1); it is then served tagged as ungated")
            client.set_model_version_tag(model_name, version, "promotion", "not promoted")
            client.set_model_version_tag(model_name, version, "promotion_reason", reason)
            client.set_model_version_tag(model_name, version, "promotion_time", now_text())
    if champ_auroc is not None:
        mlflow.log_metric("champion_validated_auroc", champ_auroc)
    mlflow.set_tags({"promoted": str(promoted).lower(), "promotion_reason": reason})
    seconds = time.perf_counter() - started
    mlflow.log_metric("train_seconds", seconds)
    mlflow.set_tag("mlflow.note.content", _run_description(ev, chosen, gate_ok, ungated, gate_reason, promoted,
                                                          reason, empty, notes, seconds))
    for note in notes:
        print(note)
    return TrainResult(run_id, model_name, version, promoted, reason, chosen, metrics, design.kind, ev.validated)


def _validation_section(ev: Evaluation, fitted: Fitted) -> dict[str, Any]:
    """The evidence report's statement of the design and of the figures the gate used."""
    out: dict[str, Any] = {"design": ev.design.kind, "reason": ev.design.reason, "estimates": ev.validated,
                           "evaluated_on": ev.label}
    if ev.resampled is not None:
        out["resampling"] = ev.resampled.to_dict()
    return out


def _comparison_notes(ev: Evaluation, tuned: dict[str, dict[str, Any]], chosen: str) -> list[str]:
    """Say so when a simpler model does as well or better, on the same estimates."""
    notes = []
    v = ev.validated
    for name, label in ((LOGISTIC, "the logistic comparator"), (UNTUNED_HGB, "an untuned HistGradientBoosting")):
        other = ev.metrics.get(f"validated_{name}_auroc", ev.metrics.get(f"test_{name}_auroc", np.nan))
        if np.isfinite(other) and other > v["auroc"]:
            notes.append(f"NOTE: {label} reaches AUROC {other:.3f}, above the chosen model's {v['auroc']:.3f} "
                         f"({ev.design.kind} estimate).")
            mlflow.set_tag(f"{name}_beats_model", f"{other - v['auroc']:.4f}")
    if np.isfinite(v.get("m_easix_auroc", np.nan)) and v["m_easix_auroc"] > v["auroc"]:
        notes.append(f"NOTE: the clinical score m-EASIX reaches AUROC {v['m_easix_auroc']:.3f}, above the model's "
                     f"{v['auroc']:.3f}.")
        mlflow.set_tag("m_easix_beats_model", "true")
    return notes


def _fmt_ci(v: dict[str, float], key: str, digits: int = 3) -> str:
    lo, hi = v.get(f"{key}_ci_low", np.nan), v.get(f"{key}_ci_high", np.nan)
    ci = f" (95% CI {lo:.{digits}f}-{hi:.{digits}f})" if np.isfinite(lo) and np.isfinite(hi) else ""
    return f"{v.get(key, np.nan):.{digits}f}{ci}"


def _run_description(ev: Evaluation, chosen: str, gate_ok: bool, ungated: bool, gate_reason: str, promoted: bool,
                     reason: str, empty: list[str], notes: list[str], seconds: float) -> str:
    """The parent run's description in the MLflow UI (Markdown): what happened, without opening a metric."""
    v = ev.validated
    kind = "cross-validated (whole procedure, repeated)" if ev.design.kind == RESAMPLING else "held-out"
    lines = [
        f"**{chosen}**, {kind} AUROC {_fmt_ci(v, 'auroc')}, calibration slope {_fmt_ci(v, 'calibration_slope', 2)}, "
        f"intercept {_fmt_ci(v, 'calibration_intercept', 2)}, Brier {_fmt_ci(v, 'brier', 4)}; "
        f"m-EASIX AUROC {v.get('m_easix_auroc', np.nan):.3f}.",
        "",
        f"Validation: **{ev.design.kind}**: {ev.design.reason}.",
        "",
        f"Quality gate: {'passed' if gate_ok else ('FAILED, registered ungated' if ungated else 'FAILED')}"
        f"{'' if gate_ok else f' ({gate_reason})'}. Promotion: {'champion' if promoted else 'not promoted'}: {reason}.",
    ]
    if empty:
        lines += ["", f"Columns with no value in any row (ignored by every model): {', '.join(empty)}."]
    lines += [""] + notes if notes else []
    lines += ["", f"Training took {seconds:.0f} s. Research use only; not a medical device."]
    return "\n".join(lines)


CALIBRATION_SLOPE_BAND = (0.7, 1.3)


def quality_gate(validated: dict[str, float]) -> tuple[bool, str]:
    """A model that no champion comparison can excuse: clearly miscalibrated, or clearly worse than m-EASIX.

    Both on the design's honest estimates (held-out, or repeated cross-validation) with their uncertainty:
    refused when the 95% interval of the calibration slope lies wholly outside CALIBRATION_SLOPE_BAND,
    or when the 95% interval of AUROC(model) - AUROC(m-EASIX) lies wholly below 0. A small cohort's
    uncertainty is not held against a model; a clearly bad model is refused at any size.
    """
    low_band, high_band = CALIBRATION_SLOPE_BAND
    lo = validated.get("calibration_slope_ci_low", validated.get("calibration_slope", np.nan))
    hi = validated.get("calibration_slope_ci_high", validated.get("calibration_slope", np.nan))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < low_band or lo > high_band:
        return False, f"calibration slope 95% CI {lo:.2f}-{hi:.2f} lies outside the band {low_band}-{high_band}"
    diff_hi = validated.get("auroc_minus_m_easix_ci_high", np.nan)
    m_easix = validated.get("m_easix_auroc", np.nan)
    if np.isfinite(diff_hi):
        if diff_hi < 0:
            return False, (f"AUROC {validated['auroc']:.3f} is below m-EASIX's {m_easix:.3f}: the 95% CI of the "
                           f"difference ({validated.get('auroc_minus_m_easix_ci_low', np.nan):+.3f} to {diff_hi:+.3f}) "
                           "lies below 0")
    elif np.isfinite(m_easix) and validated["auroc"] < m_easix:
        return False, f"AUROC {validated['auroc']:.4f} is below m-EASIX's {m_easix:.4f}"
    return True, "passed"


def _promote(
    client: MlflowClient,
    settings: Settings,
    name: str,
    version: str,
    compare: Callable[[Any], dict[str, float]],
    new_auroc: float,
) -> tuple[bool, str, float | None]:
    """Move the alias unless the new version is clearly worse than the champion on the same estimate.

    "Clearly": the 95% paired-bootstrap interval of AUROC(new) - AUROC(champion) lies wholly below 0.
    Within the noise the newer model, fitted on the newer data, is promoted and the reason says so.
    """
    current = champion(client, name, settings.champion_alias)
    champ_auroc = None
    if current is None:
        promoted, reason = True, "no champion yet"
    else:
        try:
            d = compare(load_bundle(current))
        except Exception as exc:  # an unloadable champion is replaced, and the reason is kept
            log.warning("current champion v%s could not be scored: %s", current.version, exc)
            promoted, reason = True, f"current champion v{current.version} could not be scored"
        else:
            champ_auroc = d["champion_auroc"]
            hi = d["ci_high"] if np.isfinite(d["ci_high"]) else d["difference"]
            promoted = bool(hi >= 0)
            ci = (f" (95% CI {d['ci_low']:+.3f} to {d['ci_high']:+.3f})" if np.isfinite(d["ci_low"]) else "")
            verdict = ("not clearly worse: promoted" if promoted else "clearly worse: the champion stays")
            reason = (f"AUROC {new_auroc:.4f} vs champion v{current.version}'s {champ_auroc:.4f}, difference "
                      f"{d['difference']:+.3f}{ci} {d.get('basis', 'on the same patients')}: {verdict}")
    if promoted:
        client.set_registered_model_alias(name, settings.champion_alias, version)
    client.set_model_version_tag(name, version, "promotion", "champion" if promoted else "not promoted")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    client.set_model_version_tag(name, version, "promotion_time", now_text())
    if promoted:  # the version that lost the alias says so
        reconcile_tags(client, name, settings.champion_alias)
    return promoted, reason, champ_auroc


def log_bundle_version(bundle_dir: Path, model_name: str) -> str:
    """Log a bundle directory as the active run's pyfunc model and register it; returns the version."""
    from models.pyfunc import model_code_path

    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=model_code_path(),
        artifacts={BUNDLE_ARTIFACT: str(bundle_dir)},
        signature=model_signature(),
        input_example=input_example(),
        registered_model_name=model_name,
        pip_requirements=_pip_requirements(),
    )
    return str(info.registered_model_version)


def _log_quarantine(cohort: Cohort) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rejected_rows.csv"
        cohort.rejected.to_csv(path, index=False)
        mlflow.log_artifact(str(path), artifact_path="quarantine")
    mlflow.set_tag("quarantine", "quarantine/rejected_rows.csv")


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("mlflow", "numpy", "pandas", "scikit-learn", "xgboost", "shap", "pandera", "pydantic"):
        try:
            reqs.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return reqs


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v
