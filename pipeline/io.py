"""Reading cohort files: parse, validate lazily, and report every problem without echoing values.

Patient values never appear in an error report: a report names the column, the rule and the
file rows. The rejected rows themselves go only to a quarantine file the user asked for.
"""

from __future__ import annotations

import codecs
import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as arrow
import pyarrow.compute as pc
import pyarrow.csv as arrow_csv
from pandas._libs.parsers import STR_NA_VALUES

from pipeline.contract import (
    FEATURES,
    FEATURES_BY_NAME,
    GRADE_COLUMN,
    ID_COLUMN,
    OUTCOMES,
)
from pipeline.schema import cohort_schema

log = logging.getLogger(__name__)

KNOWN_COLUMNS: frozenset[str] = frozenset(
    {ID_COLUMN, GRADE_COLUMN, "p_true", *OUTCOMES, *(f.name for f in FEATURES)}
)
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
MAX_REPORTED_ROWS = 5
MAX_REPORT_LINES = 50


class CohortError(Exception):
    """A cohort file that cannot be used; the message is safe to show (no patient values)."""

    def __init__(self, message: str, report: "ValidationReport | None" = None):
        super().__init__(message)
        self.report = report


@dataclass
class ValidationReport:
    """Failures as (row, column, rule); `row` is the 1-based data row (file line minus header)."""

    failures: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["row", "column", "rule"])
    )
    n_rows: int = 0
    ignored_columns: list[str] = field(default_factory=list)

    @property
    def invalid_rows(self) -> np.ndarray:
        return np.sort(self.failures["row"].unique())

    @property
    def ok(self) -> bool:
        return self.failures.empty

    def summary(self) -> str:
        if self.ok:
            return f"{self.n_rows} rows, all valid"
        lines = [
            f"{len(self.invalid_rows)} of {self.n_rows} rows are invalid "
            f"({len(self.failures)} failures):"
        ]
        grouped = self.failures.groupby(["column", "rule"], sort=True)["row"]
        for i, ((column, rule), rows) in enumerate(grouped):
            if i >= MAX_REPORT_LINES:
                lines.append(f"  ... and {grouped.ngroups - MAX_REPORT_LINES} more column/rule pairs")
                break
            shown = ", ".join(str(r) for r in sorted(rows)[:MAX_REPORTED_ROWS])
            more = f" and {len(rows) - MAX_REPORTED_ROWS} more" if len(rows) > MAX_REPORTED_ROWS else ""
            lines.append(f"  column '{column}': {rule}: {len(rows)} rows (rows {shown}{more})")
        return "\n".join(lines)

    def reasons_by_row(self) -> pd.Series:
        return (
            self.failures.assign(reason=self.failures["column"] + ": " + self.failures["rule"])
            .groupby("row")["reason"]
            .agg("; ".join)
        )


@dataclass
class Cohort:
    """A validated cohort: typed columns, plus what was rejected and why."""

    data: pd.DataFrame
    report: ValidationReport
    rejected: pd.DataFrame
    sha256: str | None = None
    source: str | None = None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_table(path: Path) -> pd.DataFrame:
    """Read CSV or Parquet as strings (CSV) so that parsing is ours and every cell is checked."""
    path = Path(path)
    if not path.exists():
        raise CohortError(f"cohort file not found: {path}")
    if path.stat().st_size == 0:
        raise CohortError(f"cohort file is empty: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            # a stored pandas index (e.g. patient_id) becomes a column; rows count from 1 again
            df = pd.read_parquet(path)
            df = df.reset_index(drop=df.index.name is None)
        elif suffix in (".csv", ".txt", ""):
            first = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0]
            header = first.astype(str).str.strip()
            dupes = sorted(set(header[header.duplicated()]))
            if dupes:
                raise CohortError(f"duplicate column names: {', '.join(dupes)}")
            # blank lines are kept and then dropped, so that reported rows match the file
            df = _read_csv_arrow(path, first)
            if df is None:
                df = pd.read_csv(
                    path, dtype=str, keep_default_na=True, skipinitialspace=True, skip_blank_lines=False
                )
            df = df.dropna(how="all")
        else:
            raise CohortError(f"unsupported cohort file type '{suffix}': use .csv or .parquet")
    except CohortError:
        raise
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as exc:
        raise CohortError(
            f"could not read {path.name} as {suffix.lstrip('.') or 'csv'}: {type(exc).__name__}"
            + _delimiter_hint(path)
        ) from None
    if df.empty:
        raise CohortError(f"cohort file has no data rows: {path}")
    df.columns = [str(c).strip() for c in df.columns]
    return df


