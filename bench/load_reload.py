"""Steady load with a live model reload in the middle (issue 5's load test).

`python -m bench.load_reload [--seconds 60] [--rate 100] [--out-dir bench]`: trains a model
into a temporary MLflow store, serves it with API keys and the audit trail on, holds a fixed
request rate from a second process's threads over 127.0.0.1, moves @champion to a new version
half-way and calls POST /v1/admin/reload, then checks: zero failed requests, every answer
stamped with a version that was champion while it ran, and the audit count equal to the
answers served. Bounded in time; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("icans-risk"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, bytes]:
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def run(seconds: float, rate: float, out_dir: Path | None, threads: int = 8) -> dict:
    from pipeline.contract import example_request

    work = Path(tempfile.mkdtemp(prefix="icans-load-"))
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
    }
    server = None
    try:
        subprocess.run([CLI, "train", "--n", "800"], env=env, check=True, capture_output=True, timeout=900)
        score = subprocess.run([CLI, "keys", "create", "--client", "load", "--scope", "score"], env=env,
                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        admin = subprocess.run([CLI, "keys", "create", "--client", "ops", "--scope", "admin"], env=env,
                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        port = _free_port()
        server = subprocess.Popen([CLI, "serve", "--port", str(port)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while True:
            try:
                status, _ = _request(http.client.HTTPConnection("127.0.0.1", port, timeout=2), "GET", "/readyz", None, {})
                if status == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline or server.poll() is not None:
                raise RuntimeError("server did not become ready")
            time.sleep(0.2)

        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
        client = MlflowClient()
        old = client.get_model_version_by_alias("icans-risk", "champion")
        new = client.create_model_version("icans-risk", source=old.source, run_id=old.run_id)

        body = json.dumps(example_request()).encode()
        headers = {"content-type": "application/json", "authorization": f"Bearer {score}"}
        statuses: Counter = Counter()
        versions: Counter = Counter()
        latencies: list[float] = []
        lock = threading.Lock()
        start = time.perf_counter()
        stop_at = start + seconds
        interval = threads / rate  # each thread keeps its share of the fixed rate

        def worker(k: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            next_at = start + k * interval / threads
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    break
                if next_at > now:
                    time.sleep(next_at - now)
                next_at += interval
                t0 = time.perf_counter()
                try:
                    status, payload = _request(conn, "POST", "/v1/risk", body, headers)
                    version = json.loads(payload)["model"]["version"] if status == 200 else None
                except (OSError, http.client.HTTPException, ValueError, KeyError):
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    status, version = -1, None
                with lock:
                    statuses[status] += 1
                    if version:
                        versions[version] += 1
                    latencies.append(time.perf_counter() - t0)

        pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
        [t.start() for t in pool]

        # half-way: a new champion, and a live reload while the load runs
        time.sleep(seconds / 2)
        client.set_registered_model_alias("icans-risk", "champion", new.version)
        status, payload = _request(http.client.HTTPConnection("127.0.0.1", port, timeout=30), "POST",
                                   "/v1/admin/reload", b"", {"authorization": f"Bearer {admin}"})
        reload_answer = json.loads(payload)
        [t.join() for t in pool]
        elapsed = time.perf_counter() - start

        from serving.store import Store

        store = Store(env["ICANS_STORE_URL"], env["ICANS_AUDIT_HMAC_KEY"].encode())
        audited = store.count()
        served = statuses.get(200, 0)
        latencies.sort()
        result = {
            "seconds": round(elapsed, 1),
            "target_rate_per_s": rate,
            "achieved_rate_per_s": round(sum(statuses.values()) / elapsed, 1),
            "requests": sum(statuses.values()),
            "status_counts": {str(k): v for k, v in statuses.items()},
            "failed": sum(v for k, v in statuses.items() if k != 200),
            "versions_served": dict(versions),
            "versions_registered": [str(old.version), str(new.version)],
            "reload": {"http_status": status, **reload_answer},
            "audit_records": audited,
            "audit_equals_served": audited == served,
            "latency_ms_p50": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
            "latency_ms_p99": round(1000 * latencies[int(len(latencies) * 0.99)], 2) if latencies else None,
            "ok": statuses.get(200, 0) == sum(statuses.values())
            and audited == served
            and set(versions) <= {str(old.version), str(new.version)}
            and reload_answer.get("result") == "swapped",
        }
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "load_reload.json").write_text(json.dumps(result, indent=2))
        lines = [
            "# Load with a live reload",
            "",
            f"{result['requests']} requests in {result['seconds']} s at a target of {rate:g}/s "
            f"(achieved {result['achieved_rate_per_s']}/s), reload half-way: {result['reload'].get('reason')}.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| failed requests | {result['failed']} |",
            f"| answers by version | {result['versions_served']} |",
            f"| audit records / answers served | {audited} / {served} |",
            f"| latency p50 / p99 | {result['latency_ms_p50']} / {result['latency_ms_p99']} ms |",
            f"| all checks passed | {result['ok']} |",
        ]
        (out_dir / "load_reload.md").write_text("\n".join(lines) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--out-dir", type=Path, default=ROOT / "bench")
    args = parser.parse_args()
    result = run(args.seconds, args.rate, args.out_dir)
    print(json.dumps(result, indent=2))
    sys.exit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
