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
from pipeline.train.gate import champion_configuration, non_inferiority
from core.contract import ORACLE_COLUMN
from pipeline.evidence import build_evidence, paired_difference
from pipeline.train.learning_curve import learning_curve
from pipeline.evidence.thresholds import thresholds_table
from core.features import N_MATRIX, encode_frame
from pipeline.stats.metrics import auroc, binary_metrics, ranking_metrics
from pipeline.evidence.repeat_intervals import paired_auroc_difference, paired_comparison, pooled_intervals
from pipeline.tracking.liveness import heartbeat
from core.settings import Settings
from pipeline.train.training_run import TrainingRun
from pipeline.train.validation import (
    LOGISTIC_MODEL,
    METRICS,
    MODEL,
    SPLIT,
    UNTUNED_HGB,
    Design,
    Fitted,
    Procedure,
    Resampled,
    Search,
    fit_configuration,
    outer_splits,
    repeated_cv,
)

ORACLE_LABEL = f"oracle ({ORACLE_COLUMN})"
FROZEN_BASIS = ("the champion's frozen model on the same patients (its configuration is not refittable; it may have "
                "been fitted on some of them, which favours the champion)")


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def refit_predict(config: tuple[str, dict[str, Any]], X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray,
                  cv_folds: int, seed: int) -> np.ndarray:
    """A configuration's procedure (Platt on out-of-fold margins, then the fit) on the training
    patients, predicting the test patients: the champion as the challenger was validated."""
    from models.calibration import risk_of

    estimator, platt, _ = fit_configuration(config[0], config[1], X_train, y_train, cv_folds, seed, 1)
    return risk_of(platt.transform(_logit(estimator.predict_proba(X_test)[:, 1])))


def refit_in_folds(config: tuple[str, dict[str, Any]], X: np.ndarray, y: np.ndarray, repeats: int, folds: int,
                   seed: int, inner_folds: int) -> np.ndarray:
    """(repeats, n) out-of-fold risks of a configuration refitted in `outer_splits`' folds: the
    very folds of the challenger's repeated cross-validation."""
    from threadpoolctl import threadpool_limits

    out = np.full((repeats, len(y)), np.nan)
    with threadpool_limits(1):
        for r, fold_seed, tr, te in outer_splits(y, repeats, folds, seed):
            out[r, te] = refit_predict(config, X[tr], y[tr], X[te], inner_folds, fold_seed)
    return out


def champion_comparison(y: np.ndarray, challenger: np.ndarray, champion: np.ndarray, thresholds: dict[str, float],
                        basis: str, seed: int) -> dict[str, Any]:
    """The promotion's evidence: `paired_comparison` on the same patients and its non-inferiority verdict."""
    criteria = paired_comparison(y, challenger, champion, thresholds, seed=seed)
    ok, lines = non_inferiority(criteria)
    auc = criteria["auroc"]
    return {"criteria": criteria, "non_inferior": ok, "lines": lines, "basis": basis,
            "champion_auroc": auc["champion"], "challenger_auroc": auc["challenger"],
            "difference": auc["difference"], "ci_low": auc["ci_low"], "ci_high": auc["ci_high"],
            "champion_oof_auroc_first_repeat": float(auroc(y, champion[0]))}


def fold_thresholds_table(y: np.ndarray, risk: np.ndarray, fold_thresholds: np.ndarray) -> pd.DataFrame:
    """`thresholds_table`'s figures where each patient is classified at the thresholds chosen inside
    the fold that predicted them (the reported threshold: the mean over folds)."""
    rows = []
    for j, name in enumerate(("low", "high")):
        t = fold_thresholds[:, j]
        above = risk >= t  # each patient against their own fold's threshold
        row = thresholds_table(y, np.where(above, 1.0, 0.0), {name: 0.5}).iloc[0].to_dict()
        row["threshold"] = float(np.nanmean(t))
        rows.append(row)
    return pd.DataFrame(rows)


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


def _evidence(run: TrainingRun, fitted: Fitted, bundle: ModelBundle, y: np.ndarray, risk: np.ndarray,
              frame: pd.DataFrame, oof_risk: np.ndarray, m_easix_model: Any, others: dict[str, np.ndarray]) -> Any:
    """`build_evidence` for this run: the development patients' out-of-fold risks, and the evaluated ones."""
    settings, outcome = run.settings, run.outcome
    return build_evidence(
        run.y_dev, oof_risk, run.frame, y, risk, frame,
        {"low": bundle.low_threshold, "high": bundle.high_threshold}, N_MATRIX, outcome,
        m_easix_model, other_predictions=others, seed=settings.seed,
        learning_curve=learning_curve(seed=settings.seed, outcome=outcome) if run.synthetic else None,
        meta={"run_id": run.run_id, "model": run.model_name, "kind": fitted.chosen},
    )


