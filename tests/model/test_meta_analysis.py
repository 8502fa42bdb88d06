"""The random-effects pooling against a reference implementation: metafor's published values for
dat.bcg (its own test suite: tau^2 printed to 15 digits, the cumulative REML estimates to 6) and
statsmodels' combine_effects (DerSimonian-Laird tau^2 with the Hartung-Knapp "random effect wls" row)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from pipeline.stats.meta_analysis import pool_measures, prediction_interval, random_effects, tau2_dl, tau2_reml

# dat.bcg (Colditz et al. 1994): tpos, tneg, cpos, cneg, year
BCG = np.array([
    (4, 119, 11, 128, 1948), (6, 300, 29, 274, 1949), (3, 228, 11, 209, 1960), (62, 13536, 248, 12619, 1977),
    (33, 5036, 47, 5761, 1973), (180, 1361, 372, 1079, 1953), (8, 2537, 10, 619, 1973),
    (505, 87886, 499, 87892, 1980), (29, 7470, 45, 7232, 1968), (17, 1699, 65, 1600, 1961),
    (186, 50448, 141, 27197, 1974), (5, 2493, 3, 2338, 1969), (27, 16886, 29, 17825, 1976),
], dtype=float)


def bcg_log_rr() -> tuple[np.ndarray, np.ndarray]:
    """escalc(measure="RR"): log risk ratio and its sampling variance."""
    a, b, c, d = BCG[:, 0], BCG[:, 1], BCG[:, 2], BCG[:, 3]
    yi = np.log(a / (a + b)) - np.log(c / (c + d))
    vi = 1 / a - 1 / (a + b) + 1 / c - 1 / (c + d)
    return yi, vi


def test_reml_tau2_equals_metafor():
    yi, vi = bcg_log_rr()
    # metafor tests/testthat/test_misc_influence.r: tau2 = 0.313243325980895, QE = 152.233008082373
    assert tau2_reml(yi, vi) == pytest.approx(0.313243325980895, abs=1e-6)
    # metafor's Fisher scoring stops at a change below 1e-5; with its threshold, the same iterates
    assert tau2_reml(yi, vi, threshold=1e-5) == pytest.approx(0.313243325980895, abs=1e-12)
    w = 1 / vi
    assert float(w @ (yi - (w @ yi) / w.sum()) ** 2) == pytest.approx(152.233008082373, abs=1e-9)


def test_cumulative_reml_estimates_equal_metafor():
    """metafor tests/testthat/test_misc_cumul.r: cumul(rma(yi, vi), order=year), 6 printed decimals."""
    expected = [-0.889311, -1.325003, -0.97208, -1.001094, -1.101424, -0.973464, -0.901251, -0.788566,
                -0.865607, -0.785211, -0.708206, -0.794768, -0.714532]
    yi, vi = bcg_log_rr()
    order = np.argsort(BCG[:, 4], kind="stable")
    assert yi[order[0]] == pytest.approx(expected[0], abs=5e-7)
    for k in range(2, 14):
        idx = order[:k]
        # with metafor's stopping rule (a tau^2 step below 1e-5): equal to the printed 6 decimals
        pooled = random_effects(yi[idx], np.sqrt(vi[idx]), threshold=1e-5)
        assert pooled.estimate == pytest.approx(expected[k - 1], abs=1e-6), k
        # converged further (our default, 1e-10): metafor's early stop moves the estimate by < 1e-5
        assert random_effects(yi[idx], np.sqrt(vi[idx])).estimate == pytest.approx(expected[k - 1], abs=1e-5), k


def test_reml_is_the_maximum_of_the_restricted_likelihood():
    """An independent check of the Fisher scoring: maximise the REML log-likelihood numerically."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        k = int(rng.integers(3, 12))
        v = rng.uniform(0.01, 0.3, k)
        y = rng.normal(0.5, np.sqrt(v + rng.uniform(0, 0.3)))

        def neg_reml(t2: float) -> float:
            w = 1 / (v + t2)
            mu = (w @ y) / w.sum()
            return 0.5 * (np.sum(np.log(v + t2)) + np.log(w.sum()) + w @ (y - mu) ** 2)

        ref = optimize.minimize_scalar(neg_reml, bounds=(0, 10), method="bounded", options={"xatol": 1e-12}).x
        ref = 0.0 if neg_reml(0.0) <= neg_reml(ref) else ref
        assert tau2_reml(y, v) == pytest.approx(ref, abs=1e-6)


def test_hksj_interval_equals_statsmodels():
    from statsmodels.stats.meta_analysis import combine_effects

    yi, vi = bcg_log_rr()
    for idx in (np.arange(13), np.arange(5), np.array([0, 3, 5, 7, 10, 12])):
        res = combine_effects(yi[idx], vi[idx], method_re="chi2", use_t=True)
        row = res.summary_frame().loc["random effect wls"]
        ours = random_effects(yi[idx], np.sqrt(vi[idx]), method="DL")
        assert tau2_dl(yi[idx], vi[idx]) == pytest.approx(res.tau2, abs=1e-10)
        assert ours.estimate == pytest.approx(row["eff"], abs=1e-8)
        assert ours.se == pytest.approx(row["sd_eff"], abs=1e-8)
        assert ours.ci_low == pytest.approx(row["ci_low"], abs=1e-8)
        assert ours.ci_high == pytest.approx(row["ci_upp"], abs=1e-8)
        assert ours.i2 == pytest.approx(100 * res.i2, abs=1e-6)  # DL: tau2 / (tau2 + vt) = (Q - df) / Q


