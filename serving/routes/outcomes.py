"""`POST /v1/outcomes`: what happened to a patient scored earlier, for monitoring (scope `outcomes`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Coroutine
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from serving.auth import Principal, require
from serving.deps import StoreDep
from serving.schemas import ErrorResponse
from serving.store import Store

log = logging.getLogger("icans_risk.serving")
_ID = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class OutcomeRequest(BaseModel):
    """One observed outcome. Severe ICANS, the model's outcome, is ASTCT grade >= 3."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "outcome_id": "registry-2026-0001", "request_id": "6f1c2a9e4b7d4e0f8a1b2c3d4e5f6a7b",
        "icans_max_grade": 3, "observed_on": "2026-03-01", "source": "CIBMTR form 4100"}]})

    outcome_id: str = Field(pattern=_ID, description="the client's id of this report: a retry with the same id "
                            "and content is answered 200 and stored once")
    request_id: str | None = Field(default=None, pattern=_ID, description="the `request_id` of the answer")
    patient_id: str | None = Field(default=None, min_length=1, max_length=128,
                                   description="the patient id sent with the answer (hashed, never stored)")
    icans_max_grade: int | None = Field(default=None, ge=0, le=4, strict=True,
                                        description="maximum ASTCT ICANS grade, 0-4 (severe: >= 3)")
    severe_crs: bool | None = Field(default=None, strict=True, description="ASTCT CRS grade >= 3")
    observed_on: date = Field(description="the day the outcome was known")
    source: str = Field(min_length=1, max_length=200, description="where it comes from (form, registry)")
    corrects: str | None = Field(default=None, pattern=_ID, description="the outcome_id this report corrects")

    @field_validator("observed_on")
    @classmethod
    def _plausible(cls, value: date) -> date:
        from serving.outcomes import check_observed_on

        check_observed_on(value)
        return value

    @model_validator(mode="after")
    def _complete(self) -> "OutcomeRequest":
        if self.request_id is None and self.patient_id is None:
            raise ValueError("request_id or patient_id is required")
        if self.icans_max_grade is None and self.severe_crs is None:
            raise ValueError("icans_max_grade or severe_crs is required")
        return self


class OutcomeAnswer(BaseModel):
    outcome_id: str
    created: bool = Field(description="false when this report was already stored (an idempotent retry)")
    request_id: str | None = None


class DuplicateKey(ValueError):
    """A JSON object names a key twice; the message names a known field, else the key's position."""


# names an error may echo: OutcomeRequest's fields and the Observation elements read below
_KNOWN_KEYS = frozenset({*OutcomeRequest.model_fields, "resourceType", "status", "identifier", "focus", "subject",
                         "code", "coding", "system", "value", "valueInteger", "valueBoolean", "effectiveDateTime",
                         "issued", "meta", "source", "performer", "display", "extension", "id"})


def strict_loads(raw: bytes) -> Any:
    """JSON with duplicate keys refused (last-wins would let a proxy and this service read two
    different outcomes from one body). Raises DuplicateKey, or ValueError for malformed JSON."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for position, (key, _) in enumerate(pairs, 1):
            if key in seen:
                raise DuplicateKey(key if key in _KNOWN_KEYS else f"<field {position}>")
            seen.add(key)
        return dict(pairs)

    return json.loads(raw, object_pairs_hook=hook)


def _duplicate(request: Request, exc: DuplicateKey) -> JSONResponse:
    return JSONResponse({"detail": [{"field": str(exc), "rule": "duplicate field (given more than once)",
                                     "type": "duplicate_field"}], "request_id": request.state.request_id},
                        status_code=422)


class StrictOutcomeRoute(APIRoute):
    """The JSON body parsed by `strict_loads` before FastAPI validates it (as the scoring routes do)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            body = await request.body()
            if body:
                try:
                    request._json = strict_loads(body)
                except DuplicateKey as exc:
                    return _duplicate(request, exc)
                except (ValueError, RecursionError):  # not JSON: FastAPI (or the route) answers it as always
                    pass
            return await handler(request)

        return strict


router = APIRouter(route_class=StrictOutcomeRoute)

