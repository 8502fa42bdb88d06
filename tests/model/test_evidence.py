"""Validation evidence (pipeline.evidence) on cases whose answer is known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import average_precision_score

from pipeline.train import learning_curve as learning
from pipeline import evidence as ev
from pipeline.stats.bootstrap import bootstrap_indices
from pipeline.evidence.calibration import _calibration_batch
from pipeline.stats.metrics import calibration_slope_intercept

N = 20_000



@pytest.fixture(scope="module")
def small() -> tuple[np.ndarray, np.ndarray]:
    """500 patients, ~17% events, ties in the scores (rounded), like a held-out set."""
    rng = np.random.default_rng(7)
    p = np.round(expit(rng.normal(-1.8, 1.0, 500)), 3)
    y = (rng.uniform(size=500) < p).astype(int)
    return y, p


@pytest.fixture(scope="module")
def cohort_split():
    from pipeline.data.synthetic import generate_cohort

    dev = generate_cohort(900, 11)
    test = generate_cohort(500, 12)
    rng = np.random.default_rng(3)
    # A decent but imperfect "model": the true risk blurred on the logit scale.
    p_test = expit(logit(test["p_true"].to_numpy()) + rng.normal(0, 0.6, len(test)))
    p_dev = expit(logit(dev["p_true"].to_numpy()) + rng.normal(0, 0.6, len(dev)))
    return dev, test, p_dev, p_test


# --------------------------------------------------------------------------- calibration


def test_perfectly_calibrated_predictor_has_slope_one_and_ici_zero(calibrated):
    y, p = calibrated
    c = ev.calibration_summary(y, p)
    assert abs(c["calibration_slope"] - 1) < 0.05
    assert abs(c["calibration_intercept"]) < 0.05
    assert abs(c["calibration_in_the_large"]) < 0.01
    assert c["ici"] < 0.02
    assert c["e90"] < 0.03
    assert 0 < c["scaled_brier"] < 1


def test_miscalibrated_predictors_have_clearly_larger_ici(calibrated):
    y, p = calibrated[0][:5000], calibrated[1][:5000]
    ici_ok = ev.calibration_summary(y, p)["ici"]
    assert ici_ok < 0.02
    too_extreme = ev.calibration_summary(y, expit(2 * logit(p)))
    shifted = ev.calibration_summary(y, expit(logit(p) + 0.5))
    assert too_extreme["ici"] > 0.05 and too_extreme["ici"] > 5 * ici_ok
    assert abs(too_extreme["calibration_slope"] - 0.5) < 0.05
    assert shifted["ici"] > 0.05 and shifted["ici"] > 5 * ici_ok
    assert shifted["calibration_in_the_large"] > 0.05  # over-predicts: mean p > mean y


def test_loess_reproduces_polynomials_exactly():
    x = np.linspace(0, 1, 200)
    quadratic = 0.1 + 0.5 * x - 0.3 * x**2
    assert np.allclose(ev.loess(x, quadratic, x, degree=2), quadratic, atol=1e-9)
    linear = 0.2 + 0.4 * x
    assert np.allclose(ev.loess(x, linear, x, degree=1), linear, atol=1e-9)


def test_loess_equals_weighted_local_fit():
    """At one point, loess is a tricube-weighted quadratic fit on the nearest floor(0.75 n)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(size=101)
    y = (rng.uniform(size=101) < x).astype(float)
    x0 = 0.3
    d = np.abs(x - x0)
    h = np.sort(d)[int(math.floor(0.75 * 101)) - 1] * (1 + 1e-10)
    w = np.clip(1 - (d / h) ** 3, 0, None) ** 3
    coef = np.polyfit(x - x0, y, 2, w=np.sqrt(w))
    assert ev.loess(x, y, np.array([x0]))[0] == pytest.approx(coef[-1], abs=1e-9)


def test_binned_calibration_matches_sklearn(small):
    from sklearn.calibration import calibration_curve

    y, p = small
    binned = ev.calibration_curve_data(y, p, n_bins=10, n_boot=0)["binned"]
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    assert np.allclose(binned["observed"], prob_true)
    assert np.allclose(binned["mean_predicted"], prob_pred)
    assert binned["n"].sum() == len(y)
    assert np.all(binned["observed_ci_low"] <= binned["observed"]) and np.all(binned["observed"] <= binned["observed_ci_high"])


