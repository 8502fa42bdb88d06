"""TreeSHAP for the chosen model, in log-odds, exact.

The values come from `models.leaftable` (precomputed leaf tables, numpy: ~1.5M rows/s for the
default model) or, when the trees are too deep for tables, from `models.treeshap` (compiled
path-dependent TreeSHAP, imported only then); both equal xgboost's `pred_contribs` and shap's
TreeExplainer (tests check it), so neither a DMatrix nor shap is on the serving path. The
explainer needs only the flattened trees: a served bundle builds them from the booster's JSON
document without importing xgboost. When the
library's estimator is attached (training, evaluation, `ModelBundle.predict_proba`), `margin` asks
the library itself, as an independent check that the explanation adds up to the model's own
output; without it, `margin` walks the same trees (sum of the reached leaves + base margin).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from models.leaftable import LeafTables
from models.trees import FlatTrees, comparable, flatten

_UNBUILT = object()


class TreeExplainer:
    """Raw margin contributions: returns (contributions (n, m), bias (n,)), both float64."""

    def __init__(self, kind: str, estimator: Any = None, nthread: int = 1, *, trees: FlatTrees | None = None):
        if kind not in ("xgboost", "hist_gradient_boosting"):
            raise ValueError(f"no explainer for model kind '{kind}'")
        if estimator is None and trees is None:
            raise ValueError("an explainer needs the estimator or its flattened trees")
        self.kind = kind
        self.nthread = nthread
        self.estimator: Any = None
        if estimator is not None:
            self.attach(estimator)
        if trees is None:
            trees = flatten(kind, estimator)
        self.trees: FlatTrees = trees
        self._tables: LeafTables | None | object = _UNBUILT

    @classmethod
    def from_trees(cls, kind: str, trees: FlatTrees, nthread: int = 1) -> "TreeExplainer":
        """An explainer without the library's estimator (nothing of xgboost or scikit-learn imported)."""
        return cls(kind, None, nthread, trees=trees)

    def attach(self, estimator: Any) -> None:
        """Attach the library's own estimator (then `margin` asks it)."""
        if self.kind == "xgboost":
            estimator.set_param({"nthread": self.nthread})
        self.estimator = estimator

    @property
    def tables(self) -> LeafTables | None:
        """The leaf tables (built on first use), or None when the trees are too deep for them."""
        if self._tables is _UNBUILT:
            self._tables = LeafTables.try_build(self.trees)
        return self._tables  # type: ignore[return-value]

    def contributions(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tables = self.tables
        if tables is not None:
            phi, _, expected = tables.shap_values(X)
        else:
            from models.treeshap import shap_values  # numba: only for trees too deep for tables

            phi, _, expected = shap_values(self.trees, X)
        return phi, np.full(len(phi), expected)

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The library's own raw margin (no SHAP); from the trees when no estimator is attached."""
        if self.estimator is None:
            return tree_margin(self.trees, X)
        if self.kind == "xgboost":
            return self.estimator.inplace_predict(
                np.asarray(X, dtype=np.float32), predict_type="margin", missing=np.nan
            ).astype(np.float64)
        return np.asarray(self.estimator.decision_function(X), dtype=np.float64)


def tree_margin(trees: FlatTrees, X: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """base_margin + the leaf each row reaches in every tree, without SHAP (float64 out).

    Decisions follow the trees' own rule (the same as `models.treeshap`): float32 inputs for
    xgboost, `x < t` (xgboost) or `x <= t` (scikit-learn), NaN along each node's default branch.
    The leaves are added as the library adds them (the base margin, then tree by tree, in float32
    for xgboost and float64 for scikit-learn), so the margin is the library's own (bit for bit with
    the pinned xgboost and scikit-learn; the tests require 1e-6 and 1e-9).
    All rows descend all trees one level per numpy pass (max_depth passes per chunk of rows).
    """
    X = comparable(trees, X)
    dtype = np.float32 if trees.float32_inputs else np.float64
    out = np.empty(len(X), dtype=np.float64)
    for start in range(0, len(X), chunk):
        Xc = X[start : start + chunk]
        n = len(Xc)
        node = np.broadcast_to(trees.roots, (n, len(trees.roots))).copy()
        rows = np.arange(n)[:, None]
        for _ in range(trees.max_depth):
            feat = trees.feature[node]
            inner = feat >= 0
            if not inner.any():
                break
            x = Xc[rows, np.where(inner, feat, 0)]
            thr = trees.threshold[node]
            with np.errstate(invalid="ignore"):
                below = x < thr if trees.strict_less else x <= thr
            go_left = np.where(np.isnan(x), trees.missing_left[node], below)
            node = np.where(inner, np.where(go_left, trees.left[node], trees.right[node]), node)
        terms = np.empty((n, len(trees.roots) + 1), dtype=dtype)
        terms[:, 0] = trees.base_margin
        terms[:, 1:] = trees.value[node]
        out[start : start + n] = np.cumsum(terms, axis=1, dtype=dtype)[:, -1]
    return out
