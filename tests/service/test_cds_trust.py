"""Issue 25 (trust, round three), the CDS side, in process: URL normalisation and the allow-list,
the fetch budget, 503 (not 500) when the replay cache's store is locked, bad explanation-link
tokens, a body weight of 0, the `tenant` claim, CDS feedback (strict JSON, one entry per card and
outcome, plausible timestamps), /readyz without internal text, the development-key warning and
the explanation page's cache. The hostile-server and connection cases run against a real server
in tests/e2e/test_hostile_fhir.py.
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.fhir import fetch
from tests.helpers import ISS, SERVICE, SERVICE_URL, _ready, bearer, call, hook_body, make_token, now_chart
from tests.helpers import Chart, mapped


ALLOW = ["http://127.0.0.1:8400/fhir"]

# --------------------------------------------------------------------------------------------------
# The allow-list


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8400/fhir/../../internal",
        "http://127.0.0.1:8400/fhir/./../internal",
        "http://127.0.0.1:8400/fhir/%2e%2e/%2e%2e/internal",
        "http://127.0.0.1:8400/fhir/%2E%2E",
        "http://127.0.0.1:8400/fhir/%252e%252e/x",
        "http://127.0.0.1:8400/fhir/..%2f..%2finternal",
        "http://127.0.0.1:8400/fhir/..%5c..%5cinternal",
        "http://127.0.0.1:8400/fhir\\..\\internal",
        "http://127.0.0.1:8400/fhirs",  # a prefix of the string, not of the path
        "http://127.0.0.1:8400/fhir-internal/x",
        "http://127.0.0.1:8400@127.0.0.1:5432/fhir",
        "http://user@127.0.0.1:8400/fhir",
        "http://127.0.0.1:6379/fhir",
        "http://127.0.0.1:8400 /fhir",
        "http://127.0.0.1:8400/fhir/\u00e9",
        "http://127.0.0.1:99999/fhir",
        "ftp://127.0.0.1:8400/fhir",
        "http:///fhir",
    ],
)
def test_urls_that_leave_the_allowed_server_are_refused(url):
    assert not fetch.allowed(url, ALLOW, development=True)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8400/fhir", "http://127.0.0.1:8400/fhir/", "HTTP://127.0.0.1:8400/fhir/r4",
     "http://127.0.0.1:8400/fhir/a.b/c"],
)
def test_urls_under_the_allowed_server_pass(url):
    assert fetch.allowed(url, ALLOW, development=True)


def test_http_only_in_development_and_default_ports_are_the_same_origin():
    assert not fetch.allowed("http://127.0.0.1:8400/fhir", ALLOW, development=False)
    assert fetch.allowed("https://ehr.example:443/fhir/r4", ["https://EHR.example/fhir"], development=False)
    assert not fetch.allowed("https://ehr.example:8443/fhir", ["https://ehr.example/fhir"], development=False)


def test_a_query_that_climbs_out_of_the_base_is_not_requested():
    base = fetch.normalise("http://127.0.0.1:8400/fhir")
    budget = fetch.Budget(deadline_s=5, read_timeout_s=1, max_bytes=10_000, max_requests=5, max_entries=10)
    with pytest.raises(fetch.FetchError, match="does not stay"):
        fetch.fetch(base, fetch.render("Patient/{{context.patientId}}", ".."), "t", budget)
    assert budget.requests == 0


# --------------------------------------------------------------------------------------------------
# The fetch budget, against a raw socket server that stalls


def _stalling_server() -> tuple[socket.socket, threading.Event]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n{")

            def drip(c=conn) -> None:
                while not stop.wait(0.2):
                    try:
                        c.sendall(b" ")
                    except OSError:
                        return

            threading.Thread(target=drip, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, stop


def test_the_deadline_bounds_a_drip_that_each_read_timeout_would_allow():
    srv, stop = _stalling_server()
    try:
        port = srv.getsockname()[1]
        base = fetch.normalise(f"http://127.0.0.1:{port}/fhir")
        budget = fetch.Budget(deadline_s=1.0, read_timeout_s=5, max_bytes=10**6, max_requests=5, max_entries=10)
        data, failed = fetch.fetch_all(base, {"ldh": "Observation?x=1", "patient": "Patient/p"}, "t", budget)
        assert data == {}
        assert failed == {"ldh": "the call's fetch deadline passed", "patient": "the call's fetch deadline passed"}
        assert budget.requests == 1  # the second key was not even asked for
    finally:
        stop.set()
        srv.close()


def test_abort_cuts_a_read_under_way_from_another_thread():
    srv, stop = _stalling_server()
    try:
        port = srv.getsockname()[1]
        base = fetch.normalise(f"http://127.0.0.1:{port}/fhir")
        budget = fetch.Budget(deadline_s=60, read_timeout_s=30, max_bytes=10**6, max_requests=5, max_entries=10)
        threading.Timer(0.5, budget.abort).start()
        t0 = time.monotonic()
        _, failed = fetch.fetch_all(base, {"ldh": "Observation?x=1"}, "t", budget)
        assert failed == {"ldh": "the call's fetch deadline passed"}
        assert time.monotonic() - t0 < 20  # not the 60 s deadline: the abort cut the read
    finally:
        stop.set()
        srv.close()


def test_resource_count_and_malformed_bundles_fail_the_key():
    budget = fetch.Budget(deadline_s=5, read_timeout_s=1, max_bytes=100, max_requests=5, max_entries=10)
    with pytest.raises(fetch.FetchError, match="resources"):
        fetch._entries({"resourceType": "Bundle", "entry": [{}] * 11}, budget)
    with pytest.raises(fetch.FetchError, match="not a list"):
        fetch._entries({"entry": 5}, budget)
    assert fetch._next({"link": 5}) is None and fetch._next({"link": [5, {"relation": "next", "url": 3}]}) is None


# --------------------------------------------------------------------------------------------------
# Mapping: a body weight of 0


@pytest.mark.parametrize("kg", [0.0, -70.0])
def test_a_total_dose_with_a_body_weight_of_zero_is_missing_not_a_crash(kg):
    chart = Chart()
    chart.requests = [r for r in chart.requests if not r.id.startswith("mr")]
    chart.car_t("Kymriah", 1.2, unit="10*8{cells}")
    chart.weight(kg)
    m = mapped(chart)
    assert [x.feature for x in m.missing] == ["car_t_dose_10e6_per_kg"]
    assert "not a positive number" in m.missing[0].reason


# --------------------------------------------------------------------------------------------------
# Through the app: auth on, two issuers (tests/service/test_cds_hooks.py's keys)


@pytest.fixture(scope="module")
def app_client(trained, keys, tmp_path_factory):
    settings, _ = trained
    root = tmp_path_factory.mktemp("trust")
    s = settings.model_copy(update={
        "cds_service_url": SERVICE_URL, "cds_issuers": keys["issuers"],
        "store_url": f"sqlite:///{root / 'service.db'}", "store_timeout_s": 0.5, "audit_timeout_s": 2.0,
    })
    with TestClient(create_app(s)) as c:
        _ready(c)
        yield c, s, root


def _jwt(keys, path: str = SERVICE, **claims) -> str:
    import jwt as pyjwt

    now = int(time.time())
    body = {"iss": ISS, "aud": SERVICE_URL + path, "exp": now + 120, "iat": now, "jti": str(uuid.uuid4()), **claims}
    return pyjwt.encode(body, keys["rsa"], algorithm="RS384", headers={"kid": "rsa-1", "typ": "JWT"})


def test_the_cds_route_answers_503_while_the_store_is_locked(app_client, keys, caplog):
    c, s, root = app_client
    code = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.readline(); c.execute('ROLLBACK')"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(root / "service.db")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with caplog.at_level(logging.ERROR, logger="icans_risk.serving"):
            r = c.post(SERVICE, json=hook_body(now_chart("pat-locked")), headers=bearer(make_token(keys, SERVICE)))
        assert r.status_code == 503, r.text
        assert r.headers["retry-after"] == "1"
        assert "store" in r.json()["detail"]
        assert not any(rec.exc_info for rec in caplog.records)  # a line, not a traceback
    finally:
        holder.communicate("go\n", timeout=30)
    assert call(c, keys, now_chart("pat-unlocked")).status_code == 200


@pytest.mark.parametrize("tenant", ["hospital\nINFO forged line", "a\x1b[31mred", "x" * 65, "", 7, ["a"]])
def test_a_tenant_claim_that_is_not_a_plain_name_is_refused(app_client, keys, tenant):
    c, _, _ = app_client
    r = c.post(SERVICE, json=hook_body(now_chart("pat-tenant")), headers=bearer(_jwt(keys, tenant=tenant)))
    assert r.status_code == 401, r.text
    assert "tenant" in r.json()["detail"]
    if isinstance(tenant, str) and tenant:
        assert tenant not in r.text


def test_a_plain_tenant_reaches_the_audit_trail(app_client, keys):
    c, s, _ = app_client
    from tests.helpers import open_store

    r = c.post(SERVICE, json=hook_body(now_chart("pat-tenant-ok")), headers=bearer(_jwt(keys, tenant="clinic-a.west")))
    assert r.status_code == 200, r.text
    row = open_store(s).card_audit(r.json()["cards"][0]["uuid"])
    assert row["client_id"] == f"cds:{ISS} tenant:clinic-a.west"


@pytest.mark.parametrize("token", ["%C2%B2.abc", "\u00b2.abc", "\u0663\u0663.abc", "99999999999999999999.abc",
                                   "4102444800.abc", ".", "1.", "abc"])
def test_bad_explanation_link_tokens_are_403(app_client, token):
    c, _, _ = app_client
    r = c.get(f"/v1/explanations/{uuid.uuid4()}", params={"token": token})
    assert r.status_code == 403, r.text


def test_a_link_expiring_far_beyond_the_links_lifetime_is_refused(app_client, keys):
    from serving.routes import explanation_page

    c, _, _ = app_client
    card = call(c, keys, now_chart("pat-forged")).json()["cards"][0]["uuid"]
    forged = explanation_page.sign(c.app, card, now=time.time(), ttl_s=int(4102444800 - time.time()))  # to 2100
    assert c.get(f"/v1/explanations/{card}", params={"token": forged}).status_code == 403
    good = explanation_page.sign(c.app, card)
    assert c.get(f"/v1/explanations/{card}", params={"token": good}).status_code == 200


def test_the_explanation_page_is_drawn_once_per_card(app_client, keys, monkeypatch):
    from core import waterfall
    from serving.routes import explanation_page

    c, _, _ = app_client
    card = call(c, keys, now_chart("pat-cache")).json()["cards"][0]["uuid"]
    drawn = []
    real = waterfall.render

    def counting(*args, **kwargs):
        drawn.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(waterfall, "render", counting)
    pages = [c.get(f"/v1/explanations/{card}", params={"token": explanation_page.sign(c.app, card)}) for _ in range(5)]
    assert [p.status_code for p in pages] == [200] * 5
    assert len({p.text for p in pages}) == 1
    assert len(drawn) == 1
    other = call(c, keys, now_chart("pat-cache-2")).json()["cards"][0]["uuid"]
    assert c.get(f"/v1/explanations/{other}", params={"token": explanation_page.sign(c.app, other)}).status_code == 200
    assert len(drawn) == 2
    # the token is still checked before the cache
    assert c.get(f"/v1/explanations/{card}", params={"token": "1.abc"}).status_code == 403


# --------------------------------------------------------------------------------------------------
# Feedback


def _feedback(c, keys, body: bytes | dict):
    path = f"{SERVICE}/feedback"
    headers = {**bearer(make_token(keys, path)), "content-type": "application/json"}
    return c.post(path, content=body if isinstance(body, bytes) else json.dumps(body).encode(), headers=headers)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def test_feedback_with_a_duplicate_key_is_refused(app_client, keys):
    c, _, _ = app_client
    card = call(c, keys, now_chart("pat-fb-dup")).json()["cards"][0]["uuid"]
    when = _iso(datetime.now(UTC))
    raw = ('{"feedback": [{"card": "%s", "outcome": "accepted", "outcome": "overridden", "outcomeTimestamp": "%s"}]}'
           % (card, when)).encode()
    r = _feedback(c, keys, raw)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0]["field"] == "outcome" and r.json()["detail"][0]["type"] == "duplicate_field"
    raw = ('{"feedback": [{"card": "%s", "outcome": "accepted", "outcomeTimestamp": "%s", "secret-x": 1, "secret-x": 2}]}'
           % (card, when)).encode()
    r = _feedback(c, keys, raw)
    assert r.status_code == 400 and "secret-x" not in r.text


def test_a_hook_call_with_a_duplicate_key_is_refused(app_client, keys):
    c, _, _ = app_client
    body = json.dumps(hook_body(now_chart("pat-dup-hook")))
    raw = body.replace('"hook": "patient-view"', '"hook": "patient-view", "hook": "order-select"', 1).encode()
    headers = {**bearer(make_token(keys, SERVICE)), "content-type": "application/json"}
    r = c.post(SERVICE, content=raw, headers=headers)
    assert r.status_code == 400, r.text
    assert r.json()["detail"][0] == {"field": "hook", "rule": "duplicate field (given more than once)",
                                     "type": "duplicate_field"}
    raw = body.replace('"patientId": "pat-dup-hook"', '"MRN 12345": 1, "MRN 12345": 2, "patientId": "pat-dup-hook"', 1)
    r = c.post(SERVICE, content=raw.encode(), headers={**headers, **bearer(make_token(keys, SERVICE))})
    assert r.status_code == 400 and "MRN" not in r.text


def test_feedback_is_stored_once_per_card_and_outcome(app_client, keys):
    from tests.helpers import open_store

    c, s, _ = app_client
    card = call(c, keys, now_chart("pat-fb-once")).json()["cards"][0]["uuid"]
    entry = {"card": card, "outcome": "accepted", "outcomeTimestamp": _iso(datetime.now(UTC))}
    r = _feedback(c, keys, {"feedback": [entry] * 100})
    assert r.status_code == 200, r.text
    assert (r.json()["stored"], r.json()["duplicates"]) == (1, 99)
    r = _feedback(c, keys, {"feedback": [entry, {**entry, "outcome": "overridden"}]})
    assert (r.json()["stored"], r.json()["duplicates"]) == (1, 1)
    assert sorted(f["outcome"] for f in open_store(s).feedback_for(card)) == ["accepted", "overridden"]


@pytest.mark.parametrize("when", ["9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z", "2020-01-01T00:00:00Z", "future"])
def test_feedback_timestamps_must_be_plausible(app_client, keys, when):
    from tests.helpers import open_store

    c, s, _ = app_client
    card = call(c, keys, now_chart("pat-fb-time")).json()["cards"][0]["uuid"]
    if when == "future":
        when = _iso(datetime.now(UTC) + timedelta(hours=1))
    r = _feedback(c, keys, {"feedback": [{"card": card, "outcome": "accepted", "outcomeTimestamp": when}]})
    assert r.status_code == 400, r.text
    assert "outcomeTimestamp" in r.json()["detail"]
    assert open_store(s).feedback_for(card) == []


# --------------------------------------------------------------------------------------------------
# Readiness and configuration


def test_readyz_never_shows_an_errors_own_text(trained, caplog):
    settings, _ = trained
    sql = "(sqlite3.OperationalError) no such table: registered_models [SQL: SELECT secret_col FROM t WHERE x = ?]"

    def failing(_settings, _resolved=None):
        raise RuntimeError(sql)

    s = settings.model_copy(update={"model_load_retries": 0, "model_load_backoff_s": 30})
    with TestClient(create_app(s, loader=failing)) as c:
        deadline = time.time() + 10
        while c.get("/readyz").json().get("status") != "error":
            assert time.time() < deadline
            time.sleep(0.05)
        body = c.get("/readyz").json()
    assert c is not None
    assert "RuntimeError" in body["reason"] and "SELECT" not in json.dumps(body) and "sqlite3" not in json.dumps(body)
    assert len(body["reason"]) < 120


def test_readyz_names_a_failed_reload_without_its_text(trained):
    from serving.state import ModelState

    settings, _ = trained
    with TestClient(create_app(settings)) as c:
        _ready(c)
        state: ModelState = c.app.state.model
        state._record("failed", "new model refused, still serving the old one: OperationalError: SELECT x FROM y")
        body = c.get("/readyz").json()
    assert body["last_reload"]["result"] == "failed"
    assert "OperationalError" in body["last_reload"]["reason"] and "SELECT" not in json.dumps(body)


def test_readyz_says_what_it_is_doing_while_loading(trained):
    settings, _ = trained
    release = threading.Event()

    def slow(_settings, _resolved=None):
        release.wait(30)
        raise RuntimeError("gave up")

    with TestClient(create_app(settings, loader=slow)) as c:
        time.sleep(0.2)
        body = c.get("/readyz").json()
        release.set()
    assert body["status"] == "loading" and body["detail"] == "loading the model (attempt 1)" and "reason" not in body


def test_mlflow_http_retries_are_bounded_unless_set(trained, monkeypatch):
    from serving.app import bound_mlflow_retries

    settings, _ = trained
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "33")
    bound_mlflow_retries(settings)
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "33"  # the operator's value wins
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


def test_the_development_key_with_auth_on_warns_and_is_refused_in_production(trained, caplog):
    from core.settings import DEV_AUDIT_KEY, Settings

    settings, _ = trained
    from pydantic import SecretStr

    s = settings.model_copy(update={"audit_hmac_key": SecretStr(DEV_AUDIT_KEY)})
    with caplog.at_level(logging.WARNING, logger="icans_risk.serving"):
        with TestClient(create_app(s)):
            pass
    assert any("public development key" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="ICANS_AUDIT_HMAC_KEY"):
        Settings(env="production", tracking_uri="postgresql://x/y", audit_hmac_key=DEV_AUDIT_KEY)
