"""CDS Hooks 2.0: discovery, the `icans-risk` service on `patient-view`, and its feedback endpoint.

The service builds one contract record from the prefetched FHIR resources (serving/fhir/mapping.py),
validates it with the same `PatientFeatures` model as `POST /v1/risk`, scores it with the app's
predictor, writes the audit record (request_id = the card's uuid, endpoint
"/cds-services/icans-risk") and answers one card. Missing required data that cannot be fetched:
412 with the list of what is missing and why.

Wiring (serving/app.py): `app.include_router(cds_hooks.build_router(settings))`.
The request and response models are in serving/cds_schemas.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from core.contract import INTENDED_USE
from core.settings import Settings
from serving.auth import Principal
from serving.cds_auth import require_cds_client
from serving.routes import explanation_page
from serving.audit_rows import audit_record
from serving.cds_schemas import (
    CdsRequest,
    CdsResponse,
    Discovery,
    FeedbackRequest,
    FeedbackStored,
    PreconditionFailed,
)
from serving.deps import (
    LogThrottleDep,
    ModelStateDep,
    SettingsDep,
    StoreDep,
    audit_of,
    metrics_of,
    served_predictor,
    settings_of,
)
from serving.jsonbody import DuplicateKey, NoDuplicateKeysRoute, duplicate_error, parse_no_duplicates
from serving.observability import LogThrottle
from serving.routes.risk import audit_failed
from serving.schemas import ErrorResponse, PatientFeatures
from serving.store import Store

log = logging.getLogger("icans_risk.serving")

SERVICE_ID = "icans-risk"
DISCOVERY_PATH = "/cds-services"
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"
MODEL_CARD_PATH = "/v1/model/card"


_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Not a valid CDS Hooks request or invalid FHIR in the prefetch"},
    401: {"model": ErrorResponse, "description": "Missing, invalid, expired or replayed CDS client JWT"},
    422: {"model": ErrorResponse, "description": "The mapped record breaks the data contract (field and rule)"},
    503: {"model": ErrorResponse},
}


# --------------------------------------------------------------------------------------------------


def _service_description(settings: Settings) -> dict[str, Any]:
    from serving.fhir.mapping import prefetch_templates

    return {
        "hook": "patient-view",
        "id": SERVICE_ID,
        "title": "Risk of severe ICANS after CAR T-cell therapy (research use only)",
        "description": (
            "Estimated probability of severe immune effector cell-associated neurotoxicity syndrome "
            "(ICANS, ASTCT grade >= 3) after CAR T-cell therapy for B-cell acute lymphoblastic "
            "leukaemia, from baseline data before lymphodepletion, with the factors that drive it. "
            + INTENDED_USE
        ),
        "prefetch": prefetch_templates(settings.cds_extra_codes),
    }


def _base_url(settings: Settings, request: Request) -> str:
    configured = settings.cds_service_url
    return (configured or str(request.base_url)).rstrip("/")


async def _prefetch_data(body: CdsRequest, settings: Settings, request: Request) -> tuple[dict[str, Any], list[str]]:
    """Received prefetch keys, completed from the FHIR server where allowed. Returns (data, notes).

    The fetching runs on the app's fetch threads (not the pool that answers other requests, so
    /healthz, /readyz and the plain API never wait behind a slow FHIR server) under one deadline
    for the whole call; when it passes, the read under way is cut and what was fetched is used."""
    from serving.fhir import fetch
    from serving.fhir.mapping import is_unsatisfied, prefetch_templates

    templates = prefetch_templates(settings.cds_extra_codes)
    received = dict(body.prefetch or {})
    data = {k: v for k, v in received.items() if k in templates and not is_unsatisfied(v)}
    notes: list[str] = []
    unsatisfied = [k for k in templates if k not in data]
    if not unsatisfied or body.fhirServer is None or body.fhirAuthorization is None:
        return data, notes
    base = fetch.allowed_base(
        body.fhirServer, settings.cds_fhir_server_allowlist, development=settings.env == "development"
    )
    if base is None:
        return data, notes
    queries = {k: fetch.render(templates[k], body.context.patientId) for k in unsatisfied}
    budget = fetch.Budget.from_settings(settings)
    loop = asyncio.get_running_loop()
    stop = loop.call_later(budget.deadline_s, budget.abort)
    job = fetch_pool(request.app).submit(fetch.fetch_all, base, queries, body.fhirAuthorization.access_token, budget)
    try:
        # the deadline aborts the fetch; the grace is for the thread to notice and return its results
        fetched, failed = await asyncio.wait_for(asyncio.wrap_future(job), budget.deadline_s + 2.0)
    except TimeoutError:  # still queued behind other calls' fetches, or stuck past the abort
        budget.abort()
        job.cancel()
        fetched, failed = {}, {k: "the call's fetch deadline passed" for k in queries}
    finally:
        stop.cancel()
    data.update(fetched)
    if failed:
        log.warning(
            "CDS fetch (request %s): %d of %d keys not fetched (%s)",
            request.state.request_id, len(failed), len(queries),
            "; ".join(f"{k}: {why}" for k, why in sorted(failed.items())),
        )
    notes += [f"'{key}' could not be fetched from the FHIR server" for key in failed]
    return data, notes


def fetch_pool(app: Any) -> ThreadPoolExecutor:
    """The app's threads for CDS fetches (ICANS_CDS_FETCH_WORKERS), made on first use."""
    pool = getattr(app.state, "cds_fetch_pool", None)
    if pool is None:
        with _pool_lock:
            pool = getattr(app.state, "cds_fetch_pool", None)
            if pool is None:
                pool = ThreadPoolExecutor(settings_of(app).cds_fetch_workers, thread_name_prefix="cds-fetch")
                app.state.cds_fetch_pool = pool
    return pool


