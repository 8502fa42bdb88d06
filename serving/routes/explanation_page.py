"""The small page a CDS Hooks card links to: the waterfall of that card's explanation.

The link carries nothing of the patient: the card's uuid (its audit request id) and a signed,
expiring token (HMAC-SHA256 with a key derived from ICANS_AUDIT_HMAC_KEY). The page is drawn
again from the audit record's validated inputs by the model version that computed the card, so
no explanation is kept anywhere else; when the served version has changed since, the page says
so instead of showing another model's explanation. Everything is inline (SVG and CSS), the
Content-Security-Policy forbids loading anything, and the patient identifier never appears.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from core import waterfall
from serving import page_cache, pages
from serving.deps import ModelStateDep, StoreDep, served_predictor, settings_of
from serving.store import Store

PAGE_PATH = "/v1/explanations/{card_uuid}"
LINK_TTL_S = 24 * 3600  # a card is read during the visit it was shown in
HEADERS = pages.HEADERS
router = APIRouter(tags=["cds-hooks"])


def _key(request_or_app) -> bytes:
    app = getattr(request_or_app, "app", request_or_app)
    secret = settings_of(app).audit_hmac_key.get_secret_value().encode()
    return hmac.new(secret, b"icans-risk explanation page link v1", hashlib.sha256).digest()


def _mac(key: bytes, card_uuid: str, expires: int) -> str:
    digest = hmac.new(key, f"{card_uuid}.{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def sign(app, card_uuid: str, now: float | None = None, ttl_s: int = LINK_TTL_S) -> str:
    """The token of the page link of `card_uuid`: '<expiry unix time>.<mac>'."""
    expires = int((now if now is not None else time.time()) + ttl_s)
    return f"{expires}.{_mac(_key(app), card_uuid.lower(), expires)}"


def link(app, base_url: str, card_uuid: str) -> str:
    return f"{base_url.rstrip('/')}{PAGE_PATH.format(card_uuid=card_uuid)}?token={sign(app, card_uuid)}"


def verify(app, card_uuid: str, token: str, now: float | None = None) -> bool:
    expires_text, _, mac = token.partition(".")
    if not (expires_text.isascii() and expires_text.isdigit() and len(expires_text) <= 12) or not mac.isascii():
        return False
    expires = int(expires_text)
    now = now if now is not None else time.time()
    if not now <= expires <= now + LINK_TTL_S + 60:  # a link this service signed never lives longer
        return False
    return hmac.compare_digest(mac, _mac(_key(app), card_uuid.lower(), expires))


def _audited(store: Store, card_uuid: str) -> dict | None:
    """The card's audit record: validated inputs, model version and risk (never the patient hash)."""
    import sqlalchemy as sa

    from serving.store import CDS_CARD_ENDPOINT, audit_log

    q = (
        sa.select(audit_log.c.inputs, audit_log.c.model_name, audit_log.c.model_version, audit_log.c.risk,
                  audit_log.c.time)
        .where(audit_log.c.request_id == card_uuid, audit_log.c.endpoint == CDS_CARD_ENDPOINT)
        .limit(1)
    )
    with store.engine.connect() as conn:
        row = conn.execute(q).first()
    return dict(row._mapping) if row is not None else None


def _page(title: str, message: str | None = None, r: dict | None = None, when: str | None = None) -> str:
    return pages.render("explanation.html.j2", title=title, message=message, r=r, when=when)


@router.get(
    PAGE_PATH,
    response_class=HTMLResponse,
    summary="The page a CDS card links to: that card's explanation as a picture (signed, expiring link)",
    responses={403: {"description": "The link is invalid or has expired"},
               404: {"description": "No card with this uuid"},
               409: {"description": "The served model version is not the one that computed the card"}},
)
async def explanation_page(
    request: Request,
    model: ModelStateDep,
    store: StoreDep,
    card_uuid: str = Path(pattern=r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"),
    token: str = Query(max_length=200, description="The signed, expiring token of the card's link"),
) -> HTMLResponse:
    if not verify(request.app, card_uuid, token):
        raise HTTPException(403, "this link is invalid or has expired; open the card again")
    predictor = served_predictor(model)  # after the link's check: a bad link is 403 even with no model
    cache_key = (card_uuid.lower(), predictor.model.name, str(predictor.model.version))
    cached = page_cache.of(request.app).get(cache_key)
    if cached is not None:  # issue 25: one drawing per card and model version, not one per request
        return HTMLResponse(cached, headers=HEADERS)
    row = await run_in_threadpool(_audited, store, card_uuid.lower())
    if row is None:
        raise HTTPException(404, "no card with this uuid")
    served = predictor.model
    if (row["model_name"], str(row["model_version"])) != (served.name, str(served.version)):
        page = _page("Explanation not available", (
            f"This card was computed by {row['model_name']} version {row['model_version']}; the service now serves "
            f"version {served.version}, so it cannot draw that card's explanation. Open the card again for a "
            "current estimate."))
        return HTMLResponse(page, status_code=409, headers=HEADERS)
    answer = predictor.predict([dict(row["inputs"])])[0]
    if not math.isclose(answer["risk"], float(row["risk"]), rel_tol=0, abs_tol=1e-9):  # the same model, the same answer
        raise HTTPException(409, "the served model does not reproduce this card's risk")
    b = predictor.bundle
    outcome = "severe CRS" if b.outcome == "severe_crs" else "severe ICANS"
    thresholds = (b.low_threshold, b.high_threshold)
    svg = await run_in_threadpool(waterfall.render, answer, "svg", thresholds, outcome, False)  # the page says it once
    when = row["time"].strftime("%Y-%m-%d %H:%M UTC") if hasattr(row["time"], "strftime") else str(row["time"])
    r = pages.result(answer, b.outcome, thresholds, svg)
    page = _page("Why this estimate", r=r, when=when)
    page_cache.of(request.app).put(cache_key, page)
    return HTMLResponse(page, headers=HEADERS)
