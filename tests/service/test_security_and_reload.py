"""Access control, the audit trail, live reloads and limits, through the real app."""

from __future__ import annotations

import time

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from core.contract import example_request
from serving.app import create_app
from tests.helpers import open_store


def _ready(c: TestClient) -> None:
    deadline = time.time() + 60
    while c.get("/readyz").status_code != 200:
        assert time.time() < deadline, c.get("/readyz").json()
        time.sleep(0.05)


@pytest.fixture()
def app_client(trained):
    settings, _ = trained
    with TestClient(create_app(settings)) as c:
        _ready(c)
        yield c


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic dXNlcjpwdw=="}, _bearer("icr_nope_nope"), _bearer("x" * 5000)],
    ids=["none", "empty-bearer", "basic", "unknown-key", "huge"],
)
def test_scoring_without_valid_credentials_is_401(app_client, headers):
    r = app_client.post("/v1/risk", json=example_request(), headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


def test_score_key_cannot_administer_but_admin_key_can(app_client, tokens):
    assert app_client.post("/v1/admin/reload", headers=_bearer(tokens["score"])).status_code == 403
    r = app_client.post("/v1/admin/reload", headers=_bearer(tokens["admin"]))
    assert r.status_code == 200 and r.json()["result"] == "unchanged"
    # admin implies score
    assert app_client.post("/v1/risk", json=example_request(), headers=_bearer(tokens["admin"])).status_code == 200


def test_revoked_key_is_refused_without_restart(app_client, trained):
    settings, _ = trained
    store = open_store(settings)
    record, token = store.create_key("short-lived", "score")
    assert app_client.post("/v1/risk", json=example_request(), headers=_bearer(token)).status_code == 200
    store.revoke_key(record.key_id)
    assert app_client.post("/v1/risk", json=example_request(), headers=_bearer(token)).status_code == 401


def test_every_scored_patient_is_audited_without_the_raw_patient_id(app_client, trained, tokens):
    settings, _ = trained
    store = open_store(settings)
    before = store.count()
    r1 = app_client.post(
        "/v1/risk", json={**example_request(), "patient_id": "MRN-SECRET-77"}, headers=_bearer(tokens["score"])
    )
    r2 = app_client.post(
        "/v1/risk/batch", json={"patients": [example_request()] * 3}, headers=_bearer(tokens["score"])
    )
    assert r1.status_code == r2.status_code == 200
    assert store.count() == before + 4
    rows = [row for chunk in store.iter_audit() for row in chunk][-4:]
    first = rows[0]
    assert first["request_id"] == r1.json()["request_id"]
    assert first["client_id"] == "test-ehr"
    assert first["model_version"] == r1.json()["model"]["version"]
    assert first["patient_hash"] == store.hash_patient_id("MRN-SECRET-77")
    assert "MRN-SECRET-77" not in repr(rows)
    assert abs(first["risk"] - r1.json()["risk"]) < 1e-12


class _BrokenStore:
    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):  # a working store (keys, ...) whose audit writes fail
        return getattr(self.real, name)

    def append_many(self, rows):
        raise OSError("disk full")


def test_audit_failure_is_an_error_not_a_silent_drop(trained, tokens):
    settings, _ = trained
    app = create_app(settings, store=_BrokenStore(open_store(settings)))
    with TestClient(app, headers=_bearer(tokens["score"])) as c:
        _ready(c)
        r = c.post("/v1/risk", json=example_request())
        assert r.status_code == 503
        assert "risk" not in r.json()
        metrics = c.get("/metrics").text
        assert "icans_audit_write_failures_total 1.0" in metrics


