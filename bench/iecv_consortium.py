"""IECV of a synthetic consortium beside the generator's truth, in-process and on a local Dask
cluster, and the measured per-task cost that extrapolates to a larger consortium (issue 27).

    nice .venv/bin/python -m bench.iecv_consortium [--seeds 42 43] [--cluster] [--sizes 400 800 1600]

Writes bench/iecv_consortium.json. The truth per centre, given its patients: the expected AUROC
(every pair weighted by p_true_i (1 - p_true_j)), the expected O/E (sum p_true / sum risk) and the
calibration slope of the risks against p_true (logistic fit with p_true as the outcome); the
oracle AUROC is the ceiling (the true risk ranking the drawn outcomes).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy.special import logit

from pipeline.data.synthetic_centres import DEFAULT_CONSORTIUM, CentreSpec, generate_consortium
from core.contract import CENTRE_COLUMN
from pipeline.train.iecv import run_iecv
from pipeline.stats.metrics import _fit_logistic_offset, auroc
from core.settings import Settings

OUT = Path(__file__).with_name("iecv_consortium.json")
THRESHOLDS = {"low": 0.08, "high": 0.30}


def expected_auroc(p_true: np.ndarray, risk: np.ndarray) -> float:
    w_pos, w_neg = p_true, 1 - p_true
    higher = (risk[:, None] > risk[None, :]) + 0.5 * (risk[:, None] == risk[None, :])
    num = float(w_pos @ higher @ w_neg - np.sum(w_pos * w_neg * 0.5))
    return num / float(w_pos.sum() * w_neg.sum() - np.sum(w_pos * w_neg))


def true_slope(p_true: np.ndarray, risk: np.ndarray) -> float:
    lp = logit(np.clip(risk, 1e-12, 1 - 1e-12))
    fit = _fit_logistic_offset(np.column_stack([np.ones_like(lp), lp]), p_true, np.zeros_like(lp))
    return float(fit[1]) if fit is not None else float("nan")


def one_run(seed: int, cluster: str | None, workers: int) -> dict:
    df = generate_consortium(DEFAULT_CONSORTIUM, seed=seed)
    settings = Settings(seed=seed, cluster=cluster, cluster_workers=workers)
    t0 = time.perf_counter()
    res = run_iecv(df, "severe_icans", settings, THRESHOLDS, n_jobs=max(1, os.cpu_count() or 1))
    wall = time.perf_counter() - t0
    centres = []
    for r in res.rows:
        mask = (df[CENTRE_COLUMN] == r["centre"]).to_numpy()
        p, risk = df["p_true"].to_numpy(float)[mask], res.predictions[mask]
        y = df["severe_icans"].to_numpy(int)[mask]
        centres.append({**{k: v for k, v in r.items() if not isinstance(v, bool)}, "estimable": r["estimable"],
                        "truth_prevalence": float(p.mean()), "truth_auroc": expected_auroc(p, risk),
                        "truth_oe": float(p.sum() / risk.sum()), "truth_slope": true_slope(p, risk),
                        "oracle_auroc": auroc(y, p)})
    return {"seed": seed, "where": res.where, "wall_seconds": wall, "task_seconds": res.task_seconds,
            "task_cpu_seconds": res.task_cpu_seconds,
            "n": len(df), "centres": centres, "pooled": {m: p.to_dict() for m, p in res.pooled.items()},
            "metrics": res.metrics()}


def task_costs(sizes: list[int], seed: int) -> list[dict]:
    """Wall and CPU seconds of one IECV task (the whole procedure on n patients) by training size."""
    from pipeline.train.iecv import _leave_out
    from core.features import encode_frame
    from pipeline.train.validation import Procedure

    settings = Settings(seed=seed)
    out = []
    for n in sizes:
        df = generate_consortium((CentreSpec("T", n), CentreSpec("V", 100)), seed=seed)
        X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
        tr, te = np.flatnonzero(df[CENTRE_COLUMN] == "T"), np.flatnonzero(df[CENTRE_COLUMN] == "V")
        proc = Procedure(settings.n_iter, settings.search_cv_folds, space_events=int(y.sum()))
        # CPU seconds of the single-threaded task: what it costs on a dedicated core (the wall
        # seconds depend on the machine's load)
        _, seconds, cpu = _leave_out(X, y, tr, te, proc, seed)
        out.append({"train_n": n, "seconds": seconds, "cpu_seconds": cpu})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[42])
    ap.add_argument("--cluster", action="store_true", help="also run each seed on a LocalCluster")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="*", default=[])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    runs = []
    for seed in args.seeds:
        runs.append(one_run(seed, None, args.workers))
        print(f"seed {seed} in-process: {runs[-1]['wall_seconds']:.1f} s", flush=True)
        if args.cluster:
            runs.append(one_run(seed, "local", args.workers))
            print(f"seed {seed} local cluster: {runs[-1]['wall_seconds']:.1f} s", flush=True)
    result = {"runs": runs, "task_costs": task_costs(args.sizes, args.seeds[0]) if args.sizes else [],
              "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    args.out.write_text(json.dumps(result, indent=1, default=float))
    print(args.out)


if __name__ == "__main__":
    main()
