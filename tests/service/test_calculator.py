"""`/calculator`: a clinician enters one patient by hand; the page labels every input from the
contract, keeps nothing, scores like any authorised client (audited) and shows the answer once,
rounded for people, with the notice once."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient

from core import display
from core.contract import FEATURES, INTENDED_USE, example_request
from serving.app import create_app
from tests.helpers import open_store, wait_ready

SECRET = "123.456789"  # a value that must never come back in an error


def form(record: dict) -> dict[str, str]:
    """A record as the browser's form sends it."""
    out = {}
    for f in FEATURES:
        v = record.get(f.name)
        out[f.name] = "" if v is None else ("yes" if v is True else "no" if v is False else str(v))
    return out


class Controls(HTMLParser):
    """Every form control, every <label for>, every fieldset legend: the DOM check of the page."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str | None]] = []
        self.label_for: set[str] = set()
        self.fieldsets = 0
        self.legends = 0
        self.scripts = 0
        self.refs: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("input", "select", "textarea") and a.get("type") not in ("hidden", "submit"):
            self.controls.append(a)
        if tag == "label" and a.get("for"):
            self.label_for.add(a["for"] or "")
        self.fieldsets += tag == "fieldset"
        self.legends += tag == "legend"
        self.scripts += tag == "script"
        self.refs += [v or "" for k, v in attrs if k in ("src", "href")]


def parsed(html: str) -> Controls:
    p = Controls()
    p.feed(html)
    return p


@pytest.fixture(scope="module")
def open_client(trained):
    settings, _ = trained
    with TestClient(create_app(settings.model_copy(update=dict(auth="off")))) as c:
        assert wait_ready(c).status_code == 200
        yield c


@pytest.fixture(scope="module")
def auth_client(trained):
    settings, _ = trained
    with TestClient(create_app(settings)) as c:
        assert wait_ready(c).status_code == 200
        yield c


def post(client, data: dict[str, str]):
    return client.post("/calculator", content=urlencode(data),
                       headers={"content-type": "application/x-www-form-urlencoded"})


def test_the_empty_page_labels_every_input_from_the_contract_and_loads_nothing(open_client):
    r = open_client.get("/calculator")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    page = parsed(r.text)
    assert page.scripts == 0 and all(ref.startswith("#") for ref in page.refs)
    assert html.unescape(r.text).count(INTENDED_USE) == 1
    ids = [c.get("id") for c in page.controls]
    assert all(i in page.label_for for i in ids), set(ids) - page.label_for  # a label on every input
    names = {c.get("name") for c in page.controls}
    assert names == {f.name for f in FEATURES}
    bools = [f for f in FEATURES if f.kind == "bool"]
    assert page.fieldsets == page.legends == len(bools)  # each yes/no pair has its question as legend
    for f in FEATURES:
        assert f.display_name in r.text
        if f.loinc:
            assert f"LOINC {f.loinc}" in r.text
        if f.kind == "float":
            (control,) = [c for c in page.controls if c.get("name") == f.name]
            assert float(control["min"] or "nan") == f.min and float(control["max"] or "nan") == f.max
            assert ("required" in control) == f.required  # empty allowed only where the contract allows it


def test_a_patient_entered_by_hand_gets_the_apis_answer_rounded_for_people(open_client):
    record = example_request()
    api = open_client.post("/v1/risk", json=record).json()
    r = post(open_client, form(record))
    assert r.status_code == 200, r.text
    text = html.unescape(r.text)
    assert f"<strong>{display.percent(api['risk'])}</strong>" in text
    assert f"risk group <strong>{api['risk_group']}</strong>" in text
    lo, hi = api["uncertainty"]["interval"]
    assert f"between {display.percent(lo)} and {display.percent(hi)}" in text
    assert "<svg" in text and text.count("Research use only") == 1  # the notice once, not in the picture too
    assert "Not measured: " in text  # the example patient's missing labs share one bar
    assert str(api["risk"]) not in text  # no 17-digit numbers for people


def test_wrong_values_are_named_in_words_and_never_shown_back(open_client):
    record = form(example_request())
    record["crp_mg_l"] = "700"
    record["ldh_u_l"] = SECRET.replace(".", ",") + "x"
    record["age_years"] = ""
    r = post(open_client, record)
    assert r.status_code == 422
    r_text = html.unescape(r.text)
    assert "CRP: must be a number, at least 0 and at most 600 mg/L" in r_text
    assert "LDH: must be a number" in r_text and "Age: required" in r_text
    assert "700" not in r_text and "123,456789" not in r_text
    assert f'value="{record["platelets_10e9_l"]}"' in r.text


def test_an_optional_lab_may_be_left_empty_a_required_one_may_not(open_client):
    record = form(example_request())
    for f in FEATURES:
        if not f.required:
            record[f.name] = ""
    assert post(open_client, record).status_code == 200
    required = next(f for f in FEATURES if f.required and f.kind == "category")
    record[required.name] = ""
    r = post(open_client, record)
    assert r.status_code == 422 and f"{required.display_name}: required" in html.unescape(r.text)


def test_with_auth_on_the_page_needs_a_key_and_each_estimate_is_audited(auth_client, trained, tokens):
    settings, _ = trained
    record = form(example_request())
    refused = post(auth_client, record)
    assert refused.status_code == 401 and "API key: missing bearer token" in refused.text
    assert 'type="password"' in refused.text
    store = open_store(settings)
    before = store.count(None)
    ok = post(auth_client, {**record, "api_key": tokens["score"]})
    assert ok.status_code == 200, ok.text
    assert tokens["score"] not in ok.text  # the key is not written back into the page
    assert store.count(None) == before + 1
    header = auth_client.post("/calculator", content=urlencode(record), headers={
        "content-type": "application/x-www-form-urlencoded", "Authorization": f"Bearer {tokens['score']}"})
    assert header.status_code == 200
    wrong = post(auth_client, {**record, "api_key": "not-a-key"})
    assert wrong.status_code == 401 and "not-a-key" not in wrong.text
    assert re.search(r"invalid or revoked API key", wrong.text)
