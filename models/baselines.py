"""The published clinical scores, as baselines the model must beat.

EASIX (Korell, Front Immunol 2022) and m-EASIX (Pennisi, Blood Adv 2021) are computed from the
pre-lymphodepletion labs, not trained. `ScoreToProbability` maps a score to a probability with a
one-variable logistic regression on log2(score), fitted on development data only, so that the
scores can also be judged on Brier score, log-loss and calibration.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.utils.validation import check_is_fitted

from core.contract import FEATURES_BY_NAME

LDH = "ldh_u_l"  # U/L
CREATININE = "creatinine_mg_dl"  # mg/dL
PLATELETS = "platelets_10e9_l"  # 10^9/L
CRP = "crp_mg_l"  # mg/L; the m-EASIX formula uses mg/dL
_missing = {LDH, CREATININE, PLATELETS, CRP} - set(FEATURES_BY_NAME)
if _missing:  # fail at import, not at scoring time, if the contract renames a column
    raise ImportError(f"baseline score columns missing from the contract: {sorted(_missing)}")

# The contract allows a platelet count of 0 (range 0-2000). Counts below 1 x10^9/L are floored to
# 1 so the scores stay finite; such a patient still gets the highest score the labs allow.
PLATELET_FLOOR_10E9_L = 1.0
# The contract allows CRP = 0 (below the detection limit), which makes m-EASIX 0. Scores are
# floored at 1e-4 before log2 (log2 = -13.3): below any score from measurable labs (smallest
# m-EASIX from in-range labs with CRP 0.1 mg/L is 30 x 0.01 / 2000 = 1.5e-4).
LOG_SCORE_FLOOR = 1e-4


def _column(df: pd.DataFrame, name: str) -> np.ndarray:
    if name not in df.columns:
        raise KeyError(f"column {name!r} is required for this score")
    return df[name].to_numpy(dtype=float)


def _platelets(df: pd.DataFrame) -> np.ndarray:
    return np.maximum(_column(df, PLATELETS), PLATELET_FLOOR_10E9_L)


def easix(df: pd.DataFrame) -> np.ndarray:
    """EASIX = LDH (U/L) x creatinine (mg/dL) / platelets (10^9/L). Missing labs give NaN."""
    return _column(df, LDH) * _column(df, CREATININE) / _platelets(df)


def m_easix(df: pd.DataFrame) -> np.ndarray:
    """m-EASIX = LDH (U/L) x CRP (mg/dL) / platelets (10^9/L); CRP arrives in mg/L and is
    divided by 10. Missing labs give NaN."""
    return _column(df, LDH) * (_column(df, CRP) / 10.0) / _platelets(df)


SCORES: dict[str, Callable[[pd.DataFrame], np.ndarray]] = {"easix": easix, "m_easix": m_easix}


def log2_score(score: np.ndarray) -> np.ndarray:
    """log2 of a score floored at LOG_SCORE_FLOOR, so a zero score (CRP 0) stays finite. The
    published effects are per doubling, hence base 2."""
    return np.log2(np.maximum(np.asarray(score, dtype=float), LOG_SCORE_FLOOR))


class ScoreToProbability(ClassifierMixin, BaseEstimator):
    """A published score turned into a probability: logit P(y=1) = a + b * log2(score).

    Fitted (unpenalised, C=inf) on development data only; exp(b) is the odds ratio per doubling
    of the score, comparable with the published OR (EASIX: 1.72, Korell 2022).
    """

    def __init__(self, score: str = "easix", C: float = np.inf) -> None:
        self.score = score
        self.C = C

    def _log_score(self, X: pd.DataFrame) -> np.ndarray:
        if self.score not in SCORES:
            raise ValueError(f"unknown score {self.score!r}; choose one of {sorted(SCORES)}")
        z = log2_score(SCORES[self.score](X))
        if not np.all(np.isfinite(z)):
            raise ValueError(f"{self.score} is missing for some rows (missing labs)")
        return z.reshape(-1, 1)

    def fit(self, X: pd.DataFrame, y: np.ndarray) -> ScoreToProbability:
        """Fit intercept and slope on log2(score); X holds the contract columns."""
        self.model_ = LogisticRegression(C=self.C, max_iter=1000).fit(self._log_score(X), y)
        self.classes_ = self.model_.classes_
        self.coef_ = float(self.model_.coef_[0, 0])
        self.intercept_ = float(self.model_.intercept_[0])
        self.odds_ratio_per_doubling_ = float(np.exp(self.coef_))
        return self

    def decision_function(self, X: pd.DataFrame) -> np.ndarray:
        """Log-odds of the positive class."""
        check_is_fitted(self, "model_")
        return self.model_.decision_function(self._log_score(X))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Probabilities, shape (n, 2), columns in the order of classes_."""
        check_is_fitted(self, "model_")
        return self.model_.predict_proba(self._log_score(X))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """Class at a 0.5 threshold (for sklearn conventions; the risk is what matters)."""
        return self.classes_[(self.predict_proba(X)[:, 1] >= 0.5).astype(int)]
