"""Held-out metrics on cases whose answer is known."""

from __future__ import annotations


import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import average_precision_score, roc_auc_score

from pipeline.data.synthetic import generate_cohort

from pipeline.stats.bootstrap import bootstrap_ci, bootstrap_indices, bootstrap_replicates
from pipeline.stats.metrics import (
    auroc,
    binary_metrics,
    brier,
    calibration_slope_intercept,
    ranking_metrics,
)

N = 20_000



def test_perfectly_calibrated_predictor(calibrated):
    y, p = calibrated
    slope, intercept = calibration_slope_intercept(y, p)
    assert abs(slope - 1) < 0.1
    assert abs(intercept) < 0.1


def test_overconfident_predictor_has_slope_half(calibrated):
    y, p = calibrated
    slope, _ = calibration_slope_intercept(y, expit(2 * logit(p)))
    assert abs(slope - 0.5) < 0.05


def test_shifted_predictor_has_intercept_minus_one(calibrated):
    y, p = calibrated
    slope, intercept = calibration_slope_intercept(y, expit(logit(p) + 1))
    assert abs(intercept + 1) < 0.1
    assert abs(slope - 1) < 0.1  # a shift does not change the slope


def test_calibration_matches_sklearn_unpenalised_fit(calibrated):
    from sklearn.linear_model import LogisticRegression

    y, p = calibrated
    q = expit(1.5 * logit(p) - 0.3)
    lr = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-10).fit(logit(q)[:, None], y)
    slope, _ = calibration_slope_intercept(y, q)
    assert slope == pytest.approx(lr.coef_[0, 0], abs=1e-4)


def test_constant_predictor():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=500) < 0.2).astype(int)
    p = np.full(500, 0.3)
    m = binary_metrics(y, p)
    assert m["auroc"] == 0.5
    assert np.isnan(m["calibration_slope"])  # not identifiable
    # in-the-large: logit(observed rate) - logit(0.3)
    assert m["calibration_intercept"] == pytest.approx(logit(y.mean()) - logit(0.3), abs=1e-8)


def test_binary_metrics_keys_and_values(calibrated):
    y, p = calibrated
    m = binary_metrics(y, p)
    assert set(m) == {
        "auroc", "auprc", "brier", "log_loss", "calibration_slope",
        "calibration_intercept", "prevalence", "n", "events",
    }
    assert m["auroc"] == pytest.approx(roc_auc_score(y, p))
    assert m["auprc"] == pytest.approx(average_precision_score(y, p))
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))
    assert m["n"] == N and m["events"] == int(y.sum())
    assert m["prevalence"] == pytest.approx(y.mean())


def test_single_class_gives_nan_not_exception():
    y = np.zeros(50, dtype=int)
    p = np.linspace(0.1, 0.9, 50)
    m = binary_metrics(y, p)
    assert np.isnan(m["auroc"]) and np.isnan(m["auprc"])
    assert np.isnan(m["calibration_slope"]) and np.isnan(m["calibration_intercept"])
    assert np.isfinite(m["brier"]) and np.isfinite(m["log_loss"])


def test_extreme_probabilities_stay_finite():
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.0, 1.0, 0.2, 0.7, 0.4, 0.5])
    m = binary_metrics(y, p)
    assert np.isfinite(m["log_loss"]) and np.isfinite(m["calibration_intercept"])


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1, 1]), np.array([0.1, 1.2, 0.3]))
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 1, 1]), np.array([0.1, 0.2]))


def test_ranking_metrics_for_unbounded_score():
    rng = np.random.default_rng(1)
    score = rng.lognormal(1, 1, 300)
    y = (rng.uniform(size=300) < expit(np.log(score) - 2)).astype(int)
    m = ranking_metrics(y, score)
    assert set(m) == {"auroc", "auprc", "n", "events"}
    assert m["auroc"] == pytest.approx(roc_auc_score(y, score))


@pytest.fixture(scope="module")
def small_set() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    p = np.round(rng.uniform(0.01, 0.6, 400), 2)  # rounding creates ties
    y = (rng.uniform(size=400) < p).astype(int)
    return y, p


