"""One source of truth: the contract (core/contract.py) and everything derived from it.

The pandera schema for cohort files, the pydantic request model, the markdown table and the
OpenAPI example must all say what `FEATURES` says, and the two validation paths (cohort file and
API request) must draw the hard-range line at exactly the same place.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from pipeline.data.synthetic import generate_cohort
from core.contract import (
    FEATURE_NAMES,
    FEATURES,
    FEATURES_BY_NAME,
    GRADE_COLUMN,
    ID_COLUMN,
    NON_FEATURE_COLUMNS,
    OUTCOMES,
    Feature,
    example_request,
    markdown_table,
)
from pipeline.data.read import read_cohort
from pipeline.data.schema import cohort_schema
from serving.schemas import PatientFeatures

FLOATS = [f for f in FEATURES if f.kind == "float"]
BOOLS = [f for f in FEATURES if f.kind == "bool"]
CATEGORIES = [f for f in FEATURES if f.kind == "category"]
OUTCOME = "severe_icans"


def _ids(features: list[Feature]) -> list[str]:
    return [f.name for f in features]


# --- the contract itself ---------------------------------------------------------------------


def test_feature_names_are_unique_and_never_outcomes() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert not set(FEATURE_NAMES) & NON_FEATURE_COLUMNS
    assert {ID_COLUMN, GRADE_COLUMN, "p_true", *OUTCOMES} <= NON_FEATURE_COLUMNS


@pytest.mark.parametrize("f", FEATURES, ids=_ids(list(FEATURES)))
def test_each_feature_is_well_formed(f: Feature) -> None:
    if f.kind == "float":
        assert f.min is not None and f.max is not None and f.min < f.max
        assert not f.categories
    elif f.kind == "category":
        assert len(f.categories) >= 2 and len(set(f.categories)) == len(f.categories)
        assert f.min is None and f.max is None
    else:
        assert f.kind == "bool" and not f.categories
    assert f.direction in (-1, 0, 1)
    if f.required:
        assert f.example is not None, "a required feature needs an example for the OpenAPI body"


# --- pandera schema --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def schema():
    return cohort_schema(OUTCOME)


def _stats(column) -> list[tuple[str, dict]]:
    return [(c.name, dict(c.statistics)) for c in column.checks]


@pytest.mark.parametrize("f", FEATURES, ids=_ids(list(FEATURES)))
def test_every_feature_is_in_the_pandera_schema(schema, f: Feature) -> None:
    assert f.name in schema.columns
    col = schema.columns[f.name]
    assert col.required is f.required
    assert col.nullable is (not f.required)


@pytest.mark.parametrize("f", FLOATS, ids=_ids(FLOATS))
def test_pandera_range_checks_match_the_contract(schema, f: Feature) -> None:
    stats = _stats(schema.columns[f.name])
    if f.min_exclusive:
        by_name = dict(stats)
        assert by_name["greater_than"]["min_value"] == f.min
        assert by_name["less_than_or_equal_to"]["max_value"] == f.max
        assert "in_range" not in by_name
    else:
        (name, s), = stats
        assert name == "in_range"
        assert (s["min_value"], s["max_value"]) == (f.min, f.max)
        assert s["include_min"] and s["include_max"]


@pytest.mark.parametrize("f", CATEGORIES, ids=_ids(CATEGORIES))
def test_pandera_category_checks_match_the_contract(schema, f: Feature) -> None:
    (name, s), = _stats(schema.columns[f.name])
    assert name == "isin"
    assert list(s["allowed_values"]) == list(f.categories)


@pytest.mark.parametrize("f", BOOLS, ids=_ids(BOOLS))
def test_pandera_bool_checks_match_the_contract(schema, f: Feature) -> None:
    (name, s), = _stats(schema.columns[f.name])
    assert name == "isin"
    assert set(s["allowed_values"]) == {True, False}


def test_schema_has_no_column_outside_the_contract(schema) -> None:
    assert set(schema.columns) == {*FEATURE_NAMES, *NON_FEATURE_COLUMNS}


@pytest.mark.parametrize("outcome", [None, *OUTCOMES])
def test_schema_requires_only_the_chosen_outcome(outcome: str | None) -> None:
    s = cohort_schema(outcome)
    for name in OUTCOMES:
        assert s.columns[name].required is (name == outcome)
        assert s.columns[name].nullable is (name != outcome)
    assert not s.columns[GRADE_COLUMN].required
    assert not s.columns["p_true"].required


def test_schema_id_column_is_required_unique_and_optional_for_scoring() -> None:
    assert cohort_schema(OUTCOME).columns[ID_COLUMN].required
    assert cohort_schema(OUTCOME).columns[ID_COLUMN].unique
    assert not cohort_schema(None, require_id=False).columns[ID_COLUMN].required


# --- pydantic request model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def json_schema() -> dict:
    return PatientFeatures.model_json_schema()


def _prop(json_schema: dict, name: str) -> dict:
    """The non-null branch of a property (optional fields are anyOf[..., null])."""
    prop = json_schema["properties"][name]
    if "anyOf" in prop:
        branches = [b for b in prop["anyOf"] if b.get("type") != "null"]
        assert len(branches) == 1 and len(prop["anyOf"]) == 2
        return branches[0]
    return prop


def test_request_model_fields_are_exactly_the_features_plus_id(json_schema: dict) -> None:
    assert set(PatientFeatures.model_fields) == {ID_COLUMN, *FEATURE_NAMES}
    assert set(json_schema["properties"]) == {ID_COLUMN, *FEATURE_NAMES}
    assert json_schema.get("additionalProperties") is False


def test_request_model_required_fields_match_the_contract(json_schema: dict) -> None:
    assert set(json_schema["required"]) == {f.name for f in FEATURES if f.required}
    assert ID_COLUMN not in json_schema["required"]


@pytest.mark.parametrize("f", FEATURES, ids=_ids(list(FEATURES)))
def test_request_model_required_ness_matches(f: Feature) -> None:
    assert PatientFeatures.model_fields[f.name].is_required() is f.required


@pytest.mark.parametrize("f", FLOATS, ids=_ids(FLOATS))
def test_request_model_bounds_match_the_contract(json_schema: dict, f: Feature) -> None:
    prop = _prop(json_schema, f.name)
    assert prop["type"] == "number"
    assert prop["maximum"] == f.max
    assert "exclusiveMaximum" not in prop
    if f.min_exclusive:
        assert prop["exclusiveMinimum"] == f.min
        assert "minimum" not in prop
    else:
        assert prop["minimum"] == f.min
        assert "exclusiveMinimum" not in prop


@pytest.mark.parametrize("f", CATEGORIES, ids=_ids(CATEGORIES))
def test_request_model_enums_match_the_contract(json_schema: dict, f: Feature) -> None:
    assert list(_prop(json_schema, f.name)["enum"]) == list(f.categories)


@pytest.mark.parametrize("f", BOOLS, ids=_ids(BOOLS))
def test_request_model_bools_are_booleans(json_schema: dict, f: Feature) -> None:
    assert _prop(json_schema, f.name)["type"] == "boolean"


@pytest.mark.parametrize("f", FEATURES, ids=_ids(list(FEATURES)))
def test_request_model_carries_unit_and_loinc(json_schema: dict, f: Feature) -> None:
    prop = json_schema["properties"][f.name]
    assert prop.get("unit") == f.unit  # unitless: no "unit" key (never "-")
    assert prop.get("loinc") == f.loinc


# --- example request and markdown table ------------------------------------------------------


def test_example_request_validates_against_the_request_model() -> None:
    body = example_request()
    model = PatientFeatures.model_validate(body)
    for name, value in body.items():
        assert getattr(model, name) == value
    assert {f.name for f in FEATURES if f.required} <= set(body)
    assert not set(body) & NON_FEATURE_COLUMNS


def test_openapi_example_is_the_contract_example(json_schema: dict) -> None:
    (example,) = json_schema["examples"]
    example = dict(example)
    example.pop(ID_COLUMN)
    assert example == example_request()
    PatientFeatures.model_validate(json_schema["examples"][0])


@pytest.mark.parametrize("f", [f for f in FEATURES if f.required], ids=lambda f: f.name)
def test_request_without_a_required_feature_is_rejected(f: Feature) -> None:
    body = example_request()
    body.pop(f.name)
    with pytest.raises(ValidationError) as exc:
        PatientFeatures.model_validate(body)
    assert [e["loc"] for e in exc.value.errors()] == [(f.name,)]


@pytest.mark.parametrize("f", [f for f in FEATURES if not f.required], ids=lambda f: f.name)
def test_request_without_an_optional_feature_is_accepted(f: Feature) -> None:
    body = example_request()
    body.pop(f.name, None)
    assert getattr(PatientFeatures.model_validate(body), f.name) is None
    body[f.name] = None
    assert getattr(PatientFeatures.model_validate(body), f.name) is None


@pytest.mark.parametrize("column", sorted(NON_FEATURE_COLUMNS - {ID_COLUMN}))
def test_outcome_columns_are_never_request_inputs(column: str) -> None:
    body = {**example_request(), column: 0}
    with pytest.raises(ValidationError):
        PatientFeatures.model_validate(body)


def test_markdown_table_has_one_row_per_feature() -> None:
    lines = markdown_table().splitlines()
    header, rule, *rows = lines
    assert header.startswith("| column |") and set(rule) <= {"|", "-"}
    assert len(rows) == len(FEATURES)
    n_cells = header.count("|")
    for f, row in zip(FEATURES, rows, strict=True):
        assert row.startswith(f"| `{f.name}` |")
        assert row.count("|") == n_cells, f"a '|' inside a cell breaks the table: {row}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == f.kind
        assert cells[3] == f.range_text
        assert cells[4] == ("yes" if f.required else "no")
        assert cells[5] == (f.loinc or "-")


# --- the two validation paths draw the line at the same place --------------------------------


def _boundary_cases() -> list[tuple[str, float, bool, str]]:
    """(feature, value, accepted?, label) just outside and exactly at each hard bound."""
    cases = []
    for f in FLOATS:
        assert f.min is not None and f.max is not None
        eps = (f.max - f.min) * 1e-6
        cases.append((f.name, f.min - eps, False, "below_min"))
        cases.append((f.name, float(f.min), not f.min_exclusive, "at_min"))
        if f.min_exclusive:
            cases.append((f.name, f.min + eps, True, "just_above_min"))
        cases.append((f.name, float(f.max), True, "at_max"))
        cases.append((f.name, f.max + eps, False, "above_max"))
    return cases


BOUNDARY_CASES = _boundary_cases()


def test_dose_bounds_are_exclusive_zero_and_inclusive_hundred() -> None:
    dose = FEATURES_BY_NAME["car_t_dose_10e6_per_kg"]
    assert (dose.min, dose.max, dose.min_exclusive) == (0, 100, True)
    expected = {label: ok for name, _, ok, label in BOUNDARY_CASES if name == dose.name}
    assert expected == {
        "below_min": False,
        "at_min": False,
        "just_above_min": True,
        "at_max": True,
        "above_max": False,
    }


@pytest.fixture(scope="module")
def boundary_report(tmp_path_factory: pytest.TempPathFactory):
    """One CSV: a valid base row repeated, each copy with one feature set to one boundary value."""
    base = generate_cohort(1, seed=3).drop(columns="p_true").iloc[0]
    rows = []
    for i, (name, value, _, _) in enumerate(BOUNDARY_CASES):
        row = base.copy()
        row[ID_COLUMN] = f"B-{i:04d}"
        row[name] = value
        rows.append(row)
    # plus one untouched row so that 'drop' always has something valid left
    rows.append(base.copy())
    df = pd.DataFrame(rows).reset_index(drop=True)
    path: Path = tmp_path_factory.mktemp("contract") / "boundaries.csv"
    df.to_csv(path, index=False, float_format="%.17g")
    cohort = read_cohort(path, OUTCOME, on_invalid="drop")
    return cohort.report.failures


@pytest.mark.parametrize(
    "i", range(len(BOUNDARY_CASES)), ids=[f"{n}-{lab}" for n, _, _, lab in BOUNDARY_CASES]
)
def test_cohort_file_and_request_agree_at_the_bounds(boundary_report: pd.DataFrame, i: int) -> None:
    name, value, accepted, _ = BOUNDARY_CASES[i]
    file_row = i + 1
    fails = boundary_report[boundary_report["row"] == file_row]
    # cohort file path (CSV -> parse -> pandera)
    if accepted:
        assert fails.empty, fails.to_dict("records")
    else:
        assert list(fails["column"]) == [name]
    # request path (pydantic)
    body = {**example_request(), name: value}
    if accepted:
        assert getattr(PatientFeatures.model_validate(body), name) == value
    else:
        with pytest.raises(ValidationError) as exc:
            PatientFeatures.model_validate(body)
        assert [e["loc"] for e in exc.value.errors()] == [(name,)]


@pytest.mark.parametrize("f", FLOATS, ids=_ids(FLOATS))
def test_request_rejects_non_finite_numbers(f: Feature) -> None:
    for value in (math.inf, -math.inf, math.nan):
        with pytest.raises(ValidationError):
            PatientFeatures.model_validate({**example_request(), f.name: value})


@pytest.fixture(scope="module")
def category_report(tmp_path_factory: pytest.TempPathFactory):
    """Every category level (accepted) and one unknown level per category (rejected)."""
    base = generate_cohort(1, seed=3).drop(columns="p_true").iloc[0]
    cases: list[tuple[str, str, bool]] = []
    for f in CATEGORIES:
        cases += [(f.name, level, True) for level in f.categories]
        cases.append((f.name, "not_a_level", False))
        cases.append((f.name, f.categories[0].upper() + "_X", False))
    rows = []
    for i, (name, value, _) in enumerate(cases):
        row = base.copy()
        row[ID_COLUMN] = f"C-{i:04d}"
        row[name] = value
        rows.append(row)
    path: Path = tmp_path_factory.mktemp("contract") / "categories.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return cases, read_cohort(path, OUTCOME, on_invalid="drop").report.failures


def test_cohort_file_and_request_agree_on_category_levels(category_report) -> None:
    cases, failures = category_report
    for i, (name, value, accepted) in enumerate(cases):
        fails = failures[failures["row"] == i + 1]
        body = {**example_request(), name: value}
        if accepted:
            assert fails.empty, (name, value)
            PatientFeatures.model_validate(body)
        else:
            assert list(fails["column"]) == [name], (name, value)
            with pytest.raises(ValidationError):
                PatientFeatures.model_validate(body)