_pool_lock = threading.Lock()


def check_settings(settings: Settings) -> None:
    """Refuse a malformed site code table at start-up (not on the first patient); warn on unusable issuer keys."""
    from serving.cds_auth import load_keys
    from serving.fhir.codes import FLAGS, LAB_FEATURES, parse_token

    for name, tokens in settings.cds_extra_codes.items():
        if name not in LAB_FEATURES and name not in FLAGS:
            raise ValueError(
                f"ICANS_CDS_EXTRA_CODES: unknown key {name!r} (a laboratory feature or one of {', '.join(FLAGS)})"
            )
        for token in tokens:
            parse_token(token)
    for iss, source in settings.cds_issuers.items():
        try:
            load_keys(source)
        except Exception as exc:  # reported, not fatal: the plain API keeps serving
            log.error("ICANS_CDS_ISSUERS[%s]: the keys cannot be loaded (%s); its tokens will be refused", iss, exc)
    if settings.env == "production" and settings.cds_service_url and not settings.cds_service_url.startswith("https://"):
        raise ValueError("ICANS_CDS_SERVICE_URL must be an https:// URL outside development (CDS Hooks requires TLS)")
    if settings.auth == "on" and not settings.cds_service_url:
        log.warning("ICANS_CDS_SERVICE_URL is not set: the CDS Hooks endpoints answer 503 until it is")


