"""`/calculator`: a page on which a clinician without an EHR integration enters one patient's
baseline values by hand and reads the risk, its group, its interval in words and the waterfall.

The page holds no patient data: GET serves the empty form (names, units, ranges and LOINC codes
from the contract); POST (an ordinary HTML form, no script) scores the values once, is authorised
and audited like any client's request (`Authorization: Bearer`, or the form's API key field when
ICANS_AUTH is on), and answers the same page with the result, never stored or cached.
Errors name the field (people's name) and the rule, never a value.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from core import display
from core import waterfall
from core.contract import FEATURES, FEATURES_BY_NAME, Feature
from serving import pages
from serving.auth import Principal, require
from serving.deps import model_of, served_predictor, settings_of
from serving.schemas import PatientFeatures

PATH = "/calculator"
MAX_FORM_BYTES = 16 * 1024
TITLE = "Risk of severe ICANS after CAR T-cell therapy"
router = APIRouter(tags=["calculator"])


def _hint(f: Feature) -> str:
    parts = []
    if f.kind == "float":
        unit = f" {f.unit_text}" if f.unit_text else ""
        low = f"above {display.number(f.min or 0)}, up" if f.min_exclusive else f"{display.number(f.min or 0)}"
        parts.append(f"{low} to {display.number(f.max or 0)}{unit}")
    if f.loinc:
        parts.append(f"LOINC {f.loinc}")
    parts.append(f.description if f.description != f.display_name else "")
    parts.append("optional: leave empty if not measured" if not f.required else "required")
    return "; ".join(p for p in parts if p)


def _fields(values: dict[str, str], errors: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {
            "name": f.name, "id": f.name, "kind": f.kind, "label": f.display_name, "unit": f.unit_text,
            "hint": _hint(f), "required": f.required, "min": f.min, "max": f.max,
            "options": [(c, f.category_text(c)) for c in f.categories],
            "value": values.get(f.name, ""), "error": errors.get(f.name),
        }
        for f in FEATURES
    ]


def _page(request: Request, values: dict[str, str], errors: dict[str, str], r: dict | None = None,
          key_error: str | None = None) -> str:
    error_list = [{"id": name, "label": FEATURES_BY_NAME[name].display_name, "rule": rule}
                  for name, rule in errors.items()]
    if key_error:
        error_list.append({"id": "api_key", "label": "API key", "rule": key_error})
    return pages.render(
        "calculator.html.j2", title=TITLE, fields=_fields(values, errors), errors=error_list, r=r, when=None,
        auth=settings_of(request.app).auth != "off", key_error=key_error, action=PATH,
    )


def _rule(f: Feature, etype: str, msg: str) -> str:
    """The rule broken, in words, from the contract (never the value entered)."""
    if etype == "missing":
        return "required"
    if f.kind == "float":
        unit = f" {f.unit_text}" if f.unit_text else ""
        low = f"more than {display.number(f.min or 0)}" if f.min_exclusive else f"at least {display.number(f.min or 0)}"
        return f"must be a number, {low} and at most {display.number(f.max or 0)}{unit}"
    if f.kind == "bool":
        return "choose yes or no"
    if f.kind == "category":
        return "choose one of the listed values"
    return msg


def _record(values: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's text as a request body (empty = not given), and the errors of what cannot be read."""
    record: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in FEATURES:
        text = values.get(f.name, "").strip()
        if text == "":
            record[f.name] = None
            if f.required:
                errors[f.name] = "required"
            continue
        if f.kind == "float":
            try:
                record[f.name] = float(text.replace(",", "."))
            except ValueError:
                errors[f.name] = _rule(f, "float_parsing", "")
        elif f.kind == "bool":
            if text not in ("yes", "no"):
                errors[f.name] = _rule(f, "bool_parsing", "")
            record[f.name] = text == "yes"
        else:
            record[f.name] = text
    return record, errors


async def _principal(request: Request, values: dict[str, str]) -> Principal:
    """The API key check every scoring client passes: the Authorization header, or the form's key."""
    key = values.get("api_key", "").strip()
    if key and not request.headers.get("authorization"):
        headers = [(k, v) for k, v in request.scope["headers"] if k != b"authorization"]
        headers.append((b"authorization", b"Bearer " + key.encode("latin-1", errors="replace")))
        request = Request({**request.scope, "headers": headers}, request.receive)
    return await require("score")(request)


@router.get(PATH, response_class=HTMLResponse, summary="A page to enter one patient by hand (no patient data in it)")
async def calculator_form(request: Request) -> HTMLResponse:
    return HTMLResponse(_page(request, {}, {}), headers=pages.HEADERS)


@router.post(
    PATH,
    include_in_schema=False,  # a browser form (x-www-form-urlencoded), not an API: clients use POST /v1/risk
    response_class=HTMLResponse,
    summary="The calculator's form, scored: the same page with the risk, its interval and the waterfall",
    responses={401: {"description": "no valid API key (ICANS_AUTH on)"}, 422: {"description": "a value breaks the contract"}},
    openapi_extra={"security": [{"apiKey": []}]},  # checked in the handler: the key may come in the form
)
async def calculator_result(request: Request) -> HTMLResponse:
    started = time.perf_counter()
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "the form is larger than a patient's values can be")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=2 * len(FEATURES) + 4)
    except (UnicodeDecodeError, ValueError):
        raise HTTPException(400, "the form could not be read") from None
    values = {k: v for k, v in pairs if k in FEATURES_BY_NAME or k == "api_key"}
    try:
        principal = await _principal(request, values)
    except HTTPException as exc:
        if exc.status_code not in (401, 403):
            raise
        shown = {k: v for k, v in values.items() if k != "api_key"}
        headers = dict(pages.HEADERS)
        if exc.status_code == 401:  # say how to authenticate, as every 401 of the service does
            headers["WWW-Authenticate"] = (exc.headers or {}).get("WWW-Authenticate", "Bearer")
        return HTMLResponse(_page(request, shown, {}, key_error=str(exc.detail)), status_code=exc.status_code,
                            headers=headers)
    values.pop("api_key", None)
    record, errors = _record(values)
    try:  # every rule at once: the contract's ranges too, beside what could not be read
        PatientFeatures.model_validate(record)
    except ValidationError as exc:
        for e in exc.errors():
            name = str(e["loc"][0]) if e.get("loc") else ""
            if name in FEATURES_BY_NAME and name not in errors:
                errors[name] = _rule(FEATURES_BY_NAME[name], e.get("type", ""), e.get("msg", ""))
    if errors:  # the values that were wrong are not shown back; the others stay filled in
        kept = {k: v for k, v in values.items() if k not in errors}
        return HTMLResponse(_page(request, kept, errors), status_code=422, headers=pages.HEADERS)
    from serving.routes.risk import audit_answers

    predictor = served_predictor(model_of(request.app))
    answer = predictor.predict([record])[0]
    await audit_answers(request, principal, PATH, [record], [answer], started)
    b = predictor.bundle
    outcome = "severe CRS" if b.outcome == "severe_crs" else "severe ICANS"
    thresholds = (b.low_threshold, b.high_threshold)
    svg = await run_in_threadpool(waterfall.render, answer, "svg", thresholds, outcome, False)
    r = pages.result(answer, b.outcome, thresholds, svg)
    return HTMLResponse(_page(request, values, {}, r=r), headers=pages.HEADERS)
