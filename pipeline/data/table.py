"""A cohort file as a table of text: CSV (read by pyarrow when it reads as pandas would) or Parquet.

Every CSV cell stays text here so that the parsing (`pipeline.data.parse`) is ours and checks every cell;
an unreadable file becomes a `CohortError` that names the file, never its content.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import pandas as pd
import pyarrow as arrow
import pyarrow.csv as arrow_csv
from pandas._libs.parsers import STR_NA_VALUES

from pipeline.data.problems import CohortError


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
