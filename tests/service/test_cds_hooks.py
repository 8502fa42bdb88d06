"""The CDS Hooks service and the FHIR answer of POST /v1/risk, through the real app and its lifespan.

Bundles are built with fhir.resources (tests/service/test_fhir_mapping.py: Chart); the CDS client
is authenticated with JWTs signed by keys generated here (RSA as a PEM issuer, EC P-384 as a JWKS
file issuer).
"""

from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from fhir.resources.R4B.riskassessment import RiskAssessment

from core.contract import FEATURE_NAMES
from serving.app import create_app
from serving.fhir.resources import CARD_EXTENSION
from tests.helpers import open_store
from tests.helpers import EXPECTED
from tests.helpers import ISS, ISS_EC, SERVICE, SERVICE_URL, _ready, _wire, audit_row, bearer, call, hook_body, make_token, now_chart

DIRECTIVE = ("should", "consider", "recommend that", "administer", "prophyla", "dexamethasone", "levetiracetam", "tocilizumab")


def plain_risk(c: TestClient, tokens, record: dict[str, Any]) -> dict[str, Any]:
    r = c.post("/v1/risk", json=record, headers=bearer(tokens["score"]))
    assert r.status_code == 200, r.text
    return r.json()


def _no_empty(obj: Any) -> None:
    if isinstance(obj, dict):
        for v in obj.values():
            assert v not in (None, "", [], {}), obj
            _no_empty(v)
    elif isinstance(obj, list):
        for v in obj:
            _no_empty(v)


# --------------------------------------------------------------------------------------------------
# Discovery


def test_discovery_lists_the_service_with_prefetch_templates(cds, keys):
    assert cds.get("/cds-services").status_code == 401
    r = cds.get("/cds-services", headers=bearer(make_token(keys, "/cds-services")))
    assert r.status_code == 200, r.text
    [service] = r.json()["services"]
    assert service["id"] == "icans-risk" and service["hook"] == "patient-view"
    assert service["title"] and "Research use only" in service["description"]
    prefetch = service["prefetch"]
    for code in ("2532-0", "1988-5", "2276-4", "777-3", "2160-0", "26881-3", "27415-9", "26464-8"):
        assert any(f"http://loinc.org|{code}" in t for t in prefetch.values()), code
    assert "urn:icans-risk:codes|IL15" in prefetch["il15"]
    assert prefetch["conditions"].startswith("Condition?patient={{context.patientId}}")
    assert prefetch["procedures"].startswith("Procedure?patient={{context.patientId}}")
    assert prefetch["medications"].startswith("MedicationRequest?patient={{context.patientId}}")
    paths = cds.get("/openapi.json").json()["paths"]
    assert {"200", "401", "412"} <= set(paths[SERVICE]["post"]["responses"])
    assert {"200", "400", "404"} <= set(paths[SERVICE + "/feedback"]["post"]["responses"])


# --------------------------------------------------------------------------------------------------
# Cards


def test_complete_patient_card_equals_the_plain_api_and_is_audited(cds, keys, trained, tokens):
    chart = now_chart("pat-complete")
    r = call(cds, keys, chart)
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    _no_empty(r.json())
    assert len(card["summary"]) < 140 and "%" in card["summary"]
    prediction = card["extension"][CARD_EXTENSION]
    group = prediction["risk_group"]
    assert card["indicator"] == {"low": "info", "intermediate": "warning", "high": "critical"}[group]
    assert group in card["summary"].lower()
    assert card["source"]["url"] == f"{SERVICE_URL}/v1/model/card"
    assert f"version {prediction['model']['version']}" in card["detail"]
    assert "Top contributing factors" in card["detail"] and "Data used" in card["detail"]
    lowered = card["detail"].lower()
    assert not any(word in lowered for word in DIRECTIVE), card["detail"]
    # the card's uuid is the audit record's request_id
    row = audit_row(trained, card["uuid"])
    assert row["endpoint"] == SERVICE and row["client_id"] == f"cds:{ISS} tenant:hospital-1"
    assert row["patient_hash"] == open_store(trained[0]).hash_patient_id("pat-complete")
    assert row["risk"] == prediction["risk"]
    inputs = row["inputs"]
    assert set(inputs) == set(FEATURE_NAMES)
    for name, value in EXPECTED.items():
        assert inputs[name] == value, name
    # the same patient through the plain API: the same risk, exactly
    plain = plain_risk(cds, tokens, inputs)
    assert plain["risk"] == prediction["risk"] and plain["risk_group"] == group


