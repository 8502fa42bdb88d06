"""Memory: the resident set (VmRSS, VmHWM) of the server's workers, from /proc, and the run's
memory summary (per configuration, and the largest worker the target is judged on).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from bench.processes import Server, descendants


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (kB) of a process, from /proc."""
    out: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def worker_memory(server: Server, workers: int) -> list[dict[str, Any]]:
    assert server.proc is not None
    pids = [server.proc.pid] if workers == 1 else descendants(server.proc.pid)
    out = []
    for pid in pids:
        st = proc_status(pid)
        if st:
            out.append({"pid": pid, "rss_mb": st.get("VmRSS", 0) / 1024, "hwm_mb": st.get("VmHWM", 0) / 1024})
    # the workers are the big ones (a spawn-based supervisor also runs a tiny resource tracker)
    return sorted(out, key=lambda d: -d["rss_mb"])[:workers]


def memory_summary(explained: dict[str, Any]) -> dict[str, Any]:
    """RSS per worker of each `icans-risk serve` configuration at ready, after the load and after
    the batch runs; the largest worker after the load (and after the batches)."""
    mem: dict[str, Any] = {}
    for wk, e in explained.items():
        def mb(items):
            return ", ".join(f"{x['rss_mb']:.0f}" for x in items)

        mem[wk] = {"at_ready": mb(e["rss_at_ready"]), "after": mb(e["rss_after"]),
                   "after_batch": mb(e["rss_after_batch"]), "requests": e["risk_requests_before_rss"]}
    if mem:
        mem["worker_rss_mb_max"] = max(x["rss_mb"] for e in explained.values() for x in e["rss_after"])
        mem["worker_rss_mb_max_after_batch"] = max(
            x["rss_mb"] for e in explained.values() for x in e["rss_after_batch"])
    return mem
