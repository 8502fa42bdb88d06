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


def _criteria(difference: float, half_width: float) -> dict[str, dict[str, float]]:
    keys = ("auroc", "calibration_slope_distance", "calibration_intercept_distance", "net_benefit_low")
    return {k: {"difference": difference, "ci_low": difference - half_width, "ci_high": difference + half_width,
                "challenger": 0.5, "champion": 0.5} for k in keys}


def test_per_centre_differences_are_pooled_and_judged_on_the_promotion_margins():
    from pipeline.train.gate import non_inferiority
    from pipeline.train.iecv import pool_paired_differences

    close = pool_paired_differences([_criteria(d, 0.02) for d in (0.004, -0.003, 0.001, 0.0, -0.002)])
    assert close["auroc"]["ci_low"] < 0 < close["auroc"]["ci_high"] and close["auroc"]["centres"] == 5
    assert non_inferiority({"auroc": close["auroc"]})[0]
    worse = pool_paired_differences([_criteria(d, 0.03) for d in (-0.08, -0.06, -0.07, -0.09, -0.05)])
    ok, lines = non_inferiority({"auroc": worse["auroc"]})
    assert not ok and "beyond the margin" in lines[0]
    same = pool_paired_differences([_criteria(0.0, 0.0)] * 3)  # the champion's own configuration
    assert same["auroc"]["ci_low"] == same["auroc"]["ci_high"] == 0.0


def test_the_champion_comparison_also_judges_the_pooled_differences_by_centre():
    from types import SimpleNamespace

    import numpy as np

    from pipeline.data.synthetic_centres import CentreSpec, generate_consortium
    from pipeline.evidence.centre_performance import centre_row
    from pipeline.train.assessment import refit_predict
    from pipeline.train.iecv import IECVResult, with_centre_comparison
    from core.features import encode_frame

    df = generate_consortium(tuple(CentreSpec(c, 220) for c in "ABCD"), seed=3)
    y, centre = df["severe_icans"].astype(int).to_numpy(), df["centre"].to_numpy()
    settings = SimpleNamespace(seed=1, n_iter=1, search_cv_folds=2, families=["logistic"])
    X = encode_frame(df)
    config = ("logistic", {"model__C": 1.0})
    thresholds = {"low": 0.1, "high": 0.3}
    design = {"criteria": {}, "non_inferior": True, "lines": [], "basis": "the design's folds", "champion_auroc": 0.7}

    def iecv_of(risk: np.ndarray) -> IECVResult:
        rows = [{"centre": c, **centre_row(y[centre == c], risk[centre == c])} for c in "ABCD"]
        return IECVResult(rows, {}, risk, 0.0)

    risk = np.full(len(y), np.nan)
    for i, c in enumerate("ABCD"):  # the champion's configuration, as IECV would have refitted it
        risk[centre == c] = refit_predict(config, X[centre != c], y[centre != c], X[centre == c], 2, 1 + 10_000 * (i + 1))
    champion = SimpleNamespace(metadata={"params": config[1]}, kind="logistic")
    d = with_centre_comparison(lambda _: dict(design), iecv_of(risk), df, "severe_icans", settings, thresholds)(champion)
    assert d["non_inferior"] and "iecv_auroc" in d["criteria"] and "4 centres" in d["basis"]
    assert any(line.startswith("by centre: auroc") for line in d["lines"])
    # a challenger that ranks no better than chance at any centre: the design alone would have let it in
    noise = np.random.default_rng(0).uniform(0.05, 0.4, len(y))
    d = with_centre_comparison(lambda _: dict(design), iecv_of(noise), df, "severe_icans", settings, thresholds)(champion)
    assert not d["non_inferior"] and d["criteria"]["iecv_auroc"]["ci_high"] < 0


def test_a_spread_around_a_good_mean_is_not_refused_but_said_with_the_local_check():
    """Slopes alternating 0.1 and 1.9 pool to about 1 with a prediction interval far beyond the band on
    both sides: the gate cannot call the mean bad, so the transport sentence tells a new centre to check
    its own calibration and update locally; a homogeneous consortium gets no such advice."""
    from pipeline.train.iecv import IECVResult

    spread = consortium([0.1, 1.9] * 4)
    s = spread["calibration_slope"]
    assert s.pi_low < CALIBRATION_SLOPE_BAND[0] and s.pi_high > CALIBRATION_SLOPE_BAND[1]
    assert quality_gate(GOOD, spread)[0]
    rows = [{"centre": f"c{i}", "estimable": True} for i in range(8)]
    said = IECVResult(rows, spread, None, 0.0).transport_sentence()
    assert "may fall outside 0.7-1.3" in said and "make update DATA=<centre file>" in said
    calm = IECVResult(rows[:5], consortium([1.0, 0.9, 1.1, 0.95, 1.05]), None, 0.0).transport_sentence()
    assert "may fall outside" not in calm
