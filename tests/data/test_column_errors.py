"""A cohort file's missing columns in one line each: the file, the column, the near-miss it has."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.contract import OUTCOMES
from pipeline.data.read import CohortError, nearest_name, read_cohort

OUTCOME = next(iter(OUTCOMES))


@pytest.fixture(scope="module")
def cohort_df():
    from pipeline.data.synthetic import generate_cohort

    return generate_cohort(n=60, seed=3)


def test_renamed_column_names_the_file_and_the_near_miss(cohort_df, tmp_path: Path) -> None:
    path = tmp_path / "site_b.csv"
    cohort_df.rename(columns={"crp_mg_l": "CRP_mg_L"}).to_csv(path, index=False)
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    msg = str(exc.value)
    print(f"\n[renamed column] {msg}")
    assert msg == "site_b.csv: missing required column 'crp_mg_l' (the file has 'CRP_mg_L': renamed?)"


def test_dropped_column_has_no_invented_near_miss(cohort_df, tmp_path: Path) -> None:
    path = tmp_path / "site_c.csv"
    cohort_df.drop(columns=["crp_mg_l", "ldh_u_l"]).to_csv(path, index=False)
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    lines = str(exc.value).splitlines()
    assert lines == ["site_c.csv: missing 2 required columns:", "  'ldh_u_l'", "  'crp_mg_l'"]


def test_a_known_column_is_never_offered_as_the_near_miss(cohort_df, tmp_path: Path) -> None:
    """creatinine_mg_dl is present and used: it cannot be what crp_mg_l was renamed to."""
    path = tmp_path / "site_d.csv"
    cohort_df.drop(columns=["crp_mg_l"]).to_csv(path, index=False)
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    assert "renamed" not in str(exc.value)


@pytest.mark.parametrize("sep, said", [(";", "';' (semicolon)"), ("\t", "a tab"), ("|", "'|'")])
def test_delimiter_is_the_only_line_when_it_explains_the_rest(cohort_df, tmp_path, sep, said) -> None:
    path = tmp_path / "excel.csv"
    cohort_df.to_csv(path, index=False, sep=sep)
    with pytest.raises(CohortError) as exc:
        read_cohort(path, OUTCOME)
    msg = str(exc.value)
    print(f"\n[delimiter {sep!r}] {msg}")
    assert msg.startswith(f"excel.csv: the file seems to use {said} as its delimiter")
    assert "\n" not in msg and "'crp_mg_l'" not in msg  # no list of 17 columns after it


def test_nearest_name_rules() -> None:
    assert nearest_name("crp_mg_l", ["CRP mg/l".replace("/", "_")]) == "CRP mg_l"
    assert nearest_name("crp_mg_l", ["weight", "height"]) is None
    assert nearest_name("ldh_u_l", ["LDH-U-L", "ldh"]) == "LDH-U-L"
