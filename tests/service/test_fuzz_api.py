"""Property-based testing of the whole API from its own OpenAPI document, with schemathesis.

The app is the real one, started through its lifespan (audit store opened, model loaded from the
temporary MLflow store of the `trained` fixture) and reached in-process over ASGI, never over the
network. Each pass below is one pytest test; schemathesis runs every operation of the document as
a subtest of it, with a bounded, derandomised number of examples so that CI is deterministic.

Passes (the CDS Hooks operations get a signed client JWT of a configured issuer, the plain API a key):
- valid credentials (score key), valid data: never a 5xx; status codes, content types, headers
  and bodies as documented; valid data accepted; the admin operation refused with 403;
- admin key, valid data: the admin operation answers as documented;
- no or bad credentials (none, malformed, unknown key, wrong / expired / foreign JWT, an API key on
  a CDS operation): 401 with a `WWW-Authenticate` header, and no operation answers without valid
  credentials unless it is listed in PUBLIC;
- invalid data (schemathesis negative mode, with its coverage phase: boundary values, wrong types,
  missing and unknown fields, wrong content types, unexpected methods): a 4xx, never a 5xx, with
  the error bodies as documented;
- no model loaded yet (the registry hangs): 503 as documented, never any other 5xx.
Every error answer of every pass is searched for input values echoed back (`no_input_echo`).

The defects this found first are fixed and each keeps a reproducer: error statuses the document
did not list (`test_answered_status_is_documented`), numbers given as JSON booleans or strings
being accepted (`test_a_number_field_refuses_*`), input repeated in CDS errors
(`test_an_error_does_not_repeat_the_input`) and the CDS feedback body missing from the document
(`test_operation_documents_its_request_body`). KNOWN_UNDOCUMENTED and KNOWN_ECHOES are the
allowances for a newly found defect while it is tracked; both are empty.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
import zlib
from collections import Counter, defaultdict
from typing import Any

import jwt
import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    missing_required_header,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.python.asgi import ASGIClient

from core.contract import FEATURES, example_request
from serving.app import create_app

BATCH_LIMIT = 8  # a small limit keeps the boundary cases (limit + 1 patients) cheap
MAX_EXAMPLES = 50  # fuzzing-phase examples per operation; the examples and coverage phases add theirs
HYPOTHESIS = dict(
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=False,
    # the schema fixture is per pass on purpose: one app, one lifespan for all the examples of a pass
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# Operations that answer without credentials, on purpose. Anything else answering 2xx without a
# valid key fails the no-credentials pass.
# GET /calculator: the empty form (no patient data); its POST is authorised like any client's
PUBLIC = {"GET /healthz", "GET /readyz", "GET /v1/model", "GET /v1/model/card", "GET /calculator"}
SCORING = {"POST /v1/risk", "POST /v1/risk/batch"}
ADMIN = {"POST /v1/admin/reload"}
# CDS Hooks: a signed JWT of a configured EHR issuer, `aud` = the endpoint's URL (serving/cds_auth.py)
CDS = {"GET /cds-services", "POST /cds-services/icans-risk", "POST /cds-services/icans-risk/feedback"}
CDS_ISSUER = "https://ehr.fuzz.test"
CDS_BASE_URL = "http://testserver"  # the host schemathesis' in-process client calls
NEEDS_MODEL = {"GET /readyz", "GET /v1/model", "GET /v1/model/card", *SCORING}

# Error statuses the fuzzer found undocumented at first; each now has a reproducer below that
# checks the OpenAPI document lists it.
KNOWN_UNDOCUMENTED: dict = {}
DOCUMENTED_ERRORS = {
    ("POST /v1/admin/reload", 401): "no credentials or an unknown key",
    ("POST /v1/admin/reload", 403): "a score key on the admin operation",
    ("GET /readyz", 503): "the model is not loaded yet",
    ("GET /v1/model", 503): "the model is not loaded yet",
    ("POST /v1/risk", 400): "a body that is not UTF-8",
    ("POST /v1/risk/batch", 400): "a body that is not UTF-8",
    ("POST /v1/risk", 413): "a body over max_body_bytes",
    ("POST /v1/risk/batch", 413): "a body over max_body_bytes",
    ("POST /v1/admin/reload", 413): "a body over max_body_bytes",
}

# Request-body fields whose value an error answer is known to repeat, per operation (none now;
# test_an_error_does_not_repeat_the_input keeps the fixed cases fixed).
KNOWN_ECHOES: set = set()

NUMERIC = {f.name for f in FEATURES if f.kind == "float"}
STATS: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(autouse=True)
def _lazy_schema_on_pytest_9_2(request):
    """schemathesis 4.32.5 (`from_fixture`) reads and writes `Node._nodeid`, which pytest 9.2 no
    longer has (the node id moved to `Node._id`): give it a plain attribute to work with. Each
    operation is still reported as its own subtest, named by its label."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module", autouse=True)