def test_scaled_brier_is_zero_for_the_prevalence_and_one_for_a_perfect_predictor(small):
    y, _ = small
    assert ev.calibration_summary(y, np.full(len(y), y.mean()))["scaled_brier"] == pytest.approx(0, abs=1e-12)
    assert ev.calibration_summary(y, y.astype(float))["scaled_brier"] == pytest.approx(1)


def test_vectorised_calibration_bootstrap_equals_per_resample_fits(small):
    y, p = small
    idx = bootstrap_indices(len(y), 15, 4)
    slopes, intercepts = _calibration_batch(y, p, idx)
    for b in range(15):
        slope, intercept = calibration_slope_intercept(y[idx[b]], p[idx[b]])
        assert slopes[b] == pytest.approx(slope, abs=1e-6)
        assert intercepts[b] == pytest.approx(intercept, abs=1e-6)


# --------------------------------------------------------------------------- discrimination


def test_constant_predictor_has_auroc_one_half(small):
    y, _ = small
    d = ev.discrimination_with_ci(y, np.full(len(y), 0.2), n_boot=200)
    assert d["auroc"] == 0.5
    assert d["auroc_ci_low"] == 0.5 and d["auroc_ci_high"] == 0.5
    assert d["auprc"] == pytest.approx(y.mean())  # no skill: AUPRC = prevalence


def test_vectorised_auprc_equals_sklearn_per_resample(small):
    y, p = small
    reps = ev.auprc_replicates(y, p, n_boot=25, seed=9)
    idx = bootstrap_indices(len(y), 25, 9)
    expected = [average_precision_score(y[i], p[i]) for i in idx]
    assert np.allclose(reps, expected, atol=1e-12)


def test_intervals_bracket_the_point_estimates(small):
    y, p = small
    d = ev.discrimination_with_ci(y, p, n_boot=1000)
    assert d["auroc_ci_low"] < d["auroc"] < d["auroc_ci_high"]
    assert d["auprc_ci_low"] < d["auprc"] < d["auprc_ci_high"]
    c = ev.calibration_intervals(y, p, n_boot=1000)
    slope, intercept = calibration_slope_intercept(y, p)
    assert c["calibration_slope_ci_low"] < slope < c["calibration_slope_ci_high"]
    assert c["calibration_intercept_ci_low"] < intercept < c["calibration_intercept_ci_high"]
    noisy = np.clip(p + np.random.default_rng(1).normal(0, 0.1, len(p)), 0, 1)
    diff = ev.paired_difference(y, p, noisy, n_boot=1000)
    assert diff["ci_low"] < diff["difference"] < diff["ci_high"]
    assert diff["difference"] == pytest.approx(diff["auroc_model"] - diff["auroc_other"])


def test_paired_difference_of_a_model_with_itself_is_exactly_zero(small):
    y, p = small
    diff = ev.paired_difference(y, p, p.copy(), n_boot=500)
    assert diff["difference"] == 0.0
    assert diff["ci_low"] == 0.0 and diff["ci_high"] == 0.0


def test_paired_difference_uses_the_same_resamples(small):
    """Two scores that differ by a monotone transform rank identically: their AUROC difference is 0
    on every resample only if both are computed on the same resamples."""
    y, p = small
    diff = ev.paired_difference(y, p, np.log(p + 1e-3), n_boot=300)
    assert diff["ci_low"] == 0.0 and diff["ci_high"] == 0.0


# --------------------------------------------------------------------------- decision curve


def test_constant_predictor_net_benefit_is_treat_none_above_and_treat_all_below(small):
    y, _ = small
    c = 0.2
    dc = ev.decision_curve(y, {"constant": np.full(len(y), c)})
    mine = dc[dc.model == "constant"].set_index("threshold")["net_benefit"]
    none = dc[dc.model == ev.TREAT_NONE].set_index("threshold")["net_benefit"]
    all_ = dc[dc.model == ev.TREAT_ALL].set_index("threshold")["net_benefit"]
    above = mine.index > c + 1e-9
    below = mine.index < c - 1e-9
    assert above.sum() > 10 and below.sum() > 10
    assert np.allclose(mine[above], 0.0) and np.allclose(none[above], 0.0)
    assert np.allclose(mine[below], all_[below])


