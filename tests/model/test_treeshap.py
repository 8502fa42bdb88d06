"""Our compiled TreeSHAP equals xgboost's and shap's values, and adds up exactly."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb
from sklearn.ensemble import HistGradientBoostingClassifier

from models.treeshap import from_hist_gradient_boosting, from_xgboost, shap_values
from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame, monotone_constraints


@pytest.fixture(scope="module")
def data():
    df = generate_cohort(1500, seed=5)
    X = encode_frame(df)
    y = df["severe_icans"].astype(int).to_numpy()
    rng = np.random.default_rng(0)
    probe = X[:300].copy()
    probe[rng.random(probe.shape) < 0.15] = np.nan  # missing values on every feature
    return X, y, probe


@pytest.mark.parametrize("depth, trees", [(1, 20), (3, 120), (5, 60)])
def test_equals_xgboost_pred_contribs(data, depth, trees):
    X, y, probe = data
    booster = xgb.XGBClassifier(
        n_estimators=trees, max_depth=depth, learning_rate=0.1, subsample=0.8, n_jobs=1,
        monotone_constraints=monotone_constraints() if depth < 5 else None,
    ).fit(X, y).get_booster()
    flat = from_xgboost(booster)
    # rows exactly on split values test the strict x < split rule
    on_split = probe[:20].copy()
    inner = flat.feature >= 0
    for i in range(len(on_split)):
        node = np.flatnonzero(inner)[i % inner.sum()]
        on_split[i, flat.feature[node]] = flat.threshold[node]
    Z = np.vstack([probe, on_split])
    phi, margin, expected = shap_values(flat, Z)
    ref = booster.predict(xgb.DMatrix(Z, missing=np.nan), pred_contribs=True)
    np.testing.assert_allclose(phi, ref[:, :-1], atol=1e-5)
    np.testing.assert_allclose(expected, ref[0, -1], atol=1e-5)
    np.testing.assert_allclose(margin, booster.inplace_predict(Z.astype(np.float32), predict_type="margin"), atol=1e-5)
    np.testing.assert_allclose(expected + phi.sum(axis=1), margin, atol=1e-12)


def test_equals_shap_for_hist_gradient_boosting(data):
    import shap

    X, y, probe = data
    model = HistGradientBoostingClassifier(max_iter=60, max_depth=3, random_state=0).fit(X, y)
    flat = from_hist_gradient_boosting(model)
    phi, margin, expected = shap_values(flat, probe)
    explainer = shap.TreeExplainer(model)
    np.testing.assert_allclose(phi, explainer.shap_values(probe), atol=1e-9)
    np.testing.assert_allclose(margin, model.decision_function(probe), atol=1e-9)


def test_batch_and_single_rows_agree(data):
    X, y, _ = data
    booster = xgb.XGBClassifier(n_estimators=50, max_depth=3, n_jobs=1).fit(X, y).get_booster()
    flat = from_xgboost(booster)
    batch, _, _ = shap_values(flat, X[:200])  # the parallel kernel
    single = np.vstack([shap_values(flat, X[i : i + 1])[0] for i in range(200)])
    np.testing.assert_allclose(batch, single, atol=1e-12)
