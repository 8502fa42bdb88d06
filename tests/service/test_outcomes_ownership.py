"""Issue 25, findings 3, 4, 6 and 7: outcomes belong to the client that received the answer, an
answer has one current outcome, dates are plausible, FHIR statuses that do not stand are refused,
duplicate JSON keys are refused, the patient-hash lookup is an index, imports commit in batches,
and an upgrade keeps every stored row. Each test here failed on main before the fix."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from core.contract import example_request
from serving.outcomes import (
    ANY_CLIENT,
    OutcomeConflict,
    OutcomeRecord,
    UnknownTarget,
    current_outcomes,
    labelled_answers,
    record_outcome,
    record_outcomes,
)
from serving.store import SCHEMA_HEAD, Store
from tests.helpers import KEY, record

CLINIC_A, CLINIC_B = "clinic-a", "clinic-b"


@pytest.fixture
def store(store_url):  # noqa: F811
    s = Store(store_url, KEY)
    s.migrate()
    s.append_many([record(1, client_id=CLINIC_A, patient_id="pat-a"),
                   record(2, client_id=CLINIC_B, patient_id="pat-b"),
                   record(3, client_id=CLINIC_A, patient_id="pat-a2")])
    yield s
    s.close()


def _rec(outcome_id: str, **kw) -> OutcomeRecord:
    values = dict(outcome_id=outcome_id, observed_on=date(2026, 3, 1), source="form 4100", icans_max_grade=3)
    values.update(kw)
    return OutcomeRecord(**values)


def test_a_client_reports_only_for_its_own_answers_and_the_404_says_nothing_more(store):
    with pytest.raises(UnknownTarget) as not_yours:
        record_outcome(store, _rec("b-1", request_id="req-00001"), owner=CLINIC_B)
    with pytest.raises(UnknownTarget) as never:
        record_outcome(store, _rec("b-2", request_id="req-09999"), owner=CLINIC_B)
    assert str(not_yours.value) == str(never.value)
    with pytest.raises(UnknownTarget) as not_yours_patient:
        record_outcome(store, _rec("b-3", patient_id="pat-a"), owner=CLINIC_B)
    with pytest.raises(UnknownTarget) as never_patient:
        record_outcome(store, _rec("b-4", patient_id="MRN-NEVER-SCORED-123"), owner=CLINIC_B)
    assert str(not_yours_patient.value) == str(never_patient.value)
    assert "pat-a" not in str(not_yours_patient.value)
    row, created = record_outcome(store, _rec("a-1", request_id="req-00001"), owner=CLINIC_A)
    assert created
    # clinic B cannot correct clinic A's outcome (naming its own answer or A's)
    with pytest.raises(UnknownTarget, match="^corrects: "):
        record_outcome(store, _rec("b-5", request_id="req-00002", corrects="a-1", icans_max_grade=0), owner=CLINIC_B)
    with pytest.raises(UnknownTarget, match="^request_id: "):
        record_outcome(store, _rec("b-6", request_id="req-00001", corrects="a-1", icans_max_grade=0), owner=CLINIC_B)
    # nor replay A's outcome_id to learn of it: a conflict, not the stored row
    with pytest.raises(OutcomeConflict):
        record_outcome(store, _rec("a-1", request_id="req-00001"), owner=CLINIC_B)
    assert [o["outcome_id"] for o in current_outcomes(store)] == ["a-1"]
    # A's request id with B's patient is no answer of anyone's
    with pytest.raises(UnknownTarget):
        record_outcome(store, _rec("x-1", request_id="req-00001", patient_id="pat-b"), owner=ANY_CLIENT)


def test_one_current_outcome_per_answer_and_corrections_stay_on_it(store):
    record_outcome(store, _rec("o-1", request_id="req-00001", icans_max_grade=0), owner=CLINIC_A)
    with pytest.raises(OutcomeConflict, match="already has an outcome"):
        record_outcome(store, _rec("o-2", request_id="req-00001", icans_max_grade=4), owner=CLINIC_A)
    with pytest.raises(OutcomeConflict, match="already has an outcome"):  # the same answer, by patient
        record_outcome(store, _rec("o-2p", patient_id="pat-a", request_id="req-00001"), owner=CLINIC_A)
    record_outcome(store, _rec("o-3", request_id="req-00001", icans_max_grade=2, corrects="o-1"), owner=CLINIC_A)
    with pytest.raises(OutcomeConflict, match="already corrected"):  # a second, different correction of o-1
        record_outcome(store, _rec("o-4", request_id="req-00001", icans_max_grade=4, corrects="o-1"), owner=CLINIC_A)
    with pytest.raises(UnknownTarget, match="^corrects: "):  # a correction that moves to another answer
        record_outcome(store, _rec("o-5", request_id="req-00003", icans_max_grade=4, corrects="o-3"), owner=CLINIC_A)
    record_outcome(store, _rec("o-6", request_id="req-00001", icans_max_grade=3, corrects="o-3"), owner=CLINIC_A)
    (current,) = current_outcomes(store)
    assert current["outcome_id"] == "o-6"
    (labelled,) = labelled_answers(store)
    assert labelled["request_id"] == "req-00001" and labelled["y"] == 1


def test_many_contradictory_reports_leave_one_label(store):
    """The finding's 30 grades for one answer: one is stored, the other 29 are conflicts."""
    results = [_try(store, _rec(f"c-{i}", request_id="req-00001", icans_max_grade=i % 5)) for i in range(30)]
    assert results.count("created") == 1 and results.count("conflict") == 29
    assert len(labelled_answers(store)) == 1


