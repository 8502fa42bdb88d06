"""Leaf-table TreeSHAP (models.leaftable) vs the numba TreeSHAP (models.treeshap): speed and size.

`python -m bench.leaftable_measure [--rows 100000] [--numba-max-rows 20000]`

For three xgboost models on the synthetic cohort's 24 matrix columns (the production shape:
100 trees of depth 2; bigger: 300 trees of depth 4 and of depth 6) prints the table size and
build time, the median latency of one row, and rows/s for 1,000 and --rows rows (best of a few
runs; the machine is shared, so figures are noisy). The numba kernel runs in parallel (2
threads) from 64 rows; leaf tables run on one thread, and also with threads=2. Where numba would
take too long it is timed on --numba-max-rows rows (marked "*").
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as `icans-risk serve`; before xgboost loads

import argparse  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402


def _best_rate(fn: Callable[[], object], rows: int, budget_s: float = 3.0, max_runs: int = 5) -> float:
    best, spent, runs = float("inf"), 0.0, 0
    while runs < max_runs and (runs == 0 or spent < budget_s):
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return rows / best


def _median_us(fn: Callable[[], object], calls: int) -> float:
    for _ in range(min(50, calls)):
        fn()
    ns = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        ns.append(time.perf_counter_ns() - t)
    return float(np.median(ns)) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--numba-max-rows", type=int, default=5_000)
    args = parser.parse_args()

    import xgboost as xgb

    from models.leaftable import LeafTables
    from models.treeshap import from_xgboost, shap_values
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame

    df = generate_cohort(20_000, seed=1)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    big = encode_frame(generate_cohort(args.rows, seed=2))
    print(f"{X.shape[1]} matrix columns; {os.cpu_count()} CPUs; rows/s best of up to 5 runs")
    header = f"{'model':<16}{'table':>9}{'build':>8}{'1 row lt':>10}{'1 row nb':>10}"
    header += f"{'1k lt':>12}{'1k numba':>12}{f'{args.rows} lt':>13}{f'{args.rows} lt 2thr':>15}{f'{args.rows} numba':>14}"
    print(header)
    for depth, n_trees in ((2, 100), (4, 300), (6, 300)):
        booster = xgb.XGBClassifier(
            n_estimators=n_trees, max_depth=depth, learning_rate=0.1, n_jobs=2, random_state=0
        ).fit(X, y).get_booster()
        flat = from_xgboost(booster)
        t = time.perf_counter()
        tables = LeafTables.build(flat)
        build_s = time.perf_counter() - t
        phi, _, _ = tables.shap_values(big[:2000])
        ref, _, _ = shap_values(flat, big[:2000])  # also compiles / loads the numba kernels
        assert np.abs(phi - ref).max() < 1e-9
        one = big[:1]
        line = f"{f'{n_trees}x depth {depth}':<16}{tables.nbytes / 2**20:>7.2f}MB{build_s:>7.2f}s"
        line += f"{_median_us(lambda: tables.shap_values(one), 3000):>8.1f}us"
        line += f"{_median_us(lambda: shap_values(flat, one), 300 if depth < 6 else 50):>8.1f}us"
        for n in (1000, args.rows):
            rows = big[:n]
            line += f"{_best_rate(lambda: tables.shap_values(rows), n):>{12 if n == 1000 else 13},.0f}"
            if n != 1000:
                line += f"{_best_rate(lambda: tables.shap_values(rows, threads=2), n):>15,.0f}"
            m = min(n, args.numba_max_rows) if depth > 2 else n
            mark = "*" if m < n else " "
            rate = _best_rate(lambda: shap_values(flat, big[:m]), m, max_runs=2 if depth > 2 else 5)
            line += f"{rate:>{11 if n == 1000 else 13},.0f}{mark}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
