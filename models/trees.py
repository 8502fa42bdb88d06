"""Tree models as flat arrays: what both TreeSHAP implementations and the tree margin read.

Plain numpy (no numba, no xgboost, no scikit-learn imported here), so that a served model is
built from its saved JSON with nothing heavy loaded. A model is flattened once into `FlatTrees`
(from an xgboost Booster or its JSON document, or a fitted scikit-learn
HistGradientBoostingClassifier); decisions follow each library's own rule (xgboost: x < split in
float32; scikit-learn: x <= threshold), and missing values follow each node's default branch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FlatTrees:
    feature: np.ndarray  # int64 per node, -1 for a leaf
    threshold: np.ndarray  # float64
    left: np.ndarray  # int64 child ids (global node index)
    right: np.ndarray
    missing_left: np.ndarray  # bool: NaN goes left
    value: np.ndarray  # float64 leaf value (0 for inner nodes)
    cover: np.ndarray  # float64
    roots: np.ndarray  # int64 root node of each tree
    base_margin: float
    n_features: int
    max_depth: int
    strict_less: bool  # xgboost: x < t goes left; scikit-learn: x <= t
    float32_inputs: bool  # xgboost compares in float32
    expected_value: float = 0.0  # base margin + cover-weighted mean leaf of every tree


def comparable(trees: FlatTrees, X: np.ndarray) -> np.ndarray:
    """X as these trees compare it: float64, rounded through float32 for xgboost; shape checked."""
    X = np.asarray(X, dtype=np.float64)
    if trees.float32_inputs:
        X = X.astype(np.float32).astype(np.float64)
    if X.ndim != 2 or X.shape[1] != trees.n_features:
        raise ValueError(f"expected a matrix with {trees.n_features} columns")
    return X


def flatten(kind: str, estimator: Any) -> FlatTrees:
    """A fitted model of the family `kind` as FlatTrees: an xgboost Booster ("xgboost") or a
    scikit-learn HistGradientBoostingClassifier ("hist_gradient_boosting")."""
    return from_xgboost(estimator) if kind == "xgboost" else from_hist_gradient_boosting(estimator)


def from_xgboost(booster) -> FlatTrees:
    return from_xgboost_json(json.loads(booster.save_raw(raw_format="json")))


def from_xgboost_json(model: dict) -> FlatTrees:
    """From xgboost's JSON model document (what `save_model("x.json")` writes): no xgboost needed."""
    learner = model["learner"]
    trees = learner["gradient_booster"]["model"]["trees"]
    base = learner["learner_model_param"]["base_score"]
    base_score = float(json.loads(base)[0]) if base.startswith("[") else float(base)
    objective = learner["objective"]["name"]
    if objective != "binary:logistic":
        raise ValueError(f"unsupported xgboost objective {objective}")
    base_margin = math.log(base_score / (1 - base_score))
    n_features = int(learner["learner_model_param"]["num_feature"])
    parts: dict[str, list[Any]] = {k: [] for k in ("feature", "threshold", "left", "right", "missing_left", "value", "cover")}
    roots, offset, max_depth = [], 0, 0
    for tree in trees:
        left = np.asarray(tree["left_children"], dtype=np.int64)
        right = np.asarray(tree["right_children"], dtype=np.int64)
        is_leaf = left == -1
        cond = np.asarray(tree["split_conditions"], dtype=np.float32).astype(np.float64)
        parts["feature"].append(np.where(is_leaf, -1, np.asarray(tree["split_indices"], dtype=np.int64)))
        parts["threshold"].append(np.where(is_leaf, 0.0, cond))
        parts["left"].append(np.where(is_leaf, -1, left + offset))
        parts["right"].append(np.where(is_leaf, -1, right + offset))
        parts["missing_left"].append(np.asarray(tree["default_left"], dtype=bool))
        parts["value"].append(np.where(is_leaf, cond, 0.0))
        parts["cover"].append(np.asarray(tree["sum_hessian"], dtype=np.float64))
        roots.append(offset)
        max_depth = max(max_depth, _depth(left, right))
        offset += len(left)
    return _flat(parts, roots, base_margin, n_features, max_depth, strict_less=True, float32_inputs=True)


def from_hist_gradient_boosting(estimator) -> FlatTrees:
    if estimator.n_trees_per_iteration_ != 1:
        raise ValueError("only binary classifiers are supported")
    parts: dict[str, list[Any]] = {k: [] for k in ("feature", "threshold", "left", "right", "missing_left", "value", "cover")}
    roots, offset, max_depth = [], 0, 0
    for (predictor,) in estimator._predictors:
        nodes = predictor.nodes
        if np.any(nodes["is_categorical"]):
            raise ValueError("categorical splits are not supported")
        leaf = nodes["is_leaf"].astype(bool)
        left = nodes["left"].astype(np.int64)
        right = nodes["right"].astype(np.int64)
        parts["feature"].append(np.where(leaf, -1, nodes["feature_idx"].astype(np.int64)))
        parts["threshold"].append(np.where(leaf, 0.0, nodes["num_threshold"].astype(np.float64)))
        parts["left"].append(np.where(leaf, -1, left + offset))
        parts["right"].append(np.where(leaf, -1, right + offset))
        parts["missing_left"].append(nodes["missing_go_to_left"].astype(bool))
        parts["value"].append(np.where(leaf, nodes["value"].astype(np.float64), 0.0))
        parts["cover"].append(nodes["count"].astype(np.float64))
        roots.append(offset)
        max_depth = max(max_depth, _depth(np.where(leaf, -1, left), np.where(leaf, -1, right)))
        offset += len(nodes)
    base = float(np.asarray(estimator._baseline_prediction).ravel()[0])
    return _flat(
        parts, roots, base, int(estimator.n_features_in_), max_depth, strict_less=False, float32_inputs=False
    )


def _flat(parts, roots, base_margin, n_features, max_depth, strict_less, float32_inputs) -> FlatTrees:
    cat = {k: np.ascontiguousarray(np.concatenate(v)) for k, v in parts.items()}
    roots = np.asarray(roots, dtype=np.int64)
    expected = float(base_margin) + _expected(
        roots, cat["feature"].astype(np.int64), cat["value"].astype(np.float64), cat["cover"].astype(np.float64)
    )
    return FlatTrees(
        feature=cat["feature"].astype(np.int64),
        threshold=cat["threshold"].astype(np.float64),
        left=cat["left"].astype(np.int64),
        right=cat["right"].astype(np.int64),
        missing_left=cat["missing_left"].astype(np.bool_),
        value=cat["value"].astype(np.float64),
        cover=cat["cover"].astype(np.float64),
        roots=roots,
        base_margin=float(base_margin),
        n_features=n_features,
        max_depth=max_depth,
        strict_less=strict_less,
        float32_inputs=float32_inputs,
        expected_value=expected,
    )


def _depth(left: np.ndarray, right: np.ndarray) -> int:
    depth, frontier = 0, [(0, 0)]
    while frontier:
        node, d = frontier.pop()
        depth = max(depth, d)
        if left[node] != -1:
            frontier.append((int(left[node]), d + 1))
            frontier.append((int(right[node]), d + 1))
    return depth


def _expected(roots: np.ndarray, feature: np.ndarray, value: np.ndarray, cover: np.ndarray) -> float:
    """Sum over trees of the cover-weighted mean leaf value (TreeSHAP's expected value)."""
    leaves = np.flatnonzero(feature < 0)
    tree_of = np.searchsorted(roots, leaves, side="right") - 1
    return float(np.sum(value[leaves] * cover[leaves] / cover[roots[tree_of]]))
