"""The API through the real app and its lifespan: happy paths, every kind of bad input, readiness."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from core.contract import FEATURES, FEATURES_BY_NAME, INTENDED_USE, example_request
from serving.app import create_app
from tests.helpers import random_records
from tests.helpers import _wait_ready

MARKER = 987654.321  # a value that must never come back in an error body


@pytest.fixture(scope="module")
def champion_version(trained):
    import mlflow
    from mlflow import MlflowClient

    settings, _ = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    return str(MlflowClient().get_model_version_by_alias("icans-risk", "champion").version)


def test_happy_path_answer_is_complete_and_adds_up(client, champion_version):
    r = client.post("/v1/risk", json={"patient_id": "pseudo-1", **example_request()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 0 < body["risk"] < 1
    assert body["risk_group"] in ("low", "intermediate", "high")
    assert body["model"]["name"] == "icans-risk"
    assert body["model"]["version"] == champion_version
    assert body["model"]["run_id"]
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Research use only" in body["notice"]
    ex = body["explanation"]
    total = ex["base_log_odds"] + sum(c["log_odds"] for c in ex["contributions"])
    assert abs(total - body["log_odds"]) < 1e-6
    assert {c["feature"] for c in ex["contributions"]} == {f.name for f in FEATURES}
    effects = [abs(c["log_odds"]) for c in ex["contributions"]]
    assert effects == sorted(effects, reverse=True)
    by_name = {c["feature"]: c for c in ex["contributions"]}
    assert by_name["ldh_u_l"]["unit"] == "U/L"
    assert by_name["ldh_u_l"]["value"] == example_request()["ldh_u_l"]


def test_missing_optional_features_are_answered_with_a_warning(client):
    body = {k: v for k, v in example_request().items() if FEATURES_BY_NAME[k].required}
    r = client.post("/v1/risk", json=body)
    assert r.status_code == 200, r.text
    warning = " ".join(r.json()["warnings"])
    for f in FEATURES:
        if not f.required:
            assert f.name in warning


def test_value_outside_training_data_is_warned_without_echo(client):
    r = client.post("/v1/risk", json={**example_request(), "ldh_u_l": 19999.5})
    assert r.status_code == 200
    warnings = " ".join(r.json()["warnings"])
    assert "ldh_u_l" in warnings and "19999.5" not in warnings


def test_batch_keeps_order_and_matches_single_answers(client):
    records = random_records(20, seed=42)
    r = client.post("/v1/risk/batch", json={"patients": records})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 20
    for rec, res in zip(records[:5], results[:5]):
        single = client.post("/v1/risk", json=rec).json()
        assert single["risk"] == pytest.approx(res["risk"], abs=1e-12)


@pytest.mark.parametrize("size", [0, 51])
def test_batch_size_limits(client, size):
    r = client.post("/v1/risk/batch", json={"patients": [example_request()] * size})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "patients"


def test_bad_record_in_batch_is_named_by_position(client):
    records = [example_request(), {**example_request(), "age_years": 101}]
    r = client.post("/v1/risk/batch", json={"patients": records})
    assert r.status_code == 422
    assert r.json()["detail"][0]["field"] == "patients.1.age_years"


def _bad_bodies():
    base = example_request()
    for f in FEATURES:
        if f.kind == "float":
            yield f"{f.name}-above", {**base, f.name: f.max + MARKER}, f.name
            low = f.min if f.min_exclusive else f.min - MARKER
            yield f"{f.name}-below", {**base, f.name: low}, f.name
            yield f"{f.name}-string", {**base, f.name: "1,5"}, f.name
        elif f.kind == "bool":
            yield f"{f.name}-string", {**base, f.name: "maybe"}, f.name
        else:
            yield f"{f.name}-unknown", {**base, f.name: "not-a-category"}, f.name
        if f.required:
            yield f"{f.name}-missing", {k: v for k, v in base.items() if k != f.name}, f.name
            yield f"{f.name}-null", {**base, f.name: None}, f.name
    yield "unknown-field", {**base, "crs_grade": 3}, f"<unknown field {len(base) + 1}>"  # never its name
    yield "patient-id-empty", {**base, "patient_id": ""}, "patient_id"


@pytest.mark.parametrize("name, body, field", list(_bad_bodies()), ids=[b[0] for b in _bad_bodies()])
def test_bad_input_is_422_naming_the_field_without_echo(client, name, body, field):
    r = client.post("/v1/risk", json=body)
    assert r.status_code == 422, r.text
    fields = [d["field"] for d in r.json()["detail"]]
    assert field in fields
    text = r.text
    assert str(MARKER) not in text and "not-a-category" not in text and "maybe" not in text
    assert "input" not in r.json()["detail"][0]


@pytest.mark.parametrize(
    "raw, content_type",
    [
        (b'{"age_years": NaN}', "application/json"),
        (b'{"age_years": Infinity}', "application/json"),
        (b'{"age_years": 1e400}', "application/json"),
        (b'{"age_years": 3', "application/json"),
        (b"\xff\xfe\x00garbage", "application/json"),
        (b"[1, 2, 3]", "application/json"),
        (b'"just a string"', "application/json"),
        (b"age_years=3", "application/x-www-form-urlencoded"),
        (b"", "application/json"),
        (b"[" * 5000 + b"]" * 5000, "application/json"),
    ],
    ids=["nan", "infinity", "huge", "truncated", "non-utf8", "array", "string", "form", "empty", "deep"],
)
def test_malformed_bodies_are_client_errors(client, raw, content_type):
    r = client.post("/v1/risk", content=raw, headers={"content-type": content_type})
    assert 400 <= r.status_code < 500, r.text
    assert "detail" in r.json()


def test_model_endpoint_describes_the_served_version(client, champion_version):
    r = client.get("/v1/model")
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == champion_version
    assert body["thresholds"]["low"] <= body["thresholds"]["high"]
    assert [f["name"] for f in body["features"]] == [f.name for f in FEATURES]
    assert "test_auroc" in body["metrics"]
    assert body["notice"] == INTENDED_USE


def _units(node):
    """Every value of a "unit" key anywhere in a JSON answer."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "unit"] + [u for v in node.values() for u in _units(v)]
    return [u for v in node for u in _units(v)] if isinstance(node, list) else []


