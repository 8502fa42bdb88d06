"""`POST /v1/outcomes`: what happened to a patient scored earlier, for monitoring (scope `outcomes`)."""

from __future__ import annotations

import logging
from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from serving.auth import Principal, require
from serving.schemas import ErrorResponse

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


router = APIRouter()


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
async def post_outcome(body: OutcomeRequest, request: Request,
                       principal: Annotated[Principal, Depends(require("outcomes"))]) -> JSONResponse:
    from serving.outcomes import OutcomeConflict, OutcomeRecord, UnknownTarget, record_outcome

    rec = OutcomeRecord(**body.model_dump(), client_id=principal.client)
    try:
        row, created = await run_in_threadpool(record_outcome, request.app.state.store, rec)
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
