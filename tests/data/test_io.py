"""Reading cohort files (pipeline/data/read.py): parse, validate lazily, report without echoing values.

Files are written from the synthetic generator into pytest's tmp_path, then damaged on purpose.
Row numbers in reports are 1-based data rows (file line minus the header line).
"""

from __future__ import annotations

import csv
import logging
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.synthetic import generate_cohort
from core.contract import FEATURES, FEATURES_BY_NAME, GRADE_COLUMN, ID_COLUMN, OUTCOMES
from core.features import MATRIX_NAMES, encode_frame
from pipeline.data.read import (
    CohortError,
    CohortProblems,
    read_cohort,
    read_table,
    sha256_file,
    validate,
)

N = 40
OUTCOME = "severe_icans"
OPTIONAL = [f.name for f in FEATURES if not f.required]
REQUIRED = [f.name for f in FEATURES if f.required]
# Values planted in broken files: none of them may ever appear in an error message.
BAD_LDH = "98765.4"
BAD_PRODUCT = "kymriah_secret_brand"


@pytest.fixture(scope="module")
def cohort_df() -> pd.DataFrame:
    return generate_cohort(N, seed=11)


@pytest.fixture
def frame(cohort_df: pd.DataFrame) -> pd.DataFrame:
    """A fresh object-dtype copy that tests may damage freely."""
    return cohort_df.astype(object).copy()


