"""Training: split, cross-validate candidates, choose, calibrate, evaluate, log, register, promote.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from sklearn.base import clone
from sklearn.model_selection import (
    RandomizedSearchCV,
    StratifiedKFold,
    cross_val_predict,
    cross_validate,
    train_test_split,
)

from models.artifact import ModelBundle
from models.baselines import SCORES, ScoreToProbability
from models.calibration import PlattOnMargin
from models.candidates import CANDIDATES, TREE_FAMILIES
from pipeline import plots
from pipeline.contract import (
    CONTRACT_VERSION,
    FEATURE_NAMES,
    FEATURES,
    OUTCOMES,
    example_request,
)
from pipeline.evidence import build_evidence, learning_curve
from pipeline.features import N_MATRIX, encode_frame, training_ranges
from pipeline.io import Cohort, read_cohort
from pipeline.metrics import binary_metrics, ranking_metrics
from pipeline.report import render_validation_report, save_plots, write_model_card
from pipeline.registry import BUNDLE_ARTIFACT, champion, load_bundle, promotion_lock
from pipeline.settings import Settings

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


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


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


def _random_search(
    name: str, cv: StratifiedKFold, settings: Settings, n_jobs: int, scoring: Any, refit: bool
) -> RandomizedSearchCV:
    """The one tuning procedure: used for model choice and, wrapped in outer folds, nested CV."""
    cand = CANDIDATES[name]
    grid_size = int(np.prod([len(v) for v in cand.space.values()]))
    return RandomizedSearchCV(
        cand.factory(settings.seed, n_jobs),
        cand.space,
        n_iter=min(settings.n_iter, grid_size),
        scoring=scoring,
        refit=refit,
        cv=cv,
        random_state=settings.seed,
        n_jobs=1,
        error_score="raise",
    )


def _tune(name: str, X: np.ndarray, y: np.ndarray, cv: StratifiedKFold, settings: Settings, n_jobs: int):
    search = _random_search(
        name, cv, settings, n_jobs, scoring={"log_loss": "neg_log_loss", "auroc": "roc_auc"}, refit=False
    )
    search.fit(X, y)
    res = search.cv_results_
    best = int(np.argmax(res["mean_test_log_loss"]))
    return {
        "params": res["params"][best],
        "cv_log_loss": float(-res["mean_test_log_loss"][best]),
        "cv_log_loss_std": float(res["std_test_log_loss"][best]),
        "cv_auroc": float(res["mean_test_auroc"][best]),
        "n_configs": len(res["params"]),
    }


def nested_cv(name: str, X: np.ndarray, y: np.ndarray, settings: Settings, n_jobs: int) -> dict[str, float]:
    """Outer stratified folds around the same random search: an unbiased estimate of tuning + fit."""
    inner = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed + 1)
    outer = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed + 2)
    search = _random_search(name, inner, settings, n_jobs, scoring="neg_log_loss", refit=True)
    scores = cross_validate(search, X, y, cv=outer, scoring={"auroc": "roc_auc", "log_loss": "neg_log_loss"})
    return {
        "nested_cv_auroc": float(np.mean(scores["test_auroc"])),
        "nested_cv_auroc_std": float(np.std(scores["test_auroc"])),
        "nested_cv_log_loss": float(-np.mean(scores["test_log_loss"])),
    }


def _prob(estimator: Any, X: np.ndarray) -> np.ndarray:
    return estimator.predict_proba(X)[:, 1]


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
    model_name = OUTCOMES[outcome].registered_model
    experiment_id = setup_mlflow(settings, settings.experiment)
    client = MlflowClient()

    df = cohort.data
    y_all = df[outcome].astype(int).to_numpy()
    if y_all.sum() < settings.cv_folds * 2 or (1 - y_all).sum() < settings.cv_folds * 2:
        raise ValueError(
            f"too few events or non-events in '{outcome}' for {settings.cv_folds}-fold cross-validation"
        )
    dev, test = train_test_split(
        df, test_size=settings.test_fraction, stratify=y_all, random_state=settings.seed
    )
    dev, test = dev.reset_index(drop=True), test.reset_index(drop=True)
    X_dev, X_test = encode_frame(dev), encode_frame(test)
    y_dev, y_test = dev[outcome].astype(int).to_numpy(), test[outcome].astype(int).to_numpy()
    cv = StratifiedKFold(settings.cv_folds, shuffle=True, random_state=settings.seed)
    n_jobs = max(1, os.cpu_count() or 1)

    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{outcome}") as parent:
        run_id = parent.info.run_id
        mlflow.set_tags(
            {
                "mlflow.source.git.commit": git_commit(),
                "outcome": outcome,
                "data_source": "synthetic" if synthetic else Path(data).name,
                "contract_version": CONTRACT_VERSION,
            }
        )
        mlflow.log_params(
            {
                "outcome": outcome,
                "seed": settings.seed,
                "data_sha256": cohort.sha256,
                "data_file": Path(data).name,
                "synthetic": synthetic,
                "on_invalid": on_invalid,
                "cv_folds": settings.cv_folds,
                "n_iter": settings.n_iter,
                "test_fraction": settings.test_fraction,
            }
        )
        mlflow.log_metrics(
            {
                "n_rows_file": cohort.report.n_rows,
                "n_rows_rejected": len(cohort.rejected),
                "n_rows_used": len(df),
                "n_dev": len(dev),
                "n_test": len(test),
                "events_dev": int(y_dev.sum()),
                "events_test": int(y_test.sum()),
            }
        )
        if len(cohort.rejected):
            _log_quarantine(cohort)

        tuned: dict[str, dict[str, Any]] = {}
        for name in CANDIDATES:
            with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True):
                t0 = time.perf_counter()
                tuned[name] = _tune(name, X_dev, y_dev, cv, settings, n_jobs)
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

        chosen = min(TREE_FAMILIES, key=lambda n: tuned[n]["cv_log_loss"])
        mlflow.set_tag("chosen_family", chosen)
        if len(dev) <= settings.nested_cv_max_n:
            # small data: the tuned CV score is optimistic, so estimate the whole tuning
            # procedure honestly with nested cross-validation (tuning inside each outer fold)
            nested = nested_cv(chosen, X_dev, y_dev, settings, n_jobs)
            mlflow.log_metrics(nested)
        best = CANDIDATES[chosen].factory(settings.seed, n_jobs).set_params(**tuned[chosen]["params"])

        # Calibrate on out-of-fold margins of the development set, never on the test set.
        oof = cross_val_predict(clone(best), X_dev, y_dev, cv=cv, method="predict_proba")[:, 1]
        platt = PlattOnMargin().fit(_logit(oof), y_dev)
        oof_risk = 1 / (1 + np.exp(-platt.transform(_logit(oof))))
        low, high = choose_thresholds(y_dev, oof_risk)

        fitted = clone(best).fit(X_dev, y_dev)
        estimator = fitted.get_booster() if chosen == "xgboost" else fitted
        bundle = ModelBundle(
            kind=chosen,
            estimator=estimator,
            calibration_intercept=platt.intercept_,
            calibration_slope=platt.slope_,
            low_threshold=low,
            high_threshold=high,
            outcome=outcome,
            training_ranges=training_ranges(dev),
            metadata={
                "run_id": run_id,
                "trained_at": pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"),
                "params": {k: _plain(v) for k, v in tuned[chosen]["params"].items()},
                "data_sha256": cohort.sha256,
                "n_dev": len(dev),
            },
        )
        explained = bundle.explain(X_test)
        risk_test = explained.risk
        metrics = {f"test_{k}": v for k, v in binary_metrics(y_test, risk_test).items()}

        logistic = CANDIDATES["logistic"].factory(settings.seed, n_jobs).set_params(
            **tuned["logistic"]["params"]
        )
        logistic.fit(X_dev, y_dev)
        p_logistic = _prob(logistic, X_test)
        metrics.update({f"test_logistic_{k}": v for k, v in binary_metrics(y_test, p_logistic).items()})
        prob_models: dict[str, ScoreToProbability] = {}
        probs = {f"{chosen} (chosen)": risk_test, "logistic": p_logistic}
        scores = {f"{chosen} (chosen)": risk_test, "logistic": p_logistic}
        for score in SCORES:
            metrics.update(
                {f"test_{score}_{k}": v for k, v in ranking_metrics(y_test, SCORES[score](test)).items()
                 if k in ("auroc", "auprc")}
            )
            as_prob = prob_models[score] = ScoreToProbability(score=score).fit(dev, y_dev)
            p_score = as_prob.predict_proba(test)[:, 1]
            metrics.update(
                {f"test_{score}_{k}": v for k, v in binary_metrics(y_test, p_score).items()
                 if k in ("brier", "log_loss", "calibration_slope", "calibration_intercept")}
            )
            probs[score] = p_score
            scores[score] = SCORES[score](test)
        if outcome == "severe_icans" and "p_true" in test and test["p_true"].notna().all():
            metrics["test_oracle_auroc"] = ranking_metrics(y_test, test["p_true"].to_numpy(float))["auroc"]
            scores["oracle (p_true)"] = test["p_true"].to_numpy(float)
        bundle.metadata["test_metrics"] = {
            k: round(float(v), 4) for k, v in metrics.items() if np.isfinite(v)
        }
        metrics["calibration_platt_slope"] = platt.slope_
        metrics["calibration_platt_intercept"] = platt.intercept_
        metrics["threshold_low"] = low
        metrics["threshold_high"] = high
        metrics["explanation_max_additivity_error"] = float(
            np.max(np.abs(explained.raw_margin - bundle.explainer.margin(X_test)))
        )
        for name in CANDIDATES:
            metrics[f"cv_log_loss_{name}"] = tuned[name]["cv_log_loss"]
        evidence = build_evidence(
            y_dev, oof_risk, dev, y_test, risk_test, test, {"low": low, "high": high}, N_MATRIX, outcome,
            prob_models["m_easix"], other_predictions={"logistic": p_logistic}, seed=settings.seed,
            learning_curve=learning_curve(seed=settings.seed, outcome=outcome) if synthetic else None,
            meta={"run_id": run_id, "model": model_name, "kind": chosen},
        )
        metrics.update(evidence.flat_metrics())
        gate_ok, gate_reason = quality_gate(metrics)
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})

        logistic_loss, chosen_loss = tuned["logistic"]["cv_log_loss"], tuned[chosen]["cv_log_loss"]
        if logistic_loss < chosen_loss:
            note = (
                "NOTE: the logistic comparator beats both gradient-boosted models on "
                f"cross-validated log-loss ({logistic_loss:.4f} vs {chosen_loss:.4f})."
            )
            mlflow.set_tag("comparator_beats_chosen", "logistic")
            print(note)
        for score in SCORES:
            if metrics.get(f"test_{score}_auroc", 0) > metrics["test_auroc"]:
                note = f"NOTE: the clinical score {score} beats the model on held-out AUROC."
                mlflow.set_tag(f"{score}_beats_model", "true")
                print(note)

        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp)
            plots.roc_plot(y_test, scores, tmp_path / "roc.png", f"ROC, held-out set ({outcome})")
            plots.calibration_plot(y_test, probs, tmp_path / "calibration.png", f"Calibration, held-out set ({outcome})")
            plots.shap_summary_plot(
                explained.contributions, explained.base, test, list(FEATURE_NAMES), tmp_path / "shap_summary.png"
            )
            save_plots(evidence, tmp_path)
            mlflow.log_artifacts(str(tmp_path), artifact_path="plots")
            report_dir = tmp_path / "evidence"
            report_dir.mkdir()
            report_path = render_validation_report(evidence, tmp_path, tmp_path / "report" / "validation_report.html")
            (report_dir / "evidence.json").write_text(json.dumps(evidence.to_dict(), default=str))

            bundle_dir = bundle.save(tmp_path / BUNDLE_ARTIFACT)
            card_info = {
                "name": model_name,
                "version": "the registered version that carries this card (see GET /v1/model)",
                "run_id": run_id,
                "trained_at": bundle.metadata["trained_at"],
                "kind": chosen,
                "params": bundle.metadata["params"],
                "thresholds": {"low": low, "high": high},
                "contract_version": CONTRACT_VERSION,
                "git_commit": git_commit(),
                "n_params": N_MATRIX,
            }
            provenance = {
                "synthetic": synthetic,
                "sha256": cohort.sha256,
                "file": Path(data).name,
                "n_rows": len(df),
                "n_dev": len(dev),
                "n_test": len(test),
                "seed": settings.seed,
                "n_rows_rejected": len(cohort.rejected),
            }
            write_model_card(evidence, card_info, provenance, bundle_dir)  # ships with the model
            write_model_card(evidence, card_info, provenance, report_dir)
            mlflow.log_artifacts(str(report_dir), artifact_path="evidence")
            mlflow.log_artifact(str(report_path))
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
        version = str(info.registered_model_version)
        client.set_model_version_tag(model_name, version, "outcome", outcome)
        client.set_model_version_tag(model_name, version, "test_auroc", f"{metrics['test_auroc']:.4f}")

        # Under the lock, the comparison is with whatever is champion NOW (another training
        # may have promoted its model while this one trained).
        with promotion_lock(settings.lock_url or settings.tracking_uri, settings.data_dir, model_name):
            if gate_ok:
                promoted, reason, champ_auroc = _promote(
                    client, settings, model_name, version, metrics["test_auroc"], X_test, y_test
                )
            else:
                promoted, reason, champ_auroc = False, f"quality gate: {gate_reason}", None
                client.set_model_version_tag(model_name, version, "promotion", "not promoted")
                client.set_model_version_tag(model_name, version, "promotion_reason", reason)
        if champ_auroc is not None:
            mlflow.log_metric("champion_test_auroc_on_new_test", champ_auroc)
        mlflow.set_tags({"promoted": str(promoted).lower(), "promotion_reason": reason})
        mlflow.log_metric("train_seconds", time.perf_counter() - started)
    return TrainResult(run_id, model_name, version, promoted, reason, chosen, metrics)


CALIBRATION_SLOPE_BAND = (0.7, 1.3)


def quality_gate(metrics: dict[str, float]) -> tuple[bool, str]:
    """A model that no champion comparison can excuse: clearly miscalibrated, or worse than m-EASIX.

    Calibration: the 95% bootstrap interval of the held-out calibration slope must overlap
    CALIBRATION_SLOPE_BAND (a clearly over- or under-fitted model is refused, a small test set's
    uncertainty is not held against it). Discrimination: held-out AUROC >= m-EASIX's.
    """
    low_band, high_band = CALIBRATION_SLOPE_BAND
    lo = metrics.get("test_calibration_slope_ci_low", metrics.get("test_calibration_slope", np.nan))
    hi = metrics.get("test_calibration_slope_ci_high", metrics.get("test_calibration_slope", np.nan))
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi < low_band or lo > high_band:
        return False, (
            f"calibration slope 95% CI {lo:.2f}-{hi:.2f} lies outside the band {low_band}-{high_band}"
        )
    if metrics["test_auroc"] < metrics.get("test_m_easix_auroc", -np.inf):
        return False, (
            f"held-out AUROC {metrics['test_auroc']:.4f} is below m-EASIX's {metrics['test_m_easix_auroc']:.4f}"
        )
    return True, "passed"


def _promote(
    client: MlflowClient,
    settings: Settings,
    name: str,
    version: str,
    new_auroc: float,
    X_test: np.ndarray,
    y_test: np.ndarray,
) -> tuple[bool, str, float | None]:
    """Move the alias only if the new version is at least as good on the new held-out set."""
    current = champion(client, name, settings.champion_alias)
    champ_auroc = None
    if current is None:
        promoted, reason = True, "no champion yet"
    else:
        try:
            champ = load_bundle(current)
            champ_auroc = ranking_metrics(y_test, champ.predict_proba(X_test))["auroc"]
        except Exception as exc:  # an unloadable champion is replaced, and the reason is kept
            log.warning("current champion v%s could not be scored: %s", current.version, exc)
            promoted, reason = True, f"current champion v{current.version} could not be scored"
        else:
            promoted = bool(new_auroc >= champ_auroc)
            verdict = ">=" if promoted else "<"
            reason = (
                f"held-out AUROC {new_auroc:.4f} {verdict} champion v{current.version}'s "
                f"{champ_auroc:.4f} on the same held-out set"
            )
    if promoted:
        client.set_registered_model_alias(name, settings.champion_alias, version)
    client.set_model_version_tag(name, version, "promotion", "champion" if promoted else "not promoted")
    client.set_model_version_tag(name, version, "promotion_reason", reason)
    return promoted, reason, champ_auroc


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
