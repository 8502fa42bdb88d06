"""The logistic family as a few arrays: its exact explanation and its B bootstrap models, without scikit-learn.

The logistic candidate (`models.candidates.make_logistic`: median imputation with missing
indicators, log1p of the skewed labs and doses, standardisation, L2-penalised logistic regression)
is affine in its transformed inputs: margin = c + sum_k w_k (t_k(x) - m_k) / s_k, where t_k is an
imputed (logged) matrix column or a missing indicator and m_k, s_k the standardiser's mean and scale.
Every term depends on one matrix column, so the term is that column's SHAP value against the
development patients' mean (the interventional SHAP value of a linear model, Lundberg & Lee 2017;
shap's LinearExplainer) and the base value is the intercept c: the explanation adds up exactly.

Folded per matrix column j: margin = const + sum_j weight_j * g_j(v_j) + missing_weight_j * miss_j,
with v_j the value or, when missing, the imputer's median, and g_j = log1p(max(v, 0)) on `LOG_COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.contract import FEATURES_BY_NAME
from core.features import MATRIX_COLUMNS
from core.style import LOGISTIC_MODEL
from models.ensemble import INTERVAL

# Skewed, non-negative labs and doses enter the linear model on a log scale (one list: the
# pipeline's transform and these arrays both read it).
LOG_COLUMNS = [
    j
    for j, c in enumerate(MATRIX_COLUMNS)
    if c.level is None and FEATURES_BY_NAME[c.feature].kind == "float" and c.feature != "age_years"
]
_IS_LOG = np.zeros(len(MATRIX_COLUMNS), dtype=bool)
_IS_LOG[LOG_COLUMNS] = True


def _g(values: np.ndarray) -> np.ndarray:
    """The transform each column enters with (log1p on the skewed columns), NaN kept."""
    out = np.array(values, dtype=np.float64, copy=True)
    cols = out[..., _IS_LOG]
    with np.errstate(invalid="ignore"):
        out[..., _IS_LOG] = np.log1p(np.clip(cols, 0, None))
    return out


@dataclass(frozen=True, eq=False)
class LinearTerms:
    """One fitted logistic pipeline, per matrix column (arrays of length m)."""

    impute: np.ndarray  # the value a missing column takes (the imputer's statistic)
    weight: np.ndarray  # coefficient per unit of g(value): w / s
    centre: np.ndarray  # development mean of g(value): the standardiser's mean
    missing_weight: np.ndarray  # coefficient of the column's missing indicator (0 without one)
    missing_centre: np.ndarray  # development share missing (the indicator's mean; 0 without one)
    intercept: float

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> "LinearTerms":
        """From a fitted `make_logistic` pipeline (imputer, log transform, scaler, logistic regression)."""
        imputer, scaler, model = (pipeline.named_steps[k] for k in ("impute", "scale", "model"))
        m = len(imputer.statistics_)
        if m != len(MATRIX_COLUMNS):
            raise ValueError(f"expected a pipeline fitted on {len(MATRIX_COLUMNS)} matrix columns, not {m}")
        w = model.coef_[0] / scaler.scale_
        indicated = np.asarray(imputer.indicator_.features_ if imputer.indicator_ is not None else [], dtype=int)
        missing_weight = np.zeros(m)
        missing_centre = np.zeros(m)
        missing_weight[indicated] = w[m:]
        missing_centre[indicated] = scaler.mean_[m:]
        return cls(impute=np.asarray(imputer.statistics_, dtype=np.float64), weight=w[:m].copy(),
                   centre=scaler.mean_[:m].copy(), missing_weight=missing_weight, missing_centre=missing_centre,
                   intercept=float(model.intercept_[0]))

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(phi (n, m), bias (n,)): margin = bias + phi.sum(axis=1), every term one column's."""
        X = np.asarray(X, dtype=np.float64)
        missing = np.isnan(X)
        v = _g(np.where(missing, self.impute, X))
        phi = self.weight * (v - self.centre) + self.missing_weight * (missing - self.missing_centre)
        return phi, np.full(len(X), self.intercept)

    def margin(self, X: np.ndarray) -> np.ndarray:
        phi, bias = self.contributions(X)
        return bias + phi.sum(axis=1)


