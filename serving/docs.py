"""The API documentation pages, served from this service alone, and the OpenAPI document's extras.

Swagger UI (/docs) and ReDoc (/redoc) load their JavaScript and CSS from the files that the
pinned `fastapi-offline` package ships, under /docs-assets: a hospital network without internet
access shows them as well as any other. Once a model is loaded, the OpenAPI document's 200
examples are the served model's real answer for the data contract's example patient (the
security schemes behind Swagger UI's Authorize button come from serving.auth and serving.cds_auth).
"""

from __future__ import annotations

import copy
import functools
import importlib.resources
import threading
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from core.contract import INTENDED_USE, example_request

ASSETS_PATH = "/docs-assets"
SWAGGER_JS = f"{ASSETS_PATH}/swagger-ui-bundle.js"
SWAGGER_CSS = f"{ASSETS_PATH}/swagger-ui.css"
REDOC_JS = f"{ASSETS_PATH}/redoc.local.js"  # the package's redoc.standalone.js without its one remote image
# ReDoc's sidebar credit loads this logo from Redocly's CDN, whatever the options: replaced by an
# empty inline image, so that the page asks nothing of another host (found in headless Chromium).
REDOC_REMOTE_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"
BLANK_IMAGE = "data:image/svg+xml,%3Csvg xmlns='http://www.w3.org/2000/svg' width='1' height='1'/%3E"
FAVICON = f"{ASSETS_PATH}/favicon.png"

EXAMPLE_REQUEST_ID = "0b7c3f0e-example"


def assets_dir() -> str:
    """The directory of the Swagger UI and ReDoc files shipped by the pinned fastapi-offline."""
    return str(importlib.resources.files("fastapi_offline") / "static")


@functools.cache
def _redoc_local_js() -> bytes:
    text = (Path(assets_dir()) / "redoc.standalone.js").read_text(encoding="utf-8")
    if REDOC_REMOTE_LOGO not in text:  # a new ReDoc: the test of the page's requests will say what it loads
        return text.encode("utf-8")
    return text.replace(REDOC_REMOTE_LOGO, BLANK_IMAGE).encode("utf-8")


def install(app: FastAPI) -> None:
    """Serve /docs and /redoc from local assets and enrich the OpenAPI document.

    The app must be created with docs_url=None and redoc_url=None."""
    @app.get(REDOC_JS, include_in_schema=False)  # before the mount, which would answer it otherwise
    async def redoc_js() -> Response:
        return Response(_redoc_local_js(), media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "public, max-age=86400"})

    app.mount(ASSETS_PATH, StaticFiles(directory=assets_dir()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API documentation",
            oauth2_redirect_url=f"{root}{redirect_url}",
            swagger_js_url=f"{root}{SWAGGER_JS}",
            swagger_css_url=f"{root}{SWAGGER_CSS}",
            swagger_favicon_url=f"{root}{FAVICON}",
            # no call to the public validator service, and the key survives a page reload
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{openapi_url}",
            title=f"{app.title} - API reference",
            redoc_js_url=f"{root}{REDOC_JS}",
            redoc_favicon_url=f"{root}{FAVICON}",
            with_google_fonts=False,
        )

    base: dict[str, Any] = {}
    by_model: dict[Any, dict[str, Any]] = {}
    lock = threading.Lock()

    def openapi() -> dict[str, Any]:
        with lock:
            if not base:
                base.update(get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes))
                _add_missing_schemas(base)
            state = getattr(app.state, "model", None)
            predictor = getattr(state, "predictor", None)
            key = (predictor.model.name, predictor.model.version, predictor.model.run_id) if predictor else None
            if key not in by_model:
                by_model.clear()  # one model at a time: the document follows a reload
                by_model[key] = _with_examples(base, predictor) if predictor is not None else base
            return by_model[key]

    app.openapi = openapi  # type: ignore[method-assign]


def _referenced_schemas(node: Any) -> set[str]:
    """The names of every #/components/schemas/NAME that the document refers to."""
    prefix = "#/components/schemas/"
    if isinstance(node, dict):
        found = {node["$ref"][len(prefix):]} if isinstance(node.get("$ref"), str) and node["$ref"].startswith(prefix) else set()
        for value in node.values():
            found |= _referenced_schemas(value)
        return found
    if isinstance(node, list):
        return set().union(*(_referenced_schemas(v) for v in node)) if node else set()
    return set()


def _add_missing_schemas(schema: dict[str, Any]) -> None:
    """Define the models that operations refer to by hand (openapi_extra: the CDS Hooks feedback
    body is read raw, so FastAPI does not register its model): a $ref that resolves to nothing
    breaks ReDoc and Swagger UI's view of that operation."""
    from serving.routes import cds_hooks

    models = {"FeedbackRequest": cds_hooks.FeedbackRequest}
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in sorted(_referenced_schemas(schema) - set(schemas)):
        model = models.get(name)
        if model is None:
            continue
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for sub, definition in js.pop("$defs", {}).items():
            schemas.setdefault(sub, definition)
        schemas[name] = js


def example_answer(predictor) -> tuple[dict[str, Any], dict[str, Any]]:
    """(request, answer) of the contract's example patient, as the served model answers it."""
    record = dict(example_request())
    answer = predictor.predict([record])[0]
    answer["request_id"] = EXAMPLE_REQUEST_ID
    answer["notice"] = INTENDED_USE
    return record, answer


def _with_examples(base: dict[str, Any], predictor) -> dict[str, Any]:
    """The document with the 200 examples of the scoring endpoints computed by `predictor`."""
    from serving.fhir.resources import FHIR_JSON, risk_assessment

    schema = copy.deepcopy(base)
    record, answer = example_answer(predictor)
    paths = schema.get("paths", {})
    single = paths.get("/v1/risk", {}).get("post", {}).get("responses", {}).get("200", {}).get("content", {})
    if "application/json" in single:
        single["application/json"]["example"] = answer
    if FHIR_JSON in single:
        single[FHIR_JSON]["example"] = risk_assessment(
            answer, record, outcome=predictor.bundle.outcome, request_id=EXAMPLE_REQUEST_ID, subject=None
        )
    batch = paths.get("/v1/risk/batch", {}).get("post", {}).get("responses", {}).get("200", {}).get("content", {})
    if "application/json" in batch:
        batch["application/json"]["example"] = {"results": [answer], "request_id": EXAMPLE_REQUEST_ID, "notice": INTENDED_USE}
    return schema
