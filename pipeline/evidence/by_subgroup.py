"""Performance by subgroup (age, costimulatory domain, product, sex, tumour burden), with small
subgroups flagged and never dropped."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from core.contract import FEATURES_BY_NAME
from pipeline.evidence.discrimination import discrimination_with_ci
from pipeline.evidence.names import safe_name
from pipeline.stats.metrics import _as_binary, _as_score, brier

# A subgroup is flagged `small` (its figures are unstable) below either bound; it is never dropped.
SMALL_SUBGROUP_N = 100
SMALL_SUBGROUP_EVENTS = 10
# The clinical cut-offs of the numeric groupings: children and adults; tumour burden.
ADULT_AGE_YEARS = 18.0
HIGH_MARROW_BLASTS_PCT = 20.0


@dataclass(frozen=True)
class SubgroupSpec:
    """One way of splitting patients: `assign(df)` returns a level slug per row."""

    name: str  # slug used in metric names
    label: str
    levels: tuple[tuple[str, str], ...]  # (slug, display) in display order
    assign: Callable[[pd.DataFrame], np.ndarray]


def _numeric_split(column: str, cut: float, below: tuple[str, str], above: tuple[str, str], closed_below: bool):
    def assign(df: pd.DataFrame) -> np.ndarray:
        x = pd.to_numeric(df[column].astype("Float64"), errors="coerce").to_numpy(dtype=float, na_value=np.nan)
        low = x <= cut if closed_below else x < cut
        return np.where(np.isnan(x), "missing", np.where(low, below[0], above[0])).astype(object)

    return assign


def _categorical(column: str):
    def assign(df: pd.DataFrame) -> np.ndarray:
        col = df[column].astype(object)
        return np.array([("missing" if pd.isna(v) else safe_name(v)) for v in col], dtype=object)

    return assign


def _category_spec(column: str, label: str) -> SubgroupSpec:
    cats = FEATURES_BY_NAME[column].categories
    return SubgroupSpec(column, label, tuple((safe_name(c), c) for c in cats), _categorical(column))


def _numeric_spec(name: str, label: str, column: str, cut: float, unit: str, closed_below: bool) -> SubgroupSpec:
    """Two levels of a numeric contract column split at `cut` (<= cut when closed_below, else < cut),
    slugs and labels written from the cut: 18, ' y' -> 'lt18' '< 18 y' and 'ge18' '>= 18 y'."""
    if FEATURES_BY_NAME[column].kind != "float":
        raise ValueError(f"{column} is not a numeric column of the contract")
    c = f"{cut:g}"
    below = (f"le{c}", f"<= {c}{unit}") if closed_below else (f"lt{c}", f"< {c}{unit}")
    above = (f"gt{c}", f"> {c}{unit}") if closed_below else (f"ge{c}", f">= {c}{unit}")
    return SubgroupSpec(name, label, (below, above), _numeric_split(column, cut, below, above, closed_below))


DEFAULT_SUBGROUPS: tuple[SubgroupSpec, ...] = (
    _numeric_spec("age", "Age group", "age_years", ADULT_AGE_YEARS, " y", closed_below=False),
    _category_spec("costimulatory_domain", "Costimulatory domain"),
    _category_spec("product", "Product"),
    _category_spec("sex", "Sex"),
    _numeric_spec("marrow_blasts", "Tumour burden (marrow blasts)", "marrow_blasts_pct", HIGH_MARROW_BLASTS_PCT, "%",
                  closed_below=True),
)


def subgroups(
    df: pd.DataFrame,
    y: np.ndarray,
    p: np.ndarray,
    specs: Sequence[SubgroupSpec] = DEFAULT_SUBGROUPS,
    n_boot: int = 1000,
    seed: int = 0,
    min_n: int = SMALL_SUBGROUP_N,
    min_events: int = SMALL_SUBGROUP_EVENTS,
) -> pd.DataFrame:
    """Performance by subgroup: every declared level (empty ones included, n = 0) plus any other
    level present (e.g. 'missing'), so the counts of each grouping sum to n.

    Columns: group, group_label, level, level_label, n, events, prevalence, mean_predicted, auroc
    (NaN with one class), auroc_ci_low/high (bootstrap), calibration_in_the_large (mean p - mean
    y), brier, small (n < min_n or events < min_events), small_reason. Small subgroups are flagged,
    never dropped: their figures are shown with that warning.
    """
    y = _as_binary(y)
    p = _as_score(p, y.shape[0], probability=True)
    if len(df) != y.shape[0]:
        raise ValueError(f"df has {len(df)} rows but y has {y.shape[0]}")
    rows = []
    for spec in specs:
        labels = spec.assign(df.reset_index(drop=True))
        declared = [slug for slug, _ in spec.levels]
        extra = sorted(set(labels) - set(declared))
        display = dict(spec.levels) | {e: e for e in extra}
        for level in declared + extra:
            mask = labels == level
            n, events = int(mask.sum()), int(y[mask].sum())
            row: dict[str, Any] = {"group": spec.name, "group_label": spec.label, "level": level,
                                   "level_label": display[level], "n": n, "events": events}
            if n:
                yy, pp = y[mask], p[mask]
                row.update(prevalence=events / n, mean_predicted=float(pp.mean()),
                           calibration_in_the_large=float(pp.mean() - yy.mean()), brier=brier(yy, pp))
                d = discrimination_with_ci(yy, pp, n_boot=n_boot, seed=seed, with_auprc=False)
                row.update(auroc=d["auroc"], auroc_ci_low=d["auroc_ci_low"], auroc_ci_high=d["auroc_ci_high"])
            else:
                row.update({k: float("nan") for k in ("prevalence", "mean_predicted", "calibration_in_the_large",
                                                      "brier", "auroc", "auroc_ci_low", "auroc_ci_high")})
            reasons = ([f"n < {min_n}"] if n < min_n else []) + ([f"events < {min_events}"] if events < min_events else [])
            row["small"] = bool(reasons)
            row["small_reason"] = "; ".join(reasons)
            rows.append(row)
    return pd.DataFrame(rows)