def _evaluate_split(run: TrainingRun, fitted: Fitted, bundle: ModelBundle) -> Evaluation:
    settings, outcome, dev, test, design = run.settings, run.outcome, run.frame, run.test, run.design
    assert test is not None  # the split design holds patients out
    X_dev, y_dev = run.X_dev, run.y_dev
    X_test, y_test = encode_frame(test), test[outcome].astype(int).to_numpy()
    risk_test = bundle.explain(X_test).risk
    probs, _, prob_models = _comparator_probs(dev, y_dev, test, X_dev, X_test, fitted.tuned["logistic"]["params"],
                                              settings, run.n_jobs, None)
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
    evidence = _evidence(run, fitted, bundle, y_test, risk_test, test, fitted.oof_risk, prob_models["m_easix"],
                         {"logistic": probs["logistic"], UNTUNED_HGB: probs[UNTUNED_HGB]})
    metrics.update(evidence.flat_metrics())
    validated = {k: metrics.get(f"test_{k}", np.nan) for k in VALIDATED_KEYS}
    d = paired_difference(y_test, risk_test, probs[LOGISTIC_MODEL], seed=settings.seed)
    validated.update(logistic_auroc=d["auroc_other"], auroc_minus_logistic=d["difference"],
                     auroc_minus_logistic_ci_low=d["ci_low"], auroc_minus_logistic_ci_high=d["ci_high"])
    validated.update(platt_slope=fitted.fitted_platt_slope, events=float(y_test.sum()))
    thresholds = {"low": bundle.low_threshold, "high": bundle.high_threshold}

    def compare(champ: ModelBundle) -> dict[str, Any]:
        config = champion_configuration(champ.metadata, champ.kind)
        if config is None:  # not refittable: its frozen model on the held-out patients it never saw
            champ_risk, basis = champ.predict_proba(X_test), FROZEN_BASIS
        else:
            champ_risk = refit_predict(config, X_dev, y_dev, X_test, Search.of(settings).cv_folds, settings.seed)
            basis = (f"the champion's configuration ({config[0]}) refitted on the same development patients, "
                     f"both scored on the same {len(y_test)} held-out patients")
        return champion_comparison(y_test, risk_test[None, :], champ_risk[None, :], thresholds, basis, settings.seed)

    return Evaluation(design, validated, metrics, evidence, y_test, X_test, test, risk_test, plot_scores,
                      {f"{fitted.chosen} (chosen)": risk_test, "logistic": probs["logistic"],
                       **{s: probs[s] for s in SCORES}},
                      "held-out set", compare)


def validation_procedure(settings: Settings, events: int) -> Procedure:
    """The procedure each outer fold re-runs: the shipped search (`Search.of(settings)`, the one
    `pipeline.train.tuning.tune_candidates` runs for the final model), in the whole cohort's space."""
    search = Search.of(settings)
    return Procedure(search.n_iter, search.cv_folds, space_events=events, families=search.families)


