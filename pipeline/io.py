"""Reading cohort files: parse, validate lazily, and report every problem without echoing values.

Patient values never appear in an error report: a report names the column, the rule and the
file rows. The rejected rows themselves go only to a quarantine file the user asked for.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

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
            header = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0].astype(str).str.strip()
            dupes = sorted(set(header[header.duplicated()]))
            if dupes:
                raise CohortError(f"duplicate column names: {', '.join(dupes)}")
            # blank lines are kept and then dropped, so that reported rows match the file
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


def _parse(df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    """Turn text cells into typed values; unparseable cells become failures (never values)."""
    out = df.copy()
    failures: list[tuple[int, str, str]] = []
    for col in NUMERIC_COLUMNS:
        if col not in out:
            continue
        raw = out[col]
        if pd.api.types.is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
            out[col] = raw.astype(float)
            continue
        text = raw.astype("string").str.strip()
        parsed = pd.to_numeric(text, errors="coerce")
        bad = text.notna() & (text != "") & parsed.isna()
        for idx in out.index[bad.to_numpy()]:
            failures.append((int(idx), col, "must be a number (use '.' as the decimal separator)"))
        out[col] = parsed.astype(float)
    for col in BOOL_COLUMNS:
        if col not in out:
            continue
        raw = out[col]
        if pd.api.types.is_bool_dtype(raw):
            out[col] = raw.astype(object)
            continue
        text = raw.astype("string").str.strip().str.lower()
        parsed = pd.Series(
            np.where(text.isin(_TRUE), True, np.where(text.isin(_FALSE), False, None)),
            index=out.index,
            dtype=object,
        )
        bad = text.notna() & (text != "") & parsed.isna()
        for idx in out.index[bad.to_numpy()]:
            failures.append((int(idx), col, "must be true or false"))
        out[col] = parsed
    for f in FEATURES:
        if f.kind == "category" and f.name in out:
            text = out[f.name].astype("string").str.strip()
            out[f.name] = text.where(text != "", pd.NA).astype(object).where(text.notna(), None)
    if ID_COLUMN in out:
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
    schema = cohort_schema(outcome, require_id=require_id)
    rows: list[tuple[int, str, str]] = list(parse_failures)
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


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for col in BOOL_COLUMNS:
        if col in out:
            out[col] = out[col].astype("boolean")
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
