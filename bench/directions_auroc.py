"""What the evidence-only monotone constraints do to discrimination (issue 23, finding 10).

Three constraint sets, the same configuration of each tree family, fitted on generator cohorts and
scored on 20,000 fresh generator patients (AUROC against their outcomes and against the generator's
true risk p_true):

- before: baseline IL-6, IFN-gamma, IL-15 and creatinine held to "raises risk", product free;
- after: those four free, each product that fixes the costimulatory domain held to its domain's
  direction (the contract now);
- none: no constraint at all.

The configurations are fixed (one near-additive and one deeper per family, from the search space),
not tuned per cohort: the comparison isolates the constraints, at the cost of not being the exact
model `make train` would choose. Fresh-data AUROC, not the validated (cross-validated) AUROC of a
training run.

    .venv/bin/python -m bench.directions_auroc [--sizes 300 2000] [--seeds 1 2 3]

Writes bench/directions_auroc.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
FRESH_N, FRESH_SEED = 20_000, 987_655
OUTCOME = "severe_icans"
CONFIGS: dict[str, dict[str, Any]] = {
    "xgboost depth 2": {"family": "xgboost", "n_estimators": 200, "learning_rate": 0.05, "max_depth": 2,
                        "min_child_weight": 1.0, "reg_lambda": 5.0},
    "xgboost depth 3": {"family": "xgboost", "n_estimators": 200, "learning_rate": 0.05, "max_depth": 3,
                        "min_child_weight": 5, "reg_lambda": 5.0},
    "hgb depth 2": {"family": "hist_gradient_boosting", "max_iter": 200, "learning_rate": 0.05, "max_depth": 2,
                    "max_leaf_nodes": 3, "min_samples_leaf": 10, "l2_regularization": 1.0},
    "hgb depth 3": {"family": "hist_gradient_boosting", "max_iter": 200, "learning_rate": 0.05, "max_depth": 3,
                    "max_leaf_nodes": 8, "min_samples_leaf": 20, "l2_regularization": 1.0},
}


def constraint_sets() -> dict[str, tuple[int, ...]]:
    from core.features import MATRIX_NAMES, monotone_constraints

    after = monotone_constraints()
    before = list(after)
    for name in ("il6_pg_ml", "ifng_pg_ml", "il15_pg_ml", "creatinine_mg_dl"):
        before[MATRIX_NAMES.index(name)] = 1
    for j, name in enumerate(MATRIX_NAMES):
        if name.startswith("product="):
            before[j] = 0
    return {"before": tuple(before), "after": tuple(after), "none": tuple(0 for _ in after)}


def fit_score(config: dict[str, Any], cst: tuple[int, ...], X, y, Xf, yf, pf, seed: int) -> dict[str, float]:
    from models.candidates import CANDIDATES

    params = {k: v for k, v in config.items() if k != "family"}
    family = config["family"]
    model = CANDIDATES[family].factory(seed, 1).set_params(**params)
    model.set_params(**({"monotone_constraints": cst} if family == "xgboost" else {"monotonic_cst": list(cst)}))
    model.fit(X, y)
    p = model.predict_proba(Xf)[:, 1]
    return {"auroc": float(roc_auc_score(yf, p)), "spearman_p_true": float(_spearman(p, pf))}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[300, 2000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--from-log", type=Path, help="write the report from the JSON rows a run printed")
    args = ap.parse_args()
    t0 = time.perf_counter()
    fresh = generate_cohort(FRESH_N, FRESH_SEED)
    Xf, yf, pf = encode_frame(fresh), fresh[OUTCOME].astype(int).to_numpy(), fresh["p_true"].to_numpy(float)
    oracle = float(roc_auc_score(yf, pf))
    if args.from_log:
        rows = [json.loads(line) for line in args.from_log.read_text().splitlines() if line.startswith("{")]
        sizes = sorted({r["size"] for r in rows})
        (args.out_dir / "directions_auroc.json").write_text(json.dumps({"oracle_auroc": oracle, "rows": rows}, indent=1))
        (args.out_dir / "directions_auroc.md").write_text("\n".join(report(rows, oracle, None, sizes)) + "\n")
        return
    sets = constraint_sets()
    rows = []
    for size in args.sizes:
        for seed in args.seeds:
            df = generate_cohort(size, seed)
            X, y = encode_frame(df), df[OUTCOME].astype(int).to_numpy()
            for name, config in CONFIGS.items():
                row: dict[str, Any] = {"size": size, "seed": seed, "config": name, "events": int(y.sum())}
                for label, cst in sets.items():
                    r = fit_score(config, cst, X, y, Xf, yf, pf, seed)
                    row[f"auroc_{label}"], row[f"spearman_{label}"] = r["auroc"], r["spearman_p_true"]
                rows.append(row)
                print(json.dumps(row), flush=True)
    total = time.perf_counter() - t0
    lines = report(rows, oracle, total, args.sizes)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "directions_auroc.json").write_text(json.dumps(
        {"oracle_auroc": oracle, "rows": rows, "total_s": round(total, 1),
         "loadavg": [round(v, 2) for v in os.getloadavg()]}, indent=1))
    (args.out_dir / "directions_auroc.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def report(rows: list[dict[str, Any]], oracle: float, total: float | None, sizes: list[int]) -> list[str]:
    """The Markdown table: mean AUROC per size and configuration under each constraint set."""
    run = f"{total / 60:.1f} min" if total is not None else "rows of an interrupted run"
    lines = [
        "# Evidence-only monotone constraints: discrimination before and after (issue 23, finding 10)",
        "",
        f"Fixed configurations fitted on generator cohorts, scored on {FRESH_N:,} fresh generator patients "
        f"(seed {FRESH_SEED}; oracle AUROC of p_true {oracle:.3f}). before = cytokines and creatinine held to "
        "'raises risk', product free; after = the contract now (those four free, products held to their "
        "domain's direction); none = unconstrained. Fresh-data AUROC, not a training run's validated AUROC; "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {run}, on a shared 2-core machine.",
        "",
        "| n | configuration | seeds | AUROC before | AUROC after | AUROC none | after - before (min, max over seeds) |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in sizes:
        for name in CONFIGS:
            rs = [r for r in rows if r["size"] == size and r["config"] == name]
            if not rs:
                continue
            d = [r["auroc_after"] - r["auroc_before"] for r in rs]
            lines.append(
                f"| {size:,} | {name} | {len(rs)} | {np.mean([r['auroc_before'] for r in rs]):.4f} | "
                f"{np.mean([r['auroc_after'] for r in rs]):.4f} | {np.mean([r['auroc_none'] for r in rs]):.4f} | "
                f"{np.mean(d):+.4f} ({min(d):+.4f}, {max(d):+.4f}) |")
    return lines


if __name__ == "__main__":
    main()
