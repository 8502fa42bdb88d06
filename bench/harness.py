"""A trained, served icans-risk for the load tests (bench.load_reload, bench.soak): a temporary
MLflow store with a champion, API keys, and `icans-risk serve` on a free local port. Everything it
starts is stopped and its files removed when the block ends.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

CLI = str(Path(sys.executable).with_name("icans-risk"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
            headers: dict) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


@dataclass
class Served:
    port: int
    score: str  # a score-scope token
    admin: str  # an admin-scope token
    env: dict[str, str]
    server: subprocess.Popen
    work: Path


def _key(env: dict[str, str], client: str, scope: str) -> str:
    out = subprocess.run([CLI, "keys", "create", "--client", client, "--scope", scope], env=env, check=True,
                         capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


@contextmanager
def served(prefix: str, workers: int = 1, extra_env: dict[str, str] | None = None, n: int = 800) -> Iterator[Served]:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "ICANS_ARTIFACT_ROOT": (work / "mlartifacts").as_uri(),
        "ICANS_DATA_DIR": str(work / "data"),
        "ICANS_STORE_URL": f"sqlite:///{work / 'service.db'}",
        "ICANS_AUDIT_HMAC_KEY": "load-test-audit-key-0123456789",
        "ICANS_AUTH": "on",
        "ICANS_N_ITER": "1",
        "ICANS_CV_FOLDS": "3",
        "OMP_NUM_THREADS": "1",
        **(extra_env or {}),
    }
    server = None
    try:
        subprocess.run([CLI, "train", "--n", str(n)], env=env, check=True, capture_output=True, timeout=900)
        score, admin = _key(env, "load", "score"), _key(env, "ops", "admin")
        port = free_port()
        server = subprocess.Popen([CLI, "serve", "--port", str(port), "--workers", str(workers)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:
            try:
                status, _ = request(http.client.HTTPConnection("127.0.0.1", port, timeout=2), "GET", "/readyz", None, {})
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)
        yield Served(port, score, admin, env, server, work)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)


def second_version(env: dict[str, str]):
    """(MlflowClient, the champion's version, a new version of the same model) for a live reload."""
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    old = client.get_model_version_by_alias("icans-risk", "champion")
    return client, old, client.create_model_version("icans-risk", source=old.source, run_id=old.run_id)
