"""HTTP load: one closed-loop load point with wrk (bench/wrk_report.lua) or the Python generator
(bench/loadgen.py), and a sweep over the plan's concurrencies with the server's CPU time per request.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.plan import ROOT, WRK_SCRIPT, Plan
from bench.processes import Server, parse_bench_json


def wrk_version() -> str | None:
    path = shutil.which("wrk")
    if not path:
        return None
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    first = (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "wrk"
    return first.split(" Copyright")[0].strip()


def load(url: str, body_file: Path | None, concurrency: int, seconds: float, generator: str,
         requests: int | None = None, header: str | None = None) -> dict[str, Any]:
    """Closed-loop load at `concurrency` connections: req/s, p50/p99 (ms), errors."""
    if generator == "wrk" and requests is None:
        threads = min(concurrency, 2)
        argv = ["wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
                "-s", str(WRK_SCRIPT), url, "--", str(body_file) if body_file else "", header or ""]
    else:
        argv = [sys.executable, "-m", "bench.loadgen", url, "-c", str(concurrency), "-d", str(seconds)]
        if body_file:
            argv += ["--body-file", str(body_file)]
        if requests is not None:
            argv += ["-n", str(requests)]
        if header:
            argv += ["--header", header]
    limit = seconds + 60 if requests is None else 600
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=limit)
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    raw = parse_bench_json(proc.stdout)
    seconds_run = raw["duration_us"] / 1e6
    errors = sum(raw[k] for k in raw if k.startswith("errors_"))
    return {
        "concurrency": concurrency,
        "requests": raw["requests"],
        "seconds": round(seconds_run, 3),
        "rps": raw["requests"] / seconds_run if seconds_run > 0 else 0.0,
        "p50_ms": raw["p50_us"] / 1e3,
        "p90_ms": raw["p90_us"] / 1e3,
        "p99_ms": raw["p99_us"] / 1e3,
        "max_ms": raw["latency_max_us"] / 1e3,
        "errors": errors,
        "errors_detail": {k: raw[k] for k in raw if k.startswith("errors_") or k == "non_2xx"},
        "generator": "wrk" if (generator == "wrk" and requests is None) else "bench.loadgen",
    }


def sweep(server: Server, path: str, body_file: Path | None, plan: Plan, generator: str,
          header: str | None = None) -> dict[str, Any]:
    """One load point per concurrency, with the server's own CPU time per request.

    CPU ms per request (all server processes) is robust to other load on the machine, where
    req/s and latency are not: 1000 / cpu_ms is what one core could serve.
    """
    out = {}
    for c in plan.concurrencies:
        cpu0 = server.cpu_seconds()
        r = load(server.url + path, body_file, c, plan.http_seconds, generator, header=header)
        cpu = server.cpu_seconds() - cpu0
        r["server_cpu_ms_per_request"] = cpu * 1000 / r["requests"] if r["requests"] else None
        out[f"c{c}"] = r
    return out