# LOINC has no code for the ASTCT ICANS grade or for "CRS grade >= 3" (the ASTCT consensus grades
# are not in LOINC or SNOMED CT as observables), so an outcome Observation carries the service's own
# code system, the one it already uses for IL-15: `urn:icans-risk:codes|icans-max-grade` with
# valueInteger 0-4, or `urn:icans-risk:codes|severe-crs` with valueBoolean. A site that has its own
# code maps it to these.
LOCAL_CODES = "urn:icans-risk:codes"
ICANS_GRADE_CODE, SEVERE_CRS_CODE = "icans-max-grade", "severe-crs"


# FHIR R4 ObservationStatus: only a result that stands is an outcome (not registered, preliminary,
# cancelled, entered-in-error or unknown). Any other code is not named back (it is not FHIR's).
OBSERVATION_STATUSES = frozenset({"registered", "preliminary", "final", "amended", "corrected", "cancelled",
                                  "entered-in-error", "unknown"})
ACCEPTED_STATUSES = frozenset({"final", "amended", "corrected"})


class FhirOutcomeError(ValueError):
    """Names the FHIR element and the rule, never the value."""


def observation_to_outcome(obs: Any) -> dict[str, Any]:
    """An outcome Observation as the fields of `OutcomeRequest`.

    identifier[0].value -> outcome_id; focus.identifier (system urn:icans-risk:request-id) -> request_id
    (the RiskAssessment's identifier); subject.identifier.value -> patient_id; code -> which outcome;
    valueInteger / valueBoolean -> its value; effectiveDateTime (or issued) -> observed_on;
    meta.source or performer[0].display -> source; an identifier of a corrected Observation in
    `extension` is not read: a correction is sent to POST /v1/outcomes with `corrects`."""
    from serving.fhir.resources import REQUEST_ID_SYSTEM

    if not isinstance(obs, dict) or obs.get("resourceType") != "Observation":
        raise FhirOutcomeError("resourceType: must be Observation")
    status = obs.get("status")
    if status is None:
        raise FhirOutcomeError("status: required (final, amended or corrected)")
    if not (isinstance(status, str) and status in ACCEPTED_STATUSES):
        named = f"'{status}'" if isinstance(status, str) and status in OBSERVATION_STATUSES else "this status"
        raise FhirOutcomeError(f"status: {named} is not accepted; an outcome must be final, amended or corrected")
    out: dict[str, Any] = {}
    ids = obs.get("identifier") or []
    if not (isinstance(ids, list) and ids and isinstance(ids[0], dict) and ids[0].get("value")):
        raise FhirOutcomeError("identifier[0].value: required (the id of this report, for idempotency)")
    out["outcome_id"] = ids[0]["value"]
    focus = obs.get("focus") or []
    for ref in focus if isinstance(focus, list) else []:
        ident = (ref or {}).get("identifier") if isinstance(ref, dict) else None
        if isinstance(ident, dict) and ident.get("system") == REQUEST_ID_SYSTEM and ident.get("value"):
            out["request_id"] = ident["value"]
    subject = obs.get("subject")
    if isinstance(subject, dict) and isinstance(subject.get("identifier"), dict) and subject["identifier"].get("value"):
        out["patient_id"] = subject["identifier"]["value"]
    codings = ((obs.get("code") or {}).get("coding") or []) if isinstance(obs.get("code"), dict) else []
    codes = {(c.get("system"), c.get("code")) for c in codings if isinstance(c, dict)}
    if (LOCAL_CODES, ICANS_GRADE_CODE) in codes:
        if "valueInteger" not in obs:
            raise FhirOutcomeError("valueInteger: required for the ICANS grade (0-4)")
        out["icans_max_grade"] = obs["valueInteger"]
    elif (LOCAL_CODES, SEVERE_CRS_CODE) in codes:
        if "valueBoolean" not in obs:
            raise FhirOutcomeError("valueBoolean: required for severe CRS")
        out["severe_crs"] = obs["valueBoolean"]
    else:
        raise FhirOutcomeError(f"code.coding: must include {LOCAL_CODES}|{ICANS_GRADE_CODE} or "
                               f"{LOCAL_CODES}|{SEVERE_CRS_CODE}")
    when = obs.get("effectiveDateTime") or obs.get("issued")
    if not isinstance(when, str) or len(when) < 10:
        raise FhirOutcomeError("effectiveDateTime: required (the day the outcome was known)")
    out["observed_on"] = when[:10]
    performer = obs.get("performer") or []
    source = (obs.get("meta") or {}).get("source") if isinstance(obs.get("meta"), dict) else None
    if not source and isinstance(performer, list) and performer and isinstance(performer[0], dict):
        source = performer[0].get("display")
    out["source"] = source or "FHIR Observation"
    return out