def test_missing_optional_labs_still_give_a_card(cds, keys, trained):
    chart = now_chart("pat-optional")
    chart.observations = [o for o in chart.observations if o._feature not in ("ferritin_ng_ml", "il6_pg_ml")]
    r = call(cds, keys, chart)
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    assert "handled as missing" in card["detail"]
    inputs = audit_row(trained, card["uuid"])["inputs"]
    assert inputs["ferritin_ng_ml"] is None and inputs["il6_pg_ml"] is None


def test_missing_required_labs_are_412_listing_them(cds, keys):
    chart = now_chart("pat-412")
    chart.observations = [o for o in chart.observations if o._feature not in ("ldh_u_l", "platelets_10e9_l")]
    chart.omit.add("crp")
    r = call(cds, keys, chart)
    assert r.status_code == 412, r.text
    missing = {m["feature"]: m["reason"] for m in r.json()["missing"]}
    assert set(missing) == {"ldh_u_l", "crp_mg_l", "platelets_10e9_l"}
    assert "not provided" in missing["crp_mg_l"] and "777-3" in missing["platelets_10e9_l"]


def test_mixed_units_give_the_plain_api_risk_of_the_converted_values(cds, keys, trained, tokens):
    chart = now_chart("pat-units")
    chart.observations = [o for o in chart.observations if o._feature not in ("crp_mg_l", "creatinine_mg_dl")]
    chart.lab("crp_mg_l", 0.8, "mg/dL")
    chart.lab("creatinine_mg_dl", 61.894, "umol/L")
    r = call(cds, keys, chart)
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    inputs = audit_row(trained, card["uuid"])["inputs"]
    assert inputs["crp_mg_l"] == pytest.approx(8.0, rel=1e-12)
    assert inputs["creatinine_mg_dl"] == pytest.approx(61.894 / 88.42, rel=1e-12)
    converted = {**inputs, "crp_mg_l": 0.8 * 10, "creatinine_mg_dl": 61.894 / 88.42}
    risk = card["extension"][CARD_EXTENSION]["risk"]
    assert plain_risk(cds, tokens, converted)["risk"] == pytest.approx(risk, abs=1e-12)
    assert "0.8 mg/dL" in card["detail"] and "61.89 umol/L" in card["detail"]


def test_stale_values_outside_the_window_are_ignored(cds, keys, trained, tokens):
    chart = now_chart("pat-stale")
    chart.lab("ldh_u_l", 5000.0, "U/L", days_ago=40)  # stale: outside the 14-day window
    chart.lab("crp_mg_l", 300.0, "mg/L", days_ago=0.5)  # after the anchor (lymphodepletion began 2 days ago)
    r = call(cds, keys, chart)
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    inputs = audit_row(trained, card["uuid"])["inputs"]
    assert inputs["ldh_u_l"] == 240.0 and inputs["crp_mg_l"] == 8.0
    assert "older than the baseline window" in card["detail"] and "after the anchor" in card["detail"]
    assert plain_risk(cds, tokens, inputs)["risk"] == card["extension"][CARD_EXTENSION]["risk"]
    only_stale = now_chart("pat-stale-only")
    only_stale.observations = [o for o in only_stale.observations if o._feature != "ldh_u_l"]
    only_stale.lab("ldh_u_l", 240.0, "U/L", days_ago=40)
    r = call(cds, keys, only_stale)
    assert r.status_code == 412 and [m["feature"] for m in r.json()["missing"]] == ["ldh_u_l"]


def test_bad_requests(cds, keys):
    chart = now_chart("pat-bad")
    r = cds.post(SERVICE, json=hook_body(chart, hook="order-sign"), headers=bearer(make_token(keys, SERVICE)))
    assert r.status_code == 400
    body = hook_body(chart)
    body["prefetch"]["ldh"]["entry"][0]["resource"]["status"] = 17
    r = cds.post(SERVICE, json=body, headers=bearer(make_token(keys, SERVICE)))
    assert r.status_code == 400 and "prefetch 'ldh'" in r.json()["detail"]
    young = now_chart("pat-young")
    young.patient.birthDate = (datetime.now(UTC) - timedelta(days=30)).date()
    r = call(cds, keys, young)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "age_years"


# --------------------------------------------------------------------------------------------------
# Feedback


