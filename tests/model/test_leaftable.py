"""Leaf-table TreeSHAP equals the numba TreeSHAP and xgboost's own values, for every tree shape."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from sklearn.ensemble import HistGradientBoostingClassifier

import models.leaftable as leaftable
from models.leaftable import LeafTables, TablesTooLarge
from models.treeshap import FlatTrees, from_hist_gradient_boosting, from_xgboost, shap_values
from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cohort():
    df = generate_cohort(1500, seed=5)
    return encode_frame(df), df["severe_icans"].astype(int).to_numpy()


@pytest.fixture(scope="module")
def data(cohort):
    X, y = cohort
    rng = np.random.default_rng(0)
    X_train = X.copy()
    X_train[rng.random(X.shape) < 0.1] = np.nan  # NaN while training: learned default directions
    probe = X[:300].copy()
    probe[rng.random(probe.shape) < 0.15] = np.nan  # missing values on every feature
    return X_train, y, probe


def _on_splits(flat: FlatTrees, rows: np.ndarray) -> np.ndarray:
    """Rows with one value set exactly to a split threshold (tests x < t vs x <= t)."""
    out = rows.copy()
    inner = np.flatnonzero(flat.feature >= 0)
    for i in range(len(out)):
        node = inner[(i * 7) % len(inner)]
        out[i, flat.feature[node]] = flat.threshold[node]
    return out


def _check_against_numba(flat: FlatTrees, Z: np.ndarray, tables: LeafTables | None = None):
    tables = tables or LeafTables.build(flat)
    phi, margin, expected = tables.shap_values(Z)
    ref_phi, ref_margin, ref_expected = shap_values(flat, Z)
    np.testing.assert_allclose(phi, ref_phi, rtol=0, atol=1e-9)
    np.testing.assert_allclose(margin, ref_margin, rtol=0, atol=1e-9)
    assert expected == pytest.approx(ref_expected, abs=1e-12)
    np.testing.assert_allclose(expected + phi.sum(axis=1), margin, rtol=0, atol=1e-12)
    return phi, margin, expected


def _has_repeated_feature_on_a_path(flat: FlatTrees) -> bool:
    stack = [(int(r), ()) for r in flat.roots]
    while stack:
        node, feats = stack.pop()
        f = int(flat.feature[node])
        if f < 0:
            continue
        if f in feats:
            return True
        stack += [(int(flat.left[node]), feats + (f,)), (int(flat.right[node]), feats + (f,))]
    return False


@pytest.mark.parametrize("depth, trees", [(1, 30), (2, 100), (3, 60), (4, 40), (5, 30), (6, 20)])
def test_xgboost_with_missing_values(data, depth, trees):
    X, y, probe = data
    booster = xgb.XGBClassifier(
        n_estimators=trees, max_depth=depth, learning_rate=0.1, subsample=0.8, n_jobs=1, random_state=depth
    ).fit(X, y).get_booster()
    flat = from_xgboost(booster)
    Z = np.vstack([probe, _on_splits(flat, probe[:40])])
    phi, margin, expected = _check_against_numba(flat, Z)
    ref = booster.predict(xgb.DMatrix(Z, missing=np.nan), pred_contribs=True)
    np.testing.assert_allclose(phi, ref[:, :-1], atol=1e-5)
    np.testing.assert_allclose(expected, ref[0, -1], atol=1e-5)
    own = booster.inplace_predict(Z.astype(np.float32), predict_type="margin", missing=np.nan)
    np.testing.assert_allclose(margin, own, atol=1e-5)


def test_repeated_features_on_one_path(data):
    X, y, probe = data
    cols = [0, 1]  # two continuous columns, deep trees: every long path reuses a feature
    booster = xgb.XGBClassifier(n_estimators=25, max_depth=6, min_child_weight=0.1, n_jobs=1).fit(
        X[:, cols], y
    ).get_booster()
    flat = from_xgboost(booster)
    assert _has_repeated_feature_on_a_path(flat)
    Z = np.vstack([probe[:, cols], _on_splits(flat, probe[:60, cols])])
    phi, _, _ = _check_against_numba(flat, Z)
    ref = booster.predict(xgb.DMatrix(Z, missing=np.nan), pred_contribs=True)
    np.testing.assert_allclose(phi, ref[:, :-1], atol=1e-5)


def test_single_leaf_trees_and_stumps(cohort, data):
    X, y = cohort
    probe = data[2]
    # gamma prunes: a mix of single-leaf trees, stumps and unbalanced trees
    booster = xgb.XGBClassifier(n_estimators=30, max_depth=2, gamma=2.0, n_jobs=1).fit(X, y).get_booster()
    flat = from_xgboost(booster)
    sizes = set(np.diff(np.append(flat.roots, len(flat.feature))).tolist())
    assert {1, 3, 5} <= sizes
    phi, margin, _ = _check_against_numba(flat, probe)
    ref = booster.predict(xgb.DMatrix(probe, missing=np.nan), pred_contribs=True)
    np.testing.assert_allclose(phi, ref[:, :-1], atol=1e-5)
    own = booster.inplace_predict(probe.astype(np.float32), predict_type="margin", missing=np.nan)
    np.testing.assert_allclose(margin, own, atol=1e-5)


def _flat_trees(trees: list[list[tuple]], n_features: int, strict_less: bool = True) -> FlatTrees:
    """FlatTrees from hand-written trees: per node (feature, threshold, left, right, missing_left,
    value, cover) with tree-local child ids (-1 for a leaf)."""
    cols: list[list] = [[] for _ in range(7)]
    roots, offset = [], 0
    expected = 0.0
    for nodes in trees:
        roots.append(offset)
        for f, t, left, right, ml, v, c in nodes:
            for col, val in zip(cols, (f, t, left + offset if left >= 0 else -1,
                                       right + offset if right >= 0 else -1, ml, v, c)):
                col.append(val)
            if f < 0:
                expected += v * c / nodes[0][6]
        offset += len(nodes)
    feature, threshold, left, right, missing_left, value, cover = (np.asarray(c) for c in cols)
    return FlatTrees(
        feature=feature.astype(np.int64), threshold=threshold.astype(np.float64), left=left.astype(np.int64),
        right=right.astype(np.int64), missing_left=missing_left.astype(bool), value=value.astype(np.float64),
        cover=cover.astype(np.float64), roots=np.asarray(roots, dtype=np.int64), base_margin=0.25,
        n_features=n_features, max_depth=24, strict_less=strict_less, float32_inputs=False,
        expected_value=0.25 + expected,
    )


def test_hand_written_trees_single_leaf_stump_and_repeats():
    trees = [
        [(-1, 0.0, -1, -1, False, 0.7, 10.0)],  # a single leaf
        [(2, 0.5, 1, 2, True, 0.0, 10.0), (-1, 0, -1, -1, False, -1.0, 4.0), (-1, 0, -1, -1, False, 2.0, 6.0)],
        # feature 0 three times on one path, feature 1 once; unbalanced
        [(0, 1.0, 1, 2, False, 0.0, 20.0),
         (-1, 0, -1, -1, False, 0.3, 5.0),
         (1, 0.0, 3, 4, True, 0.0, 15.0),
         (0, 3.0, 5, 6, True, 0.0, 9.0),
         (-1, 0, -1, -1, False, -0.4, 6.0),
         (0, 2.0, 7, 8, False, 0.0, 7.0),
         (-1, 0, -1, -1, False, 1.1, 2.0),
         (-1, 0, -1, -1, False, -2.0, 3.0),
         (-1, 0, -1, -1, False, 0.9, 4.0)],
    ]
    grid = np.array([np.nan, -1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])
    Z = np.array(np.meshgrid(grid, grid, grid)).reshape(3, -1).T  # every branch, NaN and tie
    for strict_less in (True, False):
        flat = _flat_trees(trees, 3, strict_less=strict_less)
        assert _has_repeated_feature_on_a_path(flat)
        _check_against_numba(flat, Z)


@pytest.mark.parametrize("group_height", [0, 1, 3])
def test_other_group_heights(data, group_height):
    X, y, probe = data
    flat = from_xgboost(xgb.XGBClassifier(n_estimators=30, max_depth=5, n_jobs=1).fit(X, y).get_booster())
    _check_against_numba(flat, probe, LeafTables.build(flat, group_height=group_height))


def test_hist_gradient_boosting_with_missing_values(data):
    X, y, probe = data
    model = HistGradientBoostingClassifier(max_iter=60, max_depth=4, random_state=0).fit(X, y)
    flat = from_hist_gradient_boosting(model)
    assert not flat.strict_less
    assert flat.missing_left.any() and not flat.missing_left[flat.feature >= 0].all()
    Z = np.vstack([probe, _on_splits(flat, probe[:40])])
    _, margin, _ = _check_against_numba(flat, Z)
    np.testing.assert_allclose(margin, model.decision_function(Z), atol=1e-9)


def test_one_row_chunks_and_threads_agree(data, monkeypatch):
    X, y, probe = data
    booster = xgb.XGBClassifier(n_estimators=50, max_depth=3, n_jobs=1).fit(X, y).get_booster()
    tables = LeafTables.build(from_xgboost(booster))
    Z = np.vstack([probe] * 5)  # 1500 rows: several chunks
    assert len(Z) > 2 * tables.chunk_rows
    batch, margin, _ = tables.shap_values(Z)
    single = [tables.shap_values(Z[i : i + 1]) for i in range(0, len(Z), 7)]
    np.testing.assert_allclose(np.vstack([s[0] for s in single]), batch[::7], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([s[1] for s in single]), margin[::7], rtol=0, atol=1e-12)
    monkeypatch.setattr(leaftable, "PARALLEL_MIN_ROWS", 16)
    threaded, threaded_margin, _ = tables.shap_values(Z, threads=2)
    np.testing.assert_array_equal(threaded, batch)
    np.testing.assert_array_equal(threaded_margin, margin)
    empty, empty_margin, _ = tables.shap_values(Z[:0])
    assert empty.shape == (0, Z.shape[1]) and empty_margin.shape == (0,)
    with pytest.raises(ValueError):
        tables.shap_values(Z[:, :-1])


def test_too_large_tables_signal_the_fallback(data):
    X, y, _ = data
    flat = from_xgboost(xgb.XGBClassifier(n_estimators=20, max_depth=4, n_jobs=1).fit(X, y).get_booster())
    with pytest.raises(TablesTooLarge):
        LeafTables.build(flat, max_bytes=1000)
    assert LeafTables.try_build(flat, max_bytes=1000) is None
    assert isinstance(LeafTables.try_build(flat), LeafTables)
    # a chain of 20 splits: a group would need 2^20 patterns
    chain = []
    for d in range(20):
        chain.append((d % 3, float(d), 2 * d + 1, 2 * d + 2, False, 0.0, 100.0 - d))
        chain.append((-1, 0.0, -1, -1, False, 0.1 * d, 1.0))
    chain.append((-1, 0.0, -1, -1, False, -0.5, 80.0))  # node 40: the last split's right child
    deep = _flat_trees([chain], 3)
    with pytest.raises(TablesTooLarge):
        LeafTables.build(deep)
    assert LeafTables.try_build(deep) is None


def test_import_does_not_load_numba():
    code = "import sys, models.leaftable; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_the_explainer_falls_back_to_the_compiled_kernel_for_trees_too_deep_for_tables(monkeypatch):
    """Deep trees: the explainer must still answer exactly, through models.treeshap."""
    import models.leaftable as lt
    from models.explain import TreeExplainer

    rng = np.random.default_rng(5)
    X = rng.normal(size=(300, 6))
    X[rng.uniform(size=X.shape) < 0.1] = np.nan
    y = (np.nan_to_num(X[:, 0]) + rng.normal(size=300) > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3, "eta": 0.3}, xgb.DMatrix(X, label=y), 10)
    explainer = TreeExplainer("xgboost", booster)
    with_tables, _ = explainer.contributions(X)
    assert explainer.tables is not None
    assert lt.LeafTables.try_build(explainer.trees, max_bytes=1) is None  # what "too deep" looks like
    monkeypatch.setattr(lt.LeafTables, "try_build", classmethod(lambda cls, trees, **kw: None))
    deep = TreeExplainer("xgboost", booster)
    assert deep.tables is None
    without, _ = deep.contributions(X)
    np.testing.assert_allclose(without, with_tables, atol=1e-9, rtol=0)
    reference = booster.predict(xgb.DMatrix(X), pred_contribs=True)[:, :-1]
    np.testing.assert_allclose(without, reference, atol=1e-4, rtol=0)
