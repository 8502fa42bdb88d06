"""Monitoring statistics, checked by simulation with the generator: the drift tests hold their
false-alarm rate at a centre's sample sizes and find a shifted site; the verdict follows the
updating ladder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit, logit

from pipeline.cohort import generate_cohort
from pipeline.monitoring import drift_tests, holm, reference_summary, verdict


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
    from pipeline.metrics import auroc

    now = auroc(calibrated, p)
    assert verdict(calibrated, p, development_auroc=(now + 0.06, now - 0.04, now + 0.16))["verdict"] != "retrain"
