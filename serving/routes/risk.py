"""Scoring endpoints, async: one patient's model work (~0.1-0.2 ms) runs on the event loop,
which costs less than the two threadpool hops it would take to move it off (measured in
bench/results.md); a batch's larger work runs in the threadpool so that it cannot stall the loop.

The app's state is read through serving.deps' accessors, not FastAPI dependencies: on this path
each dependency would cost ~15 us to resolve (see serving/deps.py).

Every scored patient is written to the audit trail before the answer leaves; if the audit
record cannot be written, the caller gets 503 and no risk (an unaudited answer is not given).
"""

import logging
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from core import waterfall
from core.contract import intended_use, outcome_of
from core.settings import Settings
from serving.accept import media_ranges
from serving.audit_rows import audit_record
from serving.auth import Principal, require
from serving.deps import audit_of, log_throttle_of, metrics_of, model_of, served_predictor
from serving.jsonbody import StrictJSONRoute
from serving.fhir.resources import FHIR_JSON, openapi_fhir_response, risk_assessment, wants_fhir
from serving.schemas import BatchResult, ErrorResponse, PatientFeatures, RiskResponse, batch_request_model

log = logging.getLogger("icans_risk.serving")
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "The body could not be read (e.g. not UTF-8)"},
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    413: {"model": ErrorResponse, "description": "The body is larger than ICANS_MAX_BODY_BYTES"},
    503: {"model": ErrorResponse},
}


def _json(content: dict) -> Response:
    """The answer as orjson bytes: built from typed values, so FastAPI's second validation
    against the response model (about 0.4 ms a request) is skipped; the models still document
    it, and the API tests check every answer against the OpenAPI schema."""
    return Response(orjson.dumps(content), media_type="application/json")


async def _audit(request: Request, principal: Principal, endpoint: str, records: list[dict], answers: list[dict], started: float) -> None:
    latency_ms = (time.perf_counter() - started) * 1000
    now = datetime.now(UTC)  # one request, one time
    rows = [
        audit_record(
            a,
            rec,  # the store hashes the patient id and keeps it out of the inputs
            request_id=request.state.request_id,
            client_id=principal.client,
            endpoint=endpoint,
            latency_ms=latency_ms,
            time=now,
        )
        for rec, a in zip(records, answers)
    ]
    try:
        await audit_of(request.app).submit(rows)
    except Exception as exc:
        raise audit_failed(request, exc, len(rows), "no answer was given") from None
    metrics_of(request.app).patients.inc(len(rows))


# The audit step every scoring route shares (the calculator page's too).
audit_answers = _audit