def _report_what_the_passes_covered(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None or not STATS:
        return
    with capture.global_and_fixture_disabled():
        _write_report(reporter)


def _write_report(reporter) -> None:
    reporter.write_line("")
    for pass_name, counts in STATS.items():
        per_op: dict[str, Counter] = defaultdict(Counter)
        for (label, phase, status), n in counts.items():
            per_op[label][f"{phase} {status}"] += n
        reporter.write_line(f"fuzz pass '{pass_name}': {counts.total()} requests")
        for label in sorted(per_op):
            detail = ", ".join(f"{k}: {v}" for k, v in sorted(per_op[label].items()))
            reporter.write_line(f"    {label:<40} {per_op[label].total():>4}  ({detail})")


# -- the app under test --------------------------------------------------------------------------


def _wait_ready(client, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while True:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        assert time.time() < deadline, f"not ready: {r.text}"
        time.sleep(0.05)


def _config(mode: str, expected_5xx: tuple[str, ...], coverage: bool) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            # the coverage phase: schema examples, every boundary value, wrong types, missing fields...
            # Values seen in answers (run ids, timestamps) are not fed back into generation, so that
            # the same code generates the same cases on every run, whatever the trained model.
            "phases": {
                "coverage": {"enabled": coverage, "extra-data-sources": {"responses": False}},
                "fuzzing": {"extra-data-sources": {"responses": False}},
                "examples": {"extra-data-sources": {"responses": False}},
            },
            "checks": {"not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", *expected_5xx]}},
            "generation": {"mode": mode, "max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            # literals harvested from the handlers' source would come back as inputs and then be
            # "found" in the fixed error messages: the echo check wants generated values only
            "analysis": {"constants": {"enabled": False}},
            "output": {"sanitization": {"enabled": False}},
        }
    )


def _serve(settings_, mode: str, loader=None, ready=True, expected_5xx: tuple[str, ...] = (), coverage=True):
    """The real app: its lifespan started by schemathesis' own ASGI client (which keeps it running
    until the end of the test), ready unless told otherwise, its OpenAPI document loaded from it."""
    app = create_app(settings_, **({"loader": loader} if loader else {}))
    with ASGIClient(app) as client:
        if ready:
            _wait_ready(client)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=_config(mode, expected_5xx, coverage))


@pytest.fixture(scope="module")
def cds_key():
    """The EHR's signing key; its public half is the configured issuer key."""
    return ec.generate_private_key(ec.SECP256R1())


def _with_cds(settings_, cds_key, **update):
    """The settings with CDS Hooks client authentication configured for our EHR issuer."""
    public = cds_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return settings_.model_copy(update={"cds_service_url": CDS_BASE_URL, "cds_issuers": {CDS_ISSUER: public}, **update})


@pytest.fixture()
def fuzz_settings(trained, cds_key):
    settings_, _ = trained
    return _with_cds(settings_, cds_key, batch_limit=BATCH_LIMIT)


@pytest.fixture()
def positive_schema(fuzz_settings):
    return _serve(fuzz_settings, "positive")


@pytest.fixture()
def auth_schema(fuzz_settings):
    # credentials are checked before the body: the boundary values of the coverage phase add nothing
    return _serve(fuzz_settings, "positive", coverage=False)


