"""Typed FastAPI dependencies: what a request handler may take from the app, by type.

The app factory (serving/app.py) puts one settings object, model state, store, audit writer,
metrics and log throttle on `app.state`; this module is the one place that reads them back for
handlers, so a handler says what it uses in its signature (`settings: SettingsDep`) instead of
reaching into an untyped namespace. Every dependency is `async`: FastAPI runs a plain `def`
dependency in the threadpool, a hop the scoring path avoids (serving/routes/risk.py). Within one
request each is computed once, however many dependants ask for it.

The `*_of(app)` accessors are the same reads without FastAPI, for code outside a handler's
signature: the API-key check and the scoring endpoints (POST /v1/risk*), where each dependency
costs FastAPI ~15 us to resolve (measured: six more would add ~0.1 ms to a request whose server
CPU is ~0.7 ms), the OpenAPI hook, and helpers that are given the app rather than a request.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from core.settings import Settings
from serving.audit import AuditWriter
from serving.observability import LogThrottle, Metrics
from serving.predictor import Predictor
from serving.state import Loader, ModelState
from serving.store import Store


def served_predictor(state: ModelState) -> Predictor:
    """The predictor a request finishes on (taken once, at its start); 503 while none is loaded."""
    predictor = state.predictor
    if predictor is None:
        raise HTTPException(503, "model not loaded yet; see /readyz", headers={"Retry-After": "5"})
    return predictor


# -- the app's state, typed (every read of app.state outside app.py goes through here) ---------


def settings_of(app: Any) -> Settings:
    """The settings the app was created with (not re-read from the environment)."""
    settings: Settings = app.state.settings  # app.state's attributes are Any: the annotation types the read
    return settings


def model_of(app: Any) -> ModelState:
    model: ModelState = app.state.model
    return model


def store_of(app: Any) -> Store:
    store: Store = app.state.store
    return store


def audit_of(app: Any) -> AuditWriter:
    audit: AuditWriter = app.state.audit
    return audit


def metrics_of(app: Any) -> Metrics:
    metrics: Metrics = app.state.metrics
    return metrics


def log_throttle_of(app: Any) -> LogThrottle:
    log_throttle: LogThrottle = app.state.log_throttle
    return log_throttle


def loader_of(app: Any) -> Loader:
    loader: Loader = app.state.loader
    return loader


# -- the same, as FastAPI dependencies ------------------------------------------------------


async def get_settings(request: Request) -> Settings:
    return settings_of(request.app)


async def get_model_state(request: Request) -> ModelState:
    return model_of(request.app)


async def get_predictor(request: Request) -> Predictor:
    return served_predictor(model_of(request.app))


async def get_store(request: Request) -> Store:
    return store_of(request.app)


async def get_audit(request: Request) -> AuditWriter:
    return audit_of(request.app)


async def get_metrics(request: Request) -> Metrics:
    return metrics_of(request.app)


async def get_log_throttle(request: Request) -> LogThrottle:
    return log_throttle_of(request.app)


async def get_loader(request: Request) -> Loader:
    return loader_of(request.app)


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelStateDep = Annotated[ModelState, Depends(get_model_state)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
StoreDep = Annotated[Store, Depends(get_store)]
AuditDep = Annotated[AuditWriter, Depends(get_audit)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
LogThrottleDep = Annotated[LogThrottle, Depends(get_log_throttle)]
LoaderDep = Annotated[Loader, Depends(get_loader)]
