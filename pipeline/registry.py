"""The MLflow registry: resolve a model URI, load its bundle, and move the champion alias."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from models.artifact import ModelBundle

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    run_id: str | None
    source: str
    alias: str | None = None


class ModelNotFound(LookupError):
    pass


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"unsupported model URI '{uri}': use models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def resolve(client: MlflowClient, uri: str) -> ResolvedModel:
    """A registry URI to one concrete version (an alias moves; the answer names what was loaded)."""
    name, alias, version = parse_model_uri(uri)
    try:
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise ModelNotFound(f"no model at {uri}") from None
        raise
    return ResolvedModel(mv.name, str(mv.version), mv.run_id, mv.source, alias)


def load_bundle(resolved: ResolvedModel, dst: Path | None = None, nthread: int = 1) -> ModelBundle:
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{resolved.name}/{resolved.version}",
        dst_path=str(dst) if dst else None,
    )
    return ModelBundle.load(Path(local) / "artifacts" / BUNDLE_ARTIFACT, nthread=nthread)


def champion(client: MlflowClient, name: str, alias: str) -> ResolvedModel | None:
    try:
        return resolve(client, f"models:/{name}@{alias}")
    except ModelNotFound:
        return None
