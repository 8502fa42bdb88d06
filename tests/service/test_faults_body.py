"""Fault cases of request bodies (issue 13, items 3-5): a key flood, duplicate keys, long unknown
names. Bounded work, bounded answers, and no submitted name or value echoed. `pytest -s` prints
the measured figures."""

from __future__ import annotations

import json
import time

import pytest
from fastapi.testclient import TestClient

from core.contract import FEATURES, example_request
from serving.app import create_app
from serving.jsonbody import MAX_ERRORS

LONGEST = max(len(f.name) for f in FEATURES)


@pytest.fixture(scope="module")
def client(trained):
    settings, _ = trained
    with TestClient(create_app(settings.model_copy(update=dict(auth="off")))) as c:
        deadline = time.time() + 60
        while c.get("/readyz").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        yield c


def _post(c: TestClient, path: str, raw: bytes):
    t0 = time.perf_counter()
    r = c.post(path, content=raw, headers={"content-type": "application/json"})
    return r, time.perf_counter() - t0


def test_a_flood_of_unknown_keys_is_refused_before_validation(client):
    body = example_request()
    flood = {**body, **{f"k{i:07d}": 1 for i in range(100_000)}}
    raw = json.dumps(flood).encode()
    r, took = _post(client, "/v1/risk", raw)
    # the event loop is free meanwhile: time a /healthz issued right after
    t0 = time.perf_counter()
    client.get("/healthz")
    health = time.perf_counter() - t0
    print(
        f"\n[key flood] {len(raw) / 1e6:.1f} MB body, 100,000 unknown keys: {r.status_code}, "
        f"answer {len(r.content)} bytes, {took * 1000:.0f} ms; /healthz after it {health * 1000:.1f} ms"
    )
    assert r.status_code == 422
    assert len(r.content) < 2000
    assert b"k00" not in r.content
    assert r.json()["detail"][0]["type"] == "too_many_fields"


def test_many_unknown_keys_in_a_batch_are_refused_in_one_line(client):
    patients = [{**example_request(), "secret_name_of_a_field": 1} for _ in range(50)]
    r, _ = _post(client, "/v1/risk/batch", json.dumps({"patients": patients}).encode())
    assert r.status_code == 422 and len(r.json()["detail"]) == 1
    assert b"secret_name" not in r.content


def test_errors_are_listed_up_to_a_bound(client):
    patients = [{**example_request(), "age_years": 1000} for _ in range(200)]
    r, _ = _post(client, "/v1/risk/batch", json.dumps({"patients": patients}).encode())
    detail = r.json()["detail"]
    print(f"\n[errors] 200 invalid patients: {len(detail)} errors listed, answer {len(r.content)} bytes")
    assert r.status_code == 422 and len(detail) == MAX_ERRORS + 1
    assert detail[-1]["type"] == "too_many_errors" and detail[-1]["rule"].startswith("180 more")


def test_an_unknown_field_is_named_by_position_never_by_its_text(client):
    name = "PATIENT-SMITH-" + "x" * 1024
    body = {**example_request(), name: 1}
    r, _ = _post(client, "/v1/risk", json.dumps(body).encode())
    assert r.status_code == 422
    (err,) = r.json()["detail"]
    print(f"\n[unknown field] 1 KB name -> field {err['field']!r} ({len(err['field'])} characters)")
    assert err["field"] == f"<unknown field {len(body)}>"
    assert len(err["field"]) <= LONGEST and b"SMITH" not in r.content and b"xxxx" not in r.content
    r, _ = _post(client, "/v1/risk/batch", json.dumps({"patients": [example_request(), body]}).encode())
    assert [e["field"] for e in r.json()["detail"]] == [f"patients.1.<unknown field {len(body)}>"]


@pytest.mark.parametrize("path", ["/v1/risk", "/v1/risk/batch"])
def test_duplicate_keys_are_refused_naming_the_field(client, path):
    one = json.dumps(example_request())[:-1] + ', "age_years": 99, "MRN-1234": 1, "MRN-1234": 2}'
    raw = one if path == "/v1/risk" else '{"patients": [' + json.dumps(example_request()) + ", " + one + "]}"
    r, _ = _post(client, path, raw.encode())
    fields = [e["field"] for e in r.json()["detail"]]
    print(f"\n[duplicate keys] {path}: {r.status_code} {fields}")
    assert r.status_code == 422
    prefix = "" if path == "/v1/risk" else "patients.1."
    n = len(example_request())
    assert fields == [f"{prefix}age_years", f"{prefix}<unknown field {n + 2}>"]
    assert {e["type"] for e in r.json()["detail"]} == {"duplicate_field"}
    detail = json.dumps(r.json()["detail"])  # (the request id is random hex: not searched)
    assert "MRN" not in detail and "99" not in detail


def test_valid_bodies_still_score(client):
    assert client.post("/v1/risk", json=example_request()).status_code == 200
    r = client.post("/v1/risk/batch", json={"patients": [example_request()] * 3})
    assert r.status_code == 200 and len(r.json()["results"]) == 3


@pytest.mark.parametrize(
    "raw, duplicate",
    [
        ('{"age_years": 30, "sex": "female", "age_years": 31}', "age_years"),
        ('{"age_years" :\n30, "sex": "female",\t"age_years"\t: 31}', "age_years"),
        ('{"patient_id": "a\\":b", "age_years": 30, "age_years": 31}', "age_years"),  # escapes: exact path
        ('{"patient_id": ": x", "age_years": 30, "age_years": 31}', "age_years"),  # a colon in a value
        ('{"patients": [{"sex": "male"}, {"sex": "male", "sex": "female"}]}', "patients.1.sex"),
    ],
)
def test_every_duplicate_is_found_by_either_path(raw, duplicate):
    from serving.jsonbody import BodyRefused, parse

    with pytest.raises(BodyRefused) as refused:
        parse(raw.encode())
    assert [e["field"] for e in refused.value.errors] == [duplicate]


@pytest.mark.parametrize(
    "raw", ['{"age_years": 30, "patient_id": ": x"}', '{"age_years" :\n30}', '{"patient_id": "a\\"b"}', '{"age_years": NaN}']
)
def test_bodies_without_duplicates_parse_as_json_does(raw):
    from serving.jsonbody import parse

    assert json.dumps(parse(raw.encode())) == json.dumps(json.loads(raw))
