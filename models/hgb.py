"""scikit-learn's gradient boosting, made safe for a feature column with no value at all.

A centre's file may leave a whole optional column empty (no IL-15 assay, say). xgboost learns
nothing from such a column; scikit-learn's HistGradientBoostingClassifier fails to bin it
("window shape cannot be larger than input array shape"). Here such a column is set to a constant
for fitting: a constant is never split on, so the model ignores it, the matrix keeps its shape (the
explanation kernels and the served bundle index features by position) and at prediction time
the column's values, missing or not, change nothing. `empty_features_` lists the columns treated so.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier


class HistGradientBoosting(HistGradientBoostingClassifier):
    """HistGradientBoostingClassifier that fits on matrices with wholly missing columns."""

    def fit(self, X, y, sample_weight=None):  # sklearn's signature
        X = np.asarray(X, dtype=np.float64)
        empty = np.all(np.isnan(X), axis=0) if X.shape[0] else np.zeros(X.shape[1], dtype=bool)
        if empty.any():
            X = X.copy()
            X[:, empty] = 0.0
        fitted = super().fit(X, y, sample_weight=sample_weight)
        self.empty_features_ = np.flatnonzero(empty)
        return fitted