def audit_failed(request: Request, exc: Exception, n: int, what: str) -> HTTPException:
    """The 503 of an answer withheld because its audit record was not written (counted; logged once
    per interval and kind of failure, with the number of repeats)."""
    metrics_of(request.app).audit_failures.inc(n)
    kind = type(exc).__name__
    log_throttle_of(request.app)(
        log, logging.ERROR, ("audit", kind), "audit write failed (request %s): %s", request.state.request_id, kind
    )
    return HTTPException(503, f"the audit trail could not be written; {what}", headers={"Retry-After": "1"})


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["risk"], route_class=StrictJSONRoute)
    BatchRequest = batch_request_model(settings.batch_limit)

    @router.post(
        "/v1/risk",
        response_model=RiskResponse,
        responses={**_ERRORS, 200: openapi_fhir_response()},
        summary="Risk of severe ICANS for one patient, with its SHAP explanation",
    )
    async def risk(body: PatientFeatures, request: Request, principal: Principal = Depends(require("score"))):  # type: ignore[valid-type]
        started = time.perf_counter()
        predictor = served_predictor(model_of(request.app))
        record = body.model_dump()  # type: ignore[attr-defined]
        answer = predictor.predict([record])[0]
        await _audit(request, principal, "/v1/risk", [record], [answer], started)
        answer["request_id"] = request.state.request_id
        answer["notice"] = intended_use(predictor.bundle.outcome)
        if wants_fhir(request.headers.get("accept")):  # content negotiation: the same answer as FHIR
            subject = {"identifier": {"value": record["patient_id"]}} if record.get("patient_id") else None
            resource = risk_assessment(
                answer, record, outcome=predictor.bundle.outcome, request_id=request.state.request_id, subject=subject
            )
            return JSONResponse(resource, media_type=FHIR_JSON)
        return _json(answer)

    @router.post(
        "/v1/risk/batch",
        response_model=BatchResult,
        responses=_ERRORS,
        summary=f"Risks for up to {settings.batch_limit} patients, in the order given",
    )
    async def risk_batch(body: BatchRequest, request: Request, principal: Principal = Depends(require("score"))):  # type: ignore[valid-type]
        started = time.perf_counter()
        predictor = served_predictor(model_of(request.app))
        records = [p.model_dump() for p in body.patients]  # type: ignore[attr-defined]
        results = await run_in_threadpool(predictor.predict, records)
        await _audit(request, principal, "/v1/risk/batch", records, results, started)
        notice = intended_use(predictor.bundle.outcome)
        for r in results:
            r["request_id"] = request.state.request_id
            r["notice"] = notice
        return _json({"results": results, "request_id": request.state.request_id, "notice": notice})

    @router.post(
        "/v1/risk/explanation",
        response_class=Response,
        responses={
            **_ERRORS,
            200: {
                "description": (
                    "A waterfall of the answer's exact SHAP explanation: from the average patient's "
                    "log-odds, each input's contribution (with its value and unit) to this patient's "
                    "log-odds, with the probability scale and the risk-group thresholds marked. "
                    "SVG by default (`Accept: image/svg+xml`), PNG with `Accept: image/png`. The "
                    "figure never shows the patient_id; the request is audited like POST /v1/risk."
                ),
                "content": {"image/svg+xml": {"schema": {"type": "string"}},
                            "image/png": {"schema": {"type": "string", "format": "binary"}}},
            },
            406: {"model": ErrorResponse, "description": "Accept names neither image/svg+xml nor image/png"},
        },
        summary="One patient's explanation as a picture (SVG or PNG)",
    )
    async def risk_explanation(body: PatientFeatures, request: Request, principal: Principal = Depends(require("score"))):  # type: ignore[valid-type]
        fmt = image_format(request.headers.get("accept"))
        if fmt is None:
            raise HTTPException(406, "this endpoint answers image/svg+xml or image/png")
        started = time.perf_counter()
        predictor = served_predictor(model_of(request.app))
        record = body.model_dump()  # type: ignore[attr-defined]
        answer = predictor.predict([record])[0]
        await _audit(request, principal, "/v1/risk/explanation", [record], [answer], started)
        b = predictor.bundle
        outcome = outcome_of(b.outcome).label
        # drawing takes tens of milliseconds: off the event loop; from the answer, never the record
        image = await run_in_threadpool(
            waterfall.render, answer, fmt, (b.low_threshold, b.high_threshold), outcome
        )
        return Response(image, media_type=waterfall.FORMATS[fmt], headers={"Cache-Control": "no-store"})

    return router


def image_format(accept: str | None) -> str | None:
    """"svg" or "png" from an Accept header (q-values honoured; no header, */* or image/* is SVG)."""
    if not accept or not accept.strip():
        return "svg"
    offers = {"image/svg+xml": "svg", "image/png": "png", "image/*": "svg", "*/*": "svg"}
    best, best_q = None, 0.0
    for i, (media, q) in enumerate(media_ranges(accept)):
        fmt = offers.get(media.lower())
        # an exact type beats a wildcard of the same q
        rank = q - (0.0005 if "*" in media else 0.0) - i * 1e-6
        if fmt and q > 0 and rank > best_q:
            best, best_q = fmt, rank
    return best
