"""Text cells to typed values: numbers, booleans, categories and ids; an unparseable cell is a failure.

Text read from a file (pandas' Arrow-backed `str` columns) is parsed with Arrow compute, anything
else (frames built in code, Parquet) with pandas, to the same values and the same failures
(tests/data/test_score_speed_equivalence.py compares the two).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.compute as pc

from core.contract import FEATURES, GRADE_COLUMN, ID_COLUMN, OUTCOMES

BOOL_COLUMNS: tuple[str, ...] = tuple(
    [f.name for f in FEATURES if f.kind == "bool"] + list(OUTCOMES)
)
NUMERIC_COLUMNS: tuple[str, ...] = tuple(
    [f.name for f in FEATURES if f.kind == "float"] + [GRADE_COLUMN, "p_true"]
)
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}
_TRUE_TEXT = arrow.array(sorted(_TRUE), type=arrow.string())
_FALSE_TEXT = arrow.array(sorted(_FALSE), type=arrow.string())


def _arrow_text(col: pd.Series) -> arrow.Array | arrow.ChunkedArray | None:
    """The column as Arrow strings if it is pandas' Arrow-backed text (every CSV read), else None."""
    dtype = col.dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        return arrow.array(col.array)
    return None


def _bad_rows(index: pd.Index, bad: np.ndarray, col: str, rule: str) -> list[tuple[int, str, str]]:
    return [(int(idx), col, rule) for idx in index[bad]]


def _parse_number(out: pd.DataFrame, col: str) -> list[tuple[int, str, str]]:
    raw = out[col]
    if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        out[col] = raw.astype(float)
        return []
    rule = "must be a number (use '.' as the decimal separator)"
    arr = _arrow_text(raw)
    if arr is not None:
        # Arrow parses every number pandas.to_numeric parses, to the same double; if a cell is
        # not a number the cast fails and pandas below finds which (tests compare the two)
        try:  # usually every cell is a bare number; else strip them, as pandas below
            text = arr
            values = pc.cast(text, arrow.float64()).to_numpy(zero_copy_only=False)
        except (arrow.ArrowInvalid, arrow.ArrowNotImplementedError):
            text = pc.utf8_trim_whitespace(arr)
            text = pc.if_else(pc.equal(text, ""), arrow.scalar(None, arrow.string()), text)
            try:
                values = pc.cast(text, arrow.float64()).to_numpy(zero_copy_only=False)
            except (arrow.ArrowInvalid, arrow.ArrowNotImplementedError):
                values = None
        if values is not None:
            # a text like 'NaN' parses (pandas reads it as missing): not a number either way
            bad = pc.is_valid(text).to_numpy(zero_copy_only=False) & np.isnan(values)
            out[col] = np.array(values, dtype=float)  # Arrow's buffer may be read-only
            return _bad_rows(out.index, bad, col, rule)
    text = raw.astype("string").str.strip()
    parsed = pd.to_numeric(text, errors="coerce")
    bad = (text.notna() & (text != "") & parsed.isna()).to_numpy()
    out[col] = parsed.astype(float)
    return _bad_rows(out.index, bad, col, rule)


def _parse_bool(out: pd.DataFrame, col: str) -> list[tuple[int, str, str]]:
    raw = out[col]
    if pd.api.types.is_bool_dtype(raw):
        out[col] = raw.astype(object)
        return []
    arr = _arrow_text(raw)
    if arr is not None:
        text = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
        true = pc.is_in(text, value_set=_TRUE_TEXT).to_numpy(zero_copy_only=False)
        false = pc.is_in(text, value_set=_FALSE_TEXT).to_numpy(zero_copy_only=False)
        present = pc.and_(pc.is_valid(text), pc.not_equal(text, "")).fill_null(False)
        bad = present.to_numpy(zero_copy_only=False) & ~true & ~false
    else:
        text = raw.astype("string").str.strip().str.lower()
        true = text.isin(_TRUE).to_numpy()
        false = text.isin(_FALSE).to_numpy()
        bad = (text.notna() & (text != "")).to_numpy() & ~true & ~false
    parsed = np.full(len(raw), None, dtype=object)
    parsed[false] = False
    parsed[true] = True
    out[col] = pd.Series(parsed, index=out.index, dtype=object)
    return _bad_rows(out.index, bad, col, "must be true or false")


