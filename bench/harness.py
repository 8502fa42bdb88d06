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
        # a quick one-configuration model the gate may refuse: served anyway (the harness measures serving)
        subprocess.run([CLI, "train", "--allow-ungated", "--n", str(n)], env=env, check=True, capture_output=True,
                       timeout=900)
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


class PacedLoad:
    """`POST /v1/risk` with one body at a fixed total rate from `threads` threads for `seconds`;
    records the status counts (-1: the connection was lost), the versions and request ids of the
    answers (200) and every latency."""

    def __init__(self, port: int, body: bytes, headers: dict, seconds: float, rate: float, threads: int = 8,
                 timeout: float = 10.0) -> None:
        import threading
        from collections import Counter

        self.port, self.body, self.headers, self.timeout = port, body, headers, timeout
        self.seconds, self.threads = seconds, threads
        self.interval = threads / rate  # each thread keeps its share of the fixed rate
        self.statuses: Counter = Counter()
        self.versions: Counter = Counter()
        self.answered_ids: list[str] = []
        self.status_by_id: dict[str, int] = {}  # every request's own X-Request-ID -> the status it saw
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self._pool = [threading.Thread(target=self._worker, args=(k,)) for k in range(threads)]
        self.started = self.stop_at = 0.0

    def start(self) -> "PacedLoad":
        self.started = time.perf_counter()
        self.stop_at = self.started + self.seconds
        for t in self._pool:
            t.start()
        return self

    def join(self) -> float:
        """Wait for the end; returns the seconds elapsed since `start`."""
        for t in self._pool:
            t.join()
        return time.perf_counter() - self.started

    def _worker(self, k: int) -> None:
        import json

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        next_at = self.started + k * self.interval / self.threads
        sent = 0
        while True:
            now = time.perf_counter()
            if now >= self.stop_at:
                break
            if next_at > now:
                time.sleep(next_at - now)
            next_at += self.interval
            t0 = time.perf_counter()
            rid = f"load-{k}-{sent}"
            sent += 1
            try:
                status, payload = request(conn, "POST", "/v1/risk", self.body, {**self.headers, "X-Request-ID": rid})
                answer = json.loads(payload) if status == 200 else {}
                version, request_id = (answer["model"]["version"], answer["request_id"]) if answer else (None, None)
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
                status, version, request_id = -1, None, None
            with self._lock:
                self.status_by_id[rid] = status
                self.statuses[status] += 1
                if version:
                    self.versions[version] += 1
                    self.answered_ids.append(request_id)
                self.latencies.append(time.perf_counter() - t0)