@pytest.fixture(scope="module")
def valid(cohort_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    """The untouched cohort read through a CSV file (read once, shared)."""
    return read_cohort(_csv(cohort_df, tmp_path_factory.mktemp("io") / "valid.csv"), OUTCOME)


def _csv(df: pd.DataFrame, path: Path, **kwargs) -> Path:
    df.to_csv(path, index=False, **kwargs)
    return path


def _pairs(report: CohortProblems) -> set[tuple[int, str]]:
    return set(zip(report.failures["row"].astype(int), report.failures["column"], strict=True))


# --- valid files -----------------------------------------------------------------------------


@pytest.mark.parametrize("drop_p_true", [False, True])
def test_valid_csv_passes(cohort_df, valid, tmp_path: Path, drop_p_true: bool) -> None:
    if drop_p_true:
        c = read_cohort(_csv(cohort_df.drop(columns="p_true"), tmp_path / "ok.csv"), OUTCOME)
        assert "p_true" not in c.data
    else:
        c = valid
    assert c.report.ok and c.report.failures.empty
    assert c.report.n_rows == N and len(c.data) == N and c.rejected.empty
    assert c.data[OUTCOME].dtype == bool
    assert list(c.data[ID_COLUMN]) == list(cohort_df[ID_COLUMN])
    for f in FEATURES:
        if f.kind == "float":
            np.testing.assert_allclose(
                c.data[f.name].to_numpy(float), cohort_df[f.name].to_numpy(float), rtol=1e-12
            )
        else:
            assert list(c.data[f.name]) == list(cohort_df[f.name]), f.name
    assert c.sha256 is not None and len(c.sha256) == 64


def test_on_invalid_must_be_refuse_or_drop(cohort_df: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        read_cohort(_csv(cohort_df, tmp_path / "ok.csv"), OUTCOME, on_invalid="ignore")


def test_missing_file_is_a_cohort_error(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="not found"):
        read_cohort(tmp_path / "nope.csv", OUTCOME)


def test_unsupported_suffix_is_a_cohort_error(cohort_df: pd.DataFrame, tmp_path: Path) -> None:
    path = _csv(cohort_df, tmp_path / "cohort.xlsx")
    with pytest.raises(CohortError, match="unsupported"):
        read_cohort(path, OUTCOME)


# --- lazy reporting without values -----------------------------------------------------------


@pytest.fixture(scope="module")
def three_problems(cohort_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    """Out-of-range LDH, unknown product, non-numeric CRP ('n/a' and '1,5'): different rows.

    Returns the file, the expected (row, column) pairs, the CohortError of 'refuse' and the
    Cohort of 'drop' (read once: reading is the slow part of these tests).
    """
    frame = cohort_df.astype(object).copy()
    frame.loc[2, "ldh_u_l"] = BAD_LDH
    frame.loc[5, "product"] = BAD_PRODUCT
    frame.loc[7, "crp_mg_l"] = "n/a"
    frame.loc[9, "crp_mg_l"] = "1,5"
    expected = {(3, "ldh_u_l"), (6, "product"), (8, "crp_mg_l"), (10, "crp_mg_l")}
    path = _csv(frame, tmp_path_factory.mktemp("io") / "three.csv")
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    dropped = read_cohort(path, OUTCOME, on_invalid="drop")
    return path, expected, exc.value, dropped


def test_all_problems_are_reported_in_one_error(three_problems) -> None:
    _, expected, error, _ = three_problems
    report = error.report
    assert report is not None and not report.ok
    assert _pairs(report) == expected
    assert list(report.invalid_rows) == [3, 6, 8, 10]
    assert report.n_rows == N
    message = str(error)
    for column in ("ldh_u_l", "product", "crp_mg_l"):
        assert f"'{column}'" in message
    assert f"4 of {N} rows" in message


def test_error_message_never_echoes_values(three_problems, cohort_df: pd.DataFrame) -> None:
    _, _, error, dropped = three_problems
    texts = [
        str(error),
        error.report.failures.to_string(),
        error.report.summary(),
        dropped.report.summary(),
        " ".join(dropped.rejected["_reasons"]),
    ]
    for text in texts:
        for secret in (BAD_LDH, "98765", BAD_PRODUCT, "kymriah", "1,5", "n/a"):
            assert secret not in text
        for pid in cohort_df[ID_COLUMN]:
            assert pid not in text


def test_reasons_name_the_rule(three_problems) -> None:
    _, _, error, _ = three_problems
    rules = error.report.failures.set_index("row")["rule"]
    assert "30" in rules[3] and "20000" in rules[3]
    assert "tisagenlecleucel" in rules[6]
    assert "number" in rules[10]


def test_drop_returns_valid_rows_and_quarantines_the_rest(three_problems, cohort_df) -> None:
    _, expected, _, c = three_problems
    bad_ids = {cohort_df.loc[r - 1, ID_COLUMN] for r, _ in expected}
    assert len(c.data) == N - len(bad_ids)
    assert list(c.data[ID_COLUMN]) == [p for p in cohort_df[ID_COLUMN] if p not in bad_ids]
    assert list(c.data.index) == list(range(len(c.data)))
    assert set(c.rejected[ID_COLUMN]) == bad_ids
    assert list(c.rejected["_file_row"]) == [3, 6, 8, 10]
    reasons = dict(zip(c.rejected["_file_row"], c.rejected["_reasons"], strict=True))
    assert reasons[3].startswith("ldh_u_l: ")
    assert reasons[6].startswith("product: ")
    assert reasons[8].startswith("crp_mg_l: ") and reasons[10].startswith("crp_mg_l: ")
    assert _pairs(c.report) == expected
    # the valid rows are fully typed
    assert c.data[OUTCOME].dtype == bool
    assert c.data["crp_mg_l"].dtype == float and c.data["ldh_u_l"].max() <= 20000


def test_quarantine_keeps_the_original_file_rows(three_problems) -> None:
    path, _, _, c = three_problems
    with open(path, newline="") as fh:
        header, *lines = list(csv.reader(fh))
    assert set(header) <= set(c.rejected.columns)
    for _, rej in c.rejected.iterrows():
        original = dict(zip(header, lines[int(rej["_file_row"]) - 1], strict=True))
        for column, text in original.items():
            value = rej[column]
            if pd.isna(value):  # empty cells and NA markers like 'n/a'
                assert text in ("", "n/a"), (column, text)
            else:
                assert value == text, (column, value, text)
    by_row = c.rejected.set_index("_file_row")
    assert by_row.loc[3, "ldh_u_l"] == BAD_LDH
    assert by_row.loc[6, "product"] == BAD_PRODUCT
    assert by_row.loc[10, "crp_mg_l"] == "1,5"


def test_drop_with_no_valid_row_left_fails(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame["ldh_u_l"] = "1"
    with pytest.raises(CohortError, match="no valid rows"):
        read_cohort(_csv(frame, tmp_path / "allbad.csv"), OUTCOME, on_invalid="drop")


def test_many_failures_are_summarised_not_listed(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame["ldh_u_l"] = "5"
    frame.loc[0, "ldh_u_l"] = "100"
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "many.csv"), OUTCOME)
    assert len(exc.value.report.failures) == N - 1
    assert f"{N - 1} rows (rows 2, 3, 4, 5, 6 and {N - 6} more)" in str(exc.value)


# --- blank lines must not shift row numbers --------------------------------------------------


def test_blank_line_does_not_shift_reported_rows(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame.loc[4, "ldh_u_l"] = BAD_LDH  # data row 5, file line 6 ...
    lines = frame.to_csv(index=False).splitlines()
    lines.insert(3, "")  # ... a blank line 4 moves it to file line 7 = data row 6
    path = tmp_path / "blank.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    assert _pairs(exc.value.report) == {(6, "ldh_u_l")}


# --- structural problems ---------------------------------------------------------------------


@pytest.mark.parametrize("column", [ID_COLUMN, "ldh_u_l", "product", "prior_allo_hct", OUTCOME])
def test_missing_required_column_is_named(cohort_df, tmp_path: Path, column: str) -> None:
    path = _csv(cohort_df.drop(columns=column), tmp_path / "missing.csv")
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    assert column in str(exc.value)
    assert "delimiter" not in str(exc.value)


def test_id_column_not_required_for_scoring(cohort_df, tmp_path: Path) -> None:
    path = _csv(cohort_df.drop(columns=[ID_COLUMN, *OUTCOMES]), tmp_path / "score.csv")
    c = read_cohort(path, None, require_id=False)
    assert len(c.data) == N


@pytest.mark.parametrize("sep", [";", "\t"])
def test_other_delimiter_is_named(cohort_df, tmp_path: Path, sep: str) -> None:
    path = _csv(cohort_df, tmp_path / "semi.csv", sep=sep)
    with pytest.raises(CohortError, match="delimiter"):
        read_cohort(path, OUTCOME)


def test_semicolon_file_with_decimal_commas_names_the_delimiter(cohort_df, tmp_path) -> None:
    path = _csv(cohort_df, tmp_path / "excel.csv", sep=";", decimal=",")
    with pytest.raises(CohortError, match="delimiter"):
        read_cohort(path, OUTCOME)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("")
    with pytest.raises(CohortError, match="empty"):
        read_cohort(path, OUTCOME)


def test_whitespace_only_file(tmp_path: Path) -> None:
    path = tmp_path / "blank.csv"
    path.write_text("\n\n  \n")
    with pytest.raises(CohortError):
        read_cohort(path, OUTCOME)


def test_header_only_file(cohort_df: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text(",".join(cohort_df.columns) + "\n")
    with pytest.raises(CohortError, match="no data rows"):
        read_cohort(path, OUTCOME)


def test_duplicate_column_names_rejected(cohort_df: pd.DataFrame, tmp_path: Path) -> None:
    df = cohort_df.assign(ldh_dup=cohort_df["ldh_u_l"] * 2)
    lines = df.to_csv(index=False).splitlines()
    lines[0] = lines[0].replace("ldh_dup", "ldh_u_l")
    path = tmp_path / "dupcol.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CohortError, match="duplicate column") as exc, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        read_cohort(path, OUTCOME)
    assert "ldh_u_l" in str(exc.value)


def test_duplicate_column_names_rejected_in_a_frame(cohort_df: pd.DataFrame) -> None:
    df = pd.concat([cohort_df, cohort_df[["ldh_u_l"]]], axis=1).astype(str)
    with pytest.raises(CohortError, match="duplicate column names: ldh_u_l"):
        validate(df, OUTCOME)


def test_duplicate_patient_id_rejected(frame: pd.DataFrame, tmp_path: Path) -> None:
    pid, other = frame.loc[1, ID_COLUMN], frame.loc[10, ID_COLUMN]
    frame.loc[4, ID_COLUMN] = pid
    frame.loc[12, ID_COLUMN] = f"  {other} "  # padding does not make an id different
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "dup.csv"), OUTCOME)
    assert _pairs(exc.value.report) == {(r, ID_COLUMN) for r in (2, 5, 11, 13)}
    assert pid not in str(exc.value) and other not in str(exc.value)


def test_empty_patient_id_rejected(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame.loc[3, ID_COLUMN] = ""
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "noid.csv"), OUTCOME)
    assert _pairs(exc.value.report) == {(4, ID_COLUMN)}


def test_empty_required_values_rejected(frame, tmp_path: Path) -> None:
    expected = set()
    columns = ["age_years", "sex", "cns_involvement", "creatinine_mg_dl", ID_COLUMN]
    for i, column in enumerate(columns):
        frame.loc[3 + 2 * i, column] = "" if i % 2 else "  "
        expected.add((4 + 2 * i, column))
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "empty_cell.csv"), OUTCOME)
    assert _pairs(exc.value.report) == expected
    assert set(exc.value.report.failures["rule"]) <= {
        "is required and must not be empty",
        "must not be empty",
    }


