"""Monitoring statistics, checked by simulation with the generator: the drift tests hold their
false-alarm rate at a centre's sample sizes and find a shifted site; the verdict follows the
updating ladder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit

from pipeline.data.synthetic import generate_cohort
from pipeline.monitor.statistics import drift_tests, holm, reference_summary, verdict


@pytest.fixture(scope="module")
def reference():
    df = generate_cohort(1500, 1)
    return reference_summary(df, df["p_true"].to_numpy(float), {"age_years": 0.1})


def test_the_reference_is_counts_not_patients(reference):
    text = json.dumps(reference)
    assert len(text) < 20_000  # a summary, whatever the cohort size
    blasts = reference["features"]["marrow_blasts_pct"]
    assert sum(blasts["counts"]) + blasts["missing"] == reference["n"] == 1500
    assert len(blasts["counts"]) == len(blasts["edges"]) + 1 <= 10


@pytest.mark.parametrize("n", [50, 100, 300])
def test_no_drift_raises_an_alarm_at_about_the_stated_rate(reference, n):
    sims = 60
    alarms = sum(bool(drift_tests(reference, df, df["p_true"].to_numpy(float), seed=s)["alarm"].any())
                 for s, df in ((s, generate_cohort(n, 10_000 + 97 * s + n)) for s in range(sims)))
    print(f"\nn={n}: {alarms}/{sims} runs with any alarm (family-wise alpha 0.05)")
    assert alarms / sims <= 0.12  # P(> 7 of 60) is 4% at a true rate of 0.05


def test_a_shifted_site_is_found(reference):
    found = 0
    for s in range(10):
        df = generate_cohort(100, 20_000 + s)
        df["product"] = df["product"].iloc[0]  # another product mix
        df["marrow_blasts_pct"] = (df["marrow_blasts_pct"] * 2).clip(upper=100)  # higher burden
        result = drift_tests(reference, df, df["p_true"].to_numpy(float), seed=s)
        found += bool(result.loc[result["feature"].isin(["product", "marrow_blasts_pct"]), "alarm"].any())
    print(f"\nshifted site of 100 patients: found in {found}/10")
    assert found >= 9


def test_missingness_drift_is_found(reference):
    df = generate_cohort(150, 77)
    df["ferritin_ng_ml"] = np.nan
    result = drift_tests(reference, df, df["p_true"].to_numpy(float)).set_index(["feature", "test"])
    assert result.loc[("ferritin_ng_ml", "missingness"), "alarm"]


def test_holm_adjustment():
    assert np.allclose(holm(np.array([0.01, 0.04, 0.03, 0.2])), [0.04, 0.09, 0.09, 0.2])


def test_verdicts_follow_the_updating_ladder():
    rng = np.random.default_rng(3)
    p = expit(rng.normal(-1.7, 1.0, 600))
    assert verdict((rng.random(600) < p).astype(int), p, None)["verdict"] == "no action"
    doubled = expit(logit(p) + 0.9)
    assert verdict((rng.random(600) < doubled).astype(int), p, None)["verdict"] == "recalibrate the intercept"
    flat = expit(-1.7 + 0.4 * (logit(p) + 1.7))
    assert verdict((rng.random(600) < flat).astype(int), p, None)["verdict"] == "recalibrate intercept and slope"
    few = verdict(np.r_[np.ones(4), np.zeros(40)].astype(int), np.full(44, 0.1), None)
    assert few["verdict"] == "too few events to say" and "4 events" in few["text"]
    noise = rng.random(600)
    lost = verdict((rng.random(600) < p).astype(int), noise, development_auroc=(0.75, 0.70, 0.80))
    assert lost["verdict"] == "retrain"
    # a model as good as its (uncertain) development figure is not sent back to training
    calibrated = (rng.random(600) < p).astype(int)
    from pipeline.stats.metrics import auroc

    now = auroc(calibrated, p)
    assert verdict(calibrated, p, development_auroc=(now + 0.06, now - 0.04, now + 0.16))["verdict"] != "retrain"


# --- patients, not requests (issue 23, finding 5) ---------------------------------------------

def _audit_rows(df, times, with_id: bool, version: str = "1") -> list[dict]:
    from datetime import UTC, datetime, timedelta

    from core.contract import FEATURES

    rows = []
    records = df[[f.name for f in FEATURES]].to_dict("records")
    for i, (rec, risk) in enumerate(zip(records, df["p_true"])):
        inputs = {k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()}
        for t in times(i):
            rows.append({"id": len(rows) + 1, "time": datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=t),
                         "model_name": "m", "model_version": version, "risk": float(risk),
                         "patient_hash": f"h{i}" if with_id else None,
                         # key order differs between answers: a JSON column does not keep it
                         "inputs": json.dumps(dict(reversed(list(inputs.items()))) if t % 2 else inputs)})
    return rows


@pytest.mark.parametrize("with_id", [True, False])
def test_a_patient_asked_several_times_counts_once(with_id):
    from pipeline.monitor.run import one_per_patient

    df = generate_cohort(40, 5)
    # each patient asked 1-3 times (the answer, its explanation, a chart opening), hours apart
    rows = _audit_rows(df, lambda i: range(1 + i % 3), with_id)
    patients = one_per_patient(rows, "m", "1")
    assert len(patients.frame) == 40 and patients.risk.size == 40
    assert patients.n_answers == sum(1 + i % 3 for i in range(40)) == 79
    assert set(patients.frame.columns) >= {"marrow_blasts_pct", "product"}
    # another version's answers are another model's observations
    assert len(one_per_patient(rows + _audit_rows(df, lambda i: [0], with_id, "2"), "m", "1").frame) == 40


def test_a_patient_first_seen_before_the_window_is_not_counted_again():
    from datetime import UTC, datetime

    from pipeline.monitor.run import one_per_patient

    df = generate_cohort(30, 6)
    rows = _audit_rows(df, lambda i: [0, 48] if i < 10 else [48], with_id=True)  # 10 patients seen on day 1
    later = one_per_patient(rows, "m", "1", since=datetime(2026, 1, 2, tzinfo=UTC))
    assert len(later.frame) == 20 and later.n_answers == 30
    earlier = one_per_patient(rows, "m", "1", until=datetime(2026, 1, 2, tzinfo=UTC))
    assert len(earlier.frame) == 10


def test_repeated_views_no_longer_raise_drift_alarms(reference):
    """The finding: 150 patients without drift, each asked three times, alarmed in 17 of 20 runs
    when every answer counted. Counted once, the run is the run of 150 patients."""
    from pipeline.monitor.run import one_per_patient

    df = generate_cohort(150, 4242)
    rows = _audit_rows(df, lambda i: range(3), with_id=False)
    patients = one_per_patient(rows, "m", "1")
    assert len(patients.frame) == 150
    once = drift_tests(reference, patients.frame, patients.risk, seed=1)
    tripled = drift_tests(reference, pd.concat([patients.frame] * 3, ignore_index=True),
                          np.tile(patients.risk, 3), seed=1)
    assert once["p"].min() > tripled["p"].min()  # repeats only sharpen spurious differences
    assert not once["alarm"].any()


# --- error control over time (finding 6) --------------------------------------------------------

def test_a_trivial_shift_never_alarms_however_many_patients(reference):
    """20,000 patients whose marrow blasts are 5% higher: the test is significant, the effect below
    the PSI floor, so no alarm; the same shift at 3x is both significant and material."""
    df = generate_cohort(20_000, 99)
    small = df.copy()
    small["marrow_blasts_pct"] = (small["marrow_blasts_pct"] * 1.05).clip(upper=100)
    r = drift_tests(reference, small, small["p_true"].to_numpy(float), alpha=0.05 / 52).set_index(["feature", "test"])
    row = r.loc[("marrow_blasts_pct", "distribution")]
    assert row["p_holm"] < 0.05 / 52 and row["effect"] < 0.1 and not row["alarm"]
    big = df.copy()
    big["marrow_blasts_pct"] = (big["marrow_blasts_pct"] * 3).clip(upper=100)
    r = drift_tests(reference, big, big["p_true"].to_numpy(float), alpha=0.05 / 52).set_index(["feature", "test"])
    assert r.loc[("marrow_blasts_pct", "distribution"), "alarm"]


def test_the_sequential_p_value_resolves_small_p_values():
    """Besag-Clifford: a clearly shifted table gets a p-value far below 1/20,000 (what a weekly
    alpha of 0.05/52 with Holm over ~25 tests needs), a null table stops after few draws."""
    from pipeline.monitor.statistics import _permutation_p

    rng = np.random.default_rng(0)
    ref = np.full(10, 150)
    _, p_null = _permutation_p(np.vstack([ref, np.full(10, 15)]), 1_000_000, rng)
    assert p_null > 0.5
    shifted = np.array([2, 4, 6, 8, 12, 16, 20, 24, 28, 30])  # 150 patients (chi-squared tail 8e-9)
    _, p = _permutation_p(np.vstack([ref, shifted]), 1_000_000, rng)
    assert p < 1e-5


def test_cusum_weights_are_steiners_log_likelihood_ratios():
    from pipeline.monitor.statistics import cusum_path, cusum_weights

    p = np.array([0.1, 0.1, 0.5])
    y = np.array([1, 0, 1])
    # W = y log R_A - log(1 - p + R_A p) (Steiner et al. 2000, eq. 2, R_0 = 1)
    assert np.allclose(cusum_weights(y, p, "odds", 2.0, 0.0), [np.log(2) - np.log(1.1), -np.log(1.1), np.log(2) - np.log(1.5)])
    assert np.allclose(cusum_weights(y, p, "odds", 0.5, 0.0), [np.log(0.5) - np.log(0.95), -np.log(0.95), np.log(0.5) - np.log(0.75)])
    # the slope alternative at slope 1 is the null: every weight 0
    assert np.allclose(cusum_weights(y, p, "slope", 1.0, -2.0), 0)
    assert np.allclose(cusum_path(np.array([1.0, -3.0, 2.0, 0.5])), [1.0, 0.0, 2.0, 2.5])


def _outcomes(reference, n, seed, shift=0.0, slope=1.0):
    from pipeline.monitor.statistics import reference_centre, sample_reference_risk

    rng = np.random.default_rng(seed)
    p = sample_reference_risk(reference, n, rng)
    c = reference_centre(reference)
    true = expit(c + slope * (logit(np.clip(p, 1e-9, 1 - 1e-9)) - c) + shift)
    return (rng.random(n) < true).astype(int), p


def test_the_cusum_alarms_on_a_strong_shift_and_not_in_control(reference):
    from pipeline.monitor.statistics import CusumDesign, decision_limits, sequential_charts

    design = CusumDesign(sims=4000)
    limits = decision_limits(reference, design)
    in_control = sum(bool(sequential_charts(*_outcomes(reference, 1000, s), reference, design, limits).signalled)
                     for s in range(40))
    print(f"\nin control, 1000 patients with outcomes: {in_control}/40 with any signal (design alpha 0.05)")
    assert in_control <= 6  # P(> 6 of 40) is 1.4% at a true rate of 0.05
    doubled = [sequential_charts(*_outcomes(reference, 1000, 100 + s, shift=np.log(3)), reference, design, limits)
               for s in range(10)]
    assert all("odds_up" in r.signalled for r in doubled)
    assert not any("odds_down" in r.signalled for r in doubled)
    flat = [sequential_charts(*_outcomes(reference, 1000, 200 + s, slope=0.3), reference, design, limits)
            for s in range(10)]
    assert sum("slope" in r.signalled for r in flat) >= 8


def test_decision_limits_hold_the_false_alarm_rate_over_the_horizon(reference):
    """h from one simulation, checked on fresh in-control horizons (other seeds)."""
    from pipeline.monitor.statistics import CusumDesign, _cusum_peak, cusum_weights, decision_limits, reference_centre

    design = CusumDesign(horizon=300, sims=4000)
    limits = decision_limits(reference, design, seed=0)
    rng = np.random.default_rng(12345)
    from pipeline.monitor.statistics import sample_reference_risk

    p = sample_reference_risk(reference, (3000, design.horizon), rng)
    y = (rng.random(p.shape) < p).astype(float)
    centre = reference_centre(reference)
    anyone = np.zeros(3000, bool)
    for name, (kind, value) in design.alternatives().items():
        anyone |= _cusum_peak(cusum_weights(y, p, kind, value, centre)) >= limits[name]
    print(f"\nfresh in-control horizons of 300: {anyone.mean():.3f} with any signal (design 0.05)")
    assert 0.02 <= anyone.mean() <= 0.07


def test_a_recalibration_verdict_needs_a_chart_signal(reference):
    """The closed test of one run is not error-controlled over repeated runs: its 'recalibrate'
    stands only when a CUSUM chart has signalled; a chart's signal alone names the update."""
    from pipeline.monitor.run import _decide
    from pipeline.monitor.statistics import CusumDesign, SequentialResult

    rng = np.random.default_rng(3)
    p = expit(rng.normal(-1.7, 1.0, 600))
    y = (rng.random(600) < expit(logit(p) + 0.9)).astype(int)
    quiet = SequentialResult({"odds_up": 7.0}, {"odds_up": np.zeros(600)}, {"odds_up": None}, CusumDesign())
    loud = SequentialResult({"odds_up": 7.0}, {"odds_up": np.full(600, 8.0)}, {"odds_up": 120}, CusumDesign())
    assert _decide(y, p, None, 0.05, 0.05 / 52, loud)["verdict"] == "recalibrate the intercept"
    held = _decide(y, p, None, 0.05, 0.05 / 52, quiet)
    assert held["verdict"] == "no action" and "recalibrate the intercept" in held["text"]
    calibrated = (rng.random(600) < p).astype(int)
    signalled = _decide(calibrated, p, None, 0.05, 0.05 / 52, loud)
    assert signalled["verdict"] == "recalibrate the intercept" and "patient 120" in signalled["text"]