class LinearExplainer:
    """The logistic bundle's explainer, with the tree explainer's interface (`models.explain`)."""

    kind = LOGISTIC_MODEL

    def __init__(self, estimator: Any) -> None:
        self.terms = LinearTerms.from_pipeline(estimator)
        self.estimator = estimator

    def attach(self, estimator: Any) -> None:
        self.estimator = estimator

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.terms.contributions(X)

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The library's own margin (an independent check that the explanation adds up)."""
        return np.asarray(self.estimator.decision_function(np.asarray(X, dtype=np.float64)), dtype=np.float64)


LINEAR_ARRAYS = ("const", "present_weight", "missing_term")


@dataclass(frozen=True, eq=False)
class LinearEnsemble:
    """B calibrated logistic models evaluated together, as `models.ensemble.MarginEnsemble` is for trees.

    calibrated log-odds of model b = const[b] + sum_j present_j * present_weight[b, j] * g(x_j)
    + sum_j missing_j * missing_term[b, j]: each model's imputed value, indicator and Platt
    calibration folded in, so a batch is two matrix products."""

    const: np.ndarray  # (B,)
    present_weight: np.ndarray  # (B, m)
    missing_term: np.ndarray  # (B, m)

    @property
    def n_models(self) -> int:
        return len(self.const)

    @property
    def n_features(self) -> int:
        return self.present_weight.shape[1]

    @property
    def nbytes(self) -> int:
        return int(sum(getattr(self, k).nbytes for k in LINEAR_ARRAYS))

    @classmethod
    def build(cls, models: Sequence[LinearTerms], intercepts: Sequence[float], slopes: Sequence[float]) -> "LinearEnsemble":
        if not models:
            raise ValueError("no models")
        a = np.asarray(intercepts, dtype=np.float64)
        s = np.asarray(slopes, dtype=np.float64)
        W = np.stack([t.weight for t in models])
        MW = np.stack([t.missing_weight for t in models])
        centred = np.array([t.intercept - t.weight @ t.centre - t.missing_weight @ t.missing_centre for t in models])
        imputed = np.stack([t.weight * _g(t.impute) for t in models])
        return cls(const=a + s * centred, present_weight=s[:, None] * W, missing_term=s[:, None] * (imputed + MW))

    def recalibrated(self, intercept: float, slope: float) -> "LinearEnsemble":
        return replace(self, const=intercept + slope * self.const, present_weight=slope * self.present_weight,
                       missing_term=slope * self.missing_term)

    def margins(self, X: np.ndarray) -> np.ndarray:
        """(n, B) calibrated log-odds of every model for every row."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected a matrix with {self.n_features} columns")
        missing = np.isnan(X)
        present = np.where(missing, 0.0, _g(np.where(missing, 0.0, X)))
        return self.const + present @ self.present_weight.T + missing.astype(np.float64) @ self.missing_term.T

    def summary(self, X: np.ndarray, log_odds: np.ndarray, low_logit: float, high_logit: float,
                parallel: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As `MarginEnsemble.summary`: the 2.5th/97.5th percentiles of the B risks (numpy's linear
        rule), and the share of models putting the row in another group than `log_odds` does."""
        z = self.margins(X)
        risks = 1.0 / (1.0 + np.exp(-z))
        lo, hi = np.percentile(risks, INTERVAL, axis=1)
        z0 = np.asarray(log_odds, dtype=np.float64)[:, None]
        own = (z0 >= low_logit).astype(int) + (z0 >= high_logit)
        groups = (z >= low_logit).astype(int) + (z >= high_logit)
        return lo, hi, (groups != own).mean(axis=1)

    def save(self, path: Path) -> None:
        with open(path, "wb") as fh:
            np.savez_compressed(fh, linear=np.array([1]), **{k: getattr(self, k) for k in LINEAR_ARRAYS})

    @classmethod
    def load(cls, path: Path) -> "LinearEnsemble":
        with np.load(path, allow_pickle=False) as z:
            return cls(**{k: np.ascontiguousarray(z[k]) for k in LINEAR_ARRAYS})


def is_linear_ensemble(path: Path) -> bool:
    with np.load(path, allow_pickle=False) as z:
        return "linear" in z.files
