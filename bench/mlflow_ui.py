"""`make mlflow-ui`'s cost: seconds until the UI answers, its processes and their memory.

Starts the target in its own session on a port of 8600-8699 (MLFLOW_PORT) against a throwaway
SQLite store, polls `/` until it answers 200, waits `--settle` seconds (job runners start after
the UI answers), then counts the session's processes and sums their proportional set size (PSS,
from /proc/<pid>/smaps_rollup: shared pages counted once across the processes) and stops them all.

    .venv/bin/python -m bench.mlflow_ui --port 8650 [--target mlflow-ui] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _session_pids(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == sid:
                pids.append(int(entry.name))
        except (ProcessLookupError, PermissionError):
            continue
    return pids


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def measure(target: str, port: int, settle: float, timeout: float) -> dict[str, float]:
    """One start of the target: seconds to the first 200, processes and PSS after `settle`."""
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:
        env = {**os.environ, "MLFLOW_PORT": str(port), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        t0 = time.perf_counter()
        proc = subprocess.Popen(["make", "-s", target], cwd=ROOT, env=env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            ready = None
            while time.perf_counter() - t0 < timeout:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            ready = time.perf_counter() - t0
                            break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                time.sleep(0.25)
            if ready is None:
                raise RuntimeError(f"{target} did not answer within {timeout:.0f} s")
            time.sleep(settle)
            pids = _session_pids(proc.pid)
            pss = sum(_pss_kib(p) for p in pids)
            return {"seconds_to_answer": ready, "processes": len(pids), "pss_mib": pss / 1024}
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="mlflow-ui")
    ap.add_argument("--port", type=int, default=8650)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settle", type=float, default=15.0)
    ap.add_argument("--timeout", type=float, default=240.0)
    args = ap.parse_args()
    runs = [measure(args.target, args.port, args.settle, args.timeout) for _ in range(args.repeats)]
    for r in runs:
        print(f"{args.target}: answered in {r['seconds_to_answer']:.1f} s, {r['processes']} processes, "
              f"PSS {r['pss_mib']:.0f} MiB")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median of {len(runs)}: {med['seconds_to_answer']:.1f} s, {med['processes']:.0f} processes, "
          f"PSS {med['pss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