def test_perfect_predictor_net_benefit_equals_prevalence(small):
    y, _ = small
    nb = ev.net_benefit(y, y.astype(float), ev.DEFAULT_THRESHOLDS)
    assert np.allclose(nb, y.mean())


def test_treat_all_formula(small):
    y, _ = small
    t = np.array([0.05, 0.1, 0.3])
    dc = ev.decision_curve(y, {}, thresholds=t)
    prev = y.mean()
    assert np.allclose(dc[dc.model == ev.TREAT_ALL]["net_benefit"], prev - (1 - prev) * t / (1 - t))
    # treating everyone is what a predictor of 1.0 does
    assert np.allclose(ev.net_benefit(y, np.ones(len(y)), t), prev - (1 - prev) * t / (1 - t))


# 20 patients with ties at the thresholds. Net benefit computed with dcurves 1.1.7
# (`dcurves.dca(data, outcome="y", modelnames=["p"], thresholds=[0.1, 0.2, 0.3, 0.5])`, run once
# in a separate virtualenv) and by hand at t = 0.1: 17 treated (p >= 0.1), TP = 5, FP = 12,
# NB = 5/20 - 12/20 x 0.1/0.9 = 0.18333.
_DCA_Y = [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0]
_DCA_P = [0.9, 0.1, 0.2, 0.3, 0.05, 0.5, 0.15, 0.2, 0.3, 0.1, 0.45, 0.02, 0.25, 0.08, 0.12, 0.6, 0.4, 0.1, 0.2, 0.35]
_DCA_EXPECTED = {
    "p": [0.183333, 0.162500, 0.114286, 0.050000],
    ev.TREAT_ALL: [0.166667, 0.062500, -0.071429, -0.500000],
    ev.TREAT_NONE: [0.0, 0.0, 0.0, 0.0],
}


def test_decision_curve_matches_dcurves_reference_values():
    dc = ev.decision_curve(np.array(_DCA_Y), {"p": np.array(_DCA_P)}, thresholds=[0.1, 0.2, 0.3, 0.5])
    for model, expected in _DCA_EXPECTED.items():
        got = dc[dc.model == model].sort_values("threshold")["net_benefit"].to_numpy()
        assert np.allclose(got, expected, atol=5e-6), model
    single = ev.net_benefit(np.array(_DCA_Y), np.array(_DCA_P), [0.1, 0.2, 0.3, 0.5])
    assert np.allclose(single, _DCA_EXPECTED["p"], atol=5e-6)


def test_decision_curve_matches_the_dcurves_package(small):
    dcurves = pytest.importorskip("dcurves")  # optional: runs where dcurves is installed
    y, p = small
    data = pd.DataFrame({"y": y, "p": p})
    ref = dcurves.dca(data=data, outcome="y", modelnames=["p"], thresholds=ev.DEFAULT_THRESHOLDS)
    mine = ev.decision_curve(y, {"p": p})
    for theirs, ours in (("p", "p"), ("all", ev.TREAT_ALL), ("none", ev.TREAT_NONE)):
        a = ref[ref.model == theirs].sort_values("threshold")["net_benefit"].to_numpy()
        b = mine[mine.model == ours].sort_values("threshold")["net_benefit"].to_numpy()
        assert np.allclose(a, b, atol=1e-12)


# --------------------------------------------------------------------------- subgroups


def test_subgroups_cover_every_level_and_flag_small_ones(cohort_split):
    _, test, _, p = cohort_split
    y = test["severe_icans"].astype(int).to_numpy()
    sg = ev.subgroups(test, y, p, n_boot=200)
    for group, part in sg.groupby("group"):
        assert part["n"].sum() == len(test), group
        assert part["events"].sum() == y.sum(), group
    expected_groups = {"age", "costimulatory_domain", "product", "sex", "marrow_blasts"}
    assert set(sg["group"]) == expected_groups
    from core.contract import FEATURES_BY_NAME

    products = set(sg[sg.group == "product"]["level_label"])
    assert set(FEATURES_BY_NAME["product"].categories) <= products
    flagged = sg[(sg.n < ev.SMALL_SUBGROUP_N) | (sg.events < ev.SMALL_SUBGROUP_EVENTS)]
    assert flagged["small"].all() and len(flagged) > 0
    assert not sg.loc[~sg.index.isin(flagged.index), "small"].any()


