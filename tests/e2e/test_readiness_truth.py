"""/readyz while the tracking server is down (issue 25, finding 10), against a real `icans-risk serve`
on ports 8400-8499: it must name the failure within one probe interval, not say "loading" for the
minutes MLflow's own HTTP retries take, and never show an error's own text. `pytest -s` prints the
time to the first reason."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROBE_INTERVAL_S = 10.0  # a typical Kubernetes readiness periodSeconds


def _ports(n: int) -> list[int]:
    found = []
    for port in range(8499, 8399, -1):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    pytest.skip("no free ports in 8400-8499")


def _readyz(port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        r = conn.getresponse()
        return r.status, json.loads(r.read())
    finally:
        conn.close()


def test_readyz_names_a_down_tracking_server_within_one_probe_interval(tmp_path):
    port, dead = _ports(2)  # nothing listens on `dead`: the tracking server is down
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{dead}",
        "ICANS_STORE_URL": f"sqlite:///{tmp_path / 'service.db'}",
        "ICANS_AUTH": "off",
        "ICANS_MODEL_LOAD_RETRIES": "30",
        "OMP_NUM_THREADS": "1",
    }
    for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from cli.main import main; main()", "serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        t0 = None
        seen: list[tuple[float, int, dict]] = []
        deadline = time.time() + 90
        while time.time() < deadline:
            assert proc.poll() is None, "the server exited"
            try:
                status, body = _readyz(port)
            except OSError:
                time.sleep(0.2)
                continue
            t0 = t0 or time.monotonic()
            seen.append((time.monotonic() - t0, status, body))
            if body.get("status") == "error" or "failed" in body.get("reason", ""):
                break
            time.sleep(0.5)
        named = [(t, b) for t, _, b in seen if b.get("status") == "error" or "failed" in b.get("reason", "")]
        first = named[0][0] if named else float("inf")
        print(f"\ntracking server down: /readyz named the failure after {first:.1f} s: "
              f"{named[0][1].get('reason') if named else seen[-1][2]}")
        assert all(s == 503 for _, s, _ in seen)
        assert all(b.get("reason") or b.get("detail") for _, _, b in seen)  # never "loading" without a word
        assert first <= PROBE_INTERVAL_S
        assert all(str(dead) not in json.dumps(b) for _, _, b in seen)  # no URLs, hosts or error text
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