def test_feedback_is_stored_against_the_card(cds, keys, trained):
    r = call(cds, keys, now_chart("pat-feedback"))
    card_uuid = r.json()["cards"][0]["uuid"]
    path = f"{SERVICE}/feedback"
    t0 = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")  # after the card, not in the future (issue 25)
    feedback = {
        "feedback": [
            {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": t0,
             "overrideReason": {"reason": {"system": "urn:icans-risk:override-reasons", "code": "data-incomplete",
                                           "display": "Record data incomplete or outdated"},
                                "userComment": "CRP pending"}},
            {"card": card_uuid, "outcome": "accepted", "outcomeTimestamp": t0},
        ]
    }
    r = cds.post(path, json=feedback, headers=bearer(make_token(keys, path)))
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 2
    stored = open_store(trained[0]).feedback_for(card_uuid)
    assert [f["outcome"] for f in stored] == ["overridden", "accepted"]
    assert stored[0]["override_reason"]["code"] == "data-incomplete" and stored[0]["user_comment"] == "CRP pending"
    assert stored[0]["client_id"] == f"cds:{ISS} tenant:hospital-1"
    # unknown card, another client's card, invalid bodies
    unknown = {"feedback": [{"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": t0}]}
    assert cds.post(path, json=unknown, headers=bearer(make_token(keys, path))).status_code == 404
    theirs = {"feedback": [{"card": card_uuid, "outcome": "accepted", "outcomeTimestamp": t0}]}
    r = cds.post(path, json=theirs, headers=bearer(make_token(keys, path, iss=ISS_EC, alg="ES384")))
    assert r.status_code == 404
    for bad in ({"feedback": [{"card": card_uuid, "outcome": "ignored", "outcomeTimestamp": t0}]},
                {"feedback": [{"card": "not-a-uuid", "outcome": "accepted", "outcomeTimestamp": t0}]},
                {"feedback": []}, {"nothing": 1}):
        r = cds.post(path, json=bad, headers=bearer(make_token(keys, path)))
        assert r.status_code == 400, (bad, r.text)
    r = cds.post(path, content=b"{not json", headers={**bearer(make_token(keys, path)), "content-type": "application/json"})
    assert r.status_code == 400
    assert len(open_store(trained[0]).feedback_for(card_uuid)) == 2


# --------------------------------------------------------------------------------------------------
# Client authentication


def test_bad_and_replayed_jwts_are_rejected(cds, keys):
    body = hook_body(now_chart("pat-jwt"))
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    bad = {
        "bad signature": make_token(keys, SERVICE, key=other_key),
        "wrong aud": make_token(keys, SERVICE, aud="https://elsewhere.test/cds-services/icans-risk"),
        "aud of another endpoint": make_token(keys, "/cds-services"),
        "expired": make_token(keys, SERVICE, exp_in=-300, iat_ago=400),
        "too long lived": make_token(keys, SERVICE, exp_in=86_400),
        "unknown iss": make_token(keys, SERVICE, iss="https://rogue.test/"),
        "no jti": make_token(keys, SERVICE, drop="jti"),
        "hmac": jwt.encode({"iss": ISS, "aud": SERVICE_URL + SERVICE, "exp": int(time.time()) + 60,
                            "iat": int(time.time()), "jti": "h1"}, "a-shared-secret-of-32-bytes-or-more!", algorithm="HS256"),
        "garbage": "not.a.jwt",
    }
    for name, token in bad.items():
        r = cds.post(SERVICE, json=body, headers=bearer(token))
        assert r.status_code == 401, (name, r.text)
        assert "invalid CDS client token" in r.json()["detail"], name
    assert cds.post(SERVICE, json=body).status_code == 401
    # EC key from the JWKS issuer works; the same token a second time is a replay
    token = make_token(keys, SERVICE, iss=ISS_EC, alg="ES384")
    assert cds.post(SERVICE, json=body, headers=bearer(token)).status_code == 200
    r = cds.post(SERVICE, json=body, headers=bearer(token))
    assert r.status_code == 401 and "replayed" in r.json()["detail"]