# --- optional columns ------------------------------------------------------------------------


def test_optional_columns_absent_become_nan(cohort_df: pd.DataFrame, tmp_path: Path) -> None:
    df = cohort_df.drop(columns=[*OPTIONAL, GRADE_COLUMN, "p_true", "severe_crs"])
    c = read_cohort(_csv(df, tmp_path / "noopt.csv"), OUTCOME)
    assert c.report.ok and len(c.data) == N
    for name in OPTIONAL:
        assert name in c.data and c.data[name].isna().all(), name
        assert c.data[name].dtype == float
    X = encode_frame(c.data)
    for name in OPTIONAL:
        assert np.isnan(X[:, MATRIX_NAMES.index(name)]).all()


def test_optional_empty_values_become_nan(frame, tmp_path: Path) -> None:
    cells = []
    for i, empty in enumerate(["", "   ", "NA", "n/a"]):
        for j, name in enumerate(OPTIONAL):
            row = 4 * i + j
            frame.loc[row, name] = empty
            cells.append((row, name))
    c = read_cohort(_csv(frame, tmp_path / "opt.csv"), OUTCOME)
    assert c.report.ok and len(c.data) == N
    for row, name in cells:
        assert np.isnan(c.data.loc[row, name]), (row, name)
    # the cells left alone keep their values
    kept = c.data.loc[30:, OPTIONAL].to_numpy(float)
    np.testing.assert_allclose(kept, frame.loc[30:, OPTIONAL].to_numpy(float), rtol=1e-12)


