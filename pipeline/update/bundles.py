"""The two kinds of updated model `pipeline.update.run` chooses between, beside the original.

A recalibration keeps the parent's trees and composes the local map a + b lp into their affine
calibration (`updated_bundle`); a revision refits the parent's family on the local patients with its
hyperparameters and its own Platt calibration (`refit`, `revision_bundle`). The out-of-fold versions
(`cv_logistic_recalibration`, `revision_oof`) are what the closed test compares them on.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

from models.artifact import ModelBundle
from models.calibration import calibrated_log_odds
from pipeline.stats.recalibration import ClosedTest, fit_recalibration


def cv_logistic_recalibration(y: np.ndarray, lp: np.ndarray, folds: StratifiedKFold) -> np.ndarray:
    """Out-of-fold log-odds of the logistic recalibration a + b lp."""
    out = np.empty_like(lp)
    for tr, te in folds.split(lp.reshape(-1, 1), y):
        a, b = fit_recalibration(y[tr], lp[tr], with_slope=True)
        out[te] = calibrated_log_odds(lp[te], a, b)
    return out


def revision_oof_log_odds(bundle: ModelBundle, X: np.ndarray, y: np.ndarray, folds: StratifiedKFold, seed: int) -> np.ndarray:
    """Out-of-fold calibrated log-odds of the family refitted with the champion's hyperparameters."""
    out = np.empty(len(y))
    for tr, te in folds.split(X, y):
        fitted = refit(bundle, X[tr], y[tr], seed)
        out[te] = fitted.predict_logit(X[te])
    return out


@dataclass
class Refit:
    """A revision: the refitted estimator and its Platt calibration on the estimator's log-odds."""

    estimator: Any
    intercept: float
    slope: float

    def predict_logit(self, X: np.ndarray) -> np.ndarray:
        p = np.clip(self.estimator.predict_proba(X)[:, 1], 1e-7, 1 - 1e-7)
        return calibrated_log_odds(np.log(p / (1 - p)), self.intercept, self.slope)


def refit(bundle: ModelBundle, X: np.ndarray, y: np.ndarray, seed: int) -> Refit:
    """The bundle's family and hyperparameters fitted on (X, y), calibrated on its out-of-fold risks."""
    from pipeline.train.validation import fit_configuration

    params = dict(bundle.metadata.get("params") or {})
    folds = min(5, int(min(y.sum(), len(y) - y.sum())))
    estimator, platt, _ = fit_configuration(bundle.kind, params, X, y, folds, seed, 1)
    return Refit(estimator, float(platt.intercept_), float(platt.slope_))


def updated_bundle(parent: ModelBundle, test: ClosedTest, info: dict[str, Any]) -> ModelBundle:
    """The parent's trees with the recalibration composed into their affine calibration."""
    new = copy.copy(parent)
    # composes two maps, a' + b'(a + b m), on their coefficients: calibrated_log_odds applies a map to margins
    new.calibration_intercept = test.intercept + test.slope * parent.calibration_intercept
    new.calibration_slope = test.slope * parent.calibration_slope
    new.metadata = {**copy.deepcopy(parent.metadata), "update": info}
    if parent.instability is not None:  # the parent's bootstrap models, recalibrated by the same map
        new.instability = parent.instability.recalibrated(test.intercept, test.slope)
        new.metadata["instability"]["note"] = (
            "intervals from the parent version's bootstrap models, recalibrated by this update's map; the "
            "uncertainty of the local recalibration itself is not included")
    new.documents = {}
    return new


def revision_bundle(parent: ModelBundle, revision: Refit, df: pd.DataFrame, info: dict[str, Any],
                    sha256: str | None) -> ModelBundle:
    """The revision as a bundle: the parent's thresholds and outcome, the local patients' ranges."""
    from core.features import training_ranges

    estimator = revision.estimator.get_booster() if parent.kind == "xgboost" else revision.estimator
    return ModelBundle(kind=parent.kind, estimator=estimator, calibration_intercept=revision.intercept,
                       calibration_slope=revision.slope, low_threshold=parent.low_threshold,
                       high_threshold=parent.high_threshold, outcome=parent.outcome,
                       training_ranges=training_ranges(df),
                       metadata={**copy.deepcopy(parent.metadata), "update": info, "n_dev": len(df),
                                 "data_sha256": sha256, "trained_at": info["updated_at"]})