def test_auth_off_and_fetching_missing_prefetch_from_an_allowed_fhir_server(trained):
    chart = now_chart("pat-fetch")
    served = chart.prefetch()
    seen: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            seen.append(self.path)
            assert self.headers["Authorization"] == "Bearer fhir-token"
            key = "ldh" if "2532-0" in self.path else "medications" if "MedicationRequest" in self.path else None
            data = served[key] if key else {"resourceType": "OperationOutcome", "issue": []}
            payload = json.dumps(data).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    settings, _ = trained
    s = settings.model_copy(update={"auth": "off", "cds_fhir_server_allowlist": [base]})
    app = create_app(s)
    _wire(app, s)
    try:
        with TestClient(app) as c:
            _ready(c)
            assert c.get("/cds-services").status_code == 200  # no JWT needed in development mode
            body = hook_body(chart)
            del body["prefetch"]["ldh"], body["prefetch"]["medications"]
            assert c.post(SERVICE, json=body).status_code == 412  # no fhirServer: cannot fetch
            body.update(fhirServer=base, fhirAuthorization={"access_token": "fhir-token", "token_type": "Bearer",
                                                            "expires_in": 300, "scope": "patient/*.read", "subject": "icans-risk"})
            r = c.post(SERVICE, json=body)
            assert r.status_code == 200, r.text
            assert any("2532-0" in p for p in seen) and any(p.startswith("/fhir/MedicationRequest?patient=pat-fetch") for p in seen)
            body["fhirServer"] = "http://127.0.0.1:1/not-allowed"
            assert c.post(SERVICE, json=body).status_code == 412
    finally:
        server.shutdown()


# --------------------------------------------------------------------------------------------------
# FHIR output of the plain API


def test_plain_api_answers_a_valid_fhir_risk_assessment_when_asked(cds, tokens, trained):
    record = {k: v for k, v in EXPECTED.items()} | {"age_years": 34.0, "patient_id": "pseudonym-77"}
    as_json = plain_risk(cds, tokens, record)
    store = open_store(trained[0])
    before = store.count()
    r = cds.post("/v1/risk", json=record, headers={**bearer(tokens["score"]), "Accept": "application/fhir+json"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+json")
    ra = RiskAssessment.model_validate(r.json())
    assert ra.status == "final"
    pred = ra.prediction[0]
    assert float(pred.probabilityDecimal) == as_json["risk"]
    assert pred.qualitativeRisk.text == as_json["risk_group"]
    assert "grade >= 3" in pred.outcome.text and "SHAP" in pred.rationale
    device = ra.contained[0]
    assert device.get_resource_type() == "Device" and device.version[0].value == as_json["model"]["version"]
    assert ra.subject.identifier.value == "pseudonym-77"
    assert len(ra.basis) == sum(v is not None for k, v in record.items() if k != "patient_id")
    for contained in ra.contained:  # each contained resource is a valid R4B resource of its own
        type(contained).model_validate(contained.model_dump(mode="json"))
    assert store.count() == before + 1  # audited exactly like the JSON answer
    assert audit_row(trained, r.headers["x-request-id"])["risk"] == as_json["risk"]
    spec = cds.get("/openapi.json").json()
    assert "application/fhir+json" in spec["paths"]["/v1/risk"]["post"]["responses"]["200"]["content"]
    assert "application/json" in spec["paths"]["/v1/risk"]["post"]["responses"]["200"]["content"]


# --------------------------------------------------------------------------------------------------
# The store's new tables, on both backends


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_replay_cache_and_feedback_on_both_backends(backend, tmp_path):
    from serving.store import SCHEMA_HEAD, AuditRecord, Store
    from tests.helpers import fresh_pg_database

    def run(url: str) -> None:
        s = Store(url, b"test-hmac-key-0123456789abcdef")
        try:
            s.migrate()
            assert s.current_revision() == SCHEMA_HEAD
            later = datetime.now(UTC) + timedelta(minutes=5)
            assert s.claim_jti("a" * 64, later) is True
            assert s.claim_jti("a" * 64, later) is False  # replay
            assert s.claim_jti("b" * 64, later) is True
            expired = "c" * 64
            assert s.claim_jti(expired, datetime.now(UTC) - timedelta(seconds=1)) is True
            assert s.claim_jti(expired, later) is True  # an expired entry does not block
            card = str(uuid.uuid4())
            assert s.card_audit(card) is None
            s.append(AuditRecord(request_id=card, client_id="cds:x", endpoint=SERVICE, model_name="m", model_version="1",
                                 inputs={}, risk=0.1, risk_group="low", top_contributions=[], latency_ms=1.0))
            assert s.card_audit(card)["client_id"] == "cds:x"
            s.record_feedback(card, "overridden", {"code": "not-applicable"}, user_comment="n/a")
            with pytest.raises(ValueError):
                s.record_feedback(card, "ignored")
            [row] = s.feedback_for(card)
            assert row["outcome"] == "overridden" and row["override_reason"] == {"code": "not-applicable"}
        finally:
            s.close()

    if backend == "sqlite":
        run(f"sqlite:///{tmp_path / 'cds.db'}")
    else:
        with fresh_pg_database() as url:
            run(url)
