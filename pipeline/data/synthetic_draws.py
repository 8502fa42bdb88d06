"""The synthetic patients' characteristics, drawn per feature: product, age, dose, burden, labs.

`pipeline.data.synthetic` draws the patients with these helpers and then their outcomes (the outcome model
and its effect sizes live there). Split here because the patients and the outcome model are sourced
and changed separately; the draw ORDER is set by `generate_cohort` and fixes the random stream, so
a helper's calls must not be reordered. Evidence citations as in `pipeline.data.synthetic`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core.contract import FEATURES_BY_NAME


# --- categorical values used as parameter keys (validated against the contract) -------------
TISA = "tisagenlecleucel"
BREXU = "brexucabtagene_autoleucel"
OBE = "obecabtagene_autoleucel"
OTHER = "other"
BB, CD28 = "4-1BB", "CD28"
CD19, CD22, CD19_22 = "CD19", "CD22", "CD19/CD22"
FLU_CY, LD_OTHER = "flu_cy", "other"
FEMALE, MALE = "female", "male"

USED_CATEGORIES: dict[str, tuple[str, ...]] = {
    "product": (TISA, BREXU, OBE, OTHER),
    "costimulatory_domain": (BB, CD28),
    "target_antigen": (CD19, CD22, CD19_22),
    "lymphodepletion": (FLU_CY, LD_OTHER),
    "sex": (FEMALE, MALE),
}

# --- product-level design -------------------------------------------------------------------
# Product mix: ASSUMPTION (a mixed paediatric + adult referral cohort); the evidence gives no mix.
PRODUCT_MIX: dict[str, float] = {TISA: 0.40, BREXU: 0.30, OBE: 0.15, OTHER: 0.15}

# Share of "other" (academic) constructs with CD28 costimulation: ASSUMPTION. The evidence lists
# both CD28 (MSKCC 19-28z) and 4-1BB (FHCRC JCAR014, most CD22 / CD19/CD22 CARs) academic products.
OTHER_P_CD28 = 0.35
# Targets of "other": ASSUMPTION; CD22 and CD19/CD22 CARs exist (evidence: Fergusson 2023).
OTHER_TARGET_MIX: dict[str, float] = {CD19: 0.55, CD22: 0.20, CD19_22: 0.25}

# Share of patients with overt marrow disease (>= 5% blasts) before lymphodepletion.
# tisa-cel: ELIANA required >= 5% blasts at screening (evidence), bridging lowers some -> 0.80.
# obe-cel: FELIX 7% overall, 4% at <= 20% vs 9% at > 20% blasts => ~60% had > 20% [D from evidence];
#   0.70 overt x ~0.9 of overt above 20% gives ~0.6.
# brexu-cel 0.75, other 0.50 (Gust 2017 cohort median 1.3%: many MRD-level): ASSUMPTION-guided.
P_OVERT: dict[str, float] = {TISA: 0.80, BREXU: 0.75, OBE: 0.70, OTHER: 0.50}

# Prior allogeneic HCT share: ASSUMPTION (about half of relapsed/refractory B-ALL cohorts).
P_PRIOR_ALLO: dict[str, float] = {TISA: 0.55, BREXU: 0.42, OBE: 0.44, OTHER: 0.45}


# --- draws ------------------------------------------------------------------------------------


def choice(rng: np.random.Generator, probs: dict[str, float], size: int) -> np.ndarray:
    """Categorical draw returning an object array of the dict's keys."""
    keys = list(probs)
    p = np.array([probs[k] for k in keys], dtype=float)
    return np.array(keys, dtype=object)[rng.choice(len(keys), size=size, p=p / p.sum())]


def per_product(product: np.ndarray, table: dict[str, float]) -> np.ndarray:
    """Row-wise lookup of a per-product scalar."""
    out = np.full(product.size, np.nan)
    for name, value in table.items():
        out[product == name] = value
    return out


def by_product(product: np.ndarray, draws: dict[str, np.ndarray]) -> np.ndarray:
    """Row-wise pick of per-product draws (each drawn for all rows, so the stream is stable)."""
    out = np.full(product.size, np.nan)
    for name, values in draws.items():
        mask = product == name
        out[mask] = values[mask]
    return out


def _lognormal(rng: np.random.Generator, median: float, sigma: float, size: int) -> np.ndarray:
    return median * np.exp(sigma * rng.standard_normal(size))


def draw_age(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
    """Age by product (evidence: ELIANA median 11 y, 3-24; ZUMA-3 median 40, IQR 28-52;
    FELIX median ~47)."""
    n = product.size
    paediatric = np.clip(_lognormal(rng, 11.0, 0.45, n), 1.0, 25.0)
    brexu = np.clip(40.0 + 18.0 * rng.standard_normal(n), 18.0, 85.0)  # normal IQR +-12 = 28-52
    obe = np.clip(47.0 + 16.0 * rng.standard_normal(n), 18.0, 85.0)
    other_is_child = rng.random(n) < 0.35  # ASSUMPTION: academic trials enrol children and adults
    adult = np.clip(38.0 + 16.0 * rng.standard_normal(n), 18.0, 85.0)
    other = np.where(other_is_child, paediatric, adult)
    age = by_product(product, {TISA: paediatric, BREXU: brexu, OBE: obe, OTHER: other})
    return np.round(age, 1)


def draw_dose(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
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
    return by_product(product, {TISA: tisa, BREXU: brexu, OBE: obe, OTHER: other})


def draw_blasts(rng: np.random.Generator, product: np.ndarray) -> np.ndarray:
    """Marrow blasts %: mixture of MRD-level (< 5%, mostly near 0) and overt disease (5-97%).

    Evidence: Gust 2017 median 1.3% (range 0-97); ELIANA >= 5% at screening; FELIX ~60% > 20% [D].
    """
    n = product.size
    overt = rng.random(n) < per_product(product, P_OVERT)
    mrd_level = 5.0 * rng.beta(0.5, 4.0, n)
    overt_level = 5.0 + 92.0 * rng.beta(1.3, 1.1, n)
    return np.round(np.where(overt, overt_level, mrd_level), 2)


def draw_labs(
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



def clip(name: str, values: np.ndarray) -> np.ndarray:
    """Clip floats into the contract's hard range (NaN stays NaN); other kinds pass through."""
    feature = FEATURES_BY_NAME[name]
    if feature.kind != "float":
        return values
    low = feature.min if feature.min is not None else -np.inf
    if feature.min_exclusive:
        low = np.nextafter(low, np.inf)
    high = feature.max if feature.max is not None else np.inf
    clipped: np.ndarray = np.clip(values.astype(float), low, high)
    return clipped


def as_series(kind: str, values: np.ndarray) -> pd.Series:
    """A column of the contract's kind: float64, bool, or object (categories, ids)."""
    if kind == "float":
        return pd.Series(values, dtype="float64")
    if kind == "bool":
        return pd.Series(values, dtype=bool)
    return pd.Series(values, dtype=object)
