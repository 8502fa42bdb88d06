"""The FastAPI app factory. Configuration is read here, when the app starts, never at import."""

from __future__ import annotations

import gc
import logging
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.contract import INTENDED_USE
from core.settings import DEV_AUDIT_KEY, Settings, get_settings
from serving.audit import AuditWriter
from serving import docs
from serving.errors import sanitize_errors
from serving.observability import LogThrottle, Metrics, RequestContextMiddleware
from serving.routes import admin, calculator, cds_hooks, explanation_page, health, model, outcomes, risk
from serving.state import ModelState, load_predictor

if TYPE_CHECKING:
    from serving.predictor import Predictor
    from serving.store import Store

log = logging.getLogger("icans_risk.serving")

DESCRIPTION = f"""
Predicts the probability of severe immune effector cell-associated neurotoxicity syndrome
(ICANS, ASTCT grade >= 3) after CAR T-cell therapy for B-cell acute lymphoblastic leukaemia,
from baseline features measured before lymphodepletion, with an exact SHAP explanation of every
answer and the model version that computed it.

**{INTENDED_USE}**
"""


def create_app(settings: Settings | None = None, loader=load_predictor, store=None) -> FastAPI:
    settings = settings or get_settings()
    metrics = Metrics()

    def on_swap(p: Predictor) -> None:
        metrics.set_model(p.model.name, p.model.version, p.model.run_id)
        _freeze_heap()  # the first load imports the model's modules after start-up: freeze them too

    state = ModelState(
        on_swap=on_swap,
        on_reload=lambda result: metrics.reloads.labels(result).inc(),
        on_alias=lambda target, served: metrics.alias_differs.set(0 if target == served else 1),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.auth == "off":
            log.warning("AUTHENTICATION IS OFF (ICANS_AUTH=off): development mode, no API keys checked")
        elif settings.audit_hmac_key.get_secret_value() == DEV_AUDIT_KEY:  # production refuses it (settings)
            log.warning(
                "ICANS_AUDIT_HMAC_KEY is the public development key: anyone can forge explanation links "
                "and patient hashes; set a secret before real patients are seen"
            )
        bound_mlflow_retries(settings)
        app.state.store = store or open_store(settings, timeout_s=settings.store_timeout_s)
        app.state.audit = AuditWriter(
            app.state.store,
            timeout_s=settings.audit_timeout_s,
            store_timeout_s=settings.store_timeout_s,
            probe_interval_s=settings.audit_probe_interval_s,
            on_change=lambda up: metrics.audit_store_up.set(1 if up else 0),
        )
        state.load_in_background(settings, loader)
        if settings.reload_interval_s > 0:
            state.poll_in_background(settings, settings.reload_interval_s, loader)
        _freeze_heap()
        try:
            yield
        finally:
            state.stop()
            app.state.audit.close()
            pool = getattr(app.state, "cds_fetch_pool", None)  # issue 25: the CDS fetch threads
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="icans-risk",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local assets by serving.docs (no CDN)
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.model = state
    app.state.metrics = metrics
    app.state.log_throttle = LogThrottle()
    app.state.loader = loader
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, max_body_bytes=settings.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": sanitize_errors(exc.errors(), getattr(exc, "body", None)), "request_id": _rid(request)},
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
    app.include_router(admin.router)
    app.include_router(outcomes.router)
    app.include_router(cds_hooks.build_router(settings))
    app.include_router(explanation_page.router)
    app.include_router(calculator.router)
    docs.install(app)
    return app


def bound_mlflow_retries(settings: Settings) -> None:
    """MLflow's HTTP timeout and retries for this process, unless set explicitly (issue 25: /readyz
    must name a failing registry within one probe interval, not after MLflow's 4-minute retries)."""
    import os

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", f"{settings.mlflow_http_timeout_s:g}")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(settings.mlflow_http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")


def _freeze_heap() -> None:
    """Move what start-up and a model load allocated out of the garbage collector's view.

    Those objects live as long as the process (or the model); without this every full collection
    walks all of them, a pause that lands in the p99 latency."""
    gc.collect()
    gc.freeze()


def open_store(settings: Settings, sync: Literal["full", "normal"] | None = None, timeout_s: float | None = None) -> Store:
    """The store as the service uses it; `sync` overrides ICANS_AUDIT_SYNC (the admin CLI: "full");
    `timeout_s` bounds every wait for a database lock (the service: ICANS_STORE_TIMEOUT_S)."""
    from serving.store import Store

    store = Store(
        settings.store_url,
        settings.audit_hmac_key.get_secret_value().encode(),
        key_cache_ttl_s=settings.key_cache_ttl_s,
        sync=sync or settings.audit_sync,
        timeout_s=timeout_s,
    )
    store.migrate()
    return store


def _rid(request: Request) -> str | None:
    return request.scope.get("state", {}).get("request_id")
