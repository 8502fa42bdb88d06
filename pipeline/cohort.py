"""Synthetic B-ALL CAR T-cell cohort with a KNOWN true risk of severe ICANS.

Why synthetic: no shareable patient-level data exist, and a generator whose true probability
(`p_true`) is known lets the pipeline check discrimination AND calibration against the truth.
Every effect size and distribution below is taken from /work/shared/reference/clinical-evidence.md
(cited as "evidence: <source>"); numbers marked ASSUMPTION have no source there and are chosen to be
plausible and modest. docs/synthetic-cohort.md describes the model in prose.

Column names, ranges and categories come from `pipeline.contract`; category values used as keys
here are checked against the contract on every call (`_check_against_contract`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.contract import (
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

# --- categorical values used as parameter keys (validated against the contract) -------------
_TISA = "tisagenlecleucel"
_BREXU = "brexucabtagene_autoleucel"
_OBE = "obecabtagene_autoleucel"
_OTHER = "other"
_BB, _CD28 = "4-1BB", "CD28"
_CD19, _CD22, _CD19_22 = "CD19", "CD22", "CD19/CD22"
_FLU_CY, _LD_OTHER = "flu_cy", "other"
_FEMALE, _MALE = "female", "male"

_USED_CATEGORIES: dict[str, tuple[str, ...]] = {
    "product": (_TISA, _BREXU, _OBE, _OTHER),
    "costimulatory_domain": (_BB, _CD28),
    "target_antigen": (_CD19, _CD22, _CD19_22),
    "lymphodepletion": (_FLU_CY, _LD_OTHER),
    "sex": (_FEMALE, _MALE),
}

# --- product-level design -------------------------------------------------------------------
# Product mix: ASSUMPTION (a mixed paediatric + adult referral cohort); the evidence gives no mix.
_PRODUCT_MIX: dict[str, float] = {_TISA: 0.40, _BREXU: 0.30, _OBE: 0.15, _OTHER: 0.15}

# Share of "other" (academic) constructs with CD28 costimulation: ASSUMPTION. The evidence lists
# both CD28 (MSKCC 19-28z) and 4-1BB (FHCRC JCAR014, most CD22 / CD19/CD22 CARs) academic products.
_OTHER_P_CD28 = 0.35
# Targets of "other": ASSUMPTION; CD22 and CD19/CD22 CARs exist (evidence: Fergusson 2023).
_OTHER_TARGET_MIX: dict[str, float] = {_CD19: 0.55, _CD22: 0.20, _CD19_22: 0.25}

# Share of patients with overt marrow disease (>= 5% blasts) before lymphodepletion.
# tisa-cel: ELIANA required >= 5% blasts at screening (evidence), bridging lowers some -> 0.80.
# obe-cel: FELIX 7% overall, 4% at <= 20% vs 9% at > 20% blasts => ~60% had > 20% [D from evidence];
#   0.70 overt x ~0.9 of overt above 20% gives ~0.6.
# brexu-cel 0.75, other 0.50 (Gust 2017 cohort median 1.3%: many MRD-level): ASSUMPTION-guided.
_P_OVERT: dict[str, float] = {_TISA: 0.80, _BREXU: 0.75, _OBE: 0.70, _OTHER: 0.50}

# Prior allogeneic HCT share: ASSUMPTION (about half of relapsed/refractory B-ALL cohorts).
_P_PRIOR_ALLO: dict[str, float] = {_TISA: 0.55, _BREXU: 0.42, _OBE: 0.44, _OTHER: 0.45}

# Product-specific intercepts of the severe-ICANS logit (everything else at its reference value).
# They carry what the covariates do not: e.g. obe-cel's fast off-rate binder (evidence: FELIX).
# Calibrated numerically (iterated logit corrections at n = 300,000, several seeds; recalibrate
# after changing any effect below) so prevalence by product lands on the
# evidence: tisa-cel 10-13% (ELIANA / ELIANA+ENSIGN), brexu-cel 25-29% (ZUMA-3; real world
# 28.8%), obe-cel 7% (FELIX), other in between (B-ALL meta-analysis 2.6-45%).
_ICANS_INTERCEPT: dict[str, float] = {_TISA: -3.54, _BREXU: -3.29, _OBE: -4.31, _OTHER: -3.44}

# Severe-CRS intercepts: ASSUMPTION calibrated to ~10-20% overall; obe-cel lowest (fast off-rate).
_CRS_INTERCEPT: dict[str, float] = {_TISA: -2.49, _BREXU: -2.89, _OBE: -4.26, _OTHER: -2.81}

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
    "ferritin_ng_ml": {_TISA: 0.15, _BREXU: 0.15, _OBE: 0.15, _OTHER: 0.12},
    "il6_pg_ml": {_TISA: 0.42, _BREXU: 0.42, _OBE: 0.42, _OTHER: 0.30},
    "ifng_pg_ml": {_TISA: 0.67, _BREXU: 0.67, _OBE: 0.67, _OTHER: 0.50},
    "il15_pg_ml": {_TISA: 0.70, _BREXU: 0.70, _OBE: 0.70, _OTHER: 0.55},
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

    product = _choice(rng, _PRODUCT_MIX, n)
    is_brexu, is_other = product == _BREXU, product == _OTHER

    age = _draw_age(rng, product)
    sex = np.where(rng.random(n) < 0.57, _MALE, _FEMALE).astype(object)  # ASSUMPTION: ~57% male

    costim = np.where(is_brexu, _CD28, _BB).astype(object)  # tisa-cel, obe-cel: 4-1BB
    costim[is_other & (rng.random(n) < _OTHER_P_CD28)] = _CD28
    target = np.full(n, _CD19, dtype=object)  # licensed products target CD19
    target[is_other] = _choice(rng, _OTHER_TARGET_MIX, int(is_other.sum()))
    is_cd28 = costim == _CD28

    dose = _draw_dose(rng, product)
    # Flu/Cy in ~89% (evidence: PMC12571805); licensed labels specify it, so "other" LD is mostly
    # in academic protocols: 93% flu_cy for licensed, 70% for other gives ~89% overall.
    p_flu = np.where(is_other, 0.70, 0.93)
    flu_cy = rng.random(n) < p_flu
    lymphodepletion = np.where(flu_cy, _FLU_CY, _LD_OTHER).astype(object)

    # CNS involvement ~12% (34/292 in real-world brexu-cel [D]); neuro comorbidity ~20%, more
    # likely with CNS disease (Gust 2017 counts CNS involvement as neurological comorbidity).
    cns = rng.random(n) < 0.12
    neuro = rng.random(n) < np.where(cns, 0.45, 0.18)
    prior_allo = rng.random(n) < _per_product(product, _P_PRIOR_ALLO)

    blasts = _draw_blasts(rng, product)
    labs = _draw_labs(rng, blasts, age, prior_allo)
    # Clip BEFORE computing risk so the recorded values are exactly the ones that drove it.
    age = _clip("age_years", age)
    dose = _clip("car_t_dose_10e6_per_kg", dose)
    blasts = _clip("marrow_blasts_pct", blasts)
    labs = {name: _clip(name, values) for name, values in labs.items()}

    # --- true risk of severe ICANS ---------------------------------------------------------
    high_burden = _sigmoid((blasts - _BLASTS_THRESHOLD) / _BLASTS_WIDTH)
    easix = labs["ldh_u_l"] * labs["creatinine_mg_dl"] / np.maximum(labs["platelets_10e9_l"], 1.0)
    u_icans, u_crs = _correlated_normals(rng, n, _SD_RANDOM, _SD_RANDOM_CRS, _RHO_RANDOM)
    logit = (
        _per_product(product, _ICANS_INTERCEPT)
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
        _per_product(product, _CRS_INTERCEPT)
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
        p_miss = _per_product(product, by_product)
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
        values = _clip(feature.name, features[feature.name])
        columns[feature.name] = _as_series(feature.kind, values)
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
    for name, used in _USED_CATEGORIES.items():
        declared = set(FEATURES_BY_NAME[name].categories)
        if set(used) != declared:
            raise AssertionError(
                f"{name}: generator uses {sorted(used)}, contract has {sorted(declared)}"
            )
    for table in (_PRODUCT_MIX, _P_OVERT, _P_PRIOR_ALLO, _ICANS_INTERCEPT, _CRS_INTERCEPT):
        if set(table) != set(FEATURES_BY_NAME["product"].categories):
            raise AssertionError("a per-product table does not cover the contract's products")
    optional = {f.name for f in FEATURES if not f.required}
    if set(_P_MISSING) != optional:
        raise AssertionError(
            f"missingness table {sorted(_P_MISSING)} != optional features {sorted(optional)}"
        )
    if any(set(t) != set(_PRODUCT_MIX) for t in _P_MISSING.values()):
        raise AssertionError("a missingness row does not cover the contract's products")
    if {_SEVERE_ICANS, _SEVERE_CRS} != set(OUTCOMES):
        raise AssertionError(f"outcomes drifted: {sorted(OUTCOMES)}")


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _choice(rng: np.random.Generator, probs: dict[str, float], size: int) -> np.ndarray:
    """Categorical draw returning an object array of the dict's keys."""
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return np.array(keys, dtype=object)[rng.choice(len(keys), size=size, p=p / p.sum())]


