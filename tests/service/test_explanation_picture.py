"""One patient's picture: the waterfall adds up, says research use only, never shows the patient id."""

from __future__ import annotations

import io
import re
import time
import xml.etree.ElementTree as ET

import pytest
from fastapi.testclient import TestClient

from core import display
from core import waterfall
from core.contract import FEATURES, example_request
from serving.app import create_app
from serving.routes.risk import image_format
from tests.helpers import open_store

SECRET_ID = "MRN-SECRET-4242"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def client(trained, tokens):
    settings, _ = trained
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['score']}"}) as c:
        deadline = time.time() + 60
        while c.get("/readyz").status_code != 200:
            assert time.time() < deadline
            time.sleep(0.05)
        yield c


@pytest.fixture(scope="module")
def answer(client) -> dict:
    r = client.post("/v1/risk", json={**example_request(), "patient_id": SECRET_ID})
    assert r.status_code == 200
    return r.json()


def test_the_drawn_waterfall_adds_up_to_the_answers_log_odds(answer):
    ex = answer["explanation"]
    bars = waterfall.steps(answer)
    assert bars[0][2] == ex["base_log_odds"]
    for (_, _, previous_end), (_, start, _) in zip(bars[:-2], bars[1:-1]):
        assert start == previous_end  # each contribution starts where the previous one ended
    measured = [c for c in ex["contributions"] if c["value"] is not None]
    unmeasured = [c for c in ex["contributions"] if c["value"] is None]
    assert unmeasured, "the example patient has labs not measured"
    assert len(bars) == len(measured) + 1 + 2  # one bar for all the labs not measured
    (grouped,) = [b for b in bars if b[0].startswith("Not measured: ")]
    assert grouped[2] - grouped[1] == pytest.approx(sum(c["log_odds"] for c in unmeasured), abs=1e-12)
    fig = waterfall.figure(answer)
    ax = fig.axes[0]
    drawn = {p.get_gid(): p for p in ax.patches if (p.get_gid() or "").startswith("contribution-")}
    assert len(drawn) == len(bars) - 2
    for i, (_, start, end) in enumerate(bars[1:-1], start=1):
        bar = drawn[f"contribution-{i}"]
        assert bar.get_width() == pytest.approx(end - start, abs=1e-12)
        assert bar.get_x() == pytest.approx(start, abs=1e-12)
    (total,) = [line for line in ax.lines if line.get_gid() == "total"]
    (base,) = [line for line in ax.lines if line.get_gid() == "base"]
    end = float(total.get_xdata()[0])
    assert float(base.get_xdata()[0]) == ex["base_log_odds"]
    assert end == pytest.approx(ex["base_log_odds"] + sum(c["log_odds"] for c in ex["contributions"]), abs=1e-9)
    assert end == pytest.approx(answer["log_odds"], abs=1e-9)
    lo, hi = ax.get_xlim()
    assert lo < min(b[2] for b in bars) and max(b[2] for b in bars) < hi  # the axes contain the bars


