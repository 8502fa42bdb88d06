"""The fast paths of `icans-risk score` give exactly what the straightforward code gave.

Reading (pyarrow's CSV reader, then pandas for anything it might read differently), parsing
(Arrow compute on the text), encoding and assembling the scored frame each have a reference here:
the code they replaced, kept verbatim, or the slow path forced (pandera still validates). Every comparison is exact, on data made to be awkward: missing markers,
padding, out-of-range and unparseable values, unknown levels, quoting, blank lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

import pipeline.data.read as io
import pipeline.data.parse as io_parse
import pipeline.data.table as io_table
import pipeline.score as score
from pipeline.data.synthetic import generate_cohort
from core.contract import FEATURE_NAMES, FEATURES, GRADE_COLUMN, ID_COLUMN
from core.features import MATRIX_COLUMNS, N_MATRIX, encode_frame

N = 60


# --- the replaced code, verbatim ---------------------------------------------------------------


def reference_parse(df: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[int, str, str]]]:
    out = df.copy()
    failures: list[tuple[int, str, str]] = []
    for col in io_parse.NUMERIC_COLUMNS:
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
    for col in io_parse.BOOL_COLUMNS:
        if col not in out:
            continue
        raw = out[col]
        if pd.api.types.is_bool_dtype(raw):
            out[col] = raw.astype(object)
            continue
        text = raw.astype("string").str.strip().str.lower()
        parsed = pd.Series(
            np.where(text.isin(io_parse._TRUE), True, np.where(text.isin(io_parse._FALSE), False, None)),
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


def reference_encode_frame(df: pd.DataFrame) -> np.ndarray:
    n = len(df)
    X = np.empty((n, N_MATRIX), dtype=np.float64)
    for j, c in enumerate(MATRIX_COLUMNS):
        if c.feature not in df:
            X[:, j] = np.nan
            continue
        col = df[c.feature]
        if c.level is not None:
            X[:, j] = (col.astype(object) == c.level).to_numpy(dtype=np.float64)
        else:
            X[:, j] = pd.to_numeric(col.astype("Float64"), errors="coerce").to_numpy(
                dtype=np.float64, na_value=np.nan
            )
    return X


def reference_score_frame(bundle, df: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for start in range(0, len(df), score.CHUNK):
        chunk = df.iloc[start : start + score.CHUNK]
        X = reference_encode_frame(chunk)
        ex = bundle.explain(X)
        columns = {"risk": ex.risk}
        unc = bundle.uncertainty(X, ex.log_odds)
        if unc is not None:
            columns.update({"risk_low": unc[0], "risk_high": unc[1]})
        columns["risk_group"] = bundle.risk_group(ex.risk)
        if unc is not None:
            columns["risk_group_change_probability"] = unc[2]
        columns.update({"log_odds": ex.log_odds, "shap_base": ex.base})
        out = pd.DataFrame(columns, index=chunk.index)
        shap_cols = pd.DataFrame(
            ex.contributions, columns=[f"shap_{f}" for f in FEATURE_NAMES], index=chunk.index
        )
        parts.append(pd.concat([out, shap_cols], axis=1))
    return pd.concat(parts) if parts else pd.DataFrame()


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cohort_df() -> pd.DataFrame:
    return generate_cohort(N, seed=23)


def _pandas_only(monkeypatch) -> None:
    monkeypatch.setattr(io_table, "_read_csv_arrow", lambda path, first: None)


def _read_both(path, monkeypatch):
    """(fast result, reference result); each a frame or the raised exception."""
    results = []
    for slow in (False, True):
        with monkeypatch.context() as m:
            if slow:
                _pandas_only(m)
            try:
                results.append(io_table.read_table(path))
            except Exception as exc:  # compared below, type and message
                results.append(exc)
    return results


def _assert_same(fast, reference) -> None:
    if isinstance(reference, Exception) or isinstance(fast, Exception):
        assert type(fast) is type(reference) and str(fast) == str(reference), (fast, reference)
    else:
        pd.testing.assert_frame_equal(fast, reference, check_exact=True)


HEADER = "patient_id,age_years,sex,ldh_u_l,cns_involvement"


def _text_cases() -> dict[str, bytes]:
    rows = ["p1,34.5,male,240,false", "p2,12,female,1000,true", "p3,70,male,35,0"]
    body = "\n".join(rows)
    na = ["NA", "n/a", "#N/A", "NULL", "null", "None", "nan", "-nan", "NaN", "<NA>", "#NA", "N/A"]
    return {
        "plain": f"{HEADER}\n{body}\n",
        "all quoted": '"' + HEADER.replace(",", '","') + '"\n' + "\n".join(
            '"' + r.replace(",", '","') + '"' for r in rows
        ) + "\n",
        "na markers": HEADER + "\n" + "\n".join(f"p{i},{t},male,\"{t}\",{t}" for i, t in enumerate(na)) + "\n",
        "near-na text": f'{HEADER}\np1,NAN,Male,nan ,+nan\np2,na,male,Nan,NONE\np3,"NA ",#N/A N/A,"x NA",-1.#IND\n',
        "quoted padded na": f'{HEADER}\np1," NA",male,"  ",false\n',

        "empty and quoted empty": f'{HEADER}\np1,,"",240,\np2,"",male,,""\n',
        "leading spaces": f"{HEADER}\np1, 34.5 , male,240,false\np2,12,female, 1000,true\n",
        "leading space in first field": f"{HEADER}\n p1,34.5,male,240,false\n",
        "tab padding": f"{HEADER}\np1,\t34.5,male\t,240,false\n",
        "space before quote": f'{HEADER}\np1, "34.5",male,240,false\n',
        "space after quote": f'{HEADER}\np1,"34.5" ,male,240,false\n',
        "blank lines": f"{HEADER}\np1,34.5,male,240,false\n\np2,12,female,1000,true\n\n",
        "whitespace line": f"{HEADER}\np1,34.5,male,240,false\n   \np2,12,female,1000,true\n",
        "commas only": f"{HEADER}\np1,34.5,male,240,false\n,,,,\np2,12,female,1000,true\n",
        "crlf": f"{HEADER}\r\n{body}\r\n".replace("\n", "\r\n").replace("\r\r", "\r"),
        "cr only": f"{HEADER}\r" + "\r".join(rows) + "\r",
        "no final newline": f"{HEADER}\n{body}",
        "quoted comma and quote": f'{HEADER}\n"p,1",34.5,"ma""le",240,false\n',
        "quoted newline": f'{HEADER}\n"p\n1",34.5,male,240,false\np2,1,male,40,true\n',
        "too few fields": f"{HEADER}\np1,34.5,male\np2,12,female,1000,true\n",
        "too many fields": f"{HEADER}\np1,34.5,male,240,false,extra\n",
        "one more field in every row": f"{HEADER}\n" + "\n".join(r + ",x" for r in rows) + "\n",
        "header only": f"{HEADER}\n",
        "leading blank line": f"\n{HEADER}\n{body}\n",
        "empty header name": "patient_id,,sex\np1,1,male\n",
        "na header name": "patient_id,NA,sex\np1,1,male\n",
        "padded header": "patient_id , age_years,sex\np1,1,male\n",
        "unicode": f"{HEADER}\np\u00e91,\u0661\u0662,m\u00e4le,\u00a0240,false\n",
        "odd numbers": f"{HEADER}\np1,1e400,male,-inf,false\np2,0x10,male,1_000,true\np3,.5,male,+5,yes\n",
    }


# read by pyarrow (the others fall back to pandas: leading spaces, ragged rows, odd headers)
ARROW_CASES = {
    "plain", "all quoted", "na markers", "near-na text", "quoted padded na", "empty and quoted empty", "tab padding",
    "space after quote", "blank lines", "commas only", "crlf", "cr only", "no final newline",
    "quoted comma and quote", "quoted newline", "header only", "unicode", "odd numbers",
}


@pytest.mark.parametrize("case", sorted(_text_cases()))
def test_arrow_reader_reads_like_pandas(case: str, tmp_path, monkeypatch) -> None:
    path = tmp_path / "cohort.csv"
    path.write_bytes(_text_cases()[case].encode("utf-8"))
    _assert_same(*_read_both(path, monkeypatch))
    try:
        first = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0]
    except Exception:
        first = None
    used_arrow = first is not None and io_table._read_csv_arrow(path, first) is not None
    assert used_arrow == (case in ARROW_CASES)


@pytest.mark.parametrize(
    "data",
    [b"\xef\xbb\xbf" + HEADER.encode() + b"\np1,1,male,40,true\n", HEADER.encode() + b"\np1,\xff,male,40,true\n"],
    ids=["utf8 bom", "invalid utf8"],
)
def test_arrow_reader_bytes(data: bytes, tmp_path, monkeypatch) -> None:
    path = tmp_path / "cohort.csv"
    path.write_bytes(data)
    _assert_same(*_read_both(path, monkeypatch))


def test_generated_cohort_takes_the_arrow_path_and_reads_the_same(cohort_df, tmp_path, monkeypatch):
    path = tmp_path / "cohort.csv"
    cohort_df.to_csv(path, index=False)
    first = pd.read_csv(path, header=None, nrows=1, dtype=str).iloc[0]
    assert io_table._read_csv_arrow(path, first) is not None
    _assert_same(*_read_both(path, monkeypatch))
    fast = io.read_cohort(path, "severe_icans")
    with monkeypatch.context() as m:
        _pandas_only(m)
        slow = io.read_cohort(path, "severe_icans")
    pd.testing.assert_frame_equal(fast.data, slow.data, check_exact=True)


def test_cohort_with_problems_reads_the_same_either_way(cohort_df, tmp_path, monkeypatch) -> None:
    frame = cohort_df.astype(object).copy()
    frame.loc[1, "ldh_u_l"] = "98765"
    frame.loc[2, "crp_mg_l"] = "1,5"
    frame.loc[3, "product"] = "kymriah"
    frame.loc[4, "sex"] = ""
    frame.loc[5, ID_COLUMN] = frame.loc[6, ID_COLUMN]
    frame.loc[7, "cns_involvement"] = "maybe"
    frame.loc[8, GRADE_COLUMN] = 4
    frame.loc[9, "ferritin_ng_ml"] = "NAN"
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    outcomes = []
    for slow in (False, True):
        with monkeypatch.context() as m:
            if slow:
                _pandas_only(m)
            outcomes.append(io.read_cohort(path, "severe_icans", on_invalid="drop"))
    fast, ref = outcomes
    for name in ("data", "rejected"):
        pd.testing.assert_frame_equal(getattr(fast, name), getattr(ref, name), check_exact=True)
    pd.testing.assert_frame_equal(fast.report.failures, ref.report.failures, check_exact=True)
    assert len(fast.rejected) == 9


# --- parsing ---------------------------------------------------------------------------------

NUMBER_TEXT = [
    "42", " 42.5 ", "2.5e2", "1E5", "+5", ".5", "5.", "-0", "00012", "inf", "-inf", "Infinity",
    "1e400", "1e-400", "9007199254740993", "123456789012345678901234567890", "0.1000000000000000055511",
    "6.529676781672972", "NaN", "NAN", "nan(1)", "1,5", "1_000", "0x10", "1.2.3", "-", ".", "e5",
    "\u0661\u0662", "1\u00a0000", "\u20075", "", "   ", None,
]
BOOL_TEXT = ["true", "TRUE", " yes ", "Y", "t", "1", "1.0", "0.0", "0", "no", "N", "F",
             "maybe", "2", "-1", "ja", "", "  ", None]
CATEGORY_TEXT = ["male", " male ", "Male", "female", "", "  ", "other", None]
ID_TEXT = ["a", " a ", "b", "", "   ", None, "c d"]


def _text_frame(n: int, seed: int, dtype) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    columns = {}
    for col in io_parse.NUMERIC_COLUMNS:
        columns[col] = rng.choice(np.array(NUMBER_TEXT, dtype=object), n)
    for col in io_parse.BOOL_COLUMNS:
        columns[col] = rng.choice(np.array(BOOL_TEXT, dtype=object), n)
    for f in FEATURES:
        if f.kind == "category":
            columns[f.name] = rng.choice(np.array(CATEGORY_TEXT + list(f.categories), dtype=object), n)
    columns[ID_COLUMN] = rng.choice(np.array(ID_TEXT, dtype=object), n)
    return pd.DataFrame(columns, index=pd.RangeIndex(n) * 2 + 3).astype(dtype)


@pytest.mark.parametrize("dtype", ["str", object], ids=["arrow text", "objects"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_parse_equals_the_reference(dtype, seed: int) -> None:
    df = _text_frame(400, seed, dtype)
    parsed, failures = io_parse.parse(df)
    ref_parsed, ref_failures = reference_parse(df)
    pd.testing.assert_frame_equal(parsed, ref_parsed, check_exact=True)
    assert failures == ref_failures


def test_parse_of_typed_frames_equals_the_reference(cohort_df: pd.DataFrame) -> None:
    for df in (cohort_df, cohort_df.assign(severe_icans=cohort_df["severe_icans"].astype("boolean"))):
        parsed, failures = io_parse.parse(df)
        ref_parsed, ref_failures = reference_parse(df)
        pd.testing.assert_frame_equal(parsed, ref_parsed, check_exact=True)
        assert failures == ref_failures == []


def test_numbers_parse_to_the_same_doubles() -> None:
    rng = np.random.default_rng(5)
    x = rng.random(20_000) * 10.0 ** rng.integers(-6, 7, 20_000)
    text = [repr(float(v)) for v in x] + [f"{v:.17g}" for v in x] + [f"{v:.25e}" for v in x[:5000]]
    df = pd.DataFrame({"ldh_u_l": pd.Series(text, dtype="str")})
    parsed, failures = io_parse.parse(df)
    ref_parsed, ref_failures = reference_parse(df)
    np.testing.assert_array_equal(parsed["ldh_u_l"].to_numpy(), ref_parsed["ldh_u_l"].to_numpy())
    assert failures == ref_failures == []


@pytest.mark.parametrize("values", [[True, False, None], [True, pd.NA, False], [np.True_, None], [None, None]])
def test_booleans_are_typed_like_astype(values) -> None:
    col = pd.Series(values * 5, dtype=object)
    pd.testing.assert_series_equal(io_parse._as_boolean(col), col.astype("boolean"), check_exact=True)


# --- validation: the vectorised check never passes what pandera rejects -----------------------


def _parsed(cohort_df: pd.DataFrame) -> pd.DataFrame:
    return reference_parse(cohort_df.astype(object).astype(str).replace("nan", ""))[0]


# --- encoding and the scored frame -----------------------------------------------------------


def _awkward_frames(cohort_df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    validated = _parsed(cohort_df)
    typed = io_parse.typed(validated)
    odd = typed.copy()
    odd["sex"] = odd["sex"].astype(object)
    odd.loc[1, "sex"] = None
    odd.loc[2, "sex"] = pd.NA
    odd.loc[3, "sex"] = np.nan
    odd.loc[4, "product"] = "unknown"
    odd.loc[5, "cns_involvement"] = pd.NA
    odd.loc[6, "age_years"] = -0.0
    odd.loc[7, "ldh_u_l"] = np.inf
    return {
        "typed": typed,
        "generated": cohort_df,
        "odd values": odd,
        "text categories": typed.astype({f.name: "str" for f in FEATURES if f.kind == "category"}),
        "categorical dtype": typed.astype({"product": "category"}),
        "object bools": validated,
        "absent optionals": typed.drop(columns=["ferritin_ng_ml", "il15_pg_ml"]),
        "reindexed": typed.iloc[::-1].set_index(pd.Index(np.arange(N) * 7)),
        "empty": typed.iloc[:0],
    }


def test_encode_frame_equals_the_reference(cohort_df: pd.DataFrame) -> None:
    for name, df in _awkward_frames(cohort_df).items():
        np.testing.assert_array_equal(encode_frame(df), reference_encode_frame(df), err_msg=name)


@dataclass
class _Explained:
    log_odds: np.ndarray
    risk: np.ndarray
    base: np.ndarray
    contributions: np.ndarray


class _RowWiseBundle:
    """Explains each row from its own cells only (as TreeSHAP does), deterministically."""

    weights = np.linspace(-1.0, 1.0, N_MATRIX * len(FEATURE_NAMES)).reshape(N_MATRIX, len(FEATURE_NAMES))

    def explain(self, X: np.ndarray) -> _Explained:
        contributions = np.nan_to_num(X, nan=0.5) @ self.weights / 1000.0
        base = np.full(len(X), -1.5)
        log_odds = base + contributions.sum(axis=1)
        return _Explained(log_odds, 1 / (1 + np.exp(-log_odds)), base, contributions)

    def risk_group(self, risk: np.ndarray) -> np.ndarray:
        return np.asarray(["low", "intermediate", "high"], dtype=object)[(risk >= 0.2).astype(int) + (risk >= 0.4)]

    instability = "row-wise"  # present: score_frame adds the interval columns

    def uncertainty(self, X: np.ndarray, log_odds: np.ndarray, parallel: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        spread = 0.1 + np.nan_to_num(X[:, 0], nan=1.0) / 100.0  # from the row's own cells, as the B models do
        return (1 / (1 + np.exp(-(log_odds - spread))), 1 / (1 + np.exp(-(log_odds + spread))),
                np.clip(spread, 0, 1))


@pytest.mark.parametrize("n", [0, 1, score.CHUNK, 2 * score.CHUNK + 3])
def test_score_frame_equals_the_reference(n: int) -> None:
    df = io_parse.typed(_parsed(generate_cohort(max(n, 10), seed=3)).iloc[:n])
    df.index = pd.Index(np.arange(n) * 3 + 1)  # what --on-invalid drop leaves is reindexed; any index works
    bundle = _RowWiseBundle()
    pd.testing.assert_frame_equal(score.score_frame(bundle, df), reference_score_frame(bundle, df), check_exact=True)