def test_an_empty_or_one_class_subgroup_is_kept_with_nan_auroc(cohort_split):
    _, test, _, p = cohort_split
    keep = (test["product"] != "obecabtagene_autoleucel").to_numpy()
    df = test[keep].reset_index(drop=True)
    y = df["severe_icans"].astype(int).to_numpy().copy()
    y[df["sex"].to_numpy() == "female"] = 0  # no events among women
    sg = ev.subgroups(df, y, p[keep], n_boot=100).set_index(["group", "level"])
    empty = sg.loc[("product", "obecabtagene_autoleucel")]
    assert empty["n"] == 0 and empty["small"] and math.isnan(empty["auroc"])
    women = sg.loc[("sex", "female")]
    assert women["events"] == 0 and women["small"] and math.isnan(women["auroc"])


# --------------------------------------------------------------------------- sample size


def test_sample_size_matches_pmsampsize():
    """pmsampsize 1.1.x, tests/testthat/test_bin.R ('Test 4.1' and 'Test 4.4'): the Chagas disease
    example of Riley et al., Stat Med 2019;38:1276 (Cox-Snell R2 0.288, 24 parameters, prevalence
    0.174) needs n = 623 / 668 / 221 by criteria 1-3 and EPP 4.84 (the paper: 'an EPP of at least
    4.8'); at prevalence 0.25, 623 / 583 / 289."""
    s = ev.sample_size(1000, 174, 24, anticipated_r2=0.288, prevalence=0.174)
    assert (s["n_required_shrinkage"], s["n_required_optimism"], s["n_required_intercept"]) == (623, 668, 221)
    assert s["n_required"] == 668
    assert round(s["epp_required"], 2) == 4.84
    assert s["shrinkage_criterion_2"] == pytest.approx(0.906)
    s = ev.sample_size(1000, 250, 24, anticipated_r2=0.288, prevalence=0.25)
    assert (s["n_required_shrinkage"], s["n_required_optimism"], s["n_required_intercept"]) == (623, 583, 289)


def test_sample_size_formulas_by_hand():
    """Without pmsampsize's rounding, step by step for R2 0.288, p = 24, phi = 0.174:
    max R2 = 1 - exp(2 (0.174 ln 0.174 + 0.826 ln 0.826)) = 0.6032;
    S2 = 0.288 / (0.288 + 0.05 x 0.6032) = 0.90520; n2 = 24 / ((S2 - 1) ln(1 - 0.288 / S2)) = 661.05 -> 662;
    n1 = 24 / (-0.1 ln(1 - 0.288 / 0.9)) = 622.3 -> 623; n3 = (1.96 / 0.05)^2 x 0.174 x 0.826 = 220.9 -> 221."""
    s = ev.sample_size(1000, 174, 24, anticipated_r2=0.288, prevalence=0.174, round_like_pmsampsize=False)
    assert s["max_r2_cs"] == pytest.approx(0.6032, abs=1e-4)
    assert (s["n_required_shrinkage"], s["n_required_optimism"], s["n_required_intercept"]) == (623, 662, 221)
    # at exactly the criterion-1 n, the expected shrinkage is the 0.9 target
    at_n1 = ev.sample_size(622, 108, 24, anticipated_r2=0.288, prevalence=0.174)
    assert at_n1["expected_shrinkage"] == pytest.approx(0.9, abs=2e-4)


def test_cox_snell_r2_from_c_matches_the_riley_simulation():
    """Riley, Van Calster & Collins 2021: simulate a linear predictor N(0,1) / N(mu,1), mu =
    sqrt(2) Phi^-1(C), fit a logistic regression, R2_CS = 1 - exp(-LR / n)."""
    from scipy.stats import norm
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2021)
    n, c, prev = 200_000, 0.8, 0.174
    n_events = int(prev * n)
    mu = math.sqrt(2) * norm.ppf(c)
    lp = np.r_[rng.normal(mu, 1, n_events), rng.normal(0, 1, n - n_events)]
    y = np.r_[np.ones(n_events), np.zeros(n - n_events)]
    q = LogisticRegression(C=np.inf).fit(lp[:, None], y).predict_proba(lp[:, None])[:, 1]
    ll = np.sum(y * np.log(q) + (1 - y) * np.log(1 - q))
    ll0 = n * (prev * math.log(prev) + (1 - prev) * math.log(1 - prev))
    simulated = 1 - math.exp(-2 * (ll - ll0) / n)
    assert ev.cox_snell_r2_from_c(c, prev) == pytest.approx(simulated, abs=0.005)
    assert ev.cox_snell_r2_from_c(0.5, prev) == pytest.approx(0.0, abs=1e-9)


