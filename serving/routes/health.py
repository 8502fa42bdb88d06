"""Liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.deps import ModelStateDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="A model is loaded and the audit store can be written (503 otherwise, with the reason)",
    responses={503: {"description": "No model loaded yet, or the audit store cannot be written; `reason` says why"}},
)
def readyz(request: Request, state: ModelStateDep, settings: SettingsDep) -> JSONResponse:
    body: dict[str, Any] = {
        "status": state.status,
        "attempts": state.attempts,
        "auth": settings.auth,
    }
    if settings.auth == "off":
        body["warning"] = "authentication is off (development mode)"
    if state.last_reload:
        body["last_reload"] = state.last_reload
    audit = getattr(request.app.state, "audit", None)  # not a dependency: absent until the lifespan starts it
    audit_reason = audit.reason if audit is not None else None
    if state.ready:
        p = state.predictor
        assert p is not None  # ready: a model is loaded
        body.update(model={"name": p.model.name, "version": p.model.version, "run_id": p.model.run_id})
        if p.ungated:
            body["model"]["ungated"] = True
            body["warning"] = "; ".join(filter(None, [body.get("warning"), p.gate_warning]))
        if audit_reason is None:
            return JSONResponse(body)
    elif state.error:
        body["reason"] = state.error
    if audit_reason is not None:  # every scoring request would get 503: take no traffic
        body["status"] = "audit_store_unavailable"
        body["reason"] = "; ".join(filter(None, [body.get("reason"), f"{audit_reason}: scoring answers 503 until it can"]))
    return JSONResponse(body, status_code=503)
