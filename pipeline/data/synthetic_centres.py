"""A synthetic consortium: several centres with real between-centre differences, truth known.

Each centre's patients are drawn by `pipeline.data.synthetic.generate_cohort` (its own seed) and then
(1) re-sampled to the centre's product mix (case mix: which products, hence which patients, it
treats), and (2) optionally given a centre effect on the logit of the true risk (practice,
supportive care, grading habits: what no covariate carries), after which the outcome is redrawn
from the new true risk. `p_true` stays the probability the outcome was drawn with, so each
centre's truth (its prevalence, and O/E of any model) is known. `prevalence_factor` solves for
the centre effect that multiplies the centre's expected prevalence by that factor.

ASSUMPTION (no source): the default consortium's mixes and effects are illustrative, chosen to
span what registries report between centres (prevalence of severe ICANS 5-30%, product mixes from
mostly tisa-cel paediatric centres to brexu-cel adult centres).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import brentq
from scipy.special import expit, logit

from pipeline.data.synthetic import _draw_grade, generate_cohort
from pipeline.data.synthetic_draws import BREXU, OBE, OTHER, PRODUCT_MIX, TISA
from core.contract import CENTRE_COLUMN, CENTRE_PATTERN, GRADE_COLUMN, ID_COLUMN, ORACLE_COLUMN


@dataclass(frozen=True)
class CentreSpec:
    code: str
    n: int
    product_mix: dict[str, float] = field(default_factory=lambda: dict(PRODUCT_MIX))
    logit_shift: float = 0.0  # centre effect on the true logit
    prevalence_factor: float | None = None  # overrides logit_shift: expected prevalence x this


DEFAULT_CONSORTIUM: tuple[CentreSpec, ...] = (
    CentreSpec("PAED1", 180, {TISA: 0.75, BREXU: 0.05, OBE: 0.05, OTHER: 0.15}, -0.2),
    CentreSpec("ADULT1", 450, {TISA: 0.20, BREXU: 0.45, OBE: 0.20, OTHER: 0.15}, 0.0),
    CentreSpec("ADULT2", 300, {TISA: 0.25, BREXU: 0.35, OBE: 0.30, OTHER: 0.10}, 0.3),
    CentreSpec("MIXED1", 550, dict(PRODUCT_MIX), 0.0),
    CentreSpec("ACAD1", 250, {TISA: 0.25, BREXU: 0.20, OBE: 0.10, OTHER: 0.45}, -0.3),
)


def _resample_mix(df: pd.DataFrame, n: int, mix: dict[str, float], rng: np.random.Generator) -> pd.DataFrame:
    """n rows without replacement, weighted so the product mix becomes `mix` (importance weights)."""
    base = df["product"].map(PRODUCT_MIX).to_numpy(float)
    target = df["product"].map(lambda p: mix.get(p, 0.0)).to_numpy(float)
    w = target / base
    idx = rng.choice(len(df), size=n, replace=False, p=w / w.sum())
    return df.iloc[np.sort(idx)].reset_index(drop=True)


def _shift_for(p: np.ndarray, factor: float) -> float:
    goal = factor * float(p.mean())
    if not 0 < goal < 1:
        raise ValueError(f"prevalence_factor {factor} gives an impossible prevalence")
    lp = logit(np.clip(p, 1e-12, 1 - 1e-12))
    return float(brentq(lambda s: float(expit(lp + s).mean()) - goal, -10, 10, xtol=1e-12))


def generate_centre(spec: CentreSpec, seed: int) -> pd.DataFrame:
    """One centre's patients; identical for identical (spec, seed)."""
    import re

    if not re.match(CENTRE_PATTERN, spec.code):
        raise ValueError("centre code must be 1-16 letters, digits, '_' or '-'")
    rng = np.random.default_rng([seed, 27])
    pool = generate_cohort(max(6 * spec.n, 600), seed)
    df = _resample_mix(pool, spec.n, spec.product_mix, rng)
    p = df[ORACLE_COLUMN].to_numpy(float)
    shift = _shift_for(p, spec.prevalence_factor) if spec.prevalence_factor is not None else spec.logit_shift
    if shift != 0.0:
        p = expit(logit(np.clip(p, 1e-12, 1 - 1e-12)) + shift)
        severe = rng.random(len(df)) < p
        df[ORACLE_COLUMN] = p
        df["severe_icans"] = severe
        df[GRADE_COLUMN] = _draw_grade(rng, severe, p)
    df[ID_COLUMN] = [f"{spec.code}-{i:05d}" for i in range(1, len(df) + 1)]
    df.insert(1, CENTRE_COLUMN, spec.code)
    return df


def generate_consortium(centres: tuple[CentreSpec, ...] = DEFAULT_CONSORTIUM, seed: int = 42) -> pd.DataFrame:
    """All centres in one file (each centre seeded from `seed` and its position)."""
    if len({c.code for c in centres}) != len(centres):
        raise ValueError("centre codes must be unique")
    return pd.concat([generate_centre(c, seed + 101 * (i + 1)) for i, c in enumerate(centres)], ignore_index=True)


def truth_by_centre(df: pd.DataFrame, outcome: str = "severe_icans") -> pd.DataFrame:
    """The generator's truth per centre: n, events, expected prevalence (mean p_true), and the
    oracle's AUROC (the ceiling at that centre)."""
    from pipeline.stats.metrics import auroc

    rows = []
    for code, g in df.groupby(CENTRE_COLUMN, sort=True):
        y = g[outcome].astype(int).to_numpy()
        rows.append({"centre": code, "n": len(g), "events": int(y.sum()),
                     "true_prevalence": float(g[ORACLE_COLUMN].mean()),
                     "oracle_auroc": auroc(y, g[ORACLE_COLUMN].to_numpy(float))})
    return pd.DataFrame(rows)