def _try(store, rec):
    try:
        record_outcome(store, rec, owner=CLINIC_A)
        return "created"
    except OutcomeConflict:
        return "conflict"


@pytest.mark.parametrize("day", [date(1, 1, 1), date(9999, 12, 31), date(2009, 12, 31)])
def test_implausible_dates_are_refused(store, day):
    with pytest.raises(ValueError, match="observed_on|between"):
        record_outcome(store, _rec("d-1", request_id="req-00001", observed_on=day), owner=CLINIC_A)
    assert current_outcomes(store) == []


def test_the_patient_hash_lookup_is_an_index(store):
    with store.engine.connect() as conn:
        indexes = {ix["name"]: ix["column_names"] for ix in sa.inspect(conn).get_indexes("audit_log")}
        assert indexes.get("ix_audit_log_patient_hash") == ["patient_hash"]
        if store.backend == "sqlite":
            plan = " ".join(str(r) for r in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM audit_log WHERE patient_hash = 'x' ORDER BY id DESC LIMIT 1"))
            assert "ix_audit_log_patient_hash" in plan


def test_an_import_commits_in_batches_and_stays_idempotent(store):
    store.append_many([record(100 + i, client_id="ehr", patient_id=f"batch-pat-{i}") for i in range(20)])
    commits = []
    sa.event.listen(store.engine, "commit", lambda conn: commits.append(1))
    recs = [_rec(f"imp-{i}", patient_id=f"batch-pat-{i}") for i in range(20)]
    recs.append(_rec("imp-bad", patient_id="never-scored"))
    results = dict(record_outcomes(store, recs))
    assert len(commits) == 1
    assert sum(1 for r in results.values() if not isinstance(r, Exception) and r[1]) == 20
    assert isinstance(results[20], UnknownTarget)
    again = dict(record_outcomes(store, recs))
    assert sum(1 for r in again.values() if not isinstance(r, Exception) and not r[1]) == 20
    assert len(current_outcomes(store)) == 20


def test_the_upgrade_keeps_every_outcome_and_resolves_it_to_its_answer(store_url):  # noqa: F811
    """A store at 0006 with the contradictory outcomes main accepted: every row survives 0007; the
    label of each answer is one (the last received), and the append-only triggers still hold."""
    from alembic import command
    from alembic.config import Config

    from serving.store.core import MIGRATIONS_DIR
    from serving.store.engine import make_engine

    s = Store(store_url, KEY)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        if s.backend == "sqlite":
            Path(str(s.url.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(s.url, busy_timeout_ms=2000, for_migration=True)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0006_audit_uncertainty")
        engine.dispose()
        s.append_many([record(1, client_id=CLINIC_A, patient_id="pat-a"),
                       record(2, client_id=CLINIC_B, patient_id="pat-b")])
        h = s.hash_patient_id("pat-b")
        with s.engine.begin() as conn:
            for i, (rid, ph, grade, corrects) in enumerate([
                ("req-00001", None, 0, None), ("req-00001", None, 4, None), ("req-00001", None, 1, "old-0"),
                (None, h, 3, None), ("req-gone", None, 2, None),
            ]):
                conn.exec_driver_sql(
                    "INSERT INTO outcomes (received_at, outcome_id, request_id, patient_hash, icans_max_grade, "
                    "observed_on, source, corrects, client_id) VALUES "
                    f"('2026-03-0{i + 1} 00:00:00', 'old-{i}', {_q(rid)}, {_q(ph)}, {grade}, '2026-03-01', "
                    f"'form', {_q(corrects)}, 'legacy')")
        s.migrate()
        assert s.current_revision() == SCHEMA_HEAD == "0007_outcomes_one_per_answer"
        with s.engine.connect() as conn:
            rows = {r.outcome_id: r for r in conn.exec_driver_sql("SELECT outcome_id, audit_id FROM outcomes")}
            ids = {r.request_id: r.id for r in conn.exec_driver_sql("SELECT request_id, id FROM audit_log")}
        assert set(rows) == {f"old-{i}" for i in range(5)}  # every row kept
        assert rows["old-0"].audit_id == rows["old-1"].audit_id == ids["req-00001"]
        assert rows["old-3"].audit_id == ids["req-00002"] and rows["old-4"].audit_id is None
        labels = {a["request_id"]: a["y"] for a in labelled_answers(s)}
        assert labels == {"req-00001": 0, "req-00002": 1}  # old-2 (grade 1) is the last current one of req-00001
        for statement in ("UPDATE outcomes SET icans_max_grade = 4", "DELETE FROM outcomes"):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                with s.engine.begin() as conn:
                    conn.exec_driver_sql(statement)
    finally:
        s.close()


def _q(value: str | None) -> str:
    return "NULL" if value is None else f"'{value}'"


# ------------------------------------------------------------------------------------------ the API


@pytest.fixture(scope="module")
def clinics(trained):
    from serving.app import create_app
    from tests.helpers import open_store, wait_ready

    settings, _ = trained
    s = open_store(settings)
    keys = {}
    for clinic in (CLINIC_A, CLINIC_B):
        _, score = s.create_key(clinic, "score")
        _, outcomes = s.create_key(clinic, "outcomes")
        keys[clinic] = ({"Authorization": f"Bearer {score}"}, {"Authorization": f"Bearer {outcomes}"})
    s.close()
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client).status_code == 200
        yield client, keys


def _outcome(rid: str | None = None, **kw) -> dict:
    body = {"outcome_id": kw.pop("outcome_id"), "icans_max_grade": 3, "observed_on": "2026-03-01", "source": "ward"}
    if rid:
        body["request_id"] = rid
    return {**body, **kw}


def test_clinics_cannot_report_for_each_other(clinics):
    client, keys = clinics
    (a_score, a_out), (_, b_out) = keys[CLINIC_A], keys[CLINIC_B]
    rid = client.post("/v1/risk", json={"patient_id": "own-pat-a", **example_request()}, headers=a_score
                      ).json()["request_id"]
    by_b = client.post("/v1/outcomes", json=_outcome(rid, outcome_id="own-b-1"), headers=b_out)
    never = client.post("/v1/outcomes", json=_outcome("never-scored-1", outcome_id="own-b-2"), headers=b_out)
    assert by_b.status_code == never.status_code == 404 and by_b.json()["detail"] == never.json()["detail"]
    by_patient = client.post("/v1/outcomes", json=_outcome(patient_id="own-pat-a", outcome_id="own-b-3"), headers=b_out)
    never_patient = client.post("/v1/outcomes", json=_outcome(patient_id="MRN-NEVER-SCORED-123",
                                                              outcome_id="own-b-4"), headers=b_out)
    assert by_patient.status_code == never_patient.status_code == 404
    assert by_patient.json()["detail"] == never_patient.json()["detail"]
    assert client.post("/v1/outcomes", json=_outcome(rid, outcome_id="own-a-1"), headers=a_out).status_code == 201
    assert client.post("/v1/outcomes", json=_outcome(rid, outcome_id="own-a-2", icans_max_grade=0),
                       headers=a_out).status_code == 409
    assert client.post("/v1/outcomes", json=_outcome(rid, outcome_id="own-b-5", corrects="own-a-1"),
                       headers=b_out).status_code == 404
    fixed = client.post("/v1/outcomes", json=_outcome(rid, outcome_id="own-a-3", icans_max_grade=1,
                                                      corrects="own-a-1"), headers=a_out)
    assert fixed.status_code == 201
    late = client.post("/v1/outcomes", json=_outcome(rid, outcome_id="own-a-4", observed_on="9999-12-31"),
                       headers=a_out)
    assert late.status_code == 422 and "9999" not in late.text


def test_a_request_id_taken_by_another_client_does_not_take_the_answer(clinics):
    client, keys = clinics
    (a_score, a_out), (b_score, _) = keys[CLINIC_A], keys[CLINIC_B]
    rid = client.post("/v1/risk", json=example_request(), headers=a_score).json()["request_id"]
    taken = client.post("/v1/risk", json=example_request(), headers={**b_score, "X-Request-ID": rid})
    assert taken.status_code == 200
    mine = client.post("/v1/outcomes", json=_outcome(rid, outcome_id="rid-a-1"), headers=a_out)
    assert mine.status_code == 201, mine.text


def test_duplicate_keys_and_fhir_statuses_are_refused(clinics):
    from serving.fhir.resources import FHIR_JSON, REQUEST_ID_SYSTEM

    client, keys = clinics
    a_score, a_out = keys[CLINIC_A]
    rid = client.post("/v1/risk", json=example_request(), headers=a_score).json()["request_id"]
    dup = ('{"outcome_id": "dup-1", "request_id": "%s", "icans_max_grade": 0, "icans_max_grade": 4, '
           '"observed_on": "2026-03-01", "source": "ward"}' % rid)
    r = client.post("/v1/outcomes", content=dup, headers={**a_out, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0] == {
        "field": "icans_max_grade", "rule": "duplicate field (given more than once)", "type": "duplicate_field"}
    secret = '{"outcome_id": "dup-2", "MRN-4711": 1, "MRN-4711": 2}'
    r = client.post("/v1/outcomes", content=secret, headers={**a_out, "Content-Type": "application/json"})
    assert r.status_code == 422 and "MRN-4711" not in r.text
    obs = {"resourceType": "Observation", "status": "entered-in-error",
           "identifier": [{"value": f"st-{rid[:10]}"}],
           "code": {"coding": [{"system": "urn:icans-risk:codes", "code": "icans-max-grade"}]},
           "focus": [{"identifier": {"system": REQUEST_ID_SYSTEM, "value": rid}}],
           "valueInteger": 4, "effectiveDateTime": "2026-03-05T10:00:00Z"}
    headers = {**a_out, "Content-Type": FHIR_JSON}
    for status in ("entered-in-error", "cancelled", "preliminary"):
        r = client.post("/v1/outcomes/fhir", content=json.dumps({**obs, "status": status}), headers=headers)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "status"
        assert f"'{status}'" in r.json()["detail"][0]["rule"]
    r = client.post("/v1/outcomes/fhir", content=json.dumps({**obs, "status": "MRN-123"}), headers=headers)
    assert r.status_code == 422 and "MRN-123" not in r.text
    missing = {k: v for k, v in obs.items() if k != "status"}
    assert client.post("/v1/outcomes/fhir", content=json.dumps(missing), headers=headers).status_code == 422
    text = json.dumps({**obs, "status": "final"})
    r = client.post("/v1/outcomes/fhir", content=text.replace('"valueInteger": 4', '"valueInteger": 0, "valueInteger": 4'),
                    headers=headers)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "valueInteger"
    assert client.post("/v1/outcomes/fhir", content=text, headers=headers).status_code == 201


def test_concurrent_first_reports_for_one_answer_store_one(store):
    """Eight reports for one answer at once (threads, one store): exactly one is stored."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    barrier = Barrier(8)

    def post(i: int) -> str:
        barrier.wait()
        return _try(store, _rec(f"race-{i}", request_id="req-00001", icans_max_grade=i % 5))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(post, range(8)))
    assert results.count("created") == 1 and results.count("conflict") == 7
    assert len(current_outcomes(store)) == 1
