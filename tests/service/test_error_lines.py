"""Errors in one line per cause: the unknown API field's nearest contract name, an outcomes file's
missing columns once each, and the outcome_id derived when a registry export has none."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from core.contract import FEATURE_NAMES
from serving.errors import nearest_contract_name, unknown_field_rule
from serving.store import Store
from tests.helpers import KEY, record


@pytest.mark.parametrize(
    "typo, meant",
    [("crp_mg_dl", "crp_mg_l"), ("CRP_mg_L", "crp_mg_l"), ("age-years", "age_years"), ("ldh_u_per_l", "ldh_u_l"),
     ("il6_pg_l", "il6_pg_ml"), ("platelets_10e9_per_l", "platelets_10e9_l"), ("patientid", "patient_id")],
)
def test_a_typo_gets_the_nearest_contract_name(typo: str, meant: str) -> None:
    assert nearest_contract_name(typo) == meant
    assert unknown_field_rule(typo).endswith(f"did you mean '{meant}'?")


@pytest.mark.parametrize("name", ["crs_grade", "x", "weight_kg", "a" * 1000, "tocilizumab_given"])
def test_a_name_near_nothing_gets_no_suggestion(name: str) -> None:
    assert nearest_contract_name(name) is None
    assert unknown_field_rule(name) == "unknown field (not in the data contract)"


def test_the_error_suggests_the_contract_name_and_never_echoes_the_submitted_one() -> None:
    """The request model's errors as the routes report them (serving.errors.sanitize_errors)."""
    from pydantic import ValidationError

    from core.contract import example_request
    from serving.errors import sanitize_errors
    from serving.schemas import PatientFeatures

    body = example_request()
    body["CRP_MG_X"] = body.pop("crp_mg_l")
    with pytest.raises(ValidationError) as exc:
        PatientFeatures.model_validate(body)
    detail = sanitize_errors(exc.value.errors(), body)
    unknown = [d for d in detail if d["type"] == "extra_forbidden"]
    print(f"\n[unknown field] {unknown}")
    assert unknown == [{"field": f"<unknown field {len(body)}>",
                        "rule": "unknown field (not in the data contract); did you mean 'crp_mg_l'?",
                        "type": "extra_forbidden"}]
    assert "CRP_MG_X" not in str(detail)
    assert {"field": "crp_mg_l", "rule": "required field is missing", "type": "missing"} in detail


def test_every_suggestion_is_a_contract_name() -> None:
    for name in FEATURE_NAMES:
        for typo in (name.upper(), name[:-1], name + "x", name.replace("_", "-")):
            hint = nearest_contract_name(typo)
            assert hint in (*FEATURE_NAMES, "patient_id", None)


def _import(store_url, path, *args):  # noqa: F811
    from cli.admin import make_groups

    _, _, outcomes = make_groups(lambda: Store(store_url, KEY))
    return CliRunner().invoke(outcomes, ["import", str(path), *args])


def test_an_export_missing_whole_columns_says_so_once_per_column(tmp_path, store_url) -> None:  # noqa: F811
    s = Store(store_url, KEY)
    s.migrate()
    s.append_many([record(i) for i in range(1, 4)])
    s.close()
    path = tmp_path / "registry.csv"
    rows = "".join(f"req-{i:05d},{i % 5}\n" for i in range(1, 901))
    path.write_text("request_id,icans_max_grade\n" + rows)
    result = _import(store_url, path)
    print(f"\n[outcomes import]\n{result.stderr}")
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        "registry.csv: missing column 'observed_on': every row needs it",
        "registry.csv: missing column 'source': every row needs it (or pass --source NAME)",
        "registry.csv: nothing recorded",
    ]
    from serving.outcomes import current_outcomes

    s = Store(store_url, KEY)
    assert current_outcomes(s) == []  # nothing stored from a refused file
    s.close()


def test_outcome_id_is_derived_when_absent_and_a_reimport_stores_nothing_twice(tmp_path, store_url) -> None:  # noqa: F811
    s = Store(store_url, KEY)
    s.migrate()
    s.append_many([record(1), record(2)])
    s.close()
    path = tmp_path / "export.csv"
    path.write_text("request_id,icans_max_grade,observed_on\nreq-00001,4,2026-03-01\nreq-00002,0,2026-03-02\n")
    first = _import(store_url, path, "--source", "registry")
    assert first.exit_code == 0, first.output
    assert first.stdout.startswith("2 outcomes recorded, 0 already stored, 0 refused")
    again = _import(store_url, path, "--source", "registry")
    assert again.stdout.startswith("0 outcomes recorded, 2 already stored, 0 refused")
    changed = tmp_path / "changed.csv"
    changed.write_text("request_id,icans_max_grade,observed_on\nreq-00001,1,2026-03-01\n")
    conflict = _import(store_url, changed, "--source", "registry")
    assert conflict.exit_code == 2 and "row 1:" in conflict.stderr and "correction" in conflict.stderr