def _per_product(product: np.ndarray, table: dict[str, float]) -> np.ndarray:
    """Row-wise lookup of a per-product scalar."""
    out = np.full(product.size, np.nan)
    for name, value in table.items():
        out[product == name] = value
    return out


def _by_product(product: np.ndarray, draws: dict[str, np.ndarray]) -> np.ndarray:
    """Row-wise pick of per-product draws (each drawn for all rows, so the stream is stable)."""
    out = np.full(product.size, np.nan)
    for name, values in draws.items():
        mask = product == name
        out[mask] = values[mask]
    return out


def _lognormal(rng: np.random.Generator, median: float, sigma: float, size: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(size))


def _draw_age(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
    """Age by product (evidence: ELIANA median 11 y, 3-24; ZUMA-3 median 40, IQR 28-52;
    FELIX median ~47)."""
    n = product.size
    paediatric = np.clip(_lognormal(rng, 11.0, 0.45, n), 1.0, 25.0)
    brexu = np.clip(40.0 + 18.0 * rng.standard_normal(n), 18.0, 85.0)  # normal IQR +-12 = 28-52
    obe = np.clip(47.0 + 16.0 * rng.standard_normal(n), 18.0, 85.0)
    other_is_child = rng.random(n) < 0.35  # ASSUMPTION: academic trials enrol children and adults
    adult = np.clip(38.0 + 16.0 * rng.standard_normal(n), 18.0, 85.0)
    other = np.where(other_is_child, paediatric, adult)
    age = _by_product(product, {_TISA: paediatric, _BREXU: brexu, _OBE: obe, _OTHER: other})
    return np.round(age, 1)


def _draw_dose(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
    """CAR+ dose (10^6/kg) by product (evidence: Levine 2021; Shah 2021; FELIX; B-ALL
    meta-analysis)."""
    n = product.size
    tisa = np.clip(_lognormal(rng, 3.0, 0.35, n), 0.2, 5.4)  # median 3.0 (0.2-5.4)
    brexu = np.clip(_lognormal(rng, 1.0, 0.06, n), 0.8, 1.2)  # target 1e6/kg
    # obe-cel: 410e6 cells total split dosing; per kg it varies with weight (ASSUMPTION: median
    # 75 kg, 20% CV) -> median ~5.5e6/kg.
    weight = _lognormal(rng, 75.0, 0.20, n)
    obe = 410.0 / weight
    other = np.clip(_lognormal(rng, 5.0, 0.9, n), 0.5, 67.0)  # meta-analysis median 5e6/kg (0.5-67)
    return _by_product(product, {_TISA: tisa, _BREXU: brexu, _OBE: obe, _OTHER: other})


def _draw_blasts(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
    """Marrow blasts %: mixture of MRD-level (< 5%, mostly near 0) and overt disease (5-97%).

    Evidence: Gust 2017 median 1.3% (range 0-97); ELIANA >= 5% at screening; FELIX ~60% > 20% [D].
    """
    n = product.size
    overt = rng.random(n) < _per_product(product, _P_OVERT)
    mrd_level = 5.0 * rng.beta(0.5, 4.0, n)
    overt_level = 5.0 + 92.0 * rng.beta(1.3, 1.1, n)
    return np.round(np.where(overt, overt_level, mrd_level), 2)


def _draw_labs(
    rng: np.random.Generator, blasts: np.ndarray, age: np.ndarray, prior_allo: np.ndarray
) -> dict[str, np.ndarray]:
    """Correlated baseline labs: burden drives LDH up and platelets down; a shared latent
    inflammation factor drives CRP, ferritin, IL-6 (and weakly IFN-g, IL-15).

    Medians/IQRs follow the PrCRS day-0 table (evidence: Wei 2023, 202 B-ALL patients):
    platelets 83.5 (26-141), LDH 163 (129-190), creatinine 46 umol/L = 0.52 mg/dL, CRP 5.7
    (3.5-13.3), ferritin 456 (287-895), IL-6 5.2 (4.0-5.4).
    """
    n = blasts.size
    # Standardised burden score: log1p(blasts) is ~0 for MRD-level, ~4.6 at 100%.
    z_burden = (np.log1p(blasts) - 2.4) / 1.5
    inflammation = 0.45 * z_burden + np.sqrt(1 - 0.45**2) * rng.standard_normal(n)

    ldh = 165.0 * np.exp(0.28 * z_burden + 0.25 * rng.standard_normal(n))
    platelets = np.minimum(100.0 * np.exp(-0.45 * z_burden + 0.75 * rng.standard_normal(n)), 1000.0)
    # Creatinine: paediatric lower (ASSUMPTION: ~0.46 mg/dL at age 11, ~0.62 in adults) -> the
    # mixed-cohort median lands near PrCRS's 0.52 mg/dL (46 umol/L / 88.42).
    creat_median = 0.20 + 0.42 * np.clip(age, 1.0, 18.0) / 18.0
    creatinine = creat_median * np.exp(0.22 * rng.standard_normal(n))
    crp = 6.0 * np.exp(0.80 * inflammation + 0.45 * rng.standard_normal(n))
    # Ferritin: inflammation plus transfusional iron after allo-HCT (ASSUMPTION: x1.4).
    ferritin = 340.0 * np.exp(0.50 * inflammation + 0.62 * rng.standard_normal(n))
    ferritin = ferritin * np.where(prior_allo, 1.4, 1.0)
    il6 = 5.0 * np.exp(0.35 * inflammation + 0.30 * rng.standard_normal(n))
    # IFN-g / IL-15 medians: ASSUMPTION (no ALL baseline values in the evidence); weak link to
    # inflammation (and, for IL-15, to burden).
    ifng = 8.0 * np.exp(0.15 * inflammation + 0.70 * rng.standard_normal(n))
    il15 = 10.0 * np.exp(0.15 * inflammation + 0.10 * z_burden + 0.50 * rng.standard_normal(n))
    return {
        "ldh_u_l": np.round(ldh, 0),
        "crp_mg_l": np.round(crp, 1),
        "platelets_10e9_l": np.round(platelets, 0),
        "creatinine_mg_dl": np.round(creatinine, 2),
        "ferritin_ng_ml": np.round(ferritin, 0),
        "il6_pg_ml": np.round(il6, 1),
        "ifng_pg_ml": np.round(ifng, 1),
        "il15_pg_ml": np.round(il15, 1),
    }


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


def _clip(name: str, values: np.ndarray) -> np.ndarray:
    """Clip floats into the contract's hard range (NaN stays NaN); other kinds pass through."""
    feature = FEATURES_BY_NAME[name]
    if feature.kind != "float":
        return values
    low = feature.min if feature.min is not None else -np.inf
    if feature.min_exclusive:
        low = np.nextafter(low, np.inf)
    high = feature.max if feature.max is not None else np.inf
    return np.clip(values.astype(float), low, high)


def _as_series(kind: str, values: np.ndarray) -> pd.Series:
    if kind == "float":
        return pd.Series(values, dtype="float64")
    if kind == "bool":
        return pd.Series(values, dtype=bool)
    return pd.Series(values, dtype=object)
