"""What model is being served, with its evidence."""

from __future__ import annotations

import html

from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, PlainTextResponse

from core.contract import FEATURES, INTENDED_USE
from serving.deps import ModelStateDep, PredictorDep, SettingsDep, store_of
from serving.predictor import Predictor

router = APIRouter(tags=["model"])


@router.get(
    "/v1/model",
    summary="The served model: version, metrics, features, thresholds",
    description=("Metrics keep full precision (the documents round them for people). Each feature's `unit` is "
                 "the contract's unit, or null when the value has none (a category or yes/no)."),
    responses={503: {"description": "No model loaded yet"}},
)
def model_info(request: Request, p: PredictorDep, state: ModelStateDep, settings: SettingsDep) -> dict:
    b = p.bundle
    meta = b.metadata
    return {
        "name": p.model.name,
        "version": p.model.version,
        "run_id": p.model.run_id,
        "outcome": b.outcome,
        "kind": b.kind,
        "trained_at": meta.get("trained_at"),
        # the registry alias as last seen beside this version: "differs" while a promoted version is not
        # yet served (live reload off, or the new version refused on load: see the log)
        "champion_alias": state.alias_status(settings.champion_alias, settings.reload_interval_s > 0),
        "metrics": meta.get("test_metrics", {}),
        "thresholds": {"low": b.low_threshold, "high": b.high_threshold},
        "risk_groups": {
            "low": f"risk < {b.low_threshold}",
            "intermediate": f"{b.low_threshold} <= risk < {b.high_threshold}",
            "high": f"risk >= {b.high_threshold}",
        },
        "calibration": {"intercept": b.calibration_intercept, "slope": b.calibration_slope},
        # how the figures above were estimated (held-out split or repeated cross-validation)
        "validation": meta.get("validation"),
        "quality_gate": meta.get("gate"),
        # the bootstrap models behind every answer's uncertainty interval: MAPE, widths, group changes
        "instability": meta.get("instability"),
        # a local update (make update): method, parent version, local data hash, closed-test statistics
        "update": meta.get("update"),
        # the newest monitoring of this version (make monitor, or ICANS_MONITOR_INTERVAL_S): verdict and figures
        "monitoring": latest_monitoring(request.app, p),
        "features": [
            {
                "name": f.name,
                "type": f.kind,
                "unit": f.unit,
                "required": f.required,
                "allowed": f.range_text,
                "loinc": f.loinc,
                "description": f.description,
                "training_range_p1_p99": b.training_ranges.get(f.name),
            }
            for f in FEATURES
        ],
        "contract_version": b.contract_version,
        "notice": INTENDED_USE,
    }


@router.get(
    "/v1/model/card",
    summary="The served model's model card (HTML, or Markdown with Accept: text/markdown)",
    responses={200: {"content": {"text/html": {}, "text/markdown": {}}}, 404: {}, 503: {}},
)
def model_card(request: Request, p: PredictorDep):
    accept = request.headers.get("accept", "")
    wants_markdown = "text/markdown" in accept and "text/html" not in accept.split("text/markdown")[0]
    name = "model_card.md" if wants_markdown else "model_card.html"
    document = p.bundle.documents.get(name)
    if document is None:
        raise HTTPException(404, "this model version was registered without a model card; retrain it")
    # the card is written before the registry numbers its version: the service says which it is
    served = (f"This card describes {p.model.name} registered version {p.model.version} "
              f"(MLflow run {p.model.run_id}), the version this service serves.")
    if wants_markdown:
        return PlainTextResponse(f"> {served} {INTENDED_USE}\n\n{document}", media_type="text/markdown; charset=utf-8")
    banner = f'<p class="served"><strong>{html.escape(served)}</strong></p>'
    return HTMLResponse(document.replace("<body>", f"<body>{banner}", 1))


def latest_monitoring(app: Any, predictor: Predictor | None) -> dict | None:
    """The newest monitoring summary of the served version, from the app's store (None when
    there is none, no model yet, or the store cannot be read: monitoring never fails an answer)."""
    from serving.monitoring_runs import latest

    if predictor is None:
        return None
    try:
        return latest(store_of(app), predictor.model.name, predictor.model.version)
    except Exception:
        return None
