"""Scoring endpoints. `def` routes: the CPU-bound model work runs in the threadpool."""


from fastapi import APIRouter, Request

from pipeline.contract import INTENDED_USE
from pipeline.settings import Settings
from serving.routes.model import current_predictor
from serving.schemas import BatchResult, ErrorResponse, PatientFeatures, RiskResponse, batch_request_model

_ERRORS = {422: {"model": ErrorResponse}, 503: {"model": ErrorResponse}}


def build_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["risk"])
    BatchRequest = batch_request_model(settings.batch_limit)

    @router.post(
        "/v1/risk",
        response_model=RiskResponse,
        responses=_ERRORS,
        summary="Risk of severe ICANS for one patient, with its SHAP explanation",
    )
    def risk(body: PatientFeatures, request: Request):  # type: ignore[valid-type]
        predictor = current_predictor(request)
        answer = predictor.predict([body.model_dump()])[0]  # type: ignore[attr-defined]
        answer["request_id"] = request.state.request_id
        answer["notice"] = INTENDED_USE
        return answer

    @router.post(
        "/v1/risk/batch",
        response_model=BatchResult,
        responses=_ERRORS,
        summary=f"Risks for up to {settings.batch_limit} patients, in the order given",
    )
    def risk_batch(body: BatchRequest, request: Request):  # type: ignore[valid-type]
        predictor = current_predictor(request)
        results = predictor.predict([p.model_dump() for p in body.patients])  # type: ignore[attr-defined]
        for r in results:
            r["request_id"] = request.state.request_id
            r["notice"] = INTENDED_USE
        return {"results": results, "request_id": request.state.request_id, "notice": INTENDED_USE}

    return router