def test_prediction_interval_formula():
    """PI = mu +- t(k-2) sqrt(se_HKSJ^2 + tau^2) (Riley 2011; metafor predtype="riley"), or t(k-1)."""
    yi, vi = bcg_log_rr()
    p = random_effects(yi, np.sqrt(vi))
    half = stats.t.ppf(0.975, 11) * np.sqrt(p.se**2 + p.tau2)
    assert (p.pi_low, p.pi_high) == pytest.approx((p.estimate - half, p.estimate + half), abs=1e-12)
    q = random_effects(yi, np.sqrt(vi), pi_df="k-1")
    half = stats.t.ppf(0.975, 12) * np.sqrt(q.se**2 + q.tau2)
    assert q.pi_high - q.estimate == pytest.approx(half, abs=1e-12)
    assert p.pi_high - p.pi_low > q.pi_high - q.pi_low


def test_prediction_interval_equals_metafors_published_values():
    """metafor (github wviechtb/metafor, R/predict.rma.r): under test="knha" the prediction interval is
    mu +- qt(0.975, k-1) sqrt(SE^2 + tau^2), SE the Knapp-Hartung SE (our pi_df="k-1"; the default k-2
    is its predtype="riley"). No value of the knha interval on dat.bcg is published beyond the printed
    digits, so two published checks:

    1. to 1e-6, the same formula with another SE, tests/testthat/test_misc_robust.r: for
       robust(rma(yi, vi), cluster=trial) on dat.bcg (log risk ratios, REML), vcov 0.032106 and
       predict(sav, transf=exp): pred 0.4894209, pi.lb 0.1360214, pi.ub 1.7609930 (t, 12 df);
    2. the knha call itself at its printed precision, README.md: rma(yi, vi, data=dat, test="knha"):
       tau^2 0.3132, I^2 92.22%, estimate -0.7145, se 0.1808, tval -3.9522, ci -1.1084 to -0.3206;
       predict(res, transf=exp, digits=2): pred 0.49, ci 0.33 to 0.73, pi 0.14 to 1.76.
    """
    yi, vi = bcg_log_rr()
    k = len(yi)
    tau2 = tau2_reml(yi, vi)
    w = 1 / (vi + tau2)
    mu = float(w @ yi / w.sum())
    # the cluster-robust (CR1, each trial its own cluster) variance of mu that robust() uses
    v_robust = k / (k - 1) * float(np.sum(w**2 * (yi - mu) ** 2)) / w.sum() ** 2
    assert v_robust == pytest.approx(0.032106, abs=5e-7)
    low, high = prediction_interval(mu, np.sqrt(v_robust), tau2, k - 1)
    assert np.exp(mu) == pytest.approx(0.4894209, abs=1e-6)
    assert np.exp(low) == pytest.approx(0.1360214, abs=1e-6)
    assert np.exp(high) == pytest.approx(1.7609930, abs=1e-6)

    knha = random_effects(yi, np.sqrt(vi), pi_df="k-1")  # on the log scale
    assert knha.tau2 == pytest.approx(0.3132, abs=5e-5) and knha.i2 == pytest.approx(92.22, abs=5e-3)
    assert knha.estimate == pytest.approx(-0.7145, abs=5e-5) and knha.se == pytest.approx(0.1808, abs=5e-5)
    assert knha.estimate / knha.se == pytest.approx(-3.9522, abs=5e-5)
    assert (knha.ci_low, knha.ci_high) == pytest.approx((-1.1084, -0.3206), abs=5e-5)
    # the knha interval is the formula checked in 1., with the Knapp-Hartung SE
    assert (knha.pi_low, knha.pi_high) == pytest.approx(prediction_interval(mu, knha.se, tau2, k - 1), abs=1e-12)
    on_ratio = random_effects(yi, np.sqrt(vi), scale="log", pi_df="k-1")
    assert (on_ratio.estimate, on_ratio.ci_low, on_ratio.ci_high) == pytest.approx((0.49, 0.33, 0.73), abs=5e-3)
    assert (on_ratio.pi_low, on_ratio.pi_high) == pytest.approx((0.14, 1.76), abs=5e-3)


def test_scales_back_transform():
    rows = [{"auroc": a, "auroc_se": 0.03, "oe": o, "oe_se": 0.1} for a, o in ((0.7, 1.0), (0.75, 1.2), (0.72, 0.9))]
    pooled = pool_measures(rows, ("auroc", "oe"))
    assert 0.7 < pooled["auroc"].estimate < 0.75 and 0.9 < pooled["oe"].estimate < 1.2
    assert pooled["auroc"].scale == "logit" and pooled["oe"].scale == "log"
    assert pooled["auroc"].ci_low < pooled["auroc"].estimate < pooled["auroc"].ci_high <= 1


def test_one_centre_is_not_pooled():
    with pytest.raises(ValueError, match="at least 2 centres"):
        random_effects(np.array([0.1]), np.array([0.1]), "auroc")
