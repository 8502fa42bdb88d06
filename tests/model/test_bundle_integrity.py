"""Issue 25, finding 8: registered model files are integrity-checked. Registration records the
sha256 of every file of the bundle in the version's tag; loading and reloading check it; a bundle
without a part it declares (the bootstrap ensemble) is refused, not served with a null interval;
a model whose risk falls outside its own interval is refused; errors name the file and the version."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from models.artifact import BUNDLE_FILE, BundleError, ModelBundle
from models.ensemble import ENSEMBLE_FILE
from core.contract import example_request
from models.registry import DIGEST_TAG, BundleRefused, ResolvedModel, load_bundle, resolve, resolve_direct


@pytest.fixture(scope="module")
def champion(trained) -> ResolvedModel:
    settings, _ = trained
    direct = resolve_direct(settings.tracking_uri, settings.resolved_model_uri)
    assert direct is not None and direct.location is not None
    return direct


def test_registration_records_every_files_digest_and_both_resolvers_read_it(trained, champion):
    settings, _ = trained
    digests = json.loads(champion.digests or "null")
    bundle_dir = champion.location / "artifacts" / "bundle"
    assert set(digests) == {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()}
    assert {BUNDLE_FILE, ENSEMBLE_FILE} <= set(digests)
    mlflow.set_tracking_uri(settings.tracking_uri)
    assert resolve(MlflowClient(), settings.resolved_model_uri).digests == champion.digests
    meta = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    assert set(meta["parts"]) == {meta["estimator_file"], ENSEMBLE_FILE}


def _copy(champion: ResolvedModel, tmp_path: Path) -> tuple[ResolvedModel, Path]:
    dst = tmp_path / "version"
    shutil.copytree(champion.location, dst)
    return ResolvedModel(champion.name, "99", champion.run_id, str(dst), location=dst,
                         digests=champion.digests), dst / "artifacts" / "bundle"


def _shift_intercept(bundle_dir: Path, by: float = 3.0) -> None:
    meta = json.loads((bundle_dir / BUNDLE_FILE).read_text())
    meta["calibration_intercept"] += by
    (bundle_dir / BUNDLE_FILE).write_text(json.dumps(meta, indent=2))


def test_a_changed_file_is_refused_naming_file_and_version(champion, tmp_path):
    resolved, bundle_dir = _copy(champion, tmp_path)
    assert load_bundle(resolved).instability is not None  # the copy itself is sound
    _shift_intercept(bundle_dir)
    with pytest.raises(BundleRefused, match=rf"^{champion.name} v99: bundle.json: sha256 differs"):
        load_bundle(resolved)


def test_a_missing_or_added_file_is_refused(champion, tmp_path):
    resolved, bundle_dir = _copy(champion, tmp_path)
    (bundle_dir / ENSEMBLE_FILE).unlink()
    with pytest.raises(BundleRefused, match=rf"v99: {ENSEMBLE_FILE}: missing"):
        load_bundle(resolved)
    resolved, bundle_dir = _copy(champion, tmp_path / "b")
    (bundle_dir / "extra.pkl").write_bytes(b"x")
    with pytest.raises(BundleRefused, match="v99: extra.pkl: not registered"):
        load_bundle(resolved)


def test_without_the_tag_the_bundle_still_refuses_a_missing_or_changed_declared_part(champion, tmp_path):
    resolved, bundle_dir = _copy(champion, tmp_path)
    untagged = ResolvedModel(resolved.name, "98", None, None, location=resolved.location)
    (bundle_dir / ENSEMBLE_FILE).unlink()
    with pytest.raises(BundleRefused, match=rf"v98: {ENSEMBLE_FILE}: missing \(declared by bundle.json\)"):
        load_bundle(untagged)
    estimator = json.loads((bundle_dir / BUNDLE_FILE).read_text())["estimator_file"]
    with open(bundle_dir / estimator, "ab") as fh:
        fh.write(b" ")
    with pytest.raises(BundleError, match=rf"^{estimator}: sha256 differs"):
        ModelBundle.load(bundle_dir)


def test_a_truncated_file_names_itself(champion, tmp_path):
    resolved, bundle_dir = _copy(champion, tmp_path)
    untagged = ResolvedModel(resolved.name, "97", None, None, location=resolved.location)
    text = (bundle_dir / BUNDLE_FILE).read_text()
    (bundle_dir / BUNDLE_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(BundleRefused, match=r"^.+ v97: bundle.json: unreadable"):
        load_bundle(untagged)


def test_a_model_whose_risk_leaves_its_own_interval_is_refused(champion, tmp_path):
    """The finding's tamper (intercept + 3) on a version without digests: verification refuses it."""
    from serving.predictor import Predictor
    from serving.state import verify

    resolved, bundle_dir = _copy(champion, tmp_path)
    untagged = ResolvedModel(resolved.name, "96", None, None, location=resolved.location)
    verify(Predictor(load_bundle(untagged), untagged))  # untampered: accepted
    _shift_intercept(bundle_dir)
    with pytest.raises(RuntimeError, match=r"v96\): the example's risk is outside its own interval"):
        verify(Predictor(load_bundle(untagged), untagged))


def test_reload_refuses_a_tampered_and_an_incomplete_version_and_keeps_serving(trained, tokens, champion, tmp_path):
    from serving.app import create_app
    from tests.helpers import wait_ready

    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    name = result.model_name
    original = client.get_model_version_by_alias(name, "champion")
    admin, score = ({"Authorization": f"Bearer {tokens[k]}"} for k in ("admin", "score"))
    with TestClient(create_app(settings)) as app:
        assert wait_ready(app).status_code == 200
        before = app.post("/v1/risk", json=example_request(), headers=score).json()
        try:
            for case in ("tampered", "incomplete"):
                dst = tmp_path / case
                shutil.copytree(champion.location, dst)
                if case == "tampered":
                    _shift_intercept(dst / "artifacts" / "bundle")
                else:
                    (dst / "artifacts" / "bundle" / ENSEMBLE_FILE).unlink()
                v = client.create_model_version(name, source=str(dst), run_id=original.run_id,
                                                tags={DIGEST_TAG: champion.digests})
                client.set_registered_model_alias(name, "champion", v.version)
                r = app.post("/v1/admin/reload", headers=admin).json()
                assert r["result"] == "failed", r
                part = BUNDLE_FILE if case == "tampered" else ENSEMBLE_FILE
                assert f"{name} v{v.version}: {part}" in r["reason"]
                assert r["serving"]["version"] == str(original.version)
                answer = app.post("/v1/risk", json=example_request(), headers=score).json()
                assert answer["risk"] == before["risk"] and answer["uncertainty"] == before["uncertainty"]
        finally:
            client.set_registered_model_alias(name, "champion", original.version)