def test_svg_from_the_api_is_the_answers_explanation_with_no_patient_id(client, answer):
    r = client.post("/v1/risk/explanation", json={**example_request(), "patient_id": SECRET_ID},
                    headers={"Accept": "image/svg+xml"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.headers["cache-control"] == "no-store"
    svg = r.text
    ET.fromstring(r.content)  # well-formed XML
    assert SECRET_ID not in svg
    assert "Research use only" in svg
    texts = " ".join(t for t in ET.fromstring(r.content).itertext())
    assert f"{answer['log_odds']:+.2f}" in texts and f"risk {display.percent(answer['risk'])}" in texts
    assert f"{answer['explanation']['base_log_odds']:+.2f}" in texts
    given = {c["feature"] for c in answer["explanation"]["contributions"] if c["value"] is not None}
    for f in FEATURES:  # people's names, never the column names; each lab not measured named once
        if "_" in f.name:  # 'product' and 'sex' are also words
            assert f.name not in texts, f.name
        assert f"{f.display_name}: " in texts if f.name in given else f.display_name in texts, f.name
    assert "LDH: 240 U/L" in texts  # value and unit, rounded for people
    assert "risk" in texts and "log-odds" in texts
    assert "href=\"http" not in svg  # nothing loaded from elsewhere


def test_png_by_accept_header(client):
    from PIL import Image

    r = client.post("/v1/risk/explanation", json={**example_request(), "patient_id": SECRET_ID},
                    headers={"Accept": "image/png"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/png"
    assert r.content.startswith(PNG_MAGIC)
    assert SECRET_ID.encode() not in r.content
    image = Image.open(io.BytesIO(r.content))
    assert image.size[0] > 600 and image.size[1] > 600
    assert "Research use only" in image.info.get("Description", "")


def test_explanation_is_audited_like_a_risk_and_needs_the_score_scope(client, trained):
    settings, _ = trained
    store = open_store(settings)
    before = store.count()
    r = client.post("/v1/risk/explanation", json={**example_request(), "patient_id": SECRET_ID})
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml")  # SVG by default
    assert store.count() == before + 1
    row = [row for chunk in store.iter_audit() for row in chunk][-1]
    assert row["endpoint"] == "/v1/risk/explanation"
    assert row["request_id"] == r.headers["x-request-id"]
    assert row["patient_hash"] == store.hash_patient_id(SECRET_ID)
    assert SECRET_ID not in repr(row)
    assert client.post("/v1/risk/explanation", json=example_request(), headers={"Authorization": ""}).status_code == 401


def test_unacceptable_accept_is_406_and_not_audited(client, trained):
    settings, _ = trained
    store = open_store(settings)
    before = store.count()
    r = client.post("/v1/risk/explanation", json=example_request(), headers={"Accept": "application/json"})
    assert r.status_code == 406
    assert store.count() == before


@pytest.mark.parametrize(
    "accept, fmt",
    [
        (None, "svg"),
        ("*/*", "svg"),
        ("image/png", "png"),
        ("image/svg+xml;q=0.5, image/png", "png"),
        ("image/png;q=0.2, image/svg+xml;q=0.9", "svg"),
        ("text/html, image/*;q=0.8", "svg"),
        ("image/*, image/png", "png"),
        ("application/json", None),
        ("image/png;q=0", None),
    ],
)
def test_accept_negotiation(accept, fmt):
    assert image_format(accept) == fmt


def test_batch_scoring_draws_one_waterfall_per_patient_named_by_row(trained, tmp_path):
    import pandas as pd

    from pipeline.data.synthetic import generate_cohort
    from pipeline.score import answers, score_file

    settings, _ = trained
    cohort = generate_cohort(4, 99)
    cohort["patient_id"] = [f"{SECRET_ID}-{i}" for i in range(4)]
    data = tmp_path / "in.csv"
    cohort.to_csv(data, index=False)
    out, pictures = tmp_path / "out.csv", tmp_path / "pictures"
    n, _, _ = score_file(settings, data, out, waterfalls=pictures)
    scored = pd.read_csv(out)
    assert n == 4 and scored["waterfall"].tolist() == [f"patient-{i:06d}.svg" for i in range(1, 5)]
    for row in scored.itertuples():
        svg = (pictures / row.waterfall).read_text()
        assert "Research use only" in svg and SECRET_ID not in svg
        assert f"{row.log_odds:+.2f}" in svg and f"risk {display.percent(row.risk)}" in svg
    with pytest.raises(FileExistsError):  # never overwrites a picture silently
        score_file(settings, data, tmp_path / "again.csv", waterfalls=pictures)
    # the batch's picture explains exactly what the API explains for the same patient
    from serving.state import load_predictor

    predictor = load_predictor(settings)
    record = {k: (None if pd.isna(v) else v) for k, v in cohort.iloc[0].to_dict().items()}
    api = predictor.predict([record])[0]
    drawn = answers(cohort.head(1), scored.head(1), api["model"])[0]
    assert drawn["log_odds"] == pytest.approx(api["log_odds"], abs=1e-9)
    assert [c["feature"] for c in drawn["explanation"]["contributions"]] == [
        c["feature"] for c in api["explanation"]["contributions"]]
    for a, b in zip(drawn["explanation"]["contributions"], api["explanation"]["contributions"]):
        assert a["log_odds"] == pytest.approx(b["log_odds"], abs=1e-9)


# --- the page a CDS card links to -------------------------------------------------------------

from tests.helpers import SERVICE_URL, call, now_chart


@pytest.fixture(scope="module")
def card_and_link(cds, keys):  # noqa: F811
    r = call(cds, keys, now_chart(SECRET_ID))
    assert r.status_code == 200, r.text
    card = r.json()["cards"][0]
    (link,) = card["links"]
    return card, link


def test_the_card_links_to_its_picture_with_nothing_of_the_patient_in_the_url(card_and_link):
    from urllib.parse import parse_qs, urlsplit

    card, link = card_and_link
    assert link["type"] == "absolute" and link["label"]
    url = urlsplit(link["url"])
    assert f"{url.scheme}://{url.netloc}" == SERVICE_URL
    assert url.path == f"/v1/explanations/{card['uuid']}"
    assert list(parse_qs(url.query)) == ["token"]
    assert SECRET_ID not in link["url"]


def test_the_page_draws_the_cards_explanation_and_loads_nothing(cds, card_and_link):  # noqa: F811
    from urllib.parse import urlsplit

    from serving.fhir.resources import CARD_EXTENSION

    card, link = card_and_link
    url = urlsplit(link["url"])
    r = cds.get(f"{url.path}?{url.query}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-store" and r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    page = r.text
    assert "Research use only" in page and "<svg" in page
    assert SECRET_ID not in page
    assert "<script" not in page.lower() and "<link" not in page.lower() and "<img" not in page.lower()
    for ref in re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page):
        assert ref.startswith("#"), ref  # only the SVG's own definitions
    prediction = card["extension"][CARD_EXTENSION]
    assert f"{prediction['log_odds']:+.2f}" in page and f"risk {display.percent(prediction['risk'])}" in page


def test_the_link_is_signed_bound_to_its_card_and_expires(cds, card_and_link):  # noqa: F811
    import uuid as uuidlib

    from serving.routes import explanation_page

    card, link = card_and_link
    path = f"/v1/explanations/{card['uuid']}"
    token = link["url"].split("token=")[1]
    expires, mac = token.split(".")
    assert cds.get(f"{path}?token={expires}.{mac[:-2]}xx").status_code == 403  # tampered
    assert cds.get(f"{path}?token={int(expires) + 1}.{mac}").status_code == 403  # a longer life is not signed
    old = explanation_page.sign(cds.app, card["uuid"], now=time.time() - explanation_page.LINK_TTL_S - 10)
    assert cds.get(f"{path}?token={old}").status_code == 403  # expired
    other = str(uuidlib.uuid4())
    assert cds.get(f"/v1/explanations/{other}?token={token}").status_code == 403  # another card's token
    never = explanation_page.sign(cds.app, other)
    assert cds.get(f"/v1/explanations/{other}?token={never}").status_code == 404  # signed, but no such card
    assert cds.get(path).status_code == 422  # no token
