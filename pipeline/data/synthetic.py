"""Synthetic B-ALL CAR T-cell cohort with a KNOWN true risk of severe ICANS.

Why synthetic: no shareable patient-level data exist, and a generator whose true probability
(`p_true`) is known lets the pipeline check discrimination AND calibration against the truth.
Every effect size and distribution below is taken from /work/shared/reference/clinical-evidence.md
(cited as "evidence: <source>"); numbers marked ASSUMPTION have no source there and are chosen to be
plausible and modest. docs/synthetic-cohort.md describes the model in prose.

Column names, ranges and categories come from `core.contract`; category values used as keys
here are checked against the contract on every call (`_check_against_contract`).

The patients' characteristics (product mix, age, dose, burden, labs) are drawn by
`pipeline.data.synthetic_draws`; this module holds the outcome model (intercepts, effect sizes, the
unmeasured heterogeneity), the missingness, and `generate_cohort`, which fixes the draw order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.data.synthetic_draws import (
    BB,
    BREXU,
    CD28,
    FEMALE,
    FLU_CY,
    LD_OTHER,
    MALE,
    OBE,
    OTHER,
    OTHER_P_CD28,
    OTHER_TARGET_MIX,
    P_OVERT,
    P_PRIOR_ALLO,
    PRODUCT_MIX,
    TISA,
    USED_CATEGORIES,
    CD19,
    as_series,
    choice,
    clip,
    draw_age,
    draw_blasts,
    draw_dose,
    draw_labs,
    per_product,
)
from core.contract import (
    FEATURE_NAMES,
    FEATURES,
    FEATURES_BY_NAME,
    GRADE_COLUMN,
    ID_COLUMN,
    OUTCOMES,
)

_SEVERE_ICANS = "severe_icans"
_SEVERE_CRS = "severe_crs"
_P_TRUE = "p_true"


# Product-specific intercepts of the severe-ICANS logit (everything else at its reference value).
# They carry what the covariates do not: e.g. obe-cel's fast off-rate binder (evidence: FELIX).
# Calibrated numerically (iterated logit corrections at n = 300,000, several seeds; recalibrate
# after changing any effect below) so prevalence by product lands on the
# evidence: tisa-cel 10-13% (ELIANA / ELIANA+ENSIGN), brexu-cel 25-29% (ZUMA-3; real world
# 28.8%), obe-cel 7% (FELIX), other in between (B-ALL meta-analysis 2.6-45%).
_ICANS_INTERCEPT: dict[str, float] = {TISA: -3.54, BREXU: -3.29, OBE: -4.31, OTHER: -3.44}

# Severe-CRS intercepts: ASSUMPTION calibrated to ~10-20% overall; obe-cel lowest (fast off-rate).
_CRS_INTERCEPT: dict[str, float] = {TISA: -2.49, BREXU: -2.89, OBE: -4.26, OTHER: -2.81}

# --- severe-ICANS effects (conditional log-odds) --------------------------------------------
_B_CD28 = np.log(2.5)  # CD28 vs 4-1BB: conditional OR 2-4 (evidence: Han 2024)
# Tumour burden: saturating step around 20% marrow blasts (Gust 2017: median 25.8% vs 0.6% blasts,
# "strongly non-linear"). FELIX > 20% vs <= 20% OR ~2.4 [D] is MARGINAL; burden also acts here
# through LDH/platelets (EASIX) and inflammation, so the direct conditional OR is 1.5. The
# resulting marginal OR within obe-cel is ~3 (about 9% vs 3%, FELIX: 9% vs 4%).
_B_BLASTS_HIGH = np.log(1.5)
_BLASTS_THRESHOLD, _BLASTS_WIDTH = 20.0, 3.0
# Interaction CD28 x high burden: ASSUMPTION (OR 1.5 on top), motivated by the highest severe
# neurotoxicity rates being in CD28 products given to high-burden adults (evidence: MSKCC 19-28z
# ~42%, ZUMA-3 24-25%).
_B_CD28_X_BLASTS = np.log(1.5)
_B_NEURO = np.log(2.0)  # prior neurological comorbidity OR ~2.0 (evidence: Gust 2017)
# Active CNS disease: 35.3% vs 28.8% overall in real-world brexu-cel => OR ~1.35 [D]; we use 1.5.
_B_CNS = np.log(1.5)
_B_FLU_CY = np.log(1.4)  # Flu/Cy vs other OR ~1.4 (evidence: Gust 2017)
_B_DOSE_LOG10 = np.log(1.75)  # dose OR 1.5-2 per log10 within licensed ranges (evidence: Gust 2017)
_DOSE_REF = 1.0  # 10^6/kg
# EASIX OR 1.72 per doubling (evidence: Korell 2022) is marginal and for CRS and/or ICANS; blasts
# already carry part of it (LDH, platelets follow burden), so the conditional effect is smaller.
_B_EASIX_LOG2 = np.log(1.30)
_EASIX_REF = 1.5
# CRP / ferritin OR 1.3-1.5 per doubling (evidence: Greenbaum 2021): conditional and partly
# redundant with each other, so smaller here.
_B_CRP_LOG2 = np.log(1.15)
_CRP_REF = 6.0
_B_FERRITIN_LOG2 = np.log(1.10)
_FERRITIN_REF = 450.0
# Cytokines: no ALL-specific baseline effect sizes (evidence: Santomasso 2018) -> weak, ASSUMPTION.
_B_IL6_LOG2 = np.log(1.08)
_IL6_REF = 5.0
_B_IFNG_LOG2 = np.log(1.03)
_IFNG_REF = 8.0
_B_IL15_LOG2 = np.log(1.05)
_IL15_REF = 10.0
# Unmeasured patient heterogeneity, normal on the logit (endothelial activation etc. were
# higher before lymphodepletion in severe cases but not measured here; evidence: Gust 2017).
_SD_RANDOM = 0.9

# --- severe-CRS effects (ASSUMPTION, directions from the evidence) --------------------------
_C_BLASTS_HIGH = np.log(3.0)  # burden drives CRS (Hay 2017)
_C_CD28 = np.log(2.0)
_C_CRP_LOG2 = np.log(1.3)  # inflammation (m-EASIX predicts severe CRS: Pennisi 2021)
_C_PLATELETS_LOG2 = -np.log(1.3)  # low platelets predict CRS (Hay 2017; PrCRS 53 vs 91)
_C_PRIOR_ALLO = np.log(0.35)  # prior allo-HCT OR 0.35 for grade >= 3 CRS (Blood ICT 2025)
_SD_RANDOM_CRS = 0.9
_RHO_RANDOM = 0.7  # shared unmeasured biology: CRS is the strongest ICANS correlate (Maude 2018)

# Missingness of optional labs (not measured), by product: ASSUMPTION within the brief's ranges;
# academic ("other") protocols measure cytokines more often. Missing completely at random given
# product: the true value still drives risk, missingness itself carries no information.
_P_MISSING: dict[str, dict[str, float]] = {
    "ferritin_ng_ml": {TISA: 0.15, BREXU: 0.15, OBE: 0.15, OTHER: 0.12},
    "il6_pg_ml": {TISA: 0.42, BREXU: 0.42, OBE: 0.42, OTHER: 0.30},
    "ifng_pg_ml": {TISA: 0.67, BREXU: 0.67, OBE: 0.67, OTHER: 0.50},
    "il15_pg_ml": {TISA: 0.70, BREXU: 0.70, OBE: 0.70, OTHER: 0.55},
}


def generate_cohort(n: int = 2000, seed: int = 42) -> pd.DataFrame:
    """Draw `n` synthetic infusions; identical output for identical (n, seed).

    Returns patient_id, the contract features in contract order, the outcomes and `p_true`, the
    probability actually used to draw `severe_icans` (so model calibration can be checked).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_against_contract()
    rng = np.random.default_rng(seed)

    product = choice(rng, PRODUCT_MIX, n)
    is_brexu, is_other = product == BREXU, product == OTHER

    age = draw_age(rng, product)
    sex = np.where(rng.random(n) < 0.57, MALE, FEMALE).astype(object)  # ASSUMPTION: ~57% male

    costim = np.where(is_brexu, CD28, BB).astype(object)  # tisa-cel, obe-cel: 4-1BB
    costim[is_other & (rng.random(n) < OTHER_P_CD28)] = CD28
    target = np.full(n, CD19, dtype=object)  # licensed products target CD19
    target[is_other] = choice(rng, OTHER_TARGET_MIX, int(is_other.sum()))
    is_cd28 = costim == CD28

    dose = draw_dose(rng, product)
    # Flu/Cy in ~89% (evidence: PMC12571805); licensed labels specify it, so "other" LD is mostly
    # in academic protocols: 93% flu_cy for licensed, 70% for other gives ~89% overall.
    p_flu = np.where(is_other, 0.70, 0.93)
    flu_cy = rng.random(n) < p_flu
    lymphodepletion = np.where(flu_cy, FLU_CY, LD_OTHER).astype(object)

    # CNS involvement ~12% (34/292 in real-world brexu-cel [D]); neuro comorbidity ~20%, more
    # likely with CNS disease (Gust 2017 counts CNS involvement as neurological comorbidity).
    cns = rng.random(n) < 0.12
    neuro = rng.random(n) < np.where(cns, 0.45, 0.18)
    prior_allo = rng.random(n) < per_product(product, P_PRIOR_ALLO)

    blasts = draw_blasts(rng, product)
    labs = draw_labs(rng, blasts, age, prior_allo)
    # Clip BEFORE computing risk so the recorded values are exactly the ones that drove it.
    age = clip("age_years", age)
    dose = clip("car_t_dose_10e6_per_kg", dose)
    blasts = clip("marrow_blasts_pct", blasts)
    labs = {name: clip(name, values) for name, values in labs.items()}

    # --- true risk of severe ICANS ---------------------------------------------------------
    high_burden = _sigmoid((blasts - _BLASTS_THRESHOLD) / _BLASTS_WIDTH)
    easix = labs["ldh_u_l"] * labs["creatinine_mg_dl"] / np.maximum(labs["platelets_10e9_l"], 1.0)
    u_icans, u_crs = _correlated_normals(rng, n, _SD_RANDOM, _SD_RANDOM_CRS, _RHO_RANDOM)
    logit = (
        per_product(product, _ICANS_INTERCEPT)
        + _B_CD28 * is_cd28
        + _B_BLASTS_HIGH * high_burden
        + _B_CD28_X_BLASTS * is_cd28 * high_burden
        + _B_NEURO * neuro
        + _B_CNS * cns
        + _B_FLU_CY * flu_cy
        + _B_DOSE_LOG10 * np.log10(dose / _DOSE_REF)
        + _B_EASIX_LOG2 * np.log2(easix / _EASIX_REF)
        + _B_CRP_LOG2 * np.log2(np.maximum(labs["crp_mg_l"], 0.1) / _CRP_REF)
        + _B_FERRITIN_LOG2 * np.log2(labs["ferritin_ng_ml"] / _FERRITIN_REF)
        + _B_IL6_LOG2 * np.log2(labs["il6_pg_ml"] / _IL6_REF)
        + _B_IFNG_LOG2 * np.log2(labs["ifng_pg_ml"] / _IFNG_REF)
        + _B_IL15_LOG2 * np.log2(labs["il15_pg_ml"] / _IL15_REF)
        + u_icans
    )
    p_true = _sigmoid(logit)
    severe_icans = rng.random(n) < p_true
    grade = _draw_grade(rng, severe_icans, p_true)

    crs_logit = (
        per_product(product, _CRS_INTERCEPT)
        + _C_BLASTS_HIGH * high_burden
        + _C_CD28 * is_cd28
        + _C_CRP_LOG2 * np.log2(np.maximum(labs["crp_mg_l"], 0.1) / _CRP_REF)
        + _C_PLATELETS_LOG2 * np.log2(np.maximum(labs["platelets_10e9_l"], 1.0) / 85.0)
        + _C_PRIOR_ALLO * prior_allo
        + u_crs
    )
    severe_crs = rng.random(n) < _sigmoid(crs_logit)

    # Optional labs "not measured": masked AFTER they drove the risk (the biology exists anyway).
    for name, by_product in _P_MISSING.items():
        p_miss = per_product(product, by_product)
        labs[name] = np.where(rng.random(n) < p_miss, np.nan, labs[name])

    features: dict[str, np.ndarray] = {
        "age_years": age,
        "sex": sex,
        "prior_neuro_comorbidity": neuro,
        "cns_involvement": cns,
        "prior_allo_hct": prior_allo,
        "marrow_blasts_pct": blasts,
        "product": product,
        "costimulatory_domain": costim,
        "target_antigen": target,
        "car_t_dose_10e6_per_kg": dose,
        "lymphodepletion": lymphodepletion,
        **labs,
    }
    if set(features) != set(FEATURE_NAMES):
        drift = set(features) ^ set(FEATURE_NAMES)
        raise AssertionError(f"generator out of sync with contract: {sorted(drift)}")

    columns: dict[str, pd.Series] = {
        ID_COLUMN: pd.Series([f"SYN-{i:06d}" for i in range(1, n + 1)], dtype=object)
    }
    for feature in FEATURES:
        values = clip(feature.name, features[feature.name])
        columns[feature.name] = as_series(feature.kind, values)
    columns[GRADE_COLUMN] = pd.Series(grade, dtype="int64")
    columns[_SEVERE_ICANS] = pd.Series(severe_icans, dtype=bool)
    columns[_SEVERE_CRS] = pd.Series(severe_crs, dtype=bool)
    columns[_P_TRUE] = pd.Series(p_true, dtype="float64")
    return pd.DataFrame(columns)