def test_bad_optional_values_are_still_rejected(frame, tmp_path: Path) -> None:
    bad = ["1,5", "high", "inf", "-1", "200001", "<5"]
    for i, text in enumerate(bad):
        frame.loc[3 * i, "ferritin_ng_ml"] = text
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "opt_bad.csv"), OUTCOME)
    assert _pairs(exc.value.report) == {(3 * i + 1, "ferritin_ng_ml") for i in range(len(bad))}
    for text in ("1,5", "high", "200001", "<5"):
        assert text not in str(exc.value)


# --- unknown columns -------------------------------------------------------------------------


def test_extra_columns_warn_and_never_reach_the_matrix(cohort_df, valid, tmp_path, caplog) -> None:
    df = cohort_df.assign(secret_mrn=np.arange(N), icans_day=7.0)
    path = _csv(df, tmp_path / "extra.csv")
    with caplog.at_level(logging.WARNING, logger="pipeline.data.read"):
        c = read_cohort(path, OUTCOME)
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("secret_mrn" in m and "icans_day" in m for m in messages), messages
    assert c.report.ok
    assert sorted(c.report.ignored_columns) == ["icans_day", "secret_mrn"]
    assert "secret_mrn" not in c.data and "icans_day" not in c.data
    assert not {"secret_mrn", "icans_day"} & set(MATRIX_NAMES)
    np.testing.assert_array_equal(encode_frame(c.data), encode_frame(valid.data))