def build_router(settings: Settings) -> APIRouter:
    check_settings(settings)
    router = APIRouter(tags=["cds-hooks"], route_class=NoDuplicateKeysRoute)

    @router.get(
        DISCOVERY_PATH,
        response_model=None,
        summary="CDS Hooks discovery: the icans-risk service on patient-view, with its prefetch templates",
        responses={200: {"model": Discovery}, 401: _ERRORS[401], 503: _ERRORS[503]},
    )
    def discovery(settings: SettingsDep, principal: Principal = Depends(require_cds_client(DISCOVERY_PATH))) -> dict:
        return {"services": [_service_description(settings)]}

    @router.post(
        SERVICE_PATH,
        response_model=None,
        summary="Risk of severe ICANS as a CDS Hooks card, from prefetched FHIR resources",
        responses={
            200: {"model": CdsResponse},
            **_ERRORS,
            412: {"model": PreconditionFailed, "description": "Required data missing and not fetchable"},
        },
    )
    async def icans_risk(
        body: CdsRequest,
        request: Request,
        s: SettingsDep,
        model: ModelStateDep,
        principal: Principal = Depends(require_cds_client(SERVICE_PATH)),
    ) -> Any:
        started = time.perf_counter()
        if body.hook != "patient-view":
            raise HTTPException(400, "this service answers the patient-view hook only")
        predictor = served_predictor(model)
        data, fetch_notes = await _prefetch_data(body, s, request)
        return await run_in_threadpool(_answer, body, request, s, principal, predictor, data, fetch_notes, started)

    @router.post(
        FEEDBACK_PATH,
        response_model=None,
        summary="CDS Hooks feedback: accepted / overridden outcomes of icans-risk cards",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/FeedbackRequest"}}},
            }
        },
        responses={
            200: {"model": FeedbackStored},
            400: _ERRORS[400],
            401: _ERRORS[401],
            404: {"model": ErrorResponse, "description": "A card uuid this service never returned (to this client)"},
            503: _ERRORS[503],
        },
    )
    async def feedback(
        request: Request,
        store: StoreDep,
        settings: SettingsDep,
        throttle: LogThrottleDep,
        principal: Principal = Depends(require_cds_client(FEEDBACK_PATH, SERVICE_PATH)),
    ) -> dict:
        from serving.errors import sanitize_errors

        raw = await request.body()
        try:
            doc = parse_no_duplicates(raw)
        except DuplicateKey as exc:
            return duplicate_error(exc, request)  # type: ignore[return-value]
        except (ValueError, RecursionError):
            doc = raw  # not JSON: pydantic names the error as before
        try:
            body = (
                FeedbackRequest.model_validate_json(doc) if isinstance(doc, bytes)
                else FeedbackRequest.model_validate(doc)
            )
        except ValidationError as exc:
            return JSONResponse(  # type: ignore[return-value]
                status_code=400,
                content={"detail": sanitize_errors(exc.errors()), "request_id": request.state.request_id},
            )
        return await run_in_threadpool(_store_feedback, request, store, settings, throttle, principal, body)

    return router


def _answer(
    body: CdsRequest,
    request: Request,
    s: Settings,
    principal: Principal,
    predictor: Any,
    data: dict[str, Any],
    fetch_notes: list[str],
    started: float,
) -> Any:
    """Map, validate, score, audit and build the card (on the request thread pool: CPU and the store)."""
    from serving.errors import sanitize_errors
    from serving.fhir.card import card as build_card
    from serving.fhir.mapping import PrefetchError, map_prefetch
    from serving.fhir.resources import prune

    try:
        mapped = map_prefetch(
            body.context.patientId,
            data,
            window_days=s.cds_baseline_window_days,
            ld_window_days=s.cds_lymphodepletion_window_days,
            extra_codes=s.cds_extra_codes,
        )
    except PrefetchError as exc:
        raise HTTPException(400, str(exc)) from None
    if mapped.missing:
        return JSONResponse(
            status_code=412,
            content={
                "detail": "required data are missing from the prefetch and could not be fetched",
                "missing": [m.as_dict() for m in mapped.missing],
                "request_id": request.state.request_id,
            },
        )
    try:
        features = PatientFeatures.model_validate(mapped.record)
    except ValidationError as exc:
        return JSONResponse(
            status_code=422,
            content={"detail": sanitize_errors(exc.errors()), "request_id": request.state.request_id},
        )
    record = features.model_dump()
    record.pop("patient_id", None)
    answer = predictor.predict([record])[0]
    card_uuid = str(uuid.uuid4())
    _audit_card(request, principal, card_uuid, body.context.patientId, record, answer, started)
    b = predictor.bundle
    card = build_card(
        answer,
        outcome=b.outcome,
        card_uuid=card_uuid,
        source_url=_base_url(s, request) + MODEL_CARD_PATH,
        thresholds=(float(b.low_threshold), float(b.high_threshold)),
        sources=mapped.sources,
        notes=mapped.notes + fetch_notes,
        window=(mapped.window_start, mapped.anchor),
    )
    # the card's picture: a page of this service, linked by the card's uuid and a signed, expiring token
    card["links"] = [{
        "label": "Why this estimate (picture of the explanation)",
        "url": explanation_page.link(request.app, _base_url(s, request), card_uuid),
        "type": "absolute",
    }]
    return {"cards": [prune(card)]}