def _evaluate_resampled(run: TrainingRun, fitted: Fitted, bundle: ModelBundle) -> Evaluation:
    """All patients fitted; every figure from repeated cross-validation of the whole procedure."""
    settings, outcome, df, design, n_jobs = run.settings, run.outcome, run.frame, run.design, run.n_jobs
    X, y = run.X_dev, run.y_dev
    _, comparators, prob_models = _comparator_probs(
        df, y, df, X, X, fitted.tuned["logistic"]["params"], settings, n_jobs, None
    )
    apparent = {MODEL: bundle.predict_proba(X), **{n: _prob_of(m, X) for n, m in comparators.items()}}
    heartbeat()
    procedure = validation_procedure(settings, int(y.sum()))
    resampled = repeated_cv(X, y, procedure, apparent, design.repeats, settings.cv_folds, settings.seed, n_jobs,
                            settings.cluster, settings.cluster_workers)
    heartbeat()
    cv_risk = resampled.predictions[MODEL][0]  # the first repeat: every patient predicted out of fold
    others = {LOGISTIC_MODEL: resampled.predictions[LOGISTIC_MODEL][0], UNTUNED_HGB: resampled.predictions[UNTUNED_HGB][0]}
    evidence = _evidence(run, fitted, bundle, y, cv_risk, df, cv_risk, prob_models["m_easix"], others)
    if resampled.fold_thresholds is not None:  # sensitivity & co. at thresholds chosen inside each fold
        evidence.thresholds = fold_thresholds_table(y, cv_risk, resampled.fold_thresholds[0])
    metrics = evidence.flat_metrics(prefix="cv")
    pooled = pooled_intervals(y, resampled.predictions[MODEL], seed=settings.seed)
    estimate = resampled.estimate(MODEL)
    validated: dict[str, float] = {}
    for k in METRICS:
        validated[k] = estimate[k]
        validated[f"{k}_ci_low"] = pooled.get(f"{k}_ci_low", np.nan)
        validated[f"{k}_ci_high"] = pooled.get(f"{k}_ci_high", np.nan)
        metrics[f"apparent_{k}"] = resampled.apparent[MODEL][k]
        metrics[f"optimism_{k}"] = resampled.optimism(MODEL)[k]
        metrics[f"cv_{k}_sd_over_repeats"] = resampled.spread(MODEL)[k]
        for name in (LOGISTIC_MODEL, UNTUNED_HGB):
            metrics[f"validated_{name}_{k}"] = resampled.estimate(name)[k]
    m_easix = SCORES["m_easix"](df)
    if np.all(np.isfinite(m_easix)):
        d = paired_auroc_difference(y, resampled.predictions[MODEL], m_easix, seed=settings.seed)
        validated.update(m_easix_auroc=d["auroc_other"], auroc_minus_m_easix=d["difference"],
                         auroc_minus_m_easix_ci_low=d["ci_low"], auroc_minus_m_easix_ci_high=d["ci_high"])
    d = paired_auroc_difference(y, resampled.predictions[MODEL], resampled.predictions[LOGISTIC_MODEL], seed=settings.seed)
    validated.update(logistic_auroc=d["auroc_other"], auroc_minus_logistic=d["difference"],
                     auroc_minus_logistic_ci_low=d["ci_low"], auroc_minus_logistic_ci_high=d["ci_high"])
    validated.update(platt_slope=fitted.fitted_platt_slope, events=float(y.sum()))
    metrics["platt_refused_folds"] = resampled.platt_refused_folds
    metrics["cv_repeats"] = resampled.repeats
    metrics["resampling_seconds"] = resampled.seconds
    plot_scores = {f"{fitted.chosen} (chosen)": cv_risk, "logistic": others[LOGISTIC_MODEL],
                   **{score: SCORES[score](df) for score in SCORES}}
    add_oracle(y, df, outcome, metrics, "oracle_auroc", plot_scores)

    thresholds = {"low": bundle.low_threshold, "high": bundle.high_threshold}

    def compare(champ: ModelBundle) -> dict[str, Any]:
        # the challenger's out-of-fold risks against the champion's configuration refitted in the same folds
        config = champion_configuration(champ.metadata, champ.kind)
        if config is None:
            frozen = champ.predict_proba(X)
            return champion_comparison(y, resampled.predictions[MODEL], np.repeat(frozen[None, :], design.repeats, 0),
                                       thresholds, FROZEN_BASIS, settings.seed)
        champ_oof = refit_in_folds(config, X, y, design.repeats, settings.cv_folds, settings.seed,
                                   Search.of(settings).cv_folds)
        basis = (f"out of fold on the same {len(y)} patients: the champion's configuration ({config[0]}) refitted "
                 f"inside the same {design.repeats} x {settings.cv_folds} outer folds as the challenger")
        return champion_comparison(y, resampled.predictions[MODEL], champ_oof, thresholds, basis, settings.seed)

    probs = {f"{fitted.chosen} (chosen)": cv_risk, "logistic": others[LOGISTIC_MODEL],
             **{s: prob_models[s].predict_proba(df)[:, 1] for s in SCORES}}
    return Evaluation(design, validated, metrics, evidence, y, X, df, cv_risk, plot_scores, probs,
                      "all patients, out-of-fold risks of repeated cross-validation", compare, resampled)



def assess(run: TrainingRun, fitted: Fitted, bundle: ModelBundle) -> Evaluation:
    """The design's evaluation: the held-out set (split), or repeated cross-validation on all patients."""
    if run.design.kind == SPLIT:
        return _evaluate_split(run, fitted, bundle)
    return _evaluate_resampled(run, fitted, bundle)


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