def oracle_auroc(df: pd.DataFrame) -> float:
    """AUROC of the true probability against the drawn outcome: the ceiling for any model."""
    return float(roc_auc_score(df[_SEVERE_ICANS], df[_P_TRUE]))


# --- helpers ---------------------------------------------------------------------------------


def _check_against_contract() -> None:
    """Fail loudly if the contract's categories or outcomes drift from what this generator uses."""
    for name, used in USED_CATEGORIES.items():
        declared = set(FEATURES_BY_NAME[name].categories)
        if set(used) != declared:
            raise AssertionError(
                f"{name}: generator uses {sorted(used)}, contract has {sorted(declared)}"
            )
    for table in (PRODUCT_MIX, P_OVERT, P_PRIOR_ALLO, _ICANS_INTERCEPT, _CRS_INTERCEPT):
        if set(table) != set(FEATURES_BY_NAME["product"].categories):
            raise AssertionError("a per-product table does not cover the contract's products")
    optional = {f.name for f in FEATURES if not f.required}
    if set(_P_MISSING) != optional:
        raise AssertionError(
            f"missingness table {sorted(_P_MISSING)} != optional features {sorted(optional)}"
        )
    if any(set(t) != set(PRODUCT_MIX) for t in _P_MISSING.values()):
        raise AssertionError("a missingness row does not cover the contract's products")
    if {_SEVERE_ICANS, _SEVERE_CRS} != set(OUTCOMES):
        raise AssertionError(f"outcomes drifted: {sorted(OUTCOMES)}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _correlated_normals(
    rng: np.random.Generator, n: int, sd_a: float, sd_b: float, rho: float
) -> tuple[np.ndarray, np.ndarray]:
    a = rng.standard_normal(n)
    b = rho * a + np.sqrt(1 - rho**2) * rng.standard_normal(n)
    return sd_a * a, sd_b * b


def _draw_grade(rng: np.random.Generator, severe: np.ndarray, p_true: np.ndarray) -> np.ndarray:
    """ASTCT max grade consistent with the label: 3-4 if severe (4 rarer), else 0-2.

    ASSUMPTION: any-grade ICANS rises with risk (evidence: any grade 16% with CD22 CARs, 55% with
    19-28z); grade 4 is ~15-25% of severe cases.
    """
    n = severe.size
    u = rng.random(n)
    p_any_mild = np.clip(0.10 + 1.3 * p_true, 0.0, 0.85)
    mild = np.where(u < p_any_mild, np.where(rng.random(n) < 0.45, 2, 1), 0)
    severe_grade = np.where(rng.random(n) < 0.12 + 0.2 * p_true, 4, 3)
    return np.where(severe, severe_grade, mild).astype(np.int64)
