"""The compiled bootstrap ensemble gives each model's own calibrated margin, and the served summary
(interval, group change) is what numpy computes from those margins."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.candidates import make_hist_gradient_boosting, make_xgboost
from models.ensemble import MarginEnsemble
from models.explain import tree_margin
from models.trees import from_hist_gradient_boosting, from_xgboost
from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame


def _models(family: str, n: int, depth: int, trees: int, B: int, seed: int):
    df = generate_cohort(n, seed=seed)
    X, y = encode_frame(df), df["severe_icans"].to_numpy(int)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(B):
        idx = rng.integers(0, n, n)
        if family == "xgboost":
            m = make_xgboost(seed).set_params(n_estimators=trees, max_depth=depth, learning_rate=0.1)
            out.append(from_xgboost(m.fit(X[idx], y[idx]).get_booster()))
        else:
            m = make_hist_gradient_boosting(seed).set_params(max_iter=trees, max_depth=depth, learning_rate=0.1)
            out.append(from_hist_gradient_boosting(m.fit(X[idx], y[idx])))
    return out


def _probe_rows(seed: int, n: int = 400) -> np.ndarray:
    X = encode_frame(generate_cohort(n, seed=seed + 1000))
    rng = np.random.default_rng(seed)
    X[rng.random(X.shape) < 0.15] = np.nan  # missing values follow each node's default branch
    return X


@pytest.mark.parametrize("family", ["xgboost", "hist_gradient_boosting"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_margins_equal_each_models_own(family: str, depth: int) -> None:
    models = _models(family, 300, depth, 40, 12, seed=depth)
    rng = np.random.default_rng(depth)
    a, s = rng.normal(0, 0.3, len(models)), rng.uniform(0.5, 1.5, len(models))
    ens = MarginEnsemble.build(models, a, s)
    X = _probe_rows(depth)
    want = np.stack([a[b] + s[b] * tree_margin(m, X) for b, m in enumerate(models)], axis=1)
    got = ens.margins(X)
    # xgboost adds leaves in float32; the ensemble adds in float64 in another order
    assert np.max(np.abs(got - want)) < (2e-5 if family == "xgboost" else 1e-9)
    if depth == 1:
        assert len(ens.tree_model) == 0  # stumps all collapse into the per-feature tables


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 3), B=st.integers(1, 9), n=st.integers(80, 400))
def test_summary_is_numpys_percentiles_and_group_share(seed: int, depth: int, B: int, n: int) -> None:
    models = _models("xgboost", n, depth, 15, B, seed)
    ens = MarginEnsemble.build(models, np.zeros(B), np.ones(B))
    X = _probe_rows(seed, 120)
    z = ens.margins(X)
    final = np.random.default_rng(seed).normal(-1.5, 1.0, len(X))
    low, high = -2.0, -1.0
    lo, hi, change = ens.summary(X, final, low, high)
    p = 1 / (1 + np.exp(-z))
    want_lo, want_hi = np.percentile(p, [2.5, 97.5], axis=1)
    np.testing.assert_allclose(lo, want_lo, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hi, want_hi, rtol=1e-9, atol=1e-12)
    group = lambda v: (v >= low).astype(int) + (v >= high)  # noqa: E731
    np.testing.assert_allclose(change, (group(z) != group(final)[:, None]).mean(axis=1))
    # the parallel kernel gives the same answers
    big = np.tile(X, (3, 1))
    par = ens.summary(big, np.tile(final, 3), low, high, parallel=True)
    np.testing.assert_array_equal(par[0], np.tile(lo, 3))
    np.testing.assert_array_equal(par[2], np.tile(change, 3))


def test_save_load_round_trip(tmp_path) -> None:
    models = _models("xgboost", 200, 2, 20, 5, seed=4)
    ens = MarginEnsemble.build(models, np.linspace(-0.2, 0.2, 5), np.linspace(0.8, 1.2, 5))
    ens.save(tmp_path / "e.npz")
    again = MarginEnsemble.load(tmp_path / "e.npz")
    X = _probe_rows(4, 50)
    np.testing.assert_array_equal(again.margins(X), ens.margins(X))
    with pytest.raises(ValueError, match="columns"):
        ens.margins(X[:, :-1])


def test_kernel_arguments_are_the_arrays_in_ARRAYS_order() -> None:
    """`_args` names the ten arrays one by one (so mypy checks the kernels' calls): in ARRAYS order."""
    from models.ensemble import ARRAYS

    ens = MarginEnsemble.build(_models("xgboost", 200, 2, 10, 3, seed=5), np.zeros(3), np.ones(3))
    args = ens._args()
    assert len(args) == len(ARRAYS)
    assert all(a is getattr(ens, k) for a, k in zip(args, ARRAYS))