def _stripped_objects(col: pd.Series, few_values: bool = False) -> tuple[np.ndarray, np.ndarray] | None:
    """Stripped text as an object array (None where missing) and where it is empty; Arrow text only.

    `few_values`: a column of a few distinct values (categories) is converted through its
    dictionary, which makes one Python string per value rather than one per row.
    """
    arr = _arrow_text(col)
    if arr is None:
        return None
    text = pc.utf8_trim_whitespace(arr)
    if few_values:
        levels = pc.unique(text).drop_null()
        lookup = np.empty(len(levels) + 1, dtype=object)
        lookup[: len(levels)] = levels.to_pylist()
        lookup[len(levels)] = None  # missing
        codes = pc.index_in(text, value_set=levels).fill_null(len(levels)).to_numpy(zero_copy_only=False)
        values = lookup[codes]
        empty = (lookup == "")[codes]
        return values, empty
    empty = pc.equal(text, "").fill_null(False).to_numpy(zero_copy_only=False)
    return text.to_numpy(zero_copy_only=False), empty


def parse(df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    """Turn text cells into typed values; unparseable cells become failures (never values).

    Text read from a file (pandas' Arrow-backed `str` columns) is parsed with Arrow compute;
    anything else (frames built in code, Parquet) with pandas, to the same values and failures.
    """
    out = df.copy()
    failures: list[tuple[int, str, str]] = []
    for col in NUMERIC_COLUMNS:
        if col in out:
            failures.extend(_parse_number(out, col))
    for col in BOOL_COLUMNS:
        if col in out:
            failures.extend(_parse_bool(out, col))
    for f in FEATURES:
        if f.kind == "category" and f.name in out:
            fast = _stripped_objects(out[f.name], few_values=True)
            if fast is not None:
                values, empty = fast
                values[empty] = pd.NA  # as below: an empty cell is NA, a missing one None
                out[f.name] = pd.Series(values, index=out.index, dtype=object)
                continue
            text = out[f.name].astype("string").str.strip()
            out[f.name] = text.where(text != "", pd.NA).astype(object).where(text.notna(), None)
    if ID_COLUMN in out:
        fast = _stripped_objects(out[ID_COLUMN])
        if fast is not None:
            values, empty = fast
            values[empty] = None
            out[ID_COLUMN] = pd.Series(values, index=out.index, dtype=object)
        else:
            ids = out[ID_COLUMN].astype("string").str.strip()
            out[ID_COLUMN] = ids.astype(object).where(ids.notna() & (ids != ""), None)
    return out, failures



def _as_boolean(col: pd.Series) -> pd.Series:
    """col.astype("boolean"), built directly for the parsed form (objects True / False / None)."""
    values = col.to_numpy()
    if col.dtype == object and pd.api.types.infer_dtype(values, skipna=True) == "boolean":
        if pd.api.types.infer_dtype(values, skipna=False) == "boolean":  # none missing
            return pd.Series(
                pd.arrays.BooleanArray(values.astype(bool), np.zeros(len(values), dtype=bool)),
                index=col.index,
                name=col.name,
            )
        missing = pd.isna(values)
        data = np.zeros(len(values), dtype=bool)
        data[~missing] = values[~missing].astype(bool)
        return pd.Series(pd.arrays.BooleanArray(data, missing), index=col.index, name=col.name)
    return col.astype("boolean")


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """The parsed frame as the pipeline uses it: nullable booleans, every optional number column present."""
    out = df.copy(deep=False)  # columns are replaced, never written into
    for col in BOOL_COLUMNS:
        if col in out:
            out[col] = _as_boolean(out[col])
    for f in FEATURES:
        if f.kind == "float" and f.name not in out:
            out[f.name] = np.nan  # an optional column absent from the file
    return out
