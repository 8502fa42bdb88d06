"""The MLflow registry: resolve a model URI, load its bundle, and move the champion alias."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def promotion_lock(tracking_uri: str, fallback_dir: Path, name: str, timeout_s: float = 600.0) -> Iterator[None]:
    """Serialise "read champion, compare, move alias" across processes and machines.

    The lock lives where the registry does: an advisory lock in a PostgreSQL tracking database,
    a file lock beside a SQLite one; for a remote tracking server, a file lock in `fallback_dir`
    (one host) unless that server's database is given as the tracking URI of the trainers.
    """
    if tracking_uri.startswith(("postgresql", "postgres")):
        import sqlalchemy as sa

        url = re.sub(r"^postgres(ql)?(\+\w+)?://", "postgresql+psycopg://", tracking_uri)
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        key = int.from_bytes(hashlib.sha256(f"icans-promotion:{name}".encode()).digest()[:8], "big", signed=True)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        engine.dispose()
        return
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///")).with_suffix(f".{name}.promotion.lock")
    else:
        path = Path(fallback_dir) / f".{name}.promotion.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"promotion lock {path} held for over {timeout_s:.0f} s") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
