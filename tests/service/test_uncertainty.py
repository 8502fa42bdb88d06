"""Every answer carries the model-development interval of its risk, from the bundle's bootstrap models."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient

from core.contract import example_request
from core.features import N_MATRIX, encode_record
from serving.app import create_app
from tests.helpers import random_records
from tests.helpers import _wait_ready


@pytest.fixture(scope="module")
def client(trained, tokens):
    settings, _ = trained
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['score']}"}) as c:
        _wait_ready(c)
        yield c


def _expected(bundle, record: dict) -> tuple[float, float, float]:
    X = np.empty((1, N_MATRIX))
    encode_record(record, X[0])
    ex = bundle.explain(X)
    lo, hi, change = bundle.uncertainty(X, ex.log_odds)
    return float(lo[0]), float(hi[0]), float(change[0])


def test_single_answer_carries_the_bootstrap_interval(client, bundle) -> None:
    assert bundle.instability is not None and bundle.instability.n_models == 20
    r = client.post("/v1/risk", json=example_request())
    assert r.status_code == 200, r.text
    body = r.json()
    u = body["uncertainty"]
    lo, hi, change = _expected(bundle, example_request())
    assert u["interval"] == pytest.approx([lo, hi], abs=1e-12)
    assert u["risk_group_change_probability"] == pytest.approx(change)
    assert u["level"] == 0.95 and u["bootstrap_models"] == 20
    assert 0 <= u["interval"][0] <= u["interval"][1] <= 1
    # the explanation is still the final model's, and still adds up exactly
    ex = body["explanation"]
    assert abs(ex["base_log_odds"] + sum(c["log_odds"] for c in ex["contributions"]) - body["log_odds"]) < 1e-6


def test_batch_answers_carry_their_own_intervals(client, bundle) -> None:
    records = random_records(40, seed=3)
    r = client.post("/v1/risk/batch", json={"patients": records})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    widths = []
    for rec, res in zip(records, results):
        lo, hi, change = _expected(bundle, rec)
        assert res["uncertainty"]["interval"] == pytest.approx([lo, hi], abs=1e-12)
        assert res["uncertainty"]["risk_group_change_probability"] == pytest.approx(change)
        widths.append(hi - lo)
    assert len(set(np.round(widths, 9))) > 1  # each patient its own interval, not one width for all


def test_the_api_description_says_what_the_interval_is(client) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["Uncertainty"]
    text = schema["properties"]["interval"]["description"]
    assert "not a confidence interval for the patient's outcome" in text.lower()
    assert "bootstrap" in text


def test_fhir_riskassessment_carries_the_interval_in_its_extension(client) -> None:
    from fhir.resources.R4B.riskassessment import RiskAssessment

    from serving.fhir.resources import INTERVAL_EXTENSION

    plain = client.post("/v1/risk", json=example_request()).json()
    r = client.post("/v1/risk", json=example_request(), headers={"Accept": "application/fhir+json"})
    assert r.status_code == 200, r.text
    ra = r.json()
    RiskAssessment.model_validate(ra)  # valid R4(B): an extension beside probabilityDecimal
    prediction = ra["prediction"][0]
    assert prediction["probabilityDecimal"] == pytest.approx(plain["risk"])
    (ext,) = [e for e in prediction["extension"] if e["url"] == INTERVAL_EXTENSION]
    parts = {e["url"]: next(v for k, v in e.items() if k.startswith("value")) for e in ext["extension"]}
    assert [parts["low"], parts["high"]] == pytest.approx(plain["uncertainty"]["interval"])
    assert parts["riskGroupChangeProbability"] == pytest.approx(plain["uncertainty"]["risk_group_change_probability"])
    assert parts["bootstrapModels"] == 20 and parts["level"] == 0.95
    assert any("not a range for the patient's outcome" in n["text"] for n in ra["note"])


@pytest.mark.parametrize("risk,lo,hi", [(0.18, 0.15, 0.21), (0.18, 0.05, 0.45), (0.0004, 0.0001, 0.002),
                                        (0.999, 0.97, 0.9999)])
def test_card_states_the_interval_without_directing(risk: float, lo: float, hi: float) -> None:
    from serving.fhir.card import card, summary

    answer = {
        "risk": risk, "risk_group": "intermediate", "log_odds": float(np.log(risk / (1 - risk))),
        "uncertainty": {"interval": (lo, hi), "level": 0.95, "risk_group_change_probability": 0.31,
                        "bootstrap_models": 200},
        "explanation": {"base_log_odds": -1.5, "contributions": []},
        "model": {"name": "icans-risk", "version": "3", "run_id": None}, "warnings": [],
    }
    s = summary(answer, "severe_icans")
    assert len(s) < 140 and "interval" in s
    detail = card(answer, outcome="severe_icans", card_uuid="u", source_url=None)["detail"]
    assert "95% model-development interval" in detail and "31% of 200 models" in detail
    assert "not a range for the patient's outcome" in detail
    from core.contract import INTENDED_USE

    for directive in ("should", "must", "recommend", "administer", "give "):
        assert directive not in detail.replace(INTENDED_USE, "").lower()


def test_model_endpoint_states_the_instability_analysis(client, bundle) -> None:
    info = client.get("/v1/model").json()["instability"]
    assert info["models"] == 20 and info["mape"] == pytest.approx(bundle.metadata["instability"]["mape"])
    assert "not a confidence interval for the patient's outcome" in info["meaning"]


def test_the_audit_row_keeps_the_interval_the_caller_was_told(client, trained) -> None:
    from tests.helpers import audit_row

    r = client.post("/v1/risk", json=example_request())
    body = r.json()
    row = audit_row(trained, body["request_id"])
    assert [row["risk_low"], row["risk_high"]] == pytest.approx(body["uncertainty"]["interval"], abs=1e-12)
    assert row["risk_group_change_probability"] == pytest.approx(body["uncertainty"]["risk_group_change_probability"])
