"""The API documentation works on a closed network: local assets, security scheme, real examples."""

from __future__ import annotations

import re
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.contract import example_request
from serving.app import create_app

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def client(trained):
    settings, _ = trained
    with TestClient(create_app(settings)) as c:  # no credentials: documentation is public
        deadline = time.time() + 60
        while c.get("/readyz").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        yield c


def _references(html: str) -> list[str]:
    """Every URL the page loads or names: src/href attributes and the spec URL given to the script."""
    refs = re.findall(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    return refs


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_reference_no_other_host_and_their_assets_are_served(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"https?://|//[A-Za-z0-9]", html), "the page names another host"
    refs = _references(html)
    scripts = [u for u in refs if u.endswith(".js")]
    assert scripts, refs  # the page does load its UI code
    for url in refs:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
    for url in scripts:
        assert "javascript" in client.get(url).headers["content-type"]
    if page == "/redoc":  # ReDoc's bundle would fetch its credit logo from a CDN: served without it
        assert "cdn.redoc.ly" not in client.get(scripts[0]).text
    if page == "/docs":
        assert any(u.endswith(".css") for u in refs)
        assert '"validatorUrl": null' in html  # no call to the public validator badge service


def test_assets_come_from_the_pinned_package():
    pin = "fastapi_offline==" + version("fastapi-offline")
    assert pin in (ROOT / "constraints.txt").read_text().splitlines()
    assert f'"fastapi-offline=={version("fastapi-offline")}"' in (ROOT / "pyproject.toml").read_text()


def test_openapi_declares_the_bearer_api_key_on_every_authenticated_operation(client):
    doc = client.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"]["type"] == "http" and schemes["apiKey"]["scheme"] == "bearer"
    paths = doc["paths"]
    for path in ("/v1/risk", "/v1/risk/batch", "/v1/risk/explanation"):
        op = paths[path]["post"]
        assert op["security"] == [{"apiKey": []}], path
    assert paths["/v1/admin/reload"]["post"]["security"] == [{"apiKey": []}]
    assert "`admin` scope" in schemes["apiKey"]["description"]
    assert paths["/cds-services/icans-risk"]["post"]["security"] == [{"cdsClientJwt": []}]
    for public in ("/healthz", "/readyz", "/v1/model"):
        assert "security" not in paths[public]["get"], public


def test_the_authorize_scheme_is_what_the_service_checks(client, tokens):
    """What Swagger UI sends after Authorize (`Authorization: Bearer <key>`) is admitted; nothing else."""
    assert client.post("/v1/risk", json=example_request()).status_code == 401
    r = client.post("/v1/risk", json=example_request(), headers={"Authorization": f"Bearer {tokens['score']}"})
    assert r.status_code == 200


def test_the_200_examples_are_the_served_models_answer_for_the_example_patient(client, tokens):
    doc = client.get("/openapi.json").json()
    content = doc["paths"]["/v1/risk"]["post"]["responses"]["200"]["content"]
    example = content["application/json"]["example"]
    r = client.post("/v1/risk", json=example_request(), headers={"Authorization": f"Bearer {tokens['score']}"})
    real = r.json()
    assert example["risk"] == pytest.approx(real["risk"], abs=1e-12)
    assert 0 < example["risk"] < 1
    assert example["risk_group"] == real["risk_group"]
    assert example["log_odds"] == pytest.approx(real["log_odds"], abs=1e-12)
    assert example["model"] == real["model"]
    assert example["explanation"] == real["explanation"]  # the same computation, to the last digit
    total = example["explanation"]["base_log_odds"] + sum(c["log_odds"] for c in example["explanation"]["contributions"])
    assert total == pytest.approx(example["log_odds"], abs=1e-9)
    fhir = content["application/fhir+json"]["example"]
    assert fhir["resourceType"] == "RiskAssessment"
    assert fhir["prediction"][0]["probabilityDecimal"] == pytest.approx(real["risk"])
    batch = doc["paths"]["/v1/risk/batch"]["post"]["responses"]["200"]["content"]["application/json"]["example"]
    assert batch["results"][0]["risk"] == example["risk"]


def test_every_schema_reference_in_openapi_resolves(client):
    """A dangling $ref blanks ReDoc ("Invalid reference token") and breaks that operation in Swagger UI."""
    doc = client.get("/openapi.json").json()
    refs: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                refs.add(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert "#/components/schemas/FeedbackRequest" in refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"], ref
