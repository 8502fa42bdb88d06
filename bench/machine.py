"""The machine and software a run measured on (CPU, memory, versions, commit, load average), so
that results.md says what its numbers are numbers of.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from bench.plan import ROOT, Plan


def machine_info(plan: Plan, generator: str) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    cpu_max = None
    with contextlib.suppress(OSError):
        cpu_max = Path("/sys/fs/cgroup/cpu.max").read_text().strip()
    versions = {"python": platform.python_version()}
    for pkg in ("xgboost", "fastapi", "starlette", "uvicorn", "pydantic", "mlflow", "numpy", "orjson", "uvloop",
                "httptools"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    commit, dirty = "unknown", None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                                    timeout=5).stdout.strip())
    return {
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "mode": "quick" if plan.quick else "full",
        "nproc": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cgroup_cpu_max": cpu_max,
        "cpu_model": cpu,
        "memory_gb": mem_gb,
        "kernel": platform.release(),
        "versions": versions,
        "load_generator": generator,
        "git_commit": commit,
        "git_dirty": dirty,
        "loadavg_start": os.getloadavg(),
    }