def test_validate_warns_about_extra_columns(cohort_df, tmp_path: Path) -> None:
    raw = read_table(_csv(cohort_df.assign(note="x"), tmp_path / "extra.csv"))
    with pytest.warns(UserWarning, match="note"):
        data, report = validate(raw, OUTCOME)
    assert report.ok and "note" not in data and report.ignored_columns == ["note"]


def test_no_warning_without_extra_columns(cohort_df, tmp_path: Path) -> None:
    raw = read_table(_csv(cohort_df, tmp_path / "ok.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        validate(raw, OUTCOME)


# --- outcomes --------------------------------------------------------------------------------


def test_only_the_chosen_outcome_is_required(cohort_df, tmp_path: Path) -> None:
    path = _csv(cohort_df.drop(columns="severe_crs"), tmp_path / "nocrs.csv")
    c = read_cohort(path, "severe_icans")
    assert c.report.ok and c.data["severe_icans"].dtype == bool
    with pytest.raises(CohortError, match="severe_crs"):
        read_cohort(path, "severe_crs")


def test_crs_outcome_does_not_need_severe_icans(cohort_df, tmp_path: Path) -> None:
    path = _csv(cohort_df.drop(columns=["severe_icans", GRADE_COLUMN]), tmp_path / "crs.csv")
    c = read_cohort(path, "severe_crs")
    assert c.report.ok and c.data["severe_crs"].dtype == bool
    assert list(c.data["severe_crs"]) == list(cohort_df["severe_crs"])
    with pytest.raises(CohortError, match="severe_icans"):
        read_cohort(path, "severe_icans")


def test_empty_chosen_outcome_is_rejected_but_other_outcome_may_be_empty(frame, tmp_path) -> None:
    frame.loc[2, "severe_crs"] = ""
    path = _csv(frame, tmp_path / "partial.csv")
    assert read_cohort(path, "severe_icans").report.ok
    with pytest.raises(CohortError) as exc:
        read_cohort(path, "severe_crs")
    assert _pairs(exc.value.report) == {(3, "severe_crs")}


def test_scoring_file_needs_no_outcome(cohort_df, tmp_path: Path) -> None:
    path = _csv(cohort_df.drop(columns=[*OUTCOMES, GRADE_COLUMN, "p_true"]), tmp_path / "s.csv")
    assert read_cohort(path, None).report.ok


def test_bad_grades_rejected(frame: pd.DataFrame, tmp_path: Path) -> None:
    grades = ["5", "-1", "2.5", "three"]
    for i, grade in enumerate(grades):
        frame.loc[2 * i, GRADE_COLUMN] = grade
        frame.loc[2 * i, "severe_icans"] = False
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "grade.csv"), OUTCOME)
    rows = {2 * i + 1 for i in range(len(grades))}
    assert {(r, GRADE_COLUMN) for r in rows} <= _pairs(exc.value.report)
    assert set(exc.value.report.invalid_rows) == rows


@pytest.fixture(scope="module")
def disagreeing(cohort_df: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory):
    """severe_icans contradicts icans_max_grade in rows 4 and 7: (error of refuse, drop)."""
    frame = cohort_df.astype(object).copy()
    frame.loc[3, GRADE_COLUMN] = 4
    frame.loc[3, "severe_icans"] = False
    frame.loc[6, GRADE_COLUMN] = 1
    frame.loc[6, "severe_icans"] = True
    path = _csv(frame, tmp_path_factory.mktemp("io") / "disagree.csv")
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    return exc.value, read_cohort(path, OUTCOME, on_invalid="drop")


