"""What the chosen validation design says about the fitted model, in one shape for both designs.

The split design scores the held-out patients; the repeated cross-validation design refits the
whole procedure and reports its cross-validated estimates (with the optimism of the apparent
ones). Both compare with the comparators (logistic, an untuned HistGradientBoosting, the clinical
scores) and give the function that scores a champion on the same estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from models.artifact import ModelBundle
from models.baselines import SCORES, ScoreToProbability
from models.candidates import CANDIDATES, make_untuned_hist_gradient_boosting
from pipeline.compare import fair_comparison
from pipeline.contract import ORACLE_COLUMN
from pipeline.evidence import (
    build_evidence,
    calibration_intervals,
    discrimination_with_ci,
    learning_curve,
    paired_difference,
)
from pipeline.features import N_MATRIX, encode_frame
from pipeline.metrics import binary_metrics, ranking_metrics
from pipeline.runs import heartbeat
from pipeline.settings import Settings
from pipeline.validation import (
    LOGISTIC,
    METRICS,
    MODEL,
    SPLIT,
    UNTUNED_HGB,
    Design,
    Fitted,
    Procedure,
    Resampled,
    repeated_cv,
)

ORACLE_LABEL = f"oracle ({ORACLE_COLUMN})"


def _prob_of(estimator: Any, X: np.ndarray) -> np.ndarray:
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
        probs = {name: _prob_of(m, X_eval) for name, m in fitted.items()}
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
    add_oracle(y_test, test, outcome, metrics, "test_oracle_auroc", plot_scores)
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
        return fair_comparison(champ, d, validated)

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
    apparent = {MODEL: bundle.predict_proba(X), **{n: _prob_of(m, X) for n, m in comparators.items()}}
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
    add_oracle(y, df, outcome, metrics, "oracle_auroc", plot_scores)

    def compare(champ: ModelBundle) -> dict[str, Any]:
        # the new procedure's cross-validated risks against the champion on the same patients
        d = paired_difference(y, cv_risk, champ.predict_proba(X), seed=settings.seed)
        shift = estimate["auroc"] - first["auroc"]
        d.update(difference=d["difference"] + shift, ci_low=d["ci_low"] + shift, ci_high=d["ci_high"] + shift)
        return fair_comparison(champ, d, validated)

    probs = {f"{fitted.chosen} (chosen)": cv_risk, "logistic": others[LOGISTIC],
             **{s: prob_models[s].predict_proba(df)[:, 1] for s in SCORES}}
    return Evaluation(design, validated, metrics, evidence, y, X, df, cv_risk, plot_scores, probs,
                      "all patients, out-of-fold risks of repeated cross-validation", compare, resampled)



def assess(
    fitted: Fitted, bundle: ModelBundle, dev: pd.DataFrame, test: pd.DataFrame | None, design: Design,
    settings: Settings, n_jobs: int, outcome: str, synthetic: bool, run_id: str, model_name: str,
) -> Evaluation:
    """The design's evaluation: the held-out set (split), or repeated cross-validation on all patients."""
    if design.kind == SPLIT:
        return _evaluate_split(fitted, bundle, dev, test, design, settings, n_jobs, outcome, synthetic, run_id,
                              model_name)
    return _evaluate_resampled(fitted, bundle, dev, design, settings, n_jobs, outcome, synthetic, run_id, model_name)


def add_oracle(
    y: np.ndarray, frame: pd.DataFrame, outcome: str, metrics: dict[str, float], key: str,
    plot_scores: dict[str, np.ndarray],
) -> None:
    """The oracle's AUROC (metrics[key]) and ROC curve, where the cohort carries the true risk.

    Only a synthetic cohort does (ORACLE_COLUMN, for severe ICANS, in every row): the ceiling
    that no model can pass.
    """
    if outcome == "severe_icans" and ORACLE_COLUMN in frame and bool(frame[ORACLE_COLUMN].notna().all()):
        truth = frame[ORACLE_COLUMN].to_numpy(float)
        metrics[key] = ranking_metrics(y, truth)["auroc"]
        plot_scores[ORACLE_LABEL] = truth
