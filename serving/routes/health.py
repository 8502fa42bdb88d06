"""Liveness and readiness."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from serving.deps import ModelStateDep, SettingsDep

router = APIRouter(tags=["health"])

# The probes are unauthenticated: they name the kind of failure, never an error's own text (which can
# carry SQL, parameters, hosts or paths); the service log has the whole message.
_OWN_WORDS = frozenset({"ModelNotFound"})  # exceptions whose text this service writes itself
_KIND = re.compile(r"([A-Za-z_][A-Za-z0-9_.]{0,79}):")


def public_reason(error: str | None) -> str:
    """'<ExceptionType>: ...' -> a short reason naming the type, for an unauthenticated caller."""
    if not error:
        return "unknown"
    lead = "the new model was refused" if error.startswith("new model refused") else (
        "the registry is unreachable or the model missing" if error.startswith("registry unreachable") else
        "the model could not be loaded"
    )
    tail = error.split(": ", 1)[1] if lead != "the model could not be loaded" and ": " in error else error
    kind = _KIND.match(tail)
    if kind and kind.group(1).rsplit(".", 1)[-1] in _OWN_WORDS:  # our own message: the configured URI, no internals
        return f"{lead}: {tail.split(': ', 1)[1][:200]}"
    return f"{lead} ({kind.group(1).rsplit('.', 1)[-1] if kind else 'error'}); the service log has the details"



@router.get("/healthz", summary="The process is alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="A model is loaded and the audit store can be written (503 otherwise, with the reason)",
    responses={503: {"description": "No model loaded yet, or the audit store cannot be written; `reason` says why"}},
)
async def readyz(request: Request, state: ModelStateDep, settings: SettingsDep) -> JSONResponse:
    body: dict[str, Any] = {
        "status": state.status,
        "attempts": state.attempts,
        "auth": settings.auth,
    }
    if settings.auth == "off":
        body["warning"] = "authentication is off (development mode)"
    if state.last_reload:  # the result and when; the reason's text is for the log and the admin route
        body["last_reload"] = {k: v for k, v in state.last_reload.items() if k != "reason"}
        if state.last_reload.get("result") == "failed":
            body["last_reload"]["reason"] = public_reason(state.last_reload.get("reason"))
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
        body["reason"] = public_reason(state.error)
        if state.status == "loading":
            body["reason"] = f"loading the model (attempt {state.attempts}); the last attempt failed: {body['reason']}"
    else:  # no failure yet: what it is doing (a `reason` is a failure's)
        body["detail"] = f"loading the model (attempt {state.attempts})" if state.attempts else "starting"
    if audit_reason is not None:  # every scoring request would get 503: take no traffic
        body["status"] = "audit_store_unavailable"
        body["reason"] = "; ".join(filter(None, [body.get("reason"), f"{audit_reason}: scoring answers 503 until it can"]))
    return JSONResponse(body, status_code=503)