def test_label_disagreeing_with_grade_is_reported(disagreeing) -> None:
    error, c = disagreeing
    report = error.report
    assert list(report.invalid_rows) == [4, 7]
    assert (4, "severe_icans") in _pairs(report) and (7, "severe_icans") in _pairs(report)
    assert len(c.data) == N - 2 and list(c.rejected["_file_row"]) == [4, 7]


def test_label_disagreement_is_reported_once_under_severe_icans(disagreeing) -> None:
    error, _ = disagreeing
    failures = error.report.failures
    assert _pairs(error.report) == {(4, "severe_icans"), (7, "severe_icans")}
    assert all("icans_max_grade" in rule for rule in failures["rule"])
    assert "age_years" not in str(error)


def test_grade_without_label_or_label_without_grade_is_fine(frame, tmp_path: Path) -> None:
    frame.loc[1, GRADE_COLUMN] = ""
    path = _csv(frame, tmp_path / "nograde.csv")
    assert read_cohort(path, OUTCOME).report.ok
    frame.loc[2, "severe_icans"] = ""
    assert read_cohort(_csv(frame, tmp_path / "nolabel.csv"), "severe_crs").report.ok


# --- booleans --------------------------------------------------------------------------------

TRUE_TEXT = ["true", "TRUE", "True", "1", "yes", "YES", "Yes", " true "]
FALSE_TEXT = ["false", "FALSE", "False", "0", "no", "NO", "No", " no"]


def test_bools_accept_common_spellings(frame: pd.DataFrame, tmp_path: Path) -> None:
    texts = TRUE_TEXT + FALSE_TEXT
    for i, text in enumerate(texts):
        frame.loc[i, "cns_involvement"] = text
        frame.loc[i, OUTCOME] = text
        frame.loc[i, GRADE_COLUMN] = 3 if i < len(TRUE_TEXT) else 0
    c = read_cohort(_csv(frame, tmp_path / "bools.csv"), OUTCOME)
    assert c.report.ok
    expected = [True] * len(TRUE_TEXT) + [False] * len(FALSE_TEXT)
    assert list(c.data["cns_involvement"][: len(texts)]) == expected
    assert list(c.data[OUTCOME][: len(texts)]) == expected


def test_bools_reject_other_text(frame, tmp_path: Path) -> None:
    expected = set()
    row = 0
    for column in ("prior_allo_hct", OUTCOME):
        for bad in ("maybe", "2", "unknown", "ja", "-1"):
            frame.loc[row, column] = bad
            frame.loc[row, GRADE_COLUMN] = ""
            expected.add((row + 1, column))
            row += 1
    with pytest.raises(CohortError) as exc:
        read_cohort(_csv(frame, tmp_path / "bools_bad.csv"), OUTCOME)
    assert _pairs(exc.value.report) == expected
    assert set(exc.value.report.failures["rule"]) == {"must be true or false"}
    assert "maybe" not in str(exc.value) and "unknown" not in str(exc.value)


def test_numbers_are_parsed_not_trusted(frame: pd.DataFrame, tmp_path: Path) -> None:
    frame.loc[0, "age_years"] = " 42.5 "
    frame.loc[1, "ldh_u_l"] = "2.5e2"
    frame.loc[2, "ldh_u_l"] = "-inf"
    frame.loc[3, "platelets_10e9_l"] = "1 000"
    c = read_cohort(_csv(frame, tmp_path / "nums.csv"), OUTCOME, on_invalid="drop")
    assert _pairs(c.report) == {(3, "ldh_u_l"), (4, "platelets_10e9_l")}
    assert c.data.loc[0, "age_years"] == 42.5 and c.data.loc[1, "ldh_u_l"] == 250.0