_NA_TEXT = sorted(STR_NA_VALUES)  # what keep_default_na=True means


def _read_csv_arrow(path: Path, first: pd.Series) -> pd.DataFrame | None:
    """The frame the pandas read in `read_table` gives, read by pyarrow's multi-threaded parser.

    Every cell stays text (`str` dtype), pandas' default NA strings and empty cells are missing,
    and a blank line stays an all-missing row. Returns None, and pandas reads the file instead,
    whenever pyarrow might read it differently: a field starting with a space (pandas skips it),
    a blank or unnamed header, a line break in a header name, rows with another number of fields
    than the header, or anything pyarrow cannot parse (its errors are not ours to report).
    """
    if first.isna().any() or first.str.contains("[\r\n]", regex=True).any():
        return None
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    if data[:1] in (b"\r", b"\n"):
        return None
    if b" " in data and (data[:1] == b" " or b", " in data or b"\n " in data or b"\r " in data):
        return None
    names = [f"c{i}" for i in range(len(first))]
    try:
        table = arrow_csv.read_csv(
            arrow.py_buffer(data),
            read_options=arrow_csv.ReadOptions(column_names=names, skip_rows=1),
            parse_options=arrow_csv.ParseOptions(newlines_in_values=True, ignore_empty_lines=False),
            convert_options=arrow_csv.ConvertOptions(
                column_types=dict.fromkeys(names, arrow.string()),
                null_values=_NA_TEXT,  # quoted or not, as pandas
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
    except (arrow.ArrowException, ValueError, OSError):
        return None
    df = table.to_pandas()
    df.columns = list(first)
    return df


def _delimiter_hint(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            first = fh.readline()
    except OSError:
        return ""
    for sep, name in ((";", "semicolons"), ("\t", "tabs"), ("|", "pipes")):
        if first.count(sep) > first.count(","):
            return f" (the file seems to use {name} as the delimiter; a comma is expected)"
    return ""


def _check_columns(df: pd.DataFrame, outcome: str | None, require_id: bool) -> list[str]:
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise CohortError(f"duplicate column names: {', '.join(dupes)}")
    required = [f.name for f in FEATURES if f.required]
    if require_id:
        required.insert(0, ID_COLUMN)
    if outcome is not None:
        required.append(outcome)
    missing = [c for c in required if c not in df.columns]
    if missing:
        hint = ""
        if len(df.columns) == 1 and any(s in df.columns[0] for s in (";", "\t", "|")):
            hint = " (the file seems to use another delimiter than a comma: a comma is expected)"
        raise CohortError(f"missing required columns: {', '.join(missing)}{hint}")
    return sorted(c for c in df.columns if c not in KNOWN_COLUMNS)


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


def _parse(df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
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


def _rule_text(column: str, check: str) -> str:
    f = FEATURES_BY_NAME.get(column)
    if check in ("not_nullable",) or check.startswith("dtype("):
        return "is required and must not be empty" if check == "not_nullable" else f"has the wrong type ({check})"
    if check == "field_uniqueness":
        return "must be unique (duplicate value)"
    if f is not None and f.kind == "float":
        return f"must be in {f.range_text} {f.unit}".rstrip(" -")
    if f is not None and f.kind == "category":
        return f"must be one of: {f.range_text}"
    if check.startswith("isin([0, 1, 2, 3, 4]"):
        return "must be an integer grade 0-4"
    if check.startswith("isin([True, False]"):
        return "must be true or false"
    if check.startswith("in_range(0, 1)"):
        return "must be a probability in [0, 1]"
    if check.startswith("str_length"):
        return "must not be empty"
    return check


def validate(
    df: pd.DataFrame, outcome: str | None, require_id: bool = True
) -> tuple[pd.DataFrame, ValidationReport]:
    """Validate every row and column in one pass; returns typed rows and the full report."""
    ignored = _check_columns(df, outcome, require_id)
    if ignored:
        warnings.warn(
            f"ignoring {len(ignored)} columns that are not in the data contract: {', '.join(ignored)}",
            stacklevel=2,
        )
        df = df.drop(columns=ignored)
    parsed, parse_failures = _parse(df)
    rows: list[tuple[int, str, str]] = list(parse_failures)
    rows.extend(_schema_failures(parsed, outcome, require_id))  # pandera reports every failure
    failures = pd.DataFrame(rows, columns=["idx", "column", "rule"])
    # one message per cell: an unparseable number is not also reported as "missing"
    failures = failures.drop_duplicates(subset=["idx", "column"], keep="first")
    failures = failures.assign(row=failures["idx"] + 1).drop(columns="idx")
    report = ValidationReport(
        failures=failures.sort_values(["row", "column"]).reset_index(drop=True),
        n_rows=len(df),
        ignored_columns=ignored,
    )
    return _typed(parsed), report


def _schema_failures(
    parsed: pd.DataFrame, outcome: str | None, require_id: bool
) -> list[tuple[int, str, str]]:
    """Every failure of the pandera schema as (index, column, rule), in pandera's order."""
    import pandera.pandas as pa

    schema = cohort_schema(outcome, require_id=require_id)
    rows: list[tuple[int, str, str]] = []
    try:
        schema.validate(parsed, lazy=True)
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
        for rec in fc.itertuples(index=False):
            check = str(rec.check)
            if rec.schema_context == "DataFrameSchema":
                if rec.index is not None and not (isinstance(rec.index, float) and np.isnan(rec.index)):
                    rows.append((int(rec.index), "severe_icans", "must equal icans_max_grade >= 3"))
                continue
            column = rec.column if isinstance(rec.column, str) else None
            if rec.index is None or (isinstance(rec.index, float) and np.isnan(rec.index)):
                if column is None:
                    continue
                raise CohortError(f"column '{column}': {_rule_text(column, check)}")
            idx = int(rec.index)
            if column is None:
                column = "severe_icans" if "severe_icans" in check else "row"
                rule = "must equal icans_max_grade >= 3" if "severe_icans" in check else check
            else:
                rule = _rule_text(column, check)
            rows.append((idx, column, rule))
    return rows


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


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy(deep=False)  # columns are replaced, never written into
    for col in BOOL_COLUMNS:
        if col in out:
            out[col] = _as_boolean(out[col])
    for f in FEATURES:
        if f.kind == "float" and f.name not in out:
            out[f.name] = np.nan  # an optional column absent from the file
    return out


def read_cohort(
    path: Path,
    outcome: str | None,
    on_invalid: str = "refuse",
    require_id: bool = True,
) -> Cohort:
    """Read and validate a cohort file. `on_invalid`: 'refuse' raises, 'drop' keeps valid rows."""
    if on_invalid not in ("refuse", "drop"):
        raise ValueError("on_invalid must be 'refuse' or 'drop'")
    raw = read_table(Path(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data, report = validate(raw, outcome, require_id=require_id)
    for w in caught:
        log.warning("%s", w.message)
    if not report.ok and on_invalid == "refuse":
        raise CohortError(
            f"{Path(path).name}: {report.summary()}\n"
            "Fix the file, or pass --on-invalid drop to quarantine the invalid rows.",
            report,
        )
    bad_idx = report.invalid_rows - 1  # row labels of the file's data rows
    rejected = raw.loc[bad_idx].copy()
    if len(rejected):
        rejected.insert(0, "_file_row", report.invalid_rows)
        rejected["_reasons"] = report.reasons_by_row().reindex(report.invalid_rows).to_numpy()
    valid = data.drop(index=bad_idx).reset_index(drop=True)
    if valid.empty:
        raise CohortError(f"{Path(path).name}: no valid rows left. {report.summary()}", report)
    if outcome is not None:
        valid[outcome] = valid[outcome].astype(bool)
    return Cohort(valid, report, rejected, sha256=file_sha256(Path(path)), source=str(path))