def test_reload_swaps_to_new_champion_and_refuses_a_broken_one(app_client, trained, tokens):
    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    name = result.model_name
    original = client.get_model_version_by_alias(name, "champion")
    admin = _bearer(tokens["admin"])
    try:
        new = client.create_model_version(name, source=original.source, run_id=original.run_id)
        client.set_registered_model_alias(name, "champion", new.version)
        r = app_client.post("/v1/admin/reload", headers=admin)
        assert r.json()["result"] == "swapped", r.json()
        answer = app_client.post("/v1/risk", json=example_request(), headers=_bearer(tokens["score"])).json()
        assert answer["model"]["version"] == str(new.version)

        broken = client.create_model_version(name, source="file:///nonexistent/model", run_id=original.run_id)
        client.set_registered_model_alias(name, "champion", broken.version)
        r = app_client.post("/v1/admin/reload", headers=admin)
        assert r.json()["result"] == "failed"
        assert r.json()["serving"]["version"] == str(new.version)
        answer = app_client.post("/v1/risk", json=example_request(), headers=_bearer(tokens["score"]))
        assert answer.status_code == 200 and answer.json()["model"]["version"] == str(new.version)
        metrics = app_client.get("/metrics").text
        assert 'icans_model_reloads_total{result="failed"} 1.0' in metrics
        assert 'icans_model_reloads_total{result="swapped"} 1.0' in metrics
        assert f'version="{new.version}"' in metrics
    finally:
        client.set_registered_model_alias(name, "champion", original.version)


def test_oversized_body_is_413(app_client, tokens):
    huge = b'{"patients": [' + b'{"age_years": 1},' * 200_000 + b"{}]}"
    r = app_client.post(
        "/v1/risk/batch", content=huge, headers={**_bearer(tokens["score"]), "content-type": "application/json"}
    )
    assert r.status_code == 413


def test_readyz_announces_auth_mode(trained):
    settings, _ = trained
    with TestClient(create_app(settings.model_copy(update={"auth": "off"}))) as c:
        _ready(c)
        body = c.get("/readyz").json()
        assert body["auth"] == "off" and "development" in body["warning"]
        assert c.post("/v1/risk", json=example_request()).status_code == 200


def test_production_refuses_unsafe_defaults():
    from pydantic import ValidationError

    from core.settings import Settings

    with pytest.raises(ValidationError, match="MLFLOW_TRACKING_URI"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="ICANS_AUTH=off"):
        Settings(env="production", tracking_uri="http://mlflow:5000", auth="off")
    with pytest.raises(ValidationError, match="ICANS_AUDIT_HMAC_KEY"):
        Settings(env="production", tracking_uri="http://mlflow:5000")


class _KeyStoreDown:
    def verify(self, token):
        raise ConnectionError("database is down")


def test_key_store_down_is_503_not_500(trained, tokens):
    settings, _ = trained
    with TestClient(create_app(settings, store=_KeyStoreDown())) as c:
        _ready(c)
        r = c.post("/v1/risk", json=example_request(), headers=_bearer(tokens["score"]))
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert "database is down" not in r.text


def test_unexpected_error_is_a_bare_500_and_is_counted(trained, tokens):
    settings, _ = trained
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        _ready(c)
        _explode_once(c, tokens)


def _explode_once(app_client, tokens):
    predictor = app_client.app.state.model.predictor

    class Exploding:
        model = predictor.model

        def predict(self, records):
            raise RuntimeError("secret detail MRN-123")

    app_client.app.state.model.predictor = Exploding()
    try:
        r = app_client.post("/v1/risk", json=example_request(), headers=_bearer(tokens["score"]))
    finally:
        app_client.app.state.model.predictor = predictor
    assert r.status_code == 500
    assert "MRN-123" not in r.text and "Traceback" not in r.text and r.json()["request_id"]
    assert 'icans_http_requests_total{endpoint="/v1/risk",method="POST",status="500"} 1.0' in app_client.get("/metrics").text


def test_errors_shown_to_operators_carry_no_credentials():
    from serving.state import describe

    text = describe(ConnectionError("API request to http://user:S3cret@mlflow:5000/api failed"))
    assert "S3cret" not in text and "http://***@mlflow:5000" in text