@router.post(
    "/v1/outcomes",
    summary="Record the observed outcome of an earlier answer (append-only, idempotent on outcome_id)",
    status_code=201,
    response_model=OutcomeAnswer,
    responses={200: {"model": OutcomeAnswer, "description": "Already stored (a retry)"},
               400: {"model": ErrorResponse, "description": "The body could not be read (e.g. not UTF-8)"},
               413: {"model": ErrorResponse, "description": "The body is larger than ICANS_MAX_BODY_BYTES"},
               401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
               404: {"model": ErrorResponse, "description": "No audited answer (or earlier outcome) matches"},
               409: {"model": ErrorResponse, "description": "outcome_id already used for another outcome"},
               422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def post_outcome(body: OutcomeRequest, store: StoreDep,
                       principal: Annotated[Principal, Depends(require("outcomes"))]) -> JSONResponse:
    return await _record(body, store, principal)


@router.post(
    "/v1/outcomes/fhir",
    summary="Record an outcome sent as a FHIR R4 Observation (ICANS grade or severe CRS; see the description)",
    description=observation_to_outcome.__doc__ or "",
    status_code=201,
    response_model=OutcomeAnswer,
    openapi_extra={"requestBody": {"required": True, "content": {"application/fhir+json": {"schema": {
        "type": "object", "description": "a FHIR R4 Observation"}}, "application/json": {"schema": {
        "type": "object", "description": "a FHIR R4 Observation"}}}}},
    responses={200: {"model": OutcomeAnswer, "description": "Already stored (a retry)"},
               400: {"model": ErrorResponse, "description": "The body could not be read (e.g. not UTF-8)"},
               401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
               404: {"model": ErrorResponse, "description": "No audited answer (or earlier outcome) matches"},
               409: {"model": ErrorResponse, "description": "outcome_id already used for another outcome"},
               413: {"model": ErrorResponse, "description": "The body is larger than ICANS_MAX_BODY_BYTES"},
               422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def post_outcome_fhir(request: Request, store: StoreDep,
                            principal: Annotated[Principal, Depends(require("outcomes"))]) -> JSONResponse:
    from pydantic import ValidationError

    from serving.errors import sanitize_errors

    raw = await request.body()
    try:
        obs = strict_loads(raw)
    except DuplicateKey as exc:
        return _duplicate(request, exc)
    except (ValueError, RecursionError):
        return JSONResponse({"detail": [{"field": "body", "rule": "the body is not valid JSON", "type": "json_invalid"}],
                             "request_id": request.state.request_id}, status_code=400 if _not_utf8(raw) else 422)
    try:
        body = OutcomeRequest(**observation_to_outcome(obs))
    except FhirOutcomeError as exc:
        field, _, rule = str(exc).partition(": ")
        return JSONResponse({"detail": [{"field": field, "rule": rule, "type": "fhir"}],
                             "request_id": request.state.request_id}, status_code=422)
    except ValidationError as exc:
        return JSONResponse({"detail": sanitize_errors(exc.errors()), "request_id": request.state.request_id},
                            status_code=422)
    return await _record(body, store, principal)


def _not_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


async def _record(body: OutcomeRequest, store: Store, principal: Principal) -> JSONResponse:
    from serving.outcomes import OutcomeConflict, OutcomeRecord, UnknownTarget, record_outcome

    rec = OutcomeRecord(**body.model_dump(), client_id=principal.client)
    try:  # only for answers this client received: its name is the owner
        row, created = await run_in_threadpool(lambda: record_outcome(store, rec, owner=principal.client))
    except UnknownTarget as exc:
        raise HTTPException(404, str(exc)) from None
    except OutcomeConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except Exception as exc:  # the store is down: nothing was recorded
        log.error("outcome not recorded: %s", type(exc).__name__)
        raise HTTPException(503, "the outcome store is unavailable; nothing was recorded",
                            headers={"Retry-After": "5"}) from None
    return JSONResponse({"outcome_id": row["outcome_id"], "created": created, "request_id": row["request_id"]},
                        status_code=201 if created else 200)
