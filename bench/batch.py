"""Batch scoring: `icans-risk score` on a generated CSV (patients per second, peak RSS), and the
request bodies of the batch API's load points.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.plan import ROOT, Plan
from bench.processes import run_timed, tool


def step_score(plan: Plan, env: dict[str, str], work: Path) -> dict[str, Any]:
    plain_env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}  # as `make score` runs it
    data = work / f"cohort_{plan.score_rows}.csv"
    out_file = work / f"scored_{plan.score_rows}.csv"
    t0 = time.perf_counter()
    subprocess.run([tool("icans-risk"), "generate", "--n", str(plan.score_rows), "--seed", "5", "--out", str(data)],
                   env=plain_env, cwd=ROOT, capture_output=True, text=True, timeout=600, check=True)
    generate_s = time.perf_counter() - t0
    r = run_timed([tool("icans-risk"), "score", "--data", str(data), "--out", str(out_file)], plain_env, timeout=900)
    with open(out_file) as f:
        n_out = sum(1 for _ in f) - 1
    if n_out != plan.score_rows:
        raise RuntimeError(f"score wrote {n_out} rows for {plan.score_rows} patients")
    return {
        "patients": plan.score_rows,
        "input": "CSV from `icans-risk generate`",
        "generate_s": generate_s,
        "wall_s": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "patients_per_s": plan.score_rows / r["wall_s"],
        "command": f"icans-risk score --data cohort_{plan.score_rows}.csv --out scored.csv",
    }


def batch_bodies(sizes: tuple[int, ...], work: Path) -> dict[str, Path]:
    import numpy as np
    import pandas as pd

    from pipeline.data.synthetic import generate_cohort
    from core.contract import FEATURE_NAMES

    out = {}
    df = generate_cohort(max(sizes), seed=17)[list(FEATURE_NAMES)]

    def plain(v: Any) -> Any:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return None
        if isinstance(v, np.generic):
            v = v.item()
            if isinstance(v, float) and math.isnan(v):
                return None
        return v

    records = [{k: plain(v) for k, v in rec.items()} for rec in df.astype(object).to_dict("records")]
    for size in sizes:
        path = work / f"batch_{size}.json"
        path.write_text(json.dumps({"patients": records[:size]}))
        out[f"batch{size}"] = path
    return out
