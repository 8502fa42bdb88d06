"""The benchmark of issue 4, in one run: `python -m bench.run [--quick] [--out-dir DIR]`.

Everything happens in a temporary MLflow store (never the project's mlflow.db), on 127.0.0.1:
1. `icans-risk train` on the default synthetic cohort: wall time and peak RSS;
2. in-process: validate + predict + explain against bare `inplace_predict` (bench/inprocess.py);
3. HTTP: `icans-risk serve` (1 and 2 workers) under wrk (or bench/loadgen.py) at concurrency
   1, 8 and 32, POST /v1/risk and GET /healthz; `mlflow models serve` of the same registered model;
4. batch: POST /v1/risk/batch with 100 and 1,000 patients; `icans-risk score` on 100,000;
5. cold start to /readyz and the RSS of one worker after 10,000 requests.
Writes results.json and results.md to --out-dir (default: bench/ in full mode; a new temporary
directory in --quick mode, which never writes bench/results.*) and prints a short table.

This module runs the steps in order and records what failed; each step lives with what it
measures: bench.training, bench.latency (in process, HTTP, cold start), bench.batch, bench.memory;
bench.results writes results.json and results.md; bench.plan, bench.processes, bench.http_load and
bench.machine are the plumbing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.batch import batch_bodies, step_score
from bench.http_load import wrk_version
from bench.latency import (
    api_key,
    cold_start_summary,
    step_cold_start,
    step_explained_server,
    step_in_process,
    step_mlflow_server,
)
from bench.machine import machine_info
from bench.memory import memory_summary
from bench.plan import BENCH_DIR, BIN, FULL, QUICK, SOFT_BUDGET_S
from bench.processes import log
from bench.results import print_summary, targets, write_reports
from bench.training import step_train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description="The icans-risk benchmark (issue 4).")
    ap.add_argument("--quick", action="store_true", help="small, seconds to a minute, no thresholds (CI smoke)")
    ap.add_argument("--out-dir", type=Path, default=None,
                    help="where results.json/.md go (full: bench/; quick: a new temporary directory)")
    ap.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                    help="HTTP load generator (auto: wrk if installed, else bench/loadgen.py)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary MLflow store and logs")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL

    if args.out_dir is None:
        out_dir = Path(tempfile.mkdtemp(prefix="icans-bench-quick-")) if plan.quick else BENCH_DIR
    else:
        out_dir = args.out_dir.resolve()
    if plan.quick and out_dir == BENCH_DIR.resolve():
        ap.error("--quick never writes bench/results.* (they hold the full run); pass another --out-dir")

    wrk = wrk_version()
    if args.loadgen == "wrk" and not wrk:
        ap.error("wrk is not installed (Debian/Ubuntu: apt-get install wrk)")
    generator = "wrk" if (args.loadgen in ("auto", "wrk") and wrk) else "python"
    generator_text = (f"{wrk} (`wrk -t<min(c,2)> -c<c>`, Lua script bench/wrk_report.lua)" if generator == "wrk"
                      else "bench/loadgen.py (Python asyncio, one process; "
                      + ("chosen with --loadgen python)" if wrk else "wrk is not installed)"))

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="icans-bench-"))
    # the service's defaults, in a store of its own: no ICANS_*/MLFLOW_* setting of the caller leaks in
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ICANS_", "MLFLOW_"))}
    env = {
        **inherited,
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "ICANS_ARTIFACT_ROOT": (work / "mlartifacts").as_uri(),
        "ICANS_DATA_DIR": str(work / "data"),
        "ICANS_STORE_URL": f"sqlite:///{work / 'icans-service.db'}",  # API keys and audit trail
        "ICANS_MODEL_LOAD_BACKOFF_S": "0.2",
        "MLFLOW_ENABLE_ASYNC_LOGGING": "false",
        "PYTHONUNBUFFERED": "1",
        # `mlflow models serve` execs `uvicorn` from PATH: the project's own, not whatever is first
        "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
    }
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]  # for this process's own imports
    logs = work / "logs"
    logs.mkdir()

    res: dict[str, Any] = {"schema": 1, "machine": machine_info(plan, generator_text), "plan": asdict(plan),
                           "errors": [], "notes": []}
    if generator != "wrk":
        res["notes"].append("wrk was not used: the Python load generator (one process) can be the bottleneck at "
                            "high rates, so the HTTP ceiling (GET /healthz) is understated.")

    def attempt(name: str, fn, *a):
        log(f"{name} ...")
        t0 = time.perf_counter()
        try:
            value = fn(*a)
            log(f"{name}: {time.perf_counter() - t0:.1f} s")
            return value
        except Exception as exc:  # recorded, and the rest of the benchmark still runs
            res["errors"].append(f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
            log(f"{name} FAILED: {exc}")
            return None

    try:
        res["train"] = attempt("train", step_train, plan, env)
        if res["train"] is None:
            raise SystemExit("training failed; nothing else can be measured")
        res["in_process"] = attempt("in-process", step_in_process, plan, env)

        from core.contract import example_request

        files = {"risk": work / "risk.json", "mlflow": work / "mlflow.json"}
        files["risk"].write_text(json.dumps(example_request()))
        files["mlflow"].write_text(json.dumps({"dataframe_records": [example_request()]}))
        files.update(batch_bodies(plan.batch_sizes, work))

        http: dict[str, Any] = {"explained": {}, "mlflow": {}}
        res["http"] = http
        auth = attempt("API key", api_key, env) if res["train"] else None
        res["machine"]["authenticated_requests"] = auth is not None
        if auth is None:
            env["ICANS_AUTH"] = "off"
            res["notes"].append("this version has no `icans-risk keys` command: the service ran with ICANS_AUTH=off "
                                "and requests carried no API key.")
        for w in plan.workers:
            r = attempt(f"icans-risk serve --workers {w}", step_explained_server, plan, env, w, files, generator, logs,
                        auth)
            if r:
                http["explained"][f"workers_{w}"] = r
        if not plan.quick:  # the same, with audit records committed but not each fsynced (ICANS_AUDIT_SYNC)
            w = max(plan.workers)
            r = attempt(f"icans-risk serve --workers {w}, ICANS_AUDIT_SYNC=normal", step_explained_server, plan,
                        {**env, "ICANS_AUDIT_SYNC": "normal"}, w, files, generator, logs, auth)
            if r:
                r["audit_sync"] = "normal"
                http["explained"][f"workers_{w}_audit_sync_normal"] = r
        for w in plan.mlflow_workers:
            if w != min(plan.mlflow_workers) and time.perf_counter() - started > SOFT_BUDGET_S:
                res["notes"].append(f"mlflow models serve -w {w} skipped: the run was past {SOFT_BUDGET_S} s.")
                continue
            r = attempt(f"mlflow models serve -w {w}", step_mlflow_server, plan, env, w, files, generator, logs)
            if r:
                http["mlflow"][f"workers_{w}"] = r

        cold = [http["explained"]["workers_1"]["cold_start_s"]] if "workers_1" in http["explained"] else []
        for _ in range(plan.cold_starts - len(cold)):
            if cold and time.perf_counter() - started > SOFT_BUDGET_S:
                res["notes"].append(f"extra cold-start runs skipped: the run was past {SOFT_BUDGET_S} s.")
                break
            c = attempt("cold start", step_cold_start, env, logs)
            if c:
                cold.append(c)
        if cold:
            res["cold_start"] = cold_start_summary(cold, http)
        res["memory"] = memory_summary(http["explained"])

        res["batch"] = {"score": attempt("icans-risk score", step_score, plan, env, work)}
    finally:
        res["wall_s"] = time.perf_counter() - started
        res["machine"]["loadavg_end"] = os.getloadavg()
        res["ratios"], res["targets"] = targets(res)
        if plan.quick:
            res["notes"].append("quick mode: small model, short runs; the numbers are a smoke test, not results.")
        jpath, mpath = write_reports(res, out_dir)
        print_summary(res, jpath, mpath)
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