def test_sample_size_warns_when_the_data_are_too_small():
    small = ev.sample_size(200, 30, 24)
    assert not small["adequate"] and "smaller than the minimum sample size" in small["warning"]
    assert small["events_per_parameter"] == pytest.approx(30 / 24)
    assert small["expected_shrinkage"] < 0.9
    big = ev.sample_size(20_000, 3_400, 24)
    assert big["adequate"] and big["warning"] is None and big["expected_shrinkage"] > 0.9
    default_r2 = ev.sample_size(200, 30, 24, anticipated_c=None)
    assert default_r2["anticipated_r2_cs"] == pytest.approx(0.15 * default_r2["max_r2_cs"])


# --------------------------------------------------------------------------- thresholds


def test_thresholds_table_known_case():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0, 1, 0])
    p = np.array([0.9, 0.5, 0.1, 0.6, 0.2, 0.1, 0.05, 0.3, 0.3, 0.3])
    t = ev.thresholds_table(y, p, {"high": 0.5, "low": 0.3}).set_index("name")
    # p >= 0.3: TP = 3 (0.9, 0.5, 0.3), FP = 3 (0.6, 0.3, 0.3), FN = 1, TN = 3
    assert t.loc["low", ["tp", "fp", "fn", "tn"]].tolist() == [3, 3, 1, 3]
    assert t.loc["low", "sensitivity"] == pytest.approx(0.75)
    assert t.loc["low", "specificity"] == pytest.approx(0.5)
    assert t.loc["low", "ppv"] == pytest.approx(0.5)
    assert t.loc["low", "npv"] == pytest.approx(0.75)
    assert t.loc["high", ["tp", "fp", "fn", "tn"]].tolist() == [2, 1, 2, 5]
    groups = ev.risk_group_table(y, p, {"low": 0.3, "high": 0.5}).set_index("group")
    assert groups["n"].tolist() == [4, 3, 3] and groups["events"].tolist() == [1, 1, 2]


# --------------------------------------------------------------------------- learning curve


def test_learning_curve_with_the_default_models_and_a_custom_callable():
    table = learning.learning_curve(sizes=(150, 300), seed=1, test_size=400)
    assert set(table["size"]) == {150, 300}
    assert {"tuned model", "untuned HGB", "logistic", "m_easix", "easix", ev.ORACLE} <= set(table["model"])
    oracle = table[table.model == ev.ORACLE]["auroc"]
    assert oracle.nunique() == 1 and 0.6 < oracle.iloc[0] < 1
    assert table["auroc"].between(0.3, 1).all()

    seen = []

    def fit_and_score(train_df, test_df):
        seen.append((len(train_df), len(test_df)))
        return {"constant": 0.5}

    custom = learning.learning_curve(sizes=(50, 80), seed=1, test_size=100, fit_and_score=fit_and_score, repeats=2)
    assert seen == [(50, 100), (80, 100)] * 2
    assert set(custom["model"]) == {"constant", ev.ORACLE}
    summary = ev.learning_curve_summary(custom)
    assert len(summary) == 4 and (summary["repeats"] == 2).all()


# --------------------------------------------------------------------------- build_evidence

STABLE_NAMES = [
    "test_auroc", "test_auroc_ci_low", "test_auroc_ci_high", "test_auprc", "test_auprc_ci_low",
    "test_auprc_ci_high", "test_easix_auroc", "test_easix_auroc_ci_low", "test_easix_auroc_ci_high",
    "test_m_easix_auroc", "test_m_easix_auroc_ci_low", "test_m_easix_auroc_ci_high",
    "test_auroc_minus_m_easix", "test_auroc_minus_m_easix_ci_low", "test_auroc_minus_m_easix_ci_high",
    "test_auroc_minus_easix", "test_calibration_slope", "test_calibration_intercept",
    "test_calibration_in_the_large", "test_ici", "test_brier", "test_scaled_brier",
    "net_benefit_at_5pct", "net_benefit_at_10pct", "net_benefit_at_20pct", "events_per_parameter",
    "test_oracle_auroc", "threshold_low_sensitivity", "threshold_high_specificity",
    "subgroup_age_lt18_auroc", "subgroup_age_ge18_auroc", "subgroup_costimulatory_domain_cd28_auroc",
    "subgroup_costimulatory_domain_4_1bb_n", "subgroup_product_brexucabtagene_autoleucel_auroc",
    "subgroup_sex_female_auroc", "subgroup_marrow_blasts_le20_auroc", "subgroup_marrow_blasts_gt20_auroc",
    "dev_oof_auroc", "test_logistic_auroc", "test_auroc_minus_logistic",
]


