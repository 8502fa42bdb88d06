"""Shared fixtures: one small model trained for real into a temporary MLflow store."""

from __future__ import annotations

import os

import numpy as np
import pytest
import json
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient
from serving.app import create_app
from tests.helpers import open_store
from tests.helpers import ISS, ISS_EC, SERVICE_URL, _ready, _wire, make_settings

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# 20 bootstrap models (not 200) for the instability analysis of every test training, subprocesses
# included: the same code path at a tenth of the cost; tests of the analysis itself set their own B.
os.environ.setdefault("ICANS_INSTABILITY_MODELS", "20")


@pytest.fixture(scope="session")
def calibrated() -> tuple[np.ndarray, np.ndarray]:
    """A perfectly calibrated predictor: p ~ U(0.02, 0.9), y ~ Bernoulli(p), 20,000 patients."""
    rng = np.random.default_rng(42)
    p = rng.uniform(0.02, 0.9, 20_000)
    y = (rng.uniform(size=20_000) < p).astype(int)
    return y, p


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """(settings, TrainResult) of one real training on a synthetic cohort."""
    from pipeline.train.run import train

    root = tmp_path_factory.mktemp("tracking")
    settings = make_settings(root)
    result = train(settings)
    return settings, result


@pytest.fixture(scope="session")
def bundle(trained):
    import mlflow
    from mlflow import MlflowClient

    from models.registry import load_bundle, resolve

    settings, _ = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    return load_bundle(resolve(MlflowClient(), settings.resolved_model_uri))


@pytest.fixture(scope="session")
def tokens(trained):
    """A score key and an admin key in the service store of the trained settings."""
    settings, _ = trained
    store = open_store(settings)
    _, score = store.create_key("test-ehr", "score")
    _, admin = store.create_key("test-admin", "admin")
    return {"score": score, "admin": admin}


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP384R1())
    pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_key.public_key()))
    jwk.update(kid="ec-1", use="sig", alg="ES384")
    path = tmp_path_factory.mktemp("cds-keys") / "ehr-ec.jwks.json"
    path.write_text(json.dumps({"keys": [jwk]}))
    return {"rsa": rsa_key, "ec": ec_key, "issuers": {ISS: pem, ISS_EC: str(path)}}


@pytest.fixture(scope="module")
def cds(trained, keys):
    settings, _ = trained
    s = settings.model_copy(update={"cds_service_url": SERVICE_URL, "cds_issuers": keys["issuers"]})
    app = create_app(s)
    _wire(app, s)
    with TestClient(app) as c:
        _ready(c)
        yield c


@pytest.fixture(autouse=True)
def _no_mlflow_run_left_active():
    """A test that leaves an MLflow run active (an implicit one, from set_tag outside a run) would make
    every later training in this process fail with "Run ... is already active": end it after each test."""
    yield
    import sys

    mlflow = sys.modules.get("mlflow")
    if mlflow is not None:
        while mlflow.active_run() is not None:
            mlflow.end_run()
