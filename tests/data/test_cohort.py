"""Data properties of the synthetic cohort (pipeline/data/synthetic.py).

These protect what downstream code and the documentation rely on: the contract (columns, ranges,
categories, missingness), the label definition, and the clinical shape of the generator
(prevalence by product, effect directions, oracle discrimination). Bands come from
/work/shared/reference/clinical-evidence.md and the generator's documented design.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from pipeline.data.synthetic import generate_cohort, oracle_auroc
from core.contract import (
    FEATURE_NAMES,
    FEATURES,
    FEATURES_BY_NAME,
    GRADE_COLUMN,
    ID_COLUMN,
    NON_FEATURE_COLUMNS,
    OUTCOMES,
)

LARGE_N = 20_000
OUTCOME_COLUMNS = ["severe_icans", "severe_crs", "p_true"]


def _category(feature: str, value: str) -> str:
    """A category value the test relies on, checked to exist in the contract."""
    assert value in FEATURES_BY_NAME[feature].categories, (feature, value)
    return value


TISA = _category("product", "tisagenlecleucel")
BREXU = _category("product", "brexucabtagene_autoleucel")
OBE = _category("product", "obecabtagene_autoleucel")
OTHER = _category("product", "other")
BB = _category("costimulatory_domain", "4-1BB")
CD28 = _category("costimulatory_domain", "CD28")


@pytest.fixture(scope="module")
def large() -> pd.DataFrame:
    return generate_cohort(LARGE_N, seed=42)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return generate_cohort(2000, seed=42)


# --- determinism and shape ------------------------------------------------------------------


def test_same_seed_and_size_give_identical_frames() -> None:
    pd.testing.assert_frame_equal(generate_cohort(500, seed=7), generate_cohort(500, seed=7))


def test_different_seed_gives_different_frame() -> None:
    a, b = generate_cohort(500, seed=7), generate_cohort(500, seed=8)
    assert not a.equals(b)
    assert not np.allclose(a["p_true"], b["p_true"])
    assert not a["marrow_blasts_pct"].equals(b["marrow_blasts_pct"])


def test_default_size(small: pd.DataFrame) -> None:
    assert len(generate_cohort()) == 2000
    pd.testing.assert_frame_equal(generate_cohort(), small)


def test_tiny_and_invalid_sizes() -> None:
    assert len(generate_cohort(1, seed=3)) == 1
    with pytest.raises(ValueError):
        generate_cohort(0)


def test_columns_in_contract_order(small: pd.DataFrame) -> None:
    assert list(small.columns) == [ID_COLUMN, *FEATURE_NAMES, GRADE_COLUMN, *OUTCOME_COLUMNS]
    # every non-feature column is one the contract knows to keep away from the model
    assert {ID_COLUMN, GRADE_COLUMN, *OUTCOME_COLUMNS} <= NON_FEATURE_COLUMNS
    assert set(OUTCOMES) <= set(small.columns)


def test_patient_ids_unique_and_pseudonymous(small: pd.DataFrame) -> None:
    ids = small[ID_COLUMN]
    assert ids.is_unique
    assert ids.map(lambda s: isinstance(s, str) and re.fullmatch(r"SYN-\d{6}", s) is not None).all()


def test_dtypes_follow_contract_kinds(small: pd.DataFrame) -> None:
    for feature in FEATURES:
        col = small[feature.name]
        if feature.kind == "float":
            assert col.dtype == np.float64, feature.name
        elif feature.kind == "bool":
            assert col.dtype == np.bool_, feature.name
        else:
            assert col.dtype == object, feature.name
            assert col.map(type).eq(str).all(), feature.name
    assert small[GRADE_COLUMN].dtype == np.int64
    assert small["severe_icans"].dtype == np.bool_
    assert small["severe_crs"].dtype == np.bool_
    assert small["p_true"].dtype == np.float64


# --- contract ranges, categories, missingness -----------------------------------------------


def test_values_inside_hard_ranges(large: pd.DataFrame) -> None:
    for feature in FEATURES:
        if feature.kind != "float":
            continue
        values = large[feature.name].dropna()
        assert np.isfinite(values).all(), feature.name
        if feature.min is not None:
            low_ok = values > feature.min if feature.min_exclusive else values >= feature.min
            assert low_ok.all(), feature.name
        if feature.max is not None:
            assert (values <= feature.max).all(), feature.name


def test_categories_from_contract_and_all_used(large: pd.DataFrame) -> None:
    for feature in FEATURES:
        if feature.kind != "category":
            continue
        seen = set(large[feature.name].unique())
        assert seen <= set(feature.categories), feature.name
        unused = set(feature.categories) - seen
        assert not unused, f"{feature.name}: unused {unused}"


def test_bool_features_take_both_values(large: pd.DataFrame) -> None:
    for feature in FEATURES:
        if feature.kind == "bool":
            assert 0.01 < large[feature.name].mean() < 0.99, feature.name


def test_required_never_missing_optional_sometimes(large: pd.DataFrame) -> None:
    for feature in FEATURES:
        missing = large[feature.name].isna().mean()
        if feature.required:
            assert missing == 0, feature.name
        else:
            assert 0.05 < missing < 0.9, (feature.name, missing)
    assert large[[ID_COLUMN, GRADE_COLUMN, *OUTCOME_COLUMNS]].notna().all().all()


def test_cytokines_missing_more_often_than_ferritin(large: pd.DataFrame) -> None:
    missing = large[[f.name for f in FEATURES if not f.required]].isna().mean()
    assert 0.08 <= missing["ferritin_ng_ml"] <= 0.22
    assert 0.30 <= missing["il6_pg_ml"] <= 0.50
    assert 0.55 <= missing["ifng_pg_ml"] <= 0.75
    assert 0.55 <= missing["il15_pg_ml"] <= 0.78


# --- labels ---------------------------------------------------------------------------------


def test_label_agrees_with_grade(large: pd.DataFrame) -> None:
    grade = large[GRADE_COLUMN]
    assert grade.between(0, 4).all()
    assert (large["severe_icans"] == (grade >= 3)).all()
    severe = grade[grade >= 3]
    assert 0 < (severe == 4).sum() < (severe == 3).sum()  # grade 4 occurs but is rarer
    assert set(grade[grade < 3].unique()) == {0, 1, 2}


def test_p_true_is_a_probability(large: pd.DataFrame) -> None:
    p = large["p_true"]
    assert np.isfinite(p).all()
    assert ((p > 0) & (p < 1)).all()


def test_outcome_is_drawn_from_p_true(large: pd.DataFrame) -> None:
    """Calibration-in-the-large and by decile: p_true must be the probability really used."""
    assert abs(large["p_true"].mean() - large["severe_icans"].mean()) < 0.012
    deciles = pd.qcut(large["p_true"], 10, labels=False)
    by_bin = large.groupby(deciles).agg(p=("p_true", "mean"), y=("severe_icans", "mean"))
    assert (by_bin["y"] - by_bin["p"]).abs().max() < 0.05
    assert by_bin["y"].is_monotonic_increasing or by_bin["y"].iloc[-1] > 3 * by_bin["y"].iloc[0]


# --- clinical shape at n = 20,000 -----------------------------------------------------------


def test_prevalence_overall_and_by_product(large: pd.DataFrame) -> None:
    assert 0.12 <= large["severe_icans"].mean() <= 0.20
    by_product = large.groupby("product")["severe_icans"].mean()
    assert 0.08 <= by_product[TISA] <= 0.16  # ELIANA 13%, ELIANA+ENSIGN 10%
    assert 0.21 <= by_product[BREXU] <= 0.33  # ZUMA-3 24-25%, real world 28.8%
    assert 0.035 <= by_product[OBE] <= 0.11  # FELIX 7%
    assert by_product[OBE] < by_product[OTHER] < by_product[BREXU]
    assert by_product[OBE] < by_product[TISA] < by_product[BREXU]


def test_severe_crs_prevalence_and_link_to_icans(large: pd.DataFrame) -> None:
    assert 0.10 <= large["severe_crs"].mean() <= 0.20
    crs = large["severe_crs"]
    assert large.loc[crs, "severe_icans"].mean() > 1.5 * large.loc[~crs, "severe_icans"].mean()


@pytest.mark.parametrize("seed", [42, 1])
def test_oracle_auroc_is_realistic(seed: int) -> None:
    auc = oracle_auroc(generate_cohort(LARGE_N, seed=seed))
    assert 0.76 <= auc <= 0.88, auc


def test_oracle_auroc_matches_definition(small: pd.DataFrame) -> None:
    from sklearn.metrics import roc_auc_score

    expected = roc_auc_score(small["severe_icans"], small["p_true"])
    assert oracle_auroc(small) == pytest.approx(expected)


def test_cd28_raises_risk(large: pd.DataFrame) -> None:
    means = large.groupby("costimulatory_domain")["p_true"].mean()
    assert means[CD28] > means[BB]
    # also within "other", the only product with both domains (no product confounding)
    other = large[large["product"] == OTHER]
    within = other.groupby("costimulatory_domain")["p_true"].mean()
    assert within[CD28] > 1.3 * within[BB]


def test_cd28_by_tumour_burden_interaction(large: pd.DataFrame) -> None:
    """CD28 adds more log-odds at high burden than at MRD-level burden (the generator's
    interaction). Checked within "other", where the domain is not tied to the product."""
    other = large[large["product"] == OTHER]
    logit = np.log(other["p_true"] / (1 - other["p_true"]))
    high = other["marrow_blasts_pct"] > 30
    low = other["marrow_blasts_pct"] < 10
    cd28 = other["costimulatory_domain"] == CD28

    def gap(burden: pd.Series) -> float:
        return float(logit[burden & cd28].mean() - logit[burden & ~cd28].mean())

    assert gap(high) - gap(low) > 0.15, (gap(high), gap(low))


def test_high_tumour_burden_raises_risk(large: pd.DataFrame) -> None:
    high = large["marrow_blasts_pct"] > 20
    assert large.loc[high, "p_true"].mean() > large.loc[~high, "p_true"].mean()
    obe = large["product"] == OBE  # FELIX: 9% above vs 4% at <= 20% blasts
    assert large.loc[obe & high, "p_true"].mean() > 1.5 * large.loc[obe & ~high, "p_true"].mean()


def test_tumour_burden_effect_is_non_linear(large: pd.DataFrame) -> None:
    """Threshold/saturation near 20% blasts (Gust 2017, FELIX): per blast-percent, the log-odds
    climb far faster across 5-15% -> 25-35% than across 50-60% -> 80-97% (a linear effect gives a
    ratio ~1.6, a log effect ~4)."""
    blasts = large["marrow_blasts_pct"]
    logit = np.log(large["p_true"] / (1 - large["p_true"]))

    def mean_logit(low: float, high: float) -> float:
        return float(logit[blasts.between(low, high)].mean())

    across = (mean_logit(25, 35) - mean_logit(5, 15)) / 20
    top = (mean_logit(80, 97) - mean_logit(50, 60)) / 33.5
    assert across > 0
    assert across > 5 * abs(top), (across, top)


def test_prior_neuro_comorbidity_raises_risk(large: pd.DataFrame) -> None:
    neuro = large["prior_neuro_comorbidity"]
    assert large.loc[neuro, "p_true"].mean() > 1.2 * large.loc[~neuro, "p_true"].mean()


def test_age_has_no_effect_in_adults(large: pd.DataFrame) -> None:
    adults = large[large["age_years"] >= 18]
    young = adults.loc[adults["age_years"] < 40, "severe_icans"].mean()
    old = adults.loc[adults["age_years"] > 60, "severe_icans"].mean()
    assert abs(young - old) < 0.06


def test_labs_follow_tumour_burden(large: pd.DataFrame) -> None:
    corr = large[["marrow_blasts_pct", "ldh_u_l", "platelets_10e9_l"]].corr("spearman")
    assert corr.loc["marrow_blasts_pct", "ldh_u_l"] > 0.3
    assert corr.loc["marrow_blasts_pct", "platelets_10e9_l"] < -0.2


def test_inflammation_markers_share_a_factor(large: pd.DataFrame) -> None:
    corr = large[["crp_mg_l", "ferritin_ng_ml", "il6_pg_ml"]].corr("spearman")
    assert corr.loc["crp_mg_l", "ferritin_ng_ml"] > 0.2
    assert corr.loc["crp_mg_l", "il6_pg_ml"] > 0.2


def test_lab_marginals_near_published_day0_table(large: pd.DataFrame) -> None:
    median = large.median(numeric_only=True)
    assert 60 <= median["platelets_10e9_l"] <= 110  # PrCRS 83.5
    assert 150 <= median["ldh_u_l"] <= 250  # PrCRS 163
    assert 4 <= median["crp_mg_l"] <= 9  # PrCRS 5.7
    assert 350 <= median["ferritin_ng_ml"] <= 600  # PrCRS 456
    assert 4 <= median["il6_pg_ml"] <= 7  # PrCRS 5.2
    assert 0.4 <= median["creatinine_mg_dl"] <= 0.8  # PrCRS 46 umol/L = 0.52 mg/dL
    paediatric = large["age_years"] < 12
    assert (
        large.loc[paediatric, "creatinine_mg_dl"].median()
        < large.loc[large["age_years"] >= 18, "creatinine_mg_dl"].median()
    )


def test_tumour_burden_is_a_mixture(large: pd.DataFrame) -> None:
    blasts = large["marrow_blasts_pct"]
    assert 0.15 <= (blasts < 5).mean() <= 0.5  # MRD-level share
    assert (blasts < 0.5).mean() > 0.05  # many near 0
    assert blasts.max() > 90


def test_product_design(large: pd.DataFrame) -> None:
    by_product = large.groupby("product")
    costim = by_product["costimulatory_domain"].agg(lambda s: set(s))
    assert costim[TISA] == {BB} and costim[OBE] == {BB} and costim[BREXU] == {CD28}
    assert costim[OTHER] == {BB, CD28}
    cd19 = _category("target_antigen", "CD19")
    licensed = large["product"] != OTHER
    assert (large.loc[licensed, "target_antigen"] == cd19).all()
    assert large.loc[~licensed, "target_antigen"].nunique() == 3

    age = by_product["age_years"].median()
    assert 8 <= age[TISA] <= 14 and 36 <= age[BREXU] <= 44 and 43 <= age[OBE] <= 51
    dose = by_product["car_t_dose_10e6_per_kg"].median()
    assert 2.5 <= dose[TISA] <= 3.5 and 0.9 <= dose[BREXU] <= 1.1 and 4 <= dose[OBE] <= 7
    flu_cy = (large["lymphodepletion"] == _category("lymphodepletion", "flu_cy")).mean()
    assert 0.85 <= flu_cy <= 0.93  # ~89% (B-ALL meta-analysis)