@pytest.fixture(scope="module")
def evidence(cohort_split):
    dev, test, p_dev, p_test = cohort_split
    y_dev = dev["severe_icans"].astype(int).to_numpy()
    y_test = test["severe_icans"].astype(int).to_numpy()
    other = {"logistic": expit(logit(test["p_true"].to_numpy()) * 0.5 - 0.8)}
    return ev.build_evidence(y_dev, p_dev, dev, y_test, p_test, test, {"low": 0.08, "high": 0.3}, 24,
                             "severe_icans", None, other_predictions=other, n_boot=1000, seed=0)


def test_build_evidence_metric_names_are_stable(evidence):
    metrics = evidence.flat_metrics()
    missing = [name for name in STABLE_NAMES if name not in metrics]
    assert not missing
    assert all(math.isfinite(v) for v in metrics.values())
    assert all(" " not in k and k == k.lower() for k in metrics)
    assert metrics["test_auroc_ci_low"] < metrics["test_auroc"] < metrics["test_auroc_ci_high"]
    assert metrics["net_benefit_at_10pct"] == pytest.approx(evidence.net_benefit_at(ev.MODEL, 0.10))
    external = evidence.flat_metrics(prefix="external")
    assert "external_auroc" in external and "external_net_benefit_at_10pct" in external
    assert not any(k.startswith("test_") for k in external)


def test_build_evidence_agrees_with_the_parts(evidence, cohort_split):
    _, test, _, p_test = cohort_split
    y = test["severe_icans"].astype(int).to_numpy()
    assert evidence.discrimination[ev.MODEL] == ev.discrimination_with_ci(y, p_test, 1000, 0)
    from models.baselines import m_easix

    assert evidence.comparisons[ev.M_EASIX] == ev.paired_difference(y, p_test, m_easix(test), 1000, 0)
    assert ev.M_EASIX in evidence.predictions  # rescaled on the development data
    assert evidence.sample_size["n"] == 900
    assert evidence.seconds < 15  # budget ~5 s on an idle 2-core machine; generous for loaded CI


def test_evidence_to_dict_is_json_without_patient_level_data(evidence):
    payload = evidence.to_dict()
    text = json.dumps(payload)
    assert "predictions" not in payload and "y_test" not in payload
    assert len(text) < 200_000
    assert payload["sample_size"]["n_params"] == 24


def test_external_evaluation_without_development_data(cohort_split):
    _, test, _, p_test = cohort_split
    y = test["severe_icans"].astype(int).to_numpy()
    e = ev.build_evidence(None, None, None, y, p_test, test, {"low": 0.08, "high": 0.3}, 24, n_boot=200)
    assert e.sample_size is None and e.development is None
    assert ev.M_EASIX not in e.predictions and any("m-EASIX" in n for n in e.notes)
    assert "test_m_easix_auroc" in e.flat_metrics()


def test_the_decision_curve_shows_easix_and_the_models_uncertainty(evidence):
    dc = evidence.decision_curve
    assert {ev.MODEL, ev.EASIX, ev.M_EASIX, ev.TREAT_ALL, ev.TREAT_NONE} <= set(dc["model"])
    model = dc[dc["model"] == ev.MODEL]
    assert model["nb_ci_low"].notna().all() and model["nb_ci_high"].notna().all()
    inside = (model["nb_ci_low"] <= model["net_benefit"] + 1e-12) & (model["net_benefit"] <= model["nb_ci_high"] + 1e-12)
    assert inside.mean() > 0.95  # the point estimate lies in its own band
    assert (model["nb_ci_high"] - model["nb_ci_low"]).max() > 0
    assert dc.loc[dc["model"] != ev.MODEL, "nb_ci_low"].isna().all()