def test_categories_are_stripped_but_case_sensitive(frame, tmp_path: Path) -> None:
    frame.loc[0, "sex"] = " male "
    frame.loc[1, "sex"] = "Male"
    c = read_cohort(_csv(frame, tmp_path / "cats.csv"), OUTCOME, on_invalid="drop")
    assert _pairs(c.report) == {(2, "sex")}
    assert c.data.loc[0, "sex"] == "male"


# --- Parquet and other encodings -------------------------------------------------------------


def test_parquet_round_trip(cohort_df: pd.DataFrame, valid, tmp_path: Path) -> None:
    path = tmp_path / "cohort.parquet"
    cohort_df.to_parquet(path)
    from_parquet = read_cohort(path, OUTCOME)
    assert from_parquet.report.ok and len(from_parquet.data) == N
    for f in FEATURES:
        if f.kind == "float":
            np.testing.assert_array_equal(
                from_parquet.data[f.name].to_numpy(float), cohort_df[f.name].to_numpy(float)
            )
        else:
            assert list(from_parquet.data[f.name]) == list(cohort_df[f.name]), f.name
    np.testing.assert_allclose(
        encode_frame(from_parquet.data), encode_frame(valid.data), rtol=1e-12, equal_nan=True
    )


def test_parquet_problems_are_reported_like_csv(frame: pd.DataFrame, tmp_path: Path) -> None:
    df = frame.copy()
    for f in FEATURES:
        if f.kind == "float":
            df[f.name] = df[f.name].astype(float)
    df.loc[2, "ldh_u_l"] = float(BAD_LDH)
    df.loc[5, "product"] = BAD_PRODUCT
    df[GRADE_COLUMN] = df[GRADE_COLUMN].astype(int)
    df[["prior_neuro_comorbidity", "cns_involvement", "prior_allo_hct", *OUTCOMES]] = df[
        ["prior_neuro_comorbidity", "cns_involvement", "prior_allo_hct", *OUTCOMES]
    ].astype(bool)
    path = tmp_path / "bad.parquet"
    df.to_parquet(path)
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    assert _pairs(exc.value.report) == {(3, "ldh_u_l"), (6, "product")}
    assert "98765" not in str(exc.value) and BAD_PRODUCT not in str(exc.value)


def test_utf8_bom_and_crlf_are_read(cohort_df: pd.DataFrame, tmp_path: Path) -> None:
    path = _csv(cohort_df, tmp_path / "excel.csv", encoding="utf-8-sig", lineterminator="\r\n")
    assert read_cohort(path, OUTCOME).report.ok


def test_sha256_identifies_the_file(cohort_df: pd.DataFrame, valid, tmp_path: Path) -> None:
    a = valid
    changed = cohort_df.copy()
    changed.loc[0, "age_years"] = 50.0
    assert a.sha256 == sha256_file(_csv(cohort_df, tmp_path / "b.csv"))
    assert a.sha256 != sha256_file(_csv(changed, tmp_path / "c.csv"))


def test_required_features_listed_in_contract_are_the_ones_io_requires(cohort_df, tmp_path):
    """Every required feature is enforced by read_cohort; every optional one is not."""
    for name in REQUIRED:
        with pytest.raises(CohortError, match=name):
            read_cohort(_csv(cohort_df.drop(columns=name), tmp_path / f"{name}.csv"), OUTCOME)
    assert FEATURES_BY_NAME[OPTIONAL[0]].required is False


def test_parquet_with_a_stored_index_keeps_ids_and_row_numbers(tmp_path):
    from pipeline.data.synthetic import generate_cohort
    from pipeline.data.read import CohortError, read_cohort

    df = generate_cohort(30, seed=4).drop(columns=["p_true"]).iloc[10:].set_index("patient_id")
    df.iloc[3, df.columns.get_loc("ldh_u_l")] = 55555.0
    path = tmp_path / "indexed.parquet"
    df.to_parquet(path)
    with pytest.raises(CohortError) as err:
        read_cohort(path, "severe_icans")
    assert "rows 4" in str(err.value) and "SYN-" not in str(err.value)
