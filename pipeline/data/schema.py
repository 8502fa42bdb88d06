"""The pandera schema for cohort files, derived from the contract (pandera imported when used)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.contract import CENTRE_COLUMN, CENTRE_PATTERN, FEATURES, GRADE_COLUMN, ID_COLUMN, OUTCOMES, SEVERE_GRADE, Feature

if TYPE_CHECKING:
    import pandera.pandas as pa


def _feature_column(f: Feature) -> pa.Column:
    import pandera.pandas as pa

    checks: list[pa.Check] = []
    if f.kind == "float":
        if f.min_exclusive:
            checks.append(pa.Check.gt(f.min))
            checks.append(pa.Check.le(f.max))
        else:
            checks.append(pa.Check.in_range(f.min, f.max))
        dtype: object = float
    elif f.kind == "bool":
        checks.append(pa.Check.isin([True, False]))
        dtype = None
    else:
        checks.append(pa.Check.isin(list(f.categories)))
        dtype = None
    return pa.Column(
        dtype,
        checks=checks,
        nullable=not f.required,
        required=f.required,
        description=f.description,
        title=f.unit,
    )


def _bool_column(required: bool) -> pa.Column:
    import pandera.pandas as pa

    return pa.Column(None, checks=pa.Check.isin([True, False]), nullable=not required, required=required)


def _grade_agrees(df) -> object:
    """severe_icans must agree with icans_max_grade where both are present."""
    if GRADE_COLUMN not in df or "severe_icans" not in df:
        return True
    grade = df[GRADE_COLUMN]
    label = df["severe_icans"]
    both = grade.notna() & label.notna()
    agrees = (grade >= SEVERE_GRADE) == label.astype(bool, errors="ignore")
    return ~both | agrees


def cohort_schema(outcome: str | None, require_id: bool = True) -> pa.DataFrameSchema:
    """Schema for a cohort file; `outcome` is the one label that must be present (None: scoring)."""
    import pandera.pandas as pa

    columns: dict[str, pa.Column] = {
        ID_COLUMN: pa.Column(
            str,
            checks=pa.Check.str_length(min_value=1),
            nullable=False,
            unique=True,
            required=require_id,
        )
    }
    columns.update({f.name: _feature_column(f) for f in FEATURES})
    for name in OUTCOMES:
        columns[name] = _bool_column(required=(name == outcome))
    columns[GRADE_COLUMN] = pa.Column(
        float, checks=pa.Check.isin([0, 1, 2, 3, 4]), nullable=True, required=False
    )
    columns[CENTRE_COLUMN] = pa.Column(  # optional; when present, every row names its centre
        None, checks=pa.Check.str_matches(CENTRE_PATTERN), nullable=False, required=False
    )
    columns["p_true"] = pa.Column(
        float, checks=pa.Check.in_range(0, 1), nullable=True, required=False
    )
    return pa.DataFrameSchema(
        columns,
        checks=[
            pa.Check(
                _grade_agrees,
                name="severe_icans_agrees_with_grade",
                error=f"severe_icans must equal icans_max_grade >= {SEVERE_GRADE}",  # pipeline.data.read reads this text
            )
        ],
        strict=False,
        name="cohort",
    )
