"""Reading cohort files: parse, validate lazily, and report every problem without echoing values.

Patient values never appear in an error report: a report names the column, the rule and the
file rows. The rejected rows themselves go only to a quarantine file the user asked for.

`read_cohort` is the sequence; each step lives in the module named for it: `pipeline.data.table`
(the file as a table of text), `pipeline.data.parse` (text cells to typed values), `pipeline.data.schema`
(the rules) and `pipeline.data.problems` (the error and the report). Here: the columns, the rules'
failures in words, and the quarantine.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from core.contract import (
    CENTRE_COLUMN,
    CENTRE_RULE,
    FEATURES,
    FEATURES_BY_NAME,
    GRADE_COLUMN,
    ID_COLUMN,
    OUTCOMES,
)
from pipeline.data.parse import parse, typed
from pipeline.data.problems import CohortError, CohortProblems
from models.artifact import sha256_file
from pipeline.data.table import read_table
from pipeline.data.schema import cohort_schema

# Re-exported: the CLI, the pipeline and the tests import the reader's names from pipeline.data.read.
__all__ = [
    "KNOWN_COLUMNS",
    "Cohort",
    "CohortError",
    "CohortProblems",
    "sha256_file",
    "read_cohort",
    "read_table",
    "validate",
]

log = logging.getLogger(__name__)

KNOWN_COLUMNS: frozenset[str] = frozenset(
    {ID_COLUMN, GRADE_COLUMN, "p_true", CENTRE_COLUMN, *OUTCOMES, *(f.name for f in FEATURES)}
)


@dataclass
class Cohort:
    """A validated cohort: typed columns, plus what was rejected and why."""

    data: pd.DataFrame
    report: CohortProblems
    rejected: pd.DataFrame
    sha256: str | None = None
    source: str | None = None


def _check_columns(
    df: pd.DataFrame, outcome: str | None, require_id: bool, source: str | None = None
) -> list[str]:
    where = f"{source}: " if source else ""
    dupes = sorted({c for c in df.columns if list(df.columns).count(c) > 1})
    if dupes:
        raise CohortError(f"{where}duplicate column names: {', '.join(dupes)}")
    required = [f.name for f in FEATURES if f.required]
    if require_id:
        required.insert(0, ID_COLUMN)
    if outcome is not None:
        required.append(outcome)
    missing = [c for c in required if c not in df.columns]
    if missing:
        delimiter = _other_delimiter(df)
        if delimiter is not None:  # it explains every missing column: said first, and alone
            raise CohortError(
                f"{where}the file seems to use {delimiter} as its delimiter, but a comma is expected "
                f"(so none of the {len(missing)} required columns could be found); "
                "save it as comma-separated CSV"
            )
        lines = [_missing_text(c, df.columns) for c in missing]
        if len(lines) == 1:
            raise CohortError(f"{where}missing required column {lines[0]}")
        raise CohortError(f"{where}missing {len(lines)} required columns:\n" + "\n".join(f"  {t}" for t in lines))
    return sorted(c for c in df.columns if c not in KNOWN_COLUMNS)


_DELIMITERS = {";": "';' (semicolon)", "\t": "a tab", "|": "'|'"}


def _other_delimiter(df: pd.DataFrame) -> str | None:
    """The delimiter a one-column table was most likely written with, or None."""
    if len(df.columns) != 1:
        return None
    header = str(df.columns[0])
    counts = {d: header.count(d) for d in _DELIMITERS}
    best = max(counts, key=lambda d: counts[d])
    return _DELIMITERS[best] if counts[best] else None


def _missing_text(column: str, present: pd.Index) -> str:
    """One missing column, with the file's column that looks like a renamed copy of it (if any)."""
    unused = [str(c) for c in present if c not in KNOWN_COLUMNS]
    near = nearest_name(column, unused)
    if near is None:
        return f"'{column}'"
    return f"'{column}' (the file has '{near}': renamed?)"


def nearest_name(name: str, candidates: list[str], cutoff: float = 0.75) -> str | None:
    """The candidate closest to `name` (case, '-', ' ' and '.' ignored), or None if none is close."""
    import difflib

    def norm(s: str) -> str:
        return s.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")

    by_norm = {norm(c): c for c in candidates if len(c) <= 4 * len(name) + 8}
    if norm(name) in by_norm:
        return by_norm[norm(name)]
    match = difflib.get_close_matches(norm(name), list(by_norm), n=1, cutoff=cutoff)
    return by_norm[match[0]] if match else None


def _rule_text(column: str, check: str) -> str:
    f = FEATURES_BY_NAME.get(column)
    if check in ("not_nullable",) or check.startswith("dtype("):
        return "is required and must not be empty" if check == "not_nullable" else f"has the wrong type ({check})"
    if check == "field_uniqueness":
        return "must be unique (duplicate value)"
    if f is not None and f.kind == "float":
        return f"must be in {f.range_text}" + (f" {f.unit}" if f.unit else "")
    if f is not None and f.kind == "category":
        return f"must be one of: {f.range_text}"
    if check.startswith("isin([0, 1, 2, 3, 4]"):
        return "must be an integer grade 0-4"
    if check.startswith("isin([True, False]"):
        return "must be true or false"
    if check.startswith("in_range(0, 1)"):
        return "must be a probability in [0, 1]"
    if column == CENTRE_COLUMN:  # issue 27
        return CENTRE_RULE
    if check.startswith("str_length"):
        return "must not be empty"
    return check


def validate(
    df: pd.DataFrame, outcome: str | None, require_id: bool = True, source: str | None = None
) -> tuple[pd.DataFrame, CohortProblems]:
    """Validate every row and column in one pass; returns typed rows and the full report.

    `source` (the file's name) prefixes a refusal of the whole file, so the user knows which one."""
    ignored = _check_columns(df, outcome, require_id, source)
    if ignored:
        warnings.warn(
            f"ignoring {len(ignored)} columns that are not in the data contract: {', '.join(ignored)}",
            stacklevel=2,
        )
        df = df.drop(columns=ignored)
    parsed, parse_failures = parse(df)
    rows: list[tuple[int, str, str]] = list(parse_failures)
    rows.extend(_schema_failures(parsed, outcome, require_id))  # pandera reports every failure
    failures = pd.DataFrame(rows, columns=["idx", "column", "rule"])
    # one message per cell: an unparseable number is not also reported as "missing"
    failures = failures.drop_duplicates(subset=["idx", "column"], keep="first")
    failures = failures.assign(row=failures["idx"] + 1).drop(columns="idx")
    report = CohortProblems(
        failures=failures.sort_values(["row", "column"]).reset_index(drop=True),
        n_rows=len(df),
        ignored_columns=ignored,
    )
    return typed(parsed), report


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
        data, report = validate(raw, outcome, require_id=require_id, source=Path(path).name)
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
    return Cohort(valid, report, rejected, sha256=sha256_file(Path(path)), source=str(path))
