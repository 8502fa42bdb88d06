"""The model matrix (core/features.py): one encoding for training, scoring and serving.

encode_frame (DataFrames: training, batch scoring) and encode_record (one request on the serving
hot path) must produce identical rows; GROUP must sum matrix columns back to contract features;
monotone constraints must follow the contract's published directions; and nothing that is not a
baseline feature (id, outcomes, the synthetic truth) may ever reach the matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.synthetic import generate_cohort
from core.contract import (
    FEATURES,
    FEATURES_BY_NAME,
    GRADE_COLUMN,
    ID_COLUMN,
    NON_FEATURE_COLUMNS,
    OUTCOMES,
)
from core.features import (
    GROUP,
    MATRIX_COLUMNS,
    MATRIX_NAMES,
    N_MATRIX,
    encode_frame,
    encode_record,
    monotone_constraints,
    training_ranges,
)
from pipeline.data.read import read_cohort
from serving.schemas import PatientFeatures

N = 300
FEATURE_INDEX = {f.name: i for i, f in enumerate(FEATURES)}
OPTIONAL = [f.name for f in FEATURES if not f.required]


@pytest.fixture(scope="module")
def raw() -> pd.DataFrame:
    return generate_cohort(N, seed=5)


@pytest.fixture(scope="module")
def validated(raw: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """The cohort as training sees it: through a CSV file and read_cohort."""
    path: Path = tmp_path_factory.mktemp("features") / "cohort.csv"
    raw.to_csv(path, index=False)
    return read_cohort(path, "severe_icans").data


@pytest.fixture(scope="module")
def X(validated: pd.DataFrame) -> np.ndarray:
    return encode_frame(validated)


def _columns_of(feature: str) -> list[int]:
    return [j for j, c in enumerate(MATRIX_COLUMNS) if c.feature == feature]


# --- matrix layout ---------------------------------------------------------------------------


def test_matrix_names_are_unique_and_come_from_features() -> None:
    assert len(set(MATRIX_NAMES)) == N_MATRIX == len(MATRIX_COLUMNS)
    assert {c.feature for c in MATRIX_COLUMNS} == set(FEATURES_BY_NAME)
    assert not {c.feature for c in MATRIX_COLUMNS} & NON_FEATURE_COLUMNS
    for c in MATRIX_COLUMNS:
        f = FEATURES_BY_NAME[c.feature]
        if c.level is not None:
            assert f.kind == "category" and c.level in f.categories
            assert c.name == f"{f.name}={c.level}"
        else:
            assert f.kind in ("float", "bool") and c.name == f.name


def test_matrix_follows_contract_order() -> None:
    order = [FEATURE_INDEX[c.feature] for c in MATRIX_COLUMNS]
    assert order == sorted(order)


def test_encode_frame_shape_and_dtype(X: np.ndarray) -> None:
    assert X.shape == (N, N_MATRIX) and X.dtype == np.float64


# --- GROUP -----------------------------------------------------------------------------------


def test_group_maps_each_matrix_column_to_exactly_one_feature() -> None:
    assert GROUP.shape == (N_MATRIX, len(FEATURES))
    assert set(np.unique(GROUP)) <= {0.0, 1.0}
    np.testing.assert_array_equal(GROUP.sum(axis=1), np.ones(N_MATRIX))
    for j, c in enumerate(MATRIX_COLUMNS):
        assert GROUP[j, FEATURE_INDEX[c.feature]] == 1.0


def test_group_column_sums_count_the_matrix_columns_of_each_feature() -> None:
    for f in FEATURES:
        expected = len(f.categories) if f.kind == "category" and len(f.categories) > 2 else 1
        assert GROUP[:, FEATURE_INDEX[f.name]].sum() == expected, f.name
        assert len(_columns_of(f.name)) == expected


def test_group_sums_contributions_back_to_features() -> None:
    rng = np.random.default_rng(0)
    contributions = rng.normal(size=(7, N_MATRIX))
    per_feature = contributions @ GROUP
    assert per_feature.shape == (7, len(FEATURES))
    for f in FEATURES:
        np.testing.assert_allclose(
            per_feature[:, FEATURE_INDEX[f.name]],
            contributions[:, _columns_of(f.name)].sum(axis=1),
        )
    np.testing.assert_allclose(per_feature.sum(axis=1), contributions.sum(axis=1))


# --- encoding values -------------------------------------------------------------------------


@pytest.mark.parametrize("feature", ["product", "target_antigen"])
def test_one_hot_columns_sum_to_one(X: np.ndarray, validated: pd.DataFrame, feature: str) -> None:
    cols = _columns_of(feature)
    assert len(cols) == len(FEATURES_BY_NAME[feature].categories) > 2
    block = X[:, cols]
    assert set(np.unique(block)) == {0.0, 1.0}
    np.testing.assert_array_equal(block.sum(axis=1), np.ones(N))
    levels = [MATRIX_COLUMNS[j].level for j in cols]
    assert [levels[k] for k in block.argmax(axis=1)] == list(validated[feature])


def test_binary_categories_indicate_their_second_level(X, validated: pd.DataFrame) -> None:
    for f in FEATURES:
        if f.kind == "category" and len(f.categories) == 2:
            (j,) = _columns_of(f.name)
            assert MATRIX_COLUMNS[j].level == f.categories[1]
            expected = (validated[f.name] == f.categories[1]).to_numpy(float)
            np.testing.assert_array_equal(X[:, j], expected, err_msg=f.name)


def test_bools_are_zero_one_and_floats_pass_through(X, validated: pd.DataFrame) -> None:
    for f in FEATURES:
        if f.kind == "category":
            continue
        (j,) = _columns_of(f.name)
        expected = validated[f.name].astype("Float64").to_numpy(float, na_value=np.nan)
        np.testing.assert_array_equal(X[:, j], expected, err_msg=f.name)
        if f.kind == "bool":
            assert set(np.unique(X[:, j])) <= {0.0, 1.0}


def test_missing_optionals_stay_nan_and_required_are_never_nan(X) -> None:
    for f in FEATURES:
        cols = _columns_of(f.name)
        if f.required:
            assert not np.isnan(X[:, cols]).any(), f.name
    assert all(np.isnan(X[:, _columns_of(name)]).any() for name in OPTIONAL), (
        "the generator should leave some optional labs missing"
    )


def test_raw_frame_and_validated_frame_encode_the_same(raw: pd.DataFrame, X: np.ndarray) -> None:
    np.testing.assert_allclose(encode_frame(raw), X, rtol=1e-12, equal_nan=True)


def test_absent_optional_columns_encode_as_nan(validated: pd.DataFrame, X: np.ndarray) -> None:
    Xa = encode_frame(validated.drop(columns=OPTIONAL))
    for name in OPTIONAL:
        assert np.isnan(Xa[:, _columns_of(name)]).all()
    keep = [j for j, c in enumerate(MATRIX_COLUMNS) if c.feature not in OPTIONAL]
    np.testing.assert_array_equal(Xa[:, keep], X[:, keep])


# --- frame vs record (training vs serving) ---------------------------------------------------


def _records(validated: pd.DataFrame, nan_as: str) -> list[dict[str, object]]:
    """One dict per row, like a request: NaN optionals as None, as NaN, or absent."""
    out = []
    for row in validated.to_dict("records"):
        rec: dict[str, object] = {}
        for f in FEATURES:
            value = row[f.name]
            if pd.isna(value):
                if nan_as == "absent":
                    continue
                value = None if nan_as == "none" else float("nan")
            elif f.kind == "bool":
                value = bool(value)
            elif f.kind == "float":
                value = float(value)
            rec[f.name] = value
        out.append(rec)
    return out


@pytest.mark.parametrize("nan_as", ["none", "nan", "absent"])
def test_encode_record_matches_encode_frame(validated, X: np.ndarray, nan_as: str) -> None:
    out = np.empty(N_MATRIX)
    for i, rec in enumerate(_records(validated, nan_as)):
        row = encode_record(rec, out)
        assert row is out
        np.testing.assert_array_equal(row, X[i], err_msg=f"row {i}")


def test_encode_record_matches_encode_frame_through_the_request_model(validated, X) -> None:
    """The serving path: JSON-like dict -> PatientFeatures -> model_dump -> encode_record."""
    out = np.full(N_MATRIX, -999.0)
    records = _records(validated, "absent")
    for i, rec in enumerate(records[:100]):
        body = PatientFeatures.model_validate({ID_COLUMN: f"p-{i}", **rec}).model_dump()
        np.testing.assert_array_equal(encode_record(body, out), X[i], err_msg=f"row {i}")
    # and a frame built from request bodies encodes identically too
    frame = pd.DataFrame([PatientFeatures.model_validate(r).model_dump() for r in records[:100]])
    np.testing.assert_array_equal(encode_frame(frame), X[:100])


def test_encode_record_overwrites_every_cell(validated) -> None:
    rec = _records(validated, "none")[0]
    a = encode_record(rec, np.full(N_MATRIX, 123.0))
    b = encode_record(rec, np.full(N_MATRIX, -7.0))
    np.testing.assert_array_equal(a, b)


# --- non-features never influence the matrix -------------------------------------------------


def test_id_outcomes_and_p_true_never_change_the_matrix(validated: pd.DataFrame, X) -> None:
    rng = np.random.default_rng(1)
    changed = validated.copy()
    changed[ID_COLUMN] = [f"OTHER-{i}" for i in rng.permutation(N)]
    for name in OUTCOMES:
        changed[name] = ~changed[name].astype(bool)
    changed[GRADE_COLUMN] = rng.integers(0, 5, N).astype(float)
    changed["p_true"] = rng.random(N)
    np.testing.assert_array_equal(encode_frame(changed), X)
    dropped = validated.drop(columns=[c for c in NON_FEATURE_COLUMNS if c in validated])
    np.testing.assert_array_equal(encode_frame(dropped), X)


def test_unknown_columns_never_change_the_matrix(validated: pd.DataFrame, X) -> None:
    extra = validated.assign(secret_mrn=np.arange(N), icans_onset_day=3.0, crs_grade=4)
    np.testing.assert_array_equal(encode_frame(extra), X)
    reordered = validated[list(reversed(validated.columns))]
    np.testing.assert_array_equal(encode_frame(reordered), X)


def test_encode_record_ignores_non_features(validated: pd.DataFrame, X) -> None:
    rec = _records(validated, "none")[0]
    noisy = {**rec, ID_COLUMN: "x", "severe_icans": True, "p_true": 0.99, "secret": 5.0}
    np.testing.assert_array_equal(encode_record(noisy, np.empty(N_MATRIX)), X[0])


def test_each_feature_changes_only_its_own_columns(validated: pd.DataFrame, X) -> None:
    base = validated.iloc[[0]].reset_index(drop=True)
    x0 = encode_frame(base)[0]
    for f in FEATURES:
        changed = base.copy()
        if f.kind == "float":
            changed[f.name] = f.max
        elif f.kind == "bool":
            changed[f.name] = ~changed[f.name].astype(bool)
        else:
            current = changed.loc[0, f.name]
            changed[f.name] = next(c for c in f.categories if c != current)
        x1 = encode_frame(changed)[0]
        changed_cols = np.flatnonzero(~np.isclose(x0, x1, equal_nan=True))
        moved = {MATRIX_COLUMNS[j].feature for j in changed_cols}
        assert moved == {f.name}, (f.name, moved)


# --- monotone constraints --------------------------------------------------------------------


def test_monotone_constraints_cover_every_matrix_column() -> None:
    mc = monotone_constraints()
    assert len(mc) == N_MATRIX
    assert set(mc) <= {-1, 0, 1}


@pytest.mark.parametrize(
    "column",
    [
        "marrow_blasts_pct",
        "ldh_u_l",
        "costimulatory_domain=CD28",
        "prior_neuro_comorbidity",
        "car_t_dose_10e6_per_kg",
    ],
)
def test_published_risk_factors_are_monotone_increasing(column: str) -> None:
    assert monotone_constraints()[MATRIX_NAMES.index(column)] == 1


def test_constraints_follow_contract_directions_and_one_hot_levels_only_their_declared_direction() -> None:
    # a multi-level category's indicator is constrained only where the contract declares that level's
    # direction (a product that fixes the costimulatory domain); otherwise it is free
    mc = monotone_constraints()
    for j, c in enumerate(MATRIX_COLUMNS):
        f = FEATURES_BY_NAME[c.feature]
        if f.kind == "category" and len(f.categories) > 2:
            declared = f.level_directions[f.categories.index(c.level)] if f.level_directions else 0
            assert mc[j] == declared, c.name
        else:
            assert mc[j] == f.direction, c.name


# --- training ranges -------------------------------------------------------------------------


def test_training_ranges_lie_within_the_data(validated: pd.DataFrame) -> None:
    ranges = training_ranges(validated)
    assert set(ranges) == {f.name for f in FEATURES if f.kind == "float"}
    for name, (lo, hi) in ranges.items():
        values = validated[name].dropna()
        assert values.min() <= lo <= hi <= values.max(), name
        f = FEATURES_BY_NAME[name]
        assert f.min <= lo and hi <= f.max, name
        inside = values.between(lo, hi).mean()
        assert inside >= 0.95, (name, inside)


def test_training_ranges_skip_all_missing_and_absent_columns(validated: pd.DataFrame) -> None:
    df = validated.drop(columns=["il15_pg_ml"]).assign(ifng_pg_ml=np.nan)
    ranges = training_ranges(df)
    assert "il15_pg_ml" not in ranges and "ifng_pg_ml" not in ranges
    assert "ldh_u_l" in ranges
    assert all(np.isfinite(v).all() for v in ranges.values())