@pytest.fixture()
def negative_schema(fuzz_settings):
    return _serve(fuzz_settings, "negative")


@pytest.fixture()
def unready_schema(fuzz_settings):
    release = threading.Event()
    calls = []

    def unreachable_registry(s, resolved=None):
        """The start-up load hangs (registry unreachable); a reload attempt fails at once."""
        calls.append(1)
        if len(calls) == 1:
            release.wait(60)
        raise RuntimeError("registry unreachable (test loader)")

    # 503 is the documented answer while no model is loaded; any other 5xx still fails
    yield _serve(
        fuzz_settings, "positive", loader=unreachable_registry, ready=False, expected_5xx=("503",), coverage=False
    )
    release.set()


# -- checks --------------------------------------------------------------------------------------


def documented_status(ctx, response, case):
    """status_code_conformance, minus the tracked gaps of KNOWN_UNDOCUMENTED."""
    if (case.operation.label, response.status_code) in KNOWN_UNDOCUMENTED:
        return None
    return status_code_conformance(ctx, response, case)


def _vocabulary(schema) -> tuple[str, set[float]]:
    """What an error body may legitimately say: the document's own text (field names, units,
    categories, patterns, rules) and its numeric bounds."""
    cached = getattr(schema, "_fuzz_vocabulary", None)
    if cached is None:
        bounds: set[float] = set()

        def walk(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
                    if numeric and key.startswith(("min", "max", "exclusive")):
                        bounds.add(float(value))
                    walk(value)
            elif isinstance(node, list):
                for item in node:
                    walk(item)

        walk(schema.raw_schema)
        cached = (json.dumps(schema.raw_schema, ensure_ascii=False), bounds)
        schema._fuzz_vocabulary = cached
    return cached


def _distinctive_values(body: Any, vocabulary: str, bounds: set[float]) -> set[str]:
    """Strings of 6+ characters and unusual numbers of a request body, as JSON would write them.

    Ignored: booleans, null, short strings, integers under 1000, the document's bounds and text
    (field and category names), and any value that is also a key of the body (a key
    may also be a contract name, which errors do name)."""
    values: set[str] = set()
    keys: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                keys.add(str(key))
                walk(value)
        elif isinstance(node, (list, tuple)):
            for item in node:
                walk(item)
        elif isinstance(node, bool) or node is None:
            return
        elif isinstance(node, str):
            if len(node.strip()) >= 6 and node not in vocabulary:
                values.add(node)
        elif isinstance(node, (int, float)):
            if isinstance(node, float) and not math.isfinite(node):
                return
            if float(node) in bounds or (isinstance(node, int) and abs(node) < 1000):
                return
            values.update(t for t in {repr(node), json.dumps(node)} if len(t) >= 5)

    walk(body)
    return {v for v in values if not any(v in k for k in keys)}


def _server_messages() -> set[str]:
    """The service's own fixed error texts (e.g. "malformed token"): a generated string that happens
    to equal one is found in the answer without being echoed."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "serving"
    pattern = re.compile(r"""(?:CdsAuthError|HTTPException|FhirOutcomeError|UnknownTarget|OutcomeConflict)\(\s*(?:\d+,\s*)?f?["']([^"'{}]{6,})["']""")
    return {m for path in root.rglob("*.py") for m in pattern.findall(path.read_text(encoding="utf-8"))}


SERVER_MESSAGES = _server_messages()


def no_input_echo(ctx, response, case):
    """An error answer never contains a string or an unusual number taken from the request body."""
    if response.status_code < 400 or case.body is None or not isinstance(case.body, (dict, list, str, int, float)):
        return None
    try:
        payload = json.loads(response.content)
    except ValueError:
        payload = response.content.decode("utf-8", "replace")
    if isinstance(payload, dict):
        payload.pop("request_id", None)  # from our X-Request-ID header or generated, never from the body
    text = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    vocabulary, bounds = _vocabulary(case.operation.schema)
    candidates = _distinctive_values(case.body, vocabulary, bounds)
    if isinstance(case.body, dict):
        candidates -= {str(case.body.get(f)) for (label, f) in KNOWN_ECHOES if label == case.operation.label}
    echoed = sorted(v for v in candidates - SERVER_MESSAGES if v in text)
    assert not echoed, f"error answer {response.status_code} echoes input values {echoed[:5]}: {text[:300]}"
    return None


CONFORMANCE = [
    not_a_server_error,
    documented_status,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    no_input_echo,
]


def _pick(options: list, case) -> Any:
    """A choice that depends on the case only (so that Hypothesis can replay and shrink it)."""
    key = json.dumps([case.method, case.path, case.body], sort_keys=True, default=lambda o: type(o).__name__)
    return options[zlib.crc32(key.encode()) % len(options)]


def _record(pass_name: str, case, response, note: str = "") -> None:
    phase = case.meta.phase.name.value if case.meta is not None else "explicit"
    phase += f" {note}" if note else ""
    STATS[pass_name][(case.operation.label, phase, response.status_code)] += 1


def _headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Request-ID": "fuzz", **extra}


def _cds_jwt(key, path: str, age_s: int = 0) -> str:
    now = int(time.time()) - age_s
    claims = {"iss": CDS_ISSUER, "aud": CDS_BASE_URL + path, "iat": now, "exp": now + 300, "jti": uuid.uuid4().hex}
    return jwt.encode(claims, key, algorithm="ES256")


def _token(case, tokens, cds_key, api_key: str | None = None) -> str:
    """The credential each operation takes: a CDS client JWT, the admin key, or the score key."""
    label = case.operation.label
    if label in CDS:
        return _cds_jwt(cds_key, case.formatted_path)
    return api_key or (tokens["admin"] if label in ADMIN else tokens["score"])


# -- passes --------------------------------------------------------------------------------------

positive = schemathesis.pytest.from_fixture("positive_schema")
negative = schemathesis.pytest.from_fixture("negative_schema")
unready = schemathesis.pytest.from_fixture("unready_schema")
auth = schemathesis.pytest.from_fixture("auth_schema")
ACCEPTS = ["application/json", "application/fhir+json"]  # POST /v1/risk negotiates a FHIR answer


@positive.parametrize()
@settings(max_examples=MAX_EXAMPLES, **HYPOTHESIS)
def test_valid_credentials_and_data_are_answered_as_documented(case, tokens, cds_key):
    label = case.operation.label
    extra = {"Accept": _pick(ACCEPTS, case)} if label == "POST /v1/risk" else {}
    # a CDS call valid by the schema may still lack the data to score (412) or not be patient-view (400)
    checks = CONFORMANCE if label in ADMIN | CDS else [*CONFORMANCE, positive_data_acceptance]
    token = _token(case, tokens, cds_key, api_key=tokens["score"])
    if label == "POST /cds-services/icans-risk" and isinstance(case.body, dict) and _pick([True, False], case):
        case.body["hook"] = "patient-view"  # the only hook served: past it, the prefetch is mapped
    response = case.call_and_validate(headers=_headers(token, **extra), checks=checks)
    _record("valid credentials", case, response, note="fhir" if "fhir" in extra.get("Accept", "") else "")
    if label in ADMIN:
        assert response.status_code == 403, response.text
    elif label in SCORING or label == "GET /cds-services":
        assert response.status_code == 200, response.text


@positive.include(path_regex="^/v1/admin/").parametrize()
@settings(max_examples=10, **HYPOTHESIS)
def test_admin_key_administers_as_documented(case, tokens):
    checks = [*CONFORMANCE, positive_data_acceptance]
    response = case.call_and_validate(headers=_headers(tokens["admin"]), checks=checks)
    _record("admin key", case, response)
    assert response.status_code == 200, response.text


def _bad_credentials(case, tokens, cds_key) -> list[dict[str, str]]:
    foreign = ec.generate_private_key(ec.SECP256R1())  # signs with the issuer's name, not its key
    path = case.formatted_path
    variants = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="},
        {"Authorization": "Bearer icr_notakey_0123456789abcdef"},
        {"Authorization": "bearer    "},
        {"Authorization": "Bearer " + "x" * 4000},
        {"Authorization": "Bearer " + _cds_jwt(cds_key, "/elsewhere")},  # wrong aud
        {"Authorization": "Bearer " + _cds_jwt(cds_key, path, age_s=3600)},  # expired
        {"Authorization": "Bearer " + _cds_jwt(foreign, path)},  # not the issuer's key
    ]
    if case.operation.label in CDS:  # an API key is no CDS client JWT
        variants += [{"Authorization": f"Bearer {tokens['score']}"}, {"Authorization": f"Bearer {tokens['admin']}"}]
    return [{"X-Request-ID": "fuzz", **v} for v in variants]


@auth.parametrize()
@settings(max_examples=MAX_EXAMPLES // 2, **HYPOTHESIS)
def test_without_valid_credentials_only_public_operations_answer(case, tokens, cds_key):
    label = case.operation.label
    headers = _pick(_bad_credentials(case, tokens, cds_key), case)
    response = case.call_and_validate(headers=headers, checks=CONFORMANCE)
    _record("no credentials", case, response)
    if response.status_code < 300:
        assert label in PUBLIC, f"{label} answers {response.status_code} without credentials (PUBLIC, if meant)"
    if response.status_code == 401:
        assert response.headers.get("www-authenticate"), "a 401 must say how to authenticate"
    if label in SCORING | ADMIN | CDS:
        assert response.status_code == 401, response.text
        assert response.headers["www-authenticate"][0].startswith("Bearer")


# The operations whose document describes an input. The others (GETs, the admin POST, and the CDS
# feedback POST whose body the document leaves out: see test_operation_documents_its_request_body)
# have nothing to negate, and schemathesis would report them as impossible to test negatively.
@negative.include(method="POST").exclude(path=["/v1/admin/reload", "/cds-services/icans-risk/feedback"]).parametrize()
@settings(max_examples=MAX_EXAMPLES, **HYPOTHESIS)
def test_invalid_data_is_a_4xx_never_a_5xx(case, tokens, cds_key):
    token = _token(case, tokens, cds_key)
    checks = [*CONFORMANCE, unsupported_method, missing_required_header, negative_data_rejection]
    response = case.call_and_validate(headers=_headers(token), checks=checks)
    _record("invalid data", case, response)
    assert response.status_code < 500, response.text


@unready.parametrize()
@settings(max_examples=10, **HYPOTHESIS)
def test_before_a_model_is_loaded_answers_are_503_as_documented(case, tokens, cds_key):
    label = case.operation.label
    token = _token(case, tokens, cds_key)
    response = case.call_and_validate(headers=_headers(token), checks=CONFORMANCE)
    _record("no model loaded", case, response)
    if label in NEEDS_MODEL:
        assert response.status_code == 503, response.text


# -- tracked defects -----------------------------------------------------------------------------


class Undocumented(AssertionError):
    """The service answered a status code its OpenAPI document does not list."""


def _reproduce(settings_, tokens, label: str, status: int) -> tuple[int, dict]:
    """Get `status` from `label` for real; return the status answered and the OpenAPI document."""
    method, path = label.split(" ", 1)
    release = threading.Event()

    def hanging_registry(s, resolved=None):
        release.wait(60)
        raise RuntimeError("registry unreachable (test loader)")

    app = create_app(settings_, **({"loader": hanging_registry} if status == 503 else {}))
    try:
        with TestClient(app) as c:
            if status != 503:
                _wait_ready(c)
            headers = {"X-Request-ID": "repro"}
            if status == 403:
                headers.update(_headers(tokens["score"]))
            elif status != 401:
                headers.update(_headers(tokens["admin"]))
            kwargs: dict[str, Any] = {}
            if status == 400:
                kwargs["content"] = b'{"patients": "\xff"}'
                headers["Content-Type"] = "application/json"
            elif status == 413:
                kwargs["content"] = b'{"patients": [' + b" " * settings_.max_body_bytes + b"]}"
                headers["Content-Type"] = "application/json"
            elif path == "/v1/risk":
                kwargs["json"] = example_request()
            elif path == "/v1/risk/batch":
                kwargs["json"] = {"patients": [example_request()]}
            return c.request(method, path, headers=headers, **kwargs).status_code, c.get("/openapi.json").json()
    finally:
        release.set()


@pytest.mark.parametrize(
    "label, status",
    [
        pytest.param(label, status, id=f"{label} {status}")
        for (label, status), why in DOCUMENTED_ERRORS.items()
    ]
    + [pytest.param("POST /v1/risk", 401, id="POST /v1/risk 401 (control)")],
)
def test_answered_status_is_documented(fuzz_settings, tokens, label, status):
    answered, spec = _reproduce(fuzz_settings, tokens, label, status)
    assert answered == status, f"the reproducer no longer gets {status} from {label} (got {answered})"
    method, path = label.split(" ", 1)
    documented = spec["paths"][path][method.lower()]["responses"]
    if str(status) not in documented and "default" not in documented:
        raise Undocumented(f"{label} answered {status}; documented: {sorted(documented)}")


@pytest.fixture(scope="module")
def scoring_client(trained, tokens):
    settings_, _ = trained
    with TestClient(create_app(settings_), headers=_headers(tokens["score"])) as c:
        _wait_ready(c)
        yield c


@pytest.mark.parametrize("value", [True, False], ids=["true", "false"])
def test_a_number_field_refuses_a_boolean(scoring_client, value):
    r = scoring_client.post("/v1/risk", json={**example_request(), "crp_mg_l": value})  # false: scored as CRP 0 mg/L
    assert r.status_code == 422, f"{r.status_code}: {r.text[:300]}"


@pytest.mark.parametrize("value", ["1e3", "1_000", "240"])
def test_a_number_field_refuses_a_string(scoring_client, value):
    r = scoring_client.post("/v1/risk", json={**example_request(), "ldh_u_l": value})
    assert r.status_code == 422, f"{r.status_code}: {r.text[:300]}"


@pytest.fixture(scope="module")
def cds_client(trained, cds_key):
    settings_, _ = trained
    with TestClient(create_app(_with_cds(settings_, cds_key))) as c:
        _wait_ready(c)
        yield c


def test_operation_documents_its_request_body(cds_client):
    spec = cds_client.get("/openapi.json").json()
    assert "requestBody" in spec["paths"]["/cds-services/icans-risk/feedback"]["post"]


@pytest.mark.parametrize(
    "path, body, value",
    [
        pytest.param(
            "/cds-services/icans-risk",
            {"hook": "order-select-MRN-20240611", "hookInstance": "h1", "context": {"patientId": "p1"}},
            "order-select-MRN-20240611",
            id="cds wrong hook",
        ),
        pytest.param(
            "/cds-services/icans-risk/feedback",
            {"feedback": [{"card": "0b5ff2d4-7c1e-4e55-9a43-5b1b7c0e9d21", "outcome": "accepted",
                           "outcomeTimestamp": "2026-01-01T00:00:00Z"}]},
            "0b5ff2d4-7c1e-4e55-9a43-5b1b7c0e9d21",
            id="cds feedback unknown card",
        ),
        pytest.param(
            "/cds-services/icans-risk",
            {"hook": "patient-view", "hookInstance": "h1", "context": {"patientId": "p1"},
             "prefetch": {"patient": {"resourceType": "Patient", "id": "MRN-99887766", "birthDate": "1999-99-99"}}},
            "MRN-99887766",
            id="cds invalid prefetch (control)",
        ),
    ],
)
def test_an_error_does_not_repeat_the_input(cds_client, cds_key, path, body, value):
    r = cds_client.post(path, json=body, headers=_headers(_cds_jwt(cds_key, path)))
    assert 400 <= r.status_code < 500, r.text
    assert value not in r.text, f"{r.status_code} repeats {value!r}: {r.text[:300]}"
