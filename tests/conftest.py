"""Shared fixtures: one small model trained for real into a temporary MLflow store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
# 20 bootstrap models (not 200) for the instability analysis of every test training, subprocesses
# included: the same code path at a tenth of the cost; tests of the analysis itself set their own B.
os.environ.setdefault("ICANS_INSTABILITY_MODELS", "20")


def make_settings(root: Path, **overrides):
    from pipeline.settings import Settings

    values = dict(
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        artifact_root=(root / "mlartifacts").as_uri(),
        data_dir=root / "data",
        n_iter=2,
        cv_folds=3,
        default_cohort_size=1500,
        seed=7,
        model_load_backoff_s=0.05,
        model_load_retries=1,
        store_url=f"sqlite:///{root / 'service.db'}",
        audit_hmac_key="test-audit-hmac-key-0123456789",
        key_cache_ttl_s=0.0,
        auth="on",
        validation="split",  # the split design's tests; the repeated-CV design has its own (tests/model)
        cv_repeats=2,
        resample_n_iter=2,
    )
    values.update(overrides)
    return Settings(**values)


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
    from pipeline.train import train

    root = tmp_path_factory.mktemp("tracking")
    settings = make_settings(root)
    result = train(settings)
    return settings, result


@pytest.fixture(scope="session")
def bundle(trained):
    import mlflow
    from mlflow import MlflowClient

    from pipeline.registry import load_bundle, resolve

    settings, _ = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    return load_bundle(resolve(MlflowClient(), settings.resolved_model_uri))


def random_records(n: int, seed: int = 0, missing_rate: float = 0.3) -> list[dict]:
    """Valid requests drawn across the whole hard range of the contract (not the cohort)."""
    from pipeline.contract import FEATURES

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        rec: dict = {}
        for f in FEATURES:
            if not f.required and rng.random() < missing_rate:
                rec[f.name] = None
            elif f.kind == "float":
                lo = f.min + (1e-6 if f.min_exclusive else 0)
                # log-uniform over wide ranges so that typical values are well covered too
                if f.max / max(lo, 1e-3) > 100:
                    rec[f.name] = float(np.exp(rng.uniform(np.log(max(lo, 1e-3)), np.log(f.max))))
                else:
                    rec[f.name] = float(rng.uniform(lo, f.max))
            elif f.kind == "bool":
                rec[f.name] = bool(rng.random() < 0.5)
            else:
                rec[f.name] = str(rng.choice(f.categories))
        out.append(rec)
    return out


def edge_records() -> list[dict]:
    """Every float at its lower and at its upper hard bound, optionals present and absent."""
    from pipeline.contract import FEATURES, example_request

    out = []
    for at in ("min", "max"):
        for with_optional in (True, False):
            rec = dict(example_request())
            for f in FEATURES:
                if f.kind == "float":
                    v = f.min if at == "min" else f.max
                    if at == "min" and f.min_exclusive:
                        v = 1e-9
                    rec[f.name] = float(v) if (f.required or with_optional) else None
            out.append(rec)
    return out


def open_store(settings):
    from serving.store import Store

    store = Store(settings.store_url, settings.audit_hmac_key.get_secret_value().encode(), key_cache_ttl_s=0)
    store.migrate()
    return store


@pytest.fixture(scope="session")
def tokens(trained):
    """A score key and an admin key in the service store of the trained settings."""
    settings, _ = trained
    store = open_store(settings)
    _, score = store.create_key("test-ehr", "score")
    _, admin = store.create_key("test-admin", "admin")
    return {"score": score, "admin": admin}


def wait_ready(client, timeout: float = 60.0):
    """Poll GET /readyz of a TestClient until it answers 200; returns that response."""
    import time

    deadline = time.time() + timeout
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.time() > deadline:
            return response
        time.sleep(0.05)
