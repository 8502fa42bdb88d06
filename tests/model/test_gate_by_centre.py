"""The gate judges transport on the pooled IECV estimates (`GATE_RULE` (5), issue 27): the tables of
per-centre estimates are built directly (no training), pooled by the meta-analysis the training uses."""

from __future__ import annotations

from pipeline.stats.meta_analysis import pool_measures
from pipeline.train.gate import CALIBRATION_SLOPE_BAND, GATE_RULE, HETEROGENEITY, INSUFFICIENT, quality_gate

# the design's figures of a model that passes on them alone (as tests/model/test_gate.py's GOOD)
GOOD = {"auroc": 0.74, "auroc_ci_low": 0.66, "auroc_ci_high": 0.81, "m_easix_auroc": 0.68,
        "auroc_minus_m_easix_ci_low": -0.02, "auroc_minus_m_easix_ci_high": 0.12, "logistic_auroc": 0.72,
        "auroc_minus_logistic_ci_low": -0.03, "auroc_minus_logistic_ci_high": 0.07,
        "calibration_slope": 0.95, "calibration_slope_ci_low": 0.62, "calibration_slope_ci_high": 1.35,
        "platt_slope": 0.9, "events": 60.0}


def consortium(slopes: list[float], aurocs: list[float] | None = None, slope_se: float = 0.08) -> dict:
    """The pooled estimates of centres with these calibration slopes (and AUROCs, SE 0.03)."""
    aurocs = aurocs or [0.74] * len(slopes)
    rows = [{"auroc": a, "auroc_se": 0.03, "calibration_slope": s, "calibration_slope_se": slope_se}
            for a, s in zip(aurocs, slopes)]
    return pool_measures(rows, ("auroc", "calibration_slope"))


def test_centres_with_opposite_slopes_are_refused_for_heterogeneity_and_told_to_update_locally():
    pooled = consortium([0.25, -0.25] * 4)  # the model ranks half the centres backwards
    s = pooled["calibration_slope"]
    assert s.pi_high < CALIBRATION_SLOPE_BAND[0]  # the prediction interval lies wholly below the band
    ok, reason = quality_gate(GOOD, pooled)
    assert not ok and not reason.startswith(INSUFFICIENT)
    assert HETEROGENEITY in reason and "make update DATA=<centre file>" in reason
    assert f"{s.pi_low:.2f}-{s.pi_high:.2f}" in reason  # the interval it judged, not a centre's value


def test_a_homogeneous_consortium_is_not_refused_by_the_transport_rule():
    pooled = consortium([1.0, 0.9, 1.1, 0.95, 1.05], [0.72, 0.75, 0.74, 0.76, 0.73])
    assert quality_gate(GOOD, pooled) == (True, "passed")


def test_a_model_that_does_not_transport_better_than_chance_is_refused_on_the_pooled_auroc():
    pooled = consortium([1.0, 0.9, 1.1, 0.95, 1.05], [0.45, 0.62, 0.50, 0.58, 0.40])
    assert pooled["auroc"].ci_low <= 0.5
    ok, reason = quality_gate(GOOD, pooled)
    assert not ok and "transport better than chance" in reason and HETEROGENEITY not in reason


def test_a_pooled_slope_interval_outside_the_band_is_refused_without_blaming_heterogeneity():
    pooled = consortium([2.2, 1.7] * 3)  # over-confident nowhere: under-fitted everywhere
    s = pooled["calibration_slope"]
    assert s.ci_low > CALIBRATION_SLOPE_BAND[1] and s.pi_low < CALIBRATION_SLOPE_BAND[1]
    ok, reason = quality_gate(GOOD, pooled)
    assert not ok and "pooled calibration slope" in reason and HETEROGENEITY not in reason


def test_without_pooled_estimates_the_gate_is_the_design_alone_and_missing_ones_are_insufficient():
    assert quality_gate(GOOD) == quality_gate(GOOD, None) == (True, "passed")
    ok, reason = quality_gate(GOOD, {})
    assert not ok and reason.startswith(INSUFFICIENT) and "pooled AUROC" in reason


def test_the_rule_states_the_transport_criterion_once():
    assert "prediction interval of the calibration slope" in GATE_RULE and "make update" in GATE_RULE
