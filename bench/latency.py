"""Latency and throughput: the service path in process (bench/inprocess.py), `icans-risk serve`
and `mlflow models serve` over HTTP at each concurrency, the batch API, and cold start to /readyz.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.http_load import load, sweep
from bench.memory import worker_memory
from bench.plan import HOST, MODEL_URI, ROOT, Plan
from bench.processes import Server, free_port, http_get, http_post, parse_bench_json, running, tool
from bench.results import config_label


def step_in_process(plan: Plan, env: dict[str, str]) -> dict[str, Any]:
    ip_env = {**env, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.inprocess", "--calls", str(plan.calls), "--rows", str(plan.bulk_rows)],
        env=ip_env, cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"bench.inprocess exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return parse_bench_json(proc.stdout)


def api_key(env: dict[str, str]) -> str | None:
    """An `Authorization` header line with a fresh scoring key in the benchmark's own store.

    None when this version of the CLI has no `keys` command (a service without API keys).
    """
    proc = subprocess.run([tool("icans-risk"), "keys", "create", "--client", "icans-bench", "--scope", "score"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        if "No such command" in proc.stderr:
            return None
        raise RuntimeError(f"icans-risk keys create exited {proc.returncode}: {proc.stderr[-2000:]}")
    token = [line for line in proc.stdout.splitlines() if line.strip()][-1].strip()
    return f"Authorization: Bearer {token}"


def step_explained_server(plan: Plan, env: dict[str, str], workers: int, files: dict[str, Path],
                          generator: str, log_dir: Path, auth: str | None) -> dict[str, Any]:
    port = free_port()
    serve_env = {**env, "OMP_NUM_THREADS": "1"}
    argv = [tool("icans-risk"), "serve", "--host", HOST, "--port", str(port), "--workers", str(workers)]
    out: dict[str, Any] = {"workers": workers, "authenticated": auth is not None}
    with running(Server(f"icans-serve-w{workers}", argv, serve_env, port, log_dir)) as srv:
        out["cold_start_s"] = srv.wait_ready("/readyz", timeout=120)
        if workers > 1:
            out["all_workers_ready_s"] = srv.wait_all_workers("/readyz", workers, timeout=120)
        with contextlib.suppress(ValueError, OSError):
            out["readyz"] = json.loads(http_get(srv.url + "/readyz")[1])
        status, body = http_post(srv.url + "/v1/risk", files["risk"].read_bytes(), header=auth)
        if status != 200:
            raise RuntimeError(f"POST /v1/risk answered {status}: {body[:500]!r}")
        answer = json.loads(body)
        total = answer["explanation"]["base_log_odds"] + sum(c["log_odds"] for c in answer["explanation"]["contributions"])
        out["example_answer"] = {"risk": answer["risk"], "model": answer["model"],
                                 "additivity_error": abs(total - answer["log_odds"])}
        out["rss_at_ready"] = worker_memory(srv, workers)
        # warm-up (not measured): first requests fill caches and the threadpool
        load(srv.url + "/v1/risk", files["risk"], 4, 1, "python", requests=200, header=auth)
        served = 201
        out["risk"] = sweep(srv, "/v1/risk", files["risk"], plan, generator, header=auth)
        served += sum(r["requests"] for r in out["risk"].values())
        out["healthz"] = sweep(srv, "/healthz", None, plan, generator)
        if workers == 1 and served < plan.rss_requests:  # the one-worker server is the RSS measurement
            extra = plan.rss_requests - served
            load(srv.url + "/v1/risk", files["risk"], 8, 1, "python", requests=extra, header=auth)
            served += extra
        out["rss_after"] = worker_memory(srv, workers)
        out["risk_requests_before_rss"] = served
        out["batch"] = {}
        for size in plan.batch_sizes:
            body_file = files[f"batch{size}"]
            status, body = http_post(srv.url + "/v1/risk/batch", body_file.read_bytes(), timeout=120, header=auth)
            n_results = len(json.loads(body).get("results", [])) if status == 200 else 0
            if status != 200 or n_results != size:
                raise RuntimeError(f"POST /v1/risk/batch ({size}) answered {status}, {n_results} results")
            r = load(srv.url + "/v1/risk/batch", body_file, workers, plan.batch_seconds, "python", header=auth)
            r["patients_per_s"] = r["rps"] * size
            r["ms_per_request_p50"] = r["p50_ms"]
            out["batch"][str(size)] = r
        out["rss_after_batch"] = worker_memory(srv, workers)
    return out


def step_cold_start(env: dict[str, str], log_dir: Path) -> float:
    port = free_port()
    argv = [tool("icans-risk"), "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
    with running(Server("icans-serve-coldstart", argv, {**env, "OMP_NUM_THREADS": "1"}, port, log_dir)) as srv:
        return srv.wait_ready("/readyz", timeout=120)


def step_mlflow_server(plan: Plan, env: dict[str, str], workers: int, files: dict[str, Path],
                       generator: str, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    argv = [tool("mlflow"), "models", "serve", "-m", MODEL_URI, "--env-manager", "local", "-h", HOST,
            "-p", str(port), "-w", str(workers)]
    mlflow_env = {**env, "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {"workers": workers}
    with running(Server(f"mlflow-serve-w{workers}", argv, mlflow_env, port, log_dir)) as srv:
        out["cold_start_s"] = srv.wait_ready("/ping", timeout=180)
        status, body = http_post(srv.url + "/invocations", files["mlflow"].read_bytes())
        if status != 200:
            raise RuntimeError(f"mlflow /invocations answered {status}: {body[:500]!r}")
        out["example_answer"] = json.loads(body)
        load(srv.url + "/invocations", files["mlflow"], 2, 1, "python", requests=50)
        out["invocations"] = sweep(srv, "/invocations", files["mlflow"], plan, generator)
    return out


def cold_start_summary(cold: list[float], http: dict[str, Any]) -> dict[str, Any]:
    """The median cold start of the one-worker server, and every other server's, labelled."""
    out: dict[str, Any] = {"runs_s": cold, "median_s": sorted(cold)[len(cold) // 2]}
    for wk, e in http["explained"].items():
        if wk != "workers_1":
            out[f"other_icans-risk serve, {config_label(wk)} (first worker)"] = e["cold_start_s"]
            if "all_workers_ready_s" in e:
                out[f"other_icans-risk serve, {config_label(wk)} (every worker)"] = e["all_workers_ready_s"]
    for wk, e in http["mlflow"].items():
        out[f"other_mlflow models serve -w {e['workers']} (to /ping)"] = e["cold_start_s"]
    return out
