"""From validated rows to the model matrix: one encoding for training, scoring and serving.

Floats pass through (missing stays NaN: the tree models route it natively), booleans become 0/1,
a two-level category becomes one 0/1 column for its second level, and a category with more
levels is one-hot encoded. SHAP values of the columns that came from one contract feature are
summed back into that feature, which keeps the explanation in the contract's own terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from core.contract import FEATURES, Feature


@dataclass(frozen=True)
class MatrixColumn:
    name: str
    feature: str
    level: str | None = None  # the category level this column indicates


def _columns_for(f: Feature) -> list[MatrixColumn]:
    if f.kind in ("float", "bool"):
        return [MatrixColumn(f.name, f.name)]
    if len(f.categories) == 2:
        return [MatrixColumn(f"{f.name}={f.categories[1]}", f.name, f.categories[1])]
    return [MatrixColumn(f"{f.name}={c}", f.name, c) for c in f.categories]


MATRIX_COLUMNS: tuple[MatrixColumn, ...] = tuple(c for f in FEATURES for c in _columns_for(f))
MATRIX_NAMES: tuple[str, ...] = tuple(c.name for c in MATRIX_COLUMNS)
N_MATRIX = len(MATRIX_COLUMNS)
FEATURE_ORDER: tuple[str, ...] = tuple(f.name for f in FEATURES)

# (n_matrix, n_features) 0/1: contributions @ GROUP sums one-hot columns back to their feature.
GROUP = np.zeros((N_MATRIX, len(FEATURES)), dtype=np.float64)
for _j, _c in enumerate(MATRIX_COLUMNS):
    GROUP[_j, FEATURE_ORDER.index(_c.feature)] = 1.0


def monotone_constraints() -> tuple[int, ...]:
    """Per matrix column: the baseline direction of effect the contract enforces (+1 raises risk;
    0 free). A multi-level category's indicator takes its level's `level_directions` entry."""
    by_name = {f.name: f for f in FEATURES}
    out = []
    for c in MATRIX_COLUMNS:
        f = by_name[c.feature]
        if f.kind == "category" and len(f.categories) > 2:
            out.append(f.level_directions[f.categories.index(c.level)] if f.level_directions else 0)
        else:
            out.append(f.direction)
    return tuple(out)


def _float_column(col: pd.Series) -> np.ndarray:
    if col.dtype == np.float64:
        return col.to_numpy()  # the same values as the general conversion below, without its copies
    if isinstance(col.dtype, pd.BooleanDtype):
        return col.to_numpy(dtype=np.float64, na_value=np.nan)
    return pd.to_numeric(col.astype("Float64"), errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan
    )


def _level_codes(col: pd.Series, levels: list[str]) -> np.ndarray | None:
    """Per row, the index in `levels` of its value, -1 for any other value or a missing one.

    Only for text columns (str values and missing markers), where matching a level by hash is
    `col == level`; None otherwise.
    """
    if col.dtype != object and not isinstance(col.dtype, pd.StringDtype):
        return None
    values = col.to_numpy()
    if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
        return None
    return pd.Index(levels, dtype=object).get_indexer(pd.Index(values, dtype=object))


# feature -> its matrix columns, as (index, level)
_FEATURE_PLAN: tuple[tuple[str, tuple[tuple[int, str | None], ...]], ...] = tuple(
    (f, tuple((j, c.level) for j, c in enumerate(MATRIX_COLUMNS) if c.feature == f))
    for f in FEATURE_ORDER
)


def encode_frame(df: pd.DataFrame) -> np.ndarray:
    """Validated cohort rows -> float64 matrix in MATRIX_COLUMNS order."""
    n = len(df)
    X = np.empty((n, N_MATRIX), dtype=np.float64)
    for feature, columns in _FEATURE_PLAN:
        if feature not in df:
            for j, _ in columns:
                X[:, j] = np.nan
            continue
        col = df[feature]
        if columns[0][1] is None:  # float or bool: one column
            X[:, columns[0][0]] = _float_column(col)
            continue
        codes = _level_codes(col, [level for _, level in columns if level is not None])  # all are levels here
        for k, (j, level) in enumerate(columns):
            if codes is not None:
                X[:, j] = codes == k
            else:
                X[:, j] = (col.astype(object) == level).to_numpy(dtype=np.float64)
    return X


_PLAN: tuple[tuple[int, str, str | None], ...] = tuple(
    (j, c.feature, c.level) for j, c in enumerate(MATRIX_COLUMNS)
)


def encode_record(record: Mapping[str, object], out: np.ndarray) -> np.ndarray:
    """One validated request -> a preallocated row (the serving hot path: no DataFrame)."""
    for j, feature, level in _PLAN:
        value = record.get(feature)
        if level is not None:
            out[j] = 1.0 if value == level else 0.0
        elif value is None:
            out[j] = np.nan
        else:
            out[j] = float(value)  # type: ignore[arg-type]
    return out


def training_ranges(df: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """The 1st-99th percentile of each float feature in the development data (for warnings)."""
    out: dict[str, tuple[float, float]] = {}
    for f in FEATURES:
        if f.kind != "float" or f.name not in df:
            continue
        values = pd.to_numeric(df[f.name], errors="coerce").dropna()
        if len(values):
            lo, hi = np.percentile(values, [1, 99])
            out[f.name] = (float(lo), float(hi))
    return out