@pytest.mark.parametrize("fn", [auroc, roc_auc_score])
def test_vectorised_bootstrap_auroc_equals_naive_loop(small_set, fn):
    y, p = small_set
    reps = bootstrap_replicates(y, p, fn, n_boot=100, seed=3)
    idx = bootstrap_indices(len(y), 100, 3)
    naive = np.array(
        [roc_auc_score(y[i], p[i]) if 0 < y[i].sum() < len(i) else np.nan for i in idx]
    )
    np.testing.assert_allclose(reps, naive, rtol=0, atol=1e-9)


def test_bootstrap_ci_brackets_point_estimate_and_matches_loop(small_set):
    y, p = small_set
    # 200 resamples: the naive sklearn loop is the slow part of this test
    low, high = bootstrap_ci(y, p, auroc, n_boot=200, seed=0)
    assert low < auroc(y, p) < high
    idx = bootstrap_indices(len(y), 200, 0)
    naive = np.array([roc_auc_score(y[i], p[i]) for i in idx if 0 < y[i].sum() < len(i)])
    expected = np.quantile(naive, [0.025, 0.975])
    assert low == pytest.approx(expected[0], abs=1e-9)
    assert high == pytest.approx(expected[1], abs=1e-9)


def test_bootstrap_brier_batch_equals_loop(small_set):
    y, p = small_set
    vec = bootstrap_replicates(y, p, brier, n_boot=200, seed=1)
    loop = bootstrap_replicates(y, p, lambda a, b: float(np.mean((b - a) ** 2)), 200, 1)
    np.testing.assert_allclose(vec, loop, atol=1e-12)


def test_bootstrap_generic_metric_and_single_class_resamples_skipped():
    # 1 event in 30: many resamples have no event and must be skipped, not crash.
    y = np.zeros(30, dtype=int)
    y[0] = 1
    p = np.linspace(0.05, 0.5, 30)
    reps = bootstrap_replicates(y, p, average_precision_score, n_boot=60, seed=0)
    idx = bootstrap_indices(30, 60, 0)
    no_event = y[idx].sum(axis=1) == 0
    assert no_event.any()
    assert np.all(np.isnan(reps[no_event])) and np.all(np.isfinite(reps[~no_event]))
    low, high = bootstrap_ci(y, p, average_precision_score, n_boot=60, seed=0)
    assert low <= high


def test_bootstrap_all_single_class_gives_nan():
    low, high = bootstrap_ci(np.zeros(20, dtype=int), np.linspace(0, 1, 20), auroc, n_boot=50)
    assert np.isnan(low) and np.isnan(high)


def test_bootstrap_auroc_brackets_estimate(small_set):
    # speed is a benchmark concern (make bench), not a unit-test assertion
    y, p = small_set
    low, high = bootstrap_ci(y, p, auroc, n_boot=1000, seed=0)
    assert low < auroc(y, p) < high


def test_wilson_interval_is_exact_at_zero_and_all_events():
    """A calibration decile with no event gave a lower bound of 6.9e-18 > 0 = observed and
    crashed the plot (`make train SEED=1`)."""
    from pipeline.evidence.calibration_curve import _wilson

    events = np.array([0.0, 50.0, 3.0, 1.0])
    n = np.array([50.0, 50.0, 50.0, 7.0])
    low, high = _wilson(events, n)
    phat = events / n
    assert low[0] == 0.0 and high[1] == 1.0
    assert np.all(low <= phat) and np.all(phat <= high) and np.all((0 <= low) & (high <= 1))
    assert 0 < low[2] < phat[2] < high[2] < 1


def test_calibration_plot_with_an_empty_decile(tmp_path):
    from pipeline.evidence import build_evidence
    from pipeline.report import plot_calibration

    rng = np.random.default_rng(3)
    p = rng.uniform(0.001, 0.6, 400)
    y = (rng.uniform(size=400) < p).astype(int)
    y[np.argsort(p)[:40]] = 0  # the lowest decile has no event
    df = generate_cohort(400, 3)
    ev = build_evidence(None, None, None, y, p, df, {"low": 0.1, "high": 0.3}, 10, n_boot=50, curve_boot=20)
    binned = ev.calibration_curves["model"]["binned"]
    assert binned["events"].iloc[0] == 0 and binned["observed_ci_low"].iloc[0] == 0.0
    assert plot_calibration(ev, tmp_path / "c.png").exists()