def _store_feedback(
    request: Request, store: Store, settings: Settings, throttle: LogThrottle, principal: Principal,
    body: FeedbackRequest,
) -> dict:
    from serving.store import FeedbackRecord

    auth_on = settings.auth != "off"
    records = []
    seen: set[tuple[str, str]] = set()
    stored_before: dict[str, set[str]] = {}
    duplicates = 0
    now = datetime.now(UTC)
    for i, entry in enumerate(body.feedback):
        card_uuid = entry.card.lower()
        row = store.card_audit(card_uuid)
        # A client sees only its own cards: another client's card is as unknown as a made-up one.
        if row is None or (auth_on and row["client_id"] != principal.client):
            raise HTTPException(404, "unknown card: this service never returned it to this client")
        when = entry.outcomeTimestamp
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        shown = _aware(row["time"])
        if not shown - FEEDBACK_CLOCK_SKEW <= when <= now + FEEDBACK_CLOCK_SKEW:
            raise HTTPException(
                400,
                f"feedback.{i}.outcomeTimestamp: must lie between the card's time and now "
                f"(within {int(FEEDBACK_CLOCK_SKEW.total_seconds() // 60)} minutes of clock skew)",
            )
        # One entry per card and outcome: a repeat (in this body or already stored) is acknowledged, not stored.
        if card_uuid not in stored_before:
            stored_before[card_uuid] = {f["outcome"] for f in store.feedback_for(card_uuid)}
        if (card_uuid, entry.outcome) in seen or entry.outcome in stored_before[card_uuid]:
            duplicates += 1
            continue
        seen.add((card_uuid, entry.outcome))
        reason = entry.overrideReason
        records.append(
            FeedbackRecord(
                card_uuid=card_uuid,
                outcome=entry.outcome,
                outcome_timestamp=when,
                override_reason=reason.reason.model_dump(exclude_none=True) if reason and reason.reason else None,
                user_comment=reason.userComment if reason else None,
                accepted_suggestions=[s.id for s in entry.acceptedSuggestions] if entry.acceptedSuggestions else None,
                client_id=principal.client,
            )
        )
    try:
        n = store.record_feedback_many(records)
    except Exception as exc:
        kind = type(exc).__name__
        throttle(
            log, logging.ERROR, ("feedback", kind), "feedback write failed (request %s): %s", request.state.request_id, kind
        )
        raise HTTPException(503, "the feedback could not be stored") from None
    return {"stored": n, "duplicates": duplicates, "request_id": request.state.request_id}


FEEDBACK_CLOCK_SKEW = timedelta(minutes=5)


def _aware(t: Any) -> datetime:
    if isinstance(t, str):
        t = datetime.fromisoformat(t)
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _audit_card(
    request: Request,
    principal: Principal,
    card_uuid: str,
    patient_id: str,
    record: dict[str, Any],
    answer: dict[str, Any],
    started: float,
) -> None:
    """The card's audit record (request_id = card uuid); 503 and no card if it cannot be written."""
    row = audit_record(
        answer,
        record,
        request_id=card_uuid,
        client_id=principal.client,
        endpoint=SERVICE_PATH,
        latency_ms=(time.perf_counter() - started) * 1000,
        patient_id=patient_id,
    )
    try:
        audit_of(request.app).write([row])
    except Exception as exc:
        raise audit_failed(request, exc, 1, "no card was given") from None
    metrics_of(request.app).patients.inc()
