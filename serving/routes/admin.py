"""Administration: live model reload and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serving.auth import Principal, require
from serving.deps import LoaderDep, MetricsDep, ModelStateDep, SettingsDep
from serving.schemas import ErrorResponse

router = APIRouter(tags=["admin"])


@router.post(
    "/v1/admin/reload",
    summary="Load the current @champion, verify it and swap it in (admin scope)",
    responses={
        401: {"model": ErrorResponse, "description": "No or an invalid API key"},
        403: {"model": ErrorResponse, "description": "The key lacks the admin scope"},
        413: {"model": ErrorResponse, "description": "The body is larger than ICANS_MAX_BODY_BYTES"},
    },
)
def reload_model(
    state: ModelStateDep, settings: SettingsDep, loader: LoaderDep, principal: Principal = Depends(require("admin"))
) -> dict:
    outcome = state.reload(settings, loader)
    current = state.predictor
    outcome["serving"] = (
        {"name": current.model.name, "version": current.model.version} if current is not None else None
    )
    return outcome


@router.get("/metrics", summary="Prometheus metrics of this process", include_in_schema=False)
def metrics(request: Request, state: ModelStateDep, metrics: MetricsDep) -> Response:
    from serving.routes.model import latest_monitoring

    metrics.set_monitoring(latest_monitoring(request.app, state.predictor))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
