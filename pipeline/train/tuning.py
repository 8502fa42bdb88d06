"""Tune every candidate family (one nested MLflow run each), choose one, calibrate it, and bundle it.

The search (`pipeline.train.validation.Search`: configurations, inner folds), the choice and the Platt
calibration are `pipeline.train.validation`'s, the same that every fold of the repeated cross-validation
runs; here they are logged and turned into the model bundle, with risk-group thresholds from the
development patients' out-of-fold risks (a fold split other than the search's).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from models.artifact import ModelBundle
from models.candidates import CANDIDATES
from pipeline.tracking import progress
from core.features import training_ranges
from pipeline.tracking.liveness import heartbeat, mark_alive
from core.settings import Settings
from pipeline.train.validation import (  # noqa: F401  (thresholds re-exported: their historical home)
    HIGH_GROUP_SPECIFICITY,
    LOW_GROUP_SENSITIVITY,
    Fitted,
    Search,
    choose_thresholds,
    fit_procedure,
    tune,
)

log = logging.getLogger(__name__)


def tune_candidates(
    X_dev: np.ndarray, y_dev: np.ndarray, settings: Settings, experiment_id: str, n_jobs: int
) -> dict[str, dict[str, Any]]:
    """Each family's best hyperparameters and cross-validated figures, each in its own child run."""
    tuned: dict[str, dict[str, Any]] = {}
    for name in progress.steps(list(CANDIDATES), "tuning: each family's search"):
        heartbeat()
        with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=True):
            mark_alive()
            t0 = time.perf_counter()
            search = Search.of(settings)  # the search the outer cross-validation validates
            tuned[name] = tune(name, X_dev, y_dev, search.n_iter, search.cv_folds, settings.seed, n_jobs)
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
    return tuned


def choose(
    X_dev: np.ndarray, y_dev: np.ndarray, tuned: dict[str, dict[str, Any]], settings: Settings, n_jobs: int
) -> Fitted:
    """The chosen family refitted on the development patients and calibrated, logged on the parent run."""
    search = Search.of(settings)
    fitted = fit_procedure(X_dev, y_dev, tuned, search.cv_folds, settings.seed, n_jobs, search.families)
    chosen = fitted.chosen
    mlflow.set_tag("chosen_family", chosen)
    # the chosen candidate's hyperparameters and CV figures on the parent run too (the UI's run page)
    mlflow.log_params({f"chosen_{k}": plain(v) for k, v in fitted.params.items()})
    mlflow.log_metrics({"chosen_cv_log_loss": tuned[chosen]["cv_log_loss"], "chosen_cv_auroc": tuned[chosen]["cv_auroc"]})
    return fitted


def build_bundle(
    fitted: Fitted, dev: pd.DataFrame, y_dev: np.ndarray, outcome: str, run_id: str, data_sha256: str | None,
    empty: list[str],
) -> ModelBundle:
    """The chosen estimator with its calibration, thresholds and training ranges, as served."""
    low, high = choose_thresholds(y_dev, fitted.oof_risk)
    estimator = fitted.estimator.get_booster() if fitted.chosen == "xgboost" else fitted.estimator
    return ModelBundle(
        kind=fitted.chosen,
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
            "params": {k: plain(v) for k, v in fitted.params.items()},
            "data_sha256": data_sha256,
            "n_dev": len(dev),
            "empty_features": empty,
        },
    )


def plain(v: Any) -> Any:
    """A numpy scalar as the Python value (for MLflow params and the bundle's JSON)."""
    return v.item() if isinstance(v, np.generic) else v