def test_a_unitless_value_has_a_null_unit_never_a_dash(client):
    model = client.get("/v1/model").json()
    risk = client.post("/v1/risk", json=example_request()).json()
    units = _units(model) + _units(risk)
    assert units and "-" not in units
    for answer in (model["features"], risk["explanation"]["contributions"]):
        by_name = {c.get("name") or c.get("feature"): c for c in answer}
        assert by_name["sex"]["unit"] is None and by_name["prior_allo_hct"]["unit"] is None
        assert by_name["crp_mg_l"]["unit"] == "mg/L"
    spec = client.get("/openapi.json").json()
    assert "null when the value has none" in spec["components"]["schemas"]["Contribution"]["properties"]["unit"]["description"]
    assert "null when the value has none" in spec["paths"]["/v1/model"]["get"]["description"]
    assert "unit" not in spec["components"]["schemas"]["PatientFeatures"]["properties"]["sex"]


def test_openapi_says_research_use_and_carries_the_contract_example(client):
    spec = client.get("/openapi.json").json()
    assert "Research use only" in spec["info"]["description"]
    schema = spec["components"]["schemas"]["PatientFeatures"]
    assert schema["examples"][0]["ldh_u_l"] == example_request()["ldh_u_l"]
    assert schema["properties"]["ldh_u_l"]["maximum"] == FEATURES_BY_NAME["ldh_u_l"].max
    assert schema["properties"]["car_t_dose_10e6_per_kg"]["exclusiveMinimum"] == 0


def test_not_ready_until_the_model_is_loaded(trained, tokens):
    settings, _ = trained
    release = threading.Event()

    def slow_loader(s, resolved=None):
        from serving.state import load_predictor

        release.wait(30)
        return load_predictor(s, resolved)

    auth = {"Authorization": f"Bearer {tokens['score']}"}
    with TestClient(create_app(settings, loader=slow_loader), headers=auth) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.json()["status"] in ("starting", "loading")
        r = c.post("/v1/risk", json=example_request())
        assert r.status_code == 503 and "not loaded" in r.json()["detail"]
        release.set()
        _wait_ready(c)
        assert c.post("/v1/risk", json=example_request()).status_code == 200


def test_unknown_model_is_reported_by_readyz_not_crash(trained, tokens):
    settings, _ = trained
    bad = settings.model_copy(update={"model_uri": "models:/no-such-model@champion"})
    auth = {"Authorization": f"Bearer {tokens['score']}"}
    with TestClient(create_app(bad), headers=auth) as c:
        deadline = time.time() + 30
        while time.time() < deadline:
            body = c.get("/readyz").json()
            if body.get("reason"):
                break
            time.sleep(0.05)
        r = c.get("/readyz")
        assert r.status_code == 503
        assert "no-such-model" in r.json()["reason"]
        assert c.post("/v1/risk", json=example_request()).status_code == 503


def test_model_card_by_content_negotiation(client, champion_version):
    html = client.get("/v1/model/card", headers={"accept": "text/html"})
    assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
    assert f"registered version {champion_version} (MLflow run" in html.text and "Intended use" in html.text
    assert html.text.count("registered version") == 2  # the service's line and the card's row, which points to it
    md = client.get("/v1/model/card", headers={"accept": "text/markdown"})
    assert md.status_code == 200 and md.headers["content-type"].startswith("text/markdown")
    assert md.text.startswith(f"> This card describes icans-risk registered version {champion_version} ")
    assert "Research use only" in md.text
    assert "<html" not in md.text
