"""Outcomes in: append-only, idempotent on outcome_id, corrected by superseding rows, on both stores;
the API and the import name the field and the rule, never a submitted value."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient

from core.contract import example_request
from serving.outcomes import (
    OutcomeConflict,
    OutcomeRecord,
    UnknownTarget,
    current_outcomes,
    labelled_answers,
    record_outcome,
)
from serving.store import Store
from tests.helpers import KEY, dump_database, record

SECRET_PATIENT = "MRN-778899-SECRET"


@pytest.fixture
def store(store_url):  # noqa: F811
    s = Store(store_url, KEY)
    s.migrate()
    s.append_many([record(1), record(2, patient_id=SECRET_PATIENT),
                   record(3, request_id="batch-1", patient_id="A"), record(4, request_id="batch-1", patient_id="B")])
    yield s
    s.close()


def _rec(outcome_id="o-1", **kw) -> OutcomeRecord:
    values = dict(outcome_id=outcome_id, observed_on=date(2026, 3, 1), source="form 4100", request_id="req-00001",
                  icans_max_grade=3)
    values.update(kw)
    return OutcomeRecord(**values)


def test_idempotent_conflicting_and_superseded(store):
    row, created = record_outcome(store, _rec())
    assert created and row["icans_max_grade"] == 3
    again, created = record_outcome(store, _rec())
    assert not created and again["id"] == row["id"]
    with pytest.raises(OutcomeConflict, match="already used"):
        record_outcome(store, _rec(icans_max_grade=1))
    record_outcome(store, _rec("o-2", icans_max_grade=1, corrects="o-1"))
    current = current_outcomes(store)
    assert [o["outcome_id"] for o in current] == ["o-2"]
    (labelled,) = labelled_answers(store)
    assert labelled["request_id"] == "req-00001" and labelled["y"] == 0  # the correction: grade 1


def test_unknown_targets_are_named_by_field_not_value(store):
    with pytest.raises(UnknownTarget, match=r"^request_id: no answer to this client matches") as exc:
        record_outcome(store, _rec(request_id="req-nope-4711"))
    assert "4711" not in str(exc.value)
    with pytest.raises(UnknownTarget, match=r"^patient_id: no answer to this client matches"):
        record_outcome(store, _rec(request_id=None, patient_id="never-seen"))
    with pytest.raises(UnknownTarget, match=r"^corrects: "):
        record_outcome(store, _rec(corrects="o-404"))
    with pytest.raises(UnknownTarget, match="several patients"):
        record_outcome(store, _rec(request_id="batch-1"))
    row, _ = record_outcome(store, _rec("o-b", request_id="batch-1", patient_id="B", icans_max_grade=4))
    (labelled,) = labelled_answers(store)
    assert labelled["inputs"]["age"] == record(4).inputs["age"]  # patient B's row of the batch


def test_patient_ids_are_hashed_and_rows_cannot_be_rewritten(store):
    record_outcome(store, _rec("o-p", request_id=None, patient_id=SECRET_PATIENT, icans_max_grade=0))
    assert SECRET_PATIENT not in dump_database(store)
    (labelled,) = labelled_answers(store)
    assert labelled["request_id"] == "req-00002" and labelled["y"] == 0
    for statement in ("UPDATE outcomes SET icans_max_grade = 4", "DELETE FROM outcomes"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.exec_driver_sql(statement)
    assert len(current_outcomes(store)) == 1


def test_crs_outcomes_label_only_the_crs_model(store):
    record_outcome(store, _rec("o-c", icans_max_grade=None, severe_crs=True))
    assert labelled_answers(store, "severe_icans") == []
    assert [a["y"] for a in labelled_answers(store, "severe_crs")] == [1]


# ------------------------------------------------------------------------------------------ the API


@pytest.fixture(scope="module")
def api(trained):
    from serving.app import create_app
    from tests.helpers import open_store, wait_ready

    settings, _ = trained
    s = open_store(settings)
    _, score = s.create_key("test-ehr-outcomes", "score")
    _, outcomes = s.create_key("test-ehr-outcomes", "outcomes")  # reports for the answers it received
    s.close()
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client).status_code == 200
        yield client, {"Authorization": f"Bearer {score}"}, {"Authorization": f"Bearer {outcomes}"}


def test_outcomes_through_the_api(api):
    client, score, outcomes = api
    answer = client.post("/v1/risk", json={"patient_id": "api-patient-1", **example_request()}, headers=score)
    rid = answer.json()["request_id"]
    body = {"outcome_id": f"api-{rid[:12]}", "request_id": rid, "icans_max_grade": 3, "observed_on": "2026-03-01",
            "source": "ward form"}
    r = client.post("/v1/outcomes", json=body, headers=outcomes)
    assert r.status_code == 201 and r.json() == {"outcome_id": body["outcome_id"], "created": True, "request_id": rid}
    assert client.post("/v1/outcomes", json=body, headers=outcomes).status_code == 200  # a retry
    assert client.post("/v1/outcomes", json={**body, "icans_max_grade": 2}, headers=outcomes).status_code == 409
    assert client.post("/v1/outcomes", json=body, headers=score).status_code == 403  # a scoring key cannot
    bad = client.post("/v1/outcomes", json={**body, "outcome_id": "x-9", "icans_max_grade": 987654}, headers=outcomes)
    assert bad.status_code == 422 and "987654" not in bad.text
    assert any(e["field"].endswith("icans_max_grade") for e in bad.json()["detail"])
    gone = client.post("/v1/outcomes", json={**body, "outcome_id": "x-10", "request_id": "unknown-777"},
                       headers=outcomes)
    assert gone.status_code == 404 and "unknown-777" not in gone.text
    client.post("/v1/risk", json={"patient_id": "api-patient-2", **example_request()}, headers=score)
    by_patient = client.post("/v1/outcomes", json={"outcome_id": "x-11", "patient_id": "api-patient-2",
                                                    "severe_crs": False, "observed_on": "2026-03-02",
                                                    "source": "registry"}, headers=outcomes)
    assert by_patient.status_code == 201 and "api-patient-2" not in by_patient.text
    neither = client.post("/v1/outcomes", json={"outcome_id": "x-12", "request_id": rid, "observed_on": "2026-03-02",
                                                "source": "registry"}, headers=outcomes)
    assert neither.status_code == 422


def test_outcomes_import_names_rows_and_fields(tmp_path, store_url):  # noqa: F811
    from cli.admin import make_groups

    s = Store(store_url, KEY)
    s.migrate()
    s.append_many([record(1), record(2)])
    s.close()
    path = tmp_path / "registry.csv"
    path.write_text("outcome_id,request_id,icans_max_grade,observed_on,source\n"
                    "r-1,req-00001,4,2026-03-01,registry\n"
                    "r-2,req-00002,7,2026-03-01,registry\n"
                    "r-3,req-99999,1,2026-03-01,registry\n"
                    "r-1,req-00001,4,2026-03-01,registry\n")
    _, _, outcomes = make_groups(lambda: Store(store_url, KEY))
    result = CliRunner().invoke(outcomes, ["import", str(path)])
    assert result.exit_code == 2
    assert result.stdout.startswith("1 outcomes recorded, 1 already stored, 2 refused")
    assert "row 2: icans_max_grade:" in result.stderr and "row 3: request_id:" in result.stderr
    assert "req-99999" not in result.output and " 7" not in result.stderr


def test_an_outcome_as_a_fhir_observation(api):
    from serving.fhir.resources import FHIR_JSON, REQUEST_ID_SYSTEM

    client, score, outcomes = api
    rid = client.post("/v1/risk", json=example_request(), headers=score).json()["request_id"]
    obs = {"resourceType": "Observation", "status": "final",
           "identifier": [{"system": "urn:site:outcomes", "value": f"fhir-{rid[:10]}"}],
           "code": {"coding": [{"system": "urn:icans-risk:codes", "code": "icans-max-grade"}]},
           "focus": [{"identifier": {"system": REQUEST_ID_SYSTEM, "value": rid}}],
           "valueInteger": 4, "effectiveDateTime": "2026-03-05T10:00:00Z", "meta": {"source": "ward EHR"}}
    headers = {**outcomes, "Content-Type": FHIR_JSON}
    import json as _json

    r = client.post("/v1/outcomes/fhir", content=_json.dumps(obs), headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["request_id"] == rid
    assert client.post("/v1/outcomes/fhir", content=_json.dumps(obs), headers=headers).status_code == 200
    no_code = {**obs, "identifier": [{"value": "fhir-x1"}], "code": {"coding": [{"system": "http://loinc.org",
                                                                                "code": "0000-0"}]}}
    bad = client.post("/v1/outcomes/fhir", content=_json.dumps(no_code), headers=headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "code.coding"
    wrong = {**obs, "identifier": [{"value": "fhir-x2"}], "valueInteger": 654321}
    bad = client.post("/v1/outcomes/fhir", content=_json.dumps(wrong), headers=headers)
    assert bad.status_code == 422 and "654321" not in bad.text
    assert client.post("/v1/outcomes/fhir", content=b"\xff\xfe", headers=headers).status_code == 400
    assert client.post("/v1/outcomes/fhir", content=_json.dumps(obs), headers={**score, "Content-Type": FHIR_JSON}
                       ).status_code == 403
