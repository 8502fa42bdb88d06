"""The MLflow registry: resolve a model URI, load its bundle, and move the champion alias.

mlflow is imported by the functions that use it, not by this module: `ResolvedModel` is on the
serving path, where importing mlflow and opening its stores costs over a second and ~70 MB. The
service resolves through `resolve_direct` first: with the embedded profile (a SQLite or PostgreSQL
tracking database and artifacts on a local path) it reads the registry's two rows itself and
loads the bundle in place; anything else goes through MLflow as before.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from models.artifact import ModelBundle

log = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "bundle"
# the version tag that holds {relative path: sha256} of every file of the registered bundle,
# set at registration (record_digests) and checked at every load and reload (load_bundle)
DIGEST_TAG = "bundle_sha256"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    version: str
    run_id: str | None
    source: str | None  # MLflow's ModelVersion.source (None only for a version registered without one)
    alias: str | None = None
    # the version's artifact directory when `resolve_direct` found it on a local path
    location: Path | None = field(default=None, compare=False, repr=False)
    # the version's DIGEST_TAG (JSON text), None for a version registered without one
    digests: str | None = field(default=None, compare=False, repr=False)


class ModelNotFound(LookupError):
    pass


class BundleRefused(RuntimeError):
    """A registered bundle that fails its integrity checks or cannot be read: names version and file."""


def record_digests(client: MlflowClient, name: str, version: str, bundle_dir: Path) -> dict[str, str]:
    """Tag a just-registered version with the sha256 of every file of the bundle it was logged from."""
    import json

    from models.artifact import file_digests

    digests = file_digests(bundle_dir)
    client.set_model_version_tag(name, version, DIGEST_TAG, json.dumps(digests, sort_keys=True))
    return digests


def check_digests(resolved: ResolvedModel, bundle_dir: Path) -> None:
    """The files under `bundle_dir` are exactly those registered, byte for byte (BundleRefused
    otherwise). A version without the tag (registered before digests were recorded) loads with a warning."""
    import json

    from models.artifact import sha256_file

    where = f"{resolved.name} v{resolved.version}"
    if resolved.digests is None:
        log.warning("%s has no %s tag (registered before digests were recorded): its files are not verified",
                    where, DIGEST_TAG)
        return
    try:
        expected = json.loads(resolved.digests)
        assert isinstance(expected, dict) and all(isinstance(v, str) for v in expected.values())
    except (ValueError, AssertionError):
        raise BundleRefused(f"{where}: the {DIGEST_TAG} tag is unreadable") from None
    present = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    for rel in sorted(set(expected) | present):
        if rel not in present:
            raise BundleRefused(f"{where}: {rel}: missing (registered with the version)")
        if rel not in expected:
            raise BundleRefused(f"{where}: {rel}: not registered with the version")
        if sha256_file(bundle_dir / rel) != expected[rel]:
            raise BundleRefused(f"{where}: {rel}: sha256 differs from the digest recorded at registration")


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"unsupported model URI '{uri}': use models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def resolve(client: MlflowClient, uri: str) -> ResolvedModel:
    """A registry URI to one concrete version (an alias moves; the answer names what was loaded)."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    try:
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            assert version is not None  # parse_model_uri: a URI names an alias or a version
            mv = client.get_model_version(name, version)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise ModelNotFound(f"no model at {uri}") from None
        raise
    return ResolvedModel(mv.name, str(mv.version), mv.run_id, mv.source, alias,
                         digests=(mv.tags or {}).get(DIGEST_TAG))


def load_bundle(resolved: ResolvedModel, dst: Path | None = None, nthread: int = 1) -> ModelBundle:
    """The version's bundle, its files checked against the digests recorded at registration;
    BundleRefused (naming the version and the file) for anything missing, changed or unreadable."""
    from models.artifact import BundleError, ModelBundle

    if resolved.location is not None and dst is None:
        # registry artifacts are immutable and the bundle is read into memory: no copy needed
        path = resolved.location / "artifacts" / BUNDLE_ARTIFACT
    else:
        import mlflow.artifacts

        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{resolved.name}/{resolved.version}",
            dst_path=str(dst) if dst else None,
        )
        path = Path(local) / "artifacts" / BUNDLE_ARTIFACT
    check_digests(resolved, path)
    try:
        return ModelBundle.load(path, nthread=nthread)
    except BundleError as exc:
        raise BundleRefused(f"{resolved.name} v{resolved.version}: {exc}") from None


_DELETED_STAGE = "Deleted_Internal"  # mlflow's marker of a deleted version (kept as a row)
# The tracking-database schema of the pinned mlflow (a test keeps it equal to mlflow's own head):
# a database at another revision is left to mlflow, which refuses or upgrades it as it does.
MLFLOW_SCHEMA_HEAD = "dc11669786a5"
_DEFAULT_WORKSPACE = "default"
_VERSION_COLUMNS = "mv.name, mv.version, mv.run_id, mv.source, mv.storage_location"


