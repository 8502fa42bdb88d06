"""The FastAPI app factory. Configuration is read here, when the app starts, never at import."""

from __future__ import annotations

import logging
import re
import uuid
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline.contract import INTENDED_USE
from pipeline.settings import Settings, get_settings
from serving.routes import health, model, risk
from serving.state import ModelState, load_in_background, load_predictor

log = logging.getLogger("icans_risk.serving")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}$")

DESCRIPTION = f"""
Predicts the probability of severe immune effector cell-associated neurotoxicity syndrome
(ICANS, ASTCT grade >= 3) after CAR T-cell therapy for B-cell acute lymphoblastic leukaemia,
from baseline features measured before lymphodepletion, with an exact SHAP explanation of every
answer and the model version that computed it.

**{INTENDED_USE}**
"""


def create_app(settings: Settings | None = None, loader=load_predictor) -> FastAPI:
    settings = settings or get_settings()
    state = ModelState()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.loader_thread = load_in_background(state, settings, loader)
        yield

    app = FastAPI(
        title="icans-risk",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.model = state

    @app.middleware("http")
    async def request_id(request: Request, call_next):
        rid = request.headers.get("x-request-id", "")
        request.state.request_id = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": sanitize_errors(exc.errors()), "request_id": _rid(request)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            status_code=exc.status_code,
            content={"detail": exc.detail, "request_id": _rid(request)},
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error (request %s)", _rid(request))
        return JSONResponse(
            status_code=500,
            content={"detail": "internal error; the request id identifies it in the logs", "request_id": _rid(request)},
        )

    app.include_router(health.router)
    app.include_router(risk.build_router(settings))
    app.include_router(model.router)
    return app


def _rid(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def sanitize_errors(errors: Any) -> list[dict[str, str]]:
    """Field and rule only: the submitted value is never echoed back."""
    out = []
    for e in errors:
        loc = [str(p) for p in e.get("loc", ()) if p not in ("body",)]
        field = ".".join(loc) or "body"
        etype = e.get("type", "invalid")
        if etype == "json_invalid":
            rule = "the body is not valid JSON"
        elif etype == "extra_forbidden":
            rule = "unknown field (not in the data contract)"
        elif etype == "missing":
            rule = "required field is missing"
        else:
            rule = e.get("msg", "invalid value")
        out.append({"field": field, "rule": rule, "type": etype})
    return out