def resolve_direct(tracking_uri: str, uri: str) -> ResolvedModel | None:
    """`resolve` without mlflow, from the registry tables of a SQLite or PostgreSQL tracking database.

    The same query as mlflow's SQL registry store (the alias row, then its version unless deleted,
    in the default workspace), for a version whose artifacts are a local directory holding the
    bundle (the answer's `location`; `load_bundle` then reads it in place). None whenever this is
    not certainly mlflow's own answer, and the caller asks mlflow: another kind of tracking URI, a
    separate registry URI, workspaces on, the special `latest` alias, no row (mlflow says why), a
    schema other than the pinned mlflow's (MLFLOW_SCHEMA_HEAD), remote artifacts, a database that does not exist yet, or any error.
    """
    try:
        name, alias, version = parse_model_uri(uri)
    except ValueError:
        return None
    if (alias or "").lower() == "latest" or os.environ.get("MLFLOW_WORKSPACE"):
        return None
    if os.environ.get("MLFLOW_ENABLE_WORKSPACES", "").strip().lower() in ("true", "1"):
        return None
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI")
    if registry_uri and registry_uri != tracking_uri:
        return None
    url = _direct_url(tracking_uri)
    if url is None:
        return None
    try:
        import sqlalchemy as sa

        connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)
        try:
            with engine.connect() as conn:
                schema = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
                if schema != [MLFLOW_SCHEMA_HEAD]:
                    return None
                params: dict[str, str | int] = {"ws": _DEFAULT_WORKSPACE, "name": name, "deleted": _DELETED_STAGE}
                if alias:
                    sql = (
                        f"SELECT {_VERSION_COLUMNS} FROM registered_model_aliases a JOIN model_versions mv"
                        " ON mv.workspace = a.workspace AND mv.name = a.name AND mv.version = a.version"
                        " WHERE a.workspace = :ws AND a.name = :name AND a.alias = :alias"
                        " AND mv.current_stage != :deleted"
                    )
                    params["alias"] = alias
                else:
                    sql = (
                        f"SELECT {_VERSION_COLUMNS} FROM model_versions mv WHERE mv.workspace = :ws"
                        " AND mv.name = :name AND mv.version = :version AND mv.current_stage != :deleted"
                    )
                    params["version"] = int(version)  # type: ignore[arg-type]  # a version when there is no alias
                rows = conn.execute(sa.text(sql), params).all()
                digests = None
                if len(rows) == 1:
                    digests = conn.execute(sa.text(
                        "SELECT value FROM model_version_tags WHERE workspace = :ws AND name = :name"
                        " AND version = :version AND key = :key"),
                        {"ws": _DEFAULT_WORKSPACE, "name": rows[0][0], "version": rows[0][1], "key": DIGEST_TAG},
                    ).scalar()
        finally:
            engine.dispose()
    except Exception as exc:  # mlflow answers instead, with its own errors
        log.debug("direct registry read of %s failed, asking mlflow: %s", uri, exc)
        return None
    if len(rows) != 1:
        return None
    mv_name, mv_version, run_id, source, storage_location = rows[0]
    location = _local_dir(storage_location or source)
    if location is None or not (location / "artifacts" / BUNDLE_ARTIFACT / "bundle.json").is_file():
        return None
    return ResolvedModel(mv_name, str(mv_version), run_id, source, alias, location=location, digests=digests)


def resolve_configured(tracking_uri: str, uri: str) -> ResolvedModel:
    """`uri` as one concrete version: read from a local registry database directly when possible
    (mlflow is not imported), otherwise through mlflow (the service and `icans-risk score`)."""
    direct = resolve_direct(tracking_uri, uri)
    if direct is not None:
        return direct
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    return resolve(MlflowClient(), uri)


def _direct_url(tracking_uri: str) -> str | None:
    """A read-only SQLAlchemy URL for the tracking database, or None (ask mlflow)."""
    if tracking_uri.startswith("sqlite:///"):
        path = tracking_uri.removeprefix("sqlite:///")
        if not path or "?" in path or path == ":memory:" or not Path(path).is_file():
            return None  # mlflow creates (or refuses) a missing database itself
        from urllib.parse import quote

        return f"sqlite:///file:{quote(str(Path(path).resolve()))}?mode=ro&uri=true"
    if tracking_uri.startswith("postgresql+psycopg://"):  # other spellings: mlflow decides (or refuses)
        return tracking_uri
    return None


def _local_dir(location: str | None) -> Path | None:
    if not location:
        return None
    if location.startswith("file:"):
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        parsed = urlparse(location)
        if parsed.netloc not in ("", "localhost"):
            return None
        path = Path(url2pathname(parsed.path))
    elif "://" in location or ":/" in location or "%" in location:  # mlflow would percent-decode: ask it
        return None
    else:
        path = Path(location)
    return path if path.is_absolute() else None


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
