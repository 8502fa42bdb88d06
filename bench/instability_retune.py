"""How much width would re-tuning in every bootstrap replicate add to the served interval? (issue 23, finding 8)

The served interval refits the chosen configuration (family and hyperparameters fixed) on each
bootstrap sample (`pipeline.train.instability`). Riley & Collins (2023) ask for the whole model-building
process in each replicate, tuning and the choice of family included. Doing that in training would
multiply its cost by B tunings, so this bench measures what it would change, paired, on the same
bootstrap samples:

- arm "fixed": `pipeline.train.instability._replicate` (the chosen configuration refitted; what is served);
- arm "retuned": every family tuned again on the bootstrap sample with the training search
  (`tune`, n_iter and cv_folds of the settings) and the family chosen again (`fit_procedure`).

For every test patient each arm gives the 2.5th-97.5th percentile of its B risks. Reported per
cohort: median width of each arm and their ratio, coverage of the "limit" (the chosen configuration
fitted on 20,000 fresh patients, as in bench/instability.py) and of the generator's true risk
p_true, and how often a replicate chose another family. B is small here (tuning is the costly
step), so both arms use the same B and the same samples: compare the arms with each other, not
with the B = 200 figures of bench/instability.md.

    .venv/bin/python -m bench.instability_retune [--sizes 150 300 2000] [--seeds 1 2] [--models 10]

Writes bench/instability_retune.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from joblib import Parallel, delayed

from bench.instability import FRESH_N, FRESH_SEED, OUTCOME, TEST_SEED, coverage, fit_configuration, tune_and_fit

HERE = Path(__file__).resolve().parent
TEST_N = 1_000


def _bootstrap_sample(y: np.ndarray, cv_folds: int, seed: int, b: int) -> np.ndarray:
    """The bootstrap indices `pipeline.train.instability._replicate` draws for replicate b (same rng, same redraws)."""
    rng = np.random.default_rng([seed, b])
    n = len(y)
    while True:
        idx = rng.integers(0, n, n)
        events = int(y[idx].sum())
        if min(events, n - events) >= cv_folds:
            return idx


def replicate(dev: dict[str, Any], settings: Any, b: int, Xt: np.ndarray) -> dict[str, Any]:
    """Both arms on bootstrap sample b: test-patient risks and the family the retuned arm chose."""
    from models.candidates import CANDIDATES
    from pipeline.train.validation import Search, fit_procedure, tune

    X, y, fitted = dev["X"], dev["y"], dev["fitted"]
    search = Search.of(settings)  # the shipped search, as training and bench.instability's tune_and_fit run it
    idx = _bootstrap_sample(y, search.cv_folds, settings.seed, b)
    Xb, yb = X[idx], y[idx]
    fixed = fit_configuration(fitted.chosen, fitted.params, Xb, yb, search.cv_folds, settings.seed, 1)(Xt)
    t0 = time.perf_counter()
    tuned = {name: tune(name, Xb, yb, search.n_iter, search.cv_folds, settings.seed, 1) for name in CANDIDATES}
    again = fit_procedure(Xb, yb, tuned, search.cv_folds, settings.seed, 1, search.families)
    return {"fixed": fixed, "retuned": again.predict(Xt), "chosen": again.chosen,
            "same_params": again.chosen == fitted.chosen and again.params == fitted.params,
            "retune_s": time.perf_counter() - t0}


def run_cohort(size: int, gen_seed: int, settings: Any, n_models: int, n_jobs: int, test: tuple, fresh: tuple
               ) -> dict[str, Any]:
    from pipeline.train.validation import Search

    t0 = time.perf_counter()
    dev = tune_and_fit(size, gen_seed, settings, 1)
    Xt, pt = test
    reps = Parallel(n_jobs=n_jobs)(delayed(replicate)(dev, settings, b, Xt) for b in range(n_models))
    fitted = dev["fitted"]
    Xf, yf = fresh
    limit = fit_configuration(fitted.chosen, fitted.params, Xf, yf, Search.of(settings).cv_folds, settings.seed,
                              n_jobs)(Xt)
    row: dict[str, Any] = {"size": size, "gen_seed": gen_seed, "events": int(dev["y"].sum()),
                           "chosen": fitted.chosen, "models": n_models}
    for arm in ("fixed", "retuned"):
        risks = np.column_stack([r[arm] for r in reps])
        lo, hi = np.percentile(risks, [2.5, 97.5], axis=1)
        row[f"median_width_{arm}"] = float(np.median(hi - lo))
        row[f"coverage_limit_{arm}"] = coverage(lo, hi, limit)
        row[f"coverage_p_true_{arm}"] = coverage(lo, hi, pt)
        row[f"widths_{arm}"] = hi - lo
    ratio = row.pop("widths_retuned") / np.maximum(row.pop("widths_fixed"), 1e-9)
    row["median_width_ratio"] = float(np.median(ratio))
    row["other_family"] = float(np.mean([r["chosen"] != fitted.chosen for r in reps]))
    row["same_configuration"] = float(np.mean([r["same_params"] for r in reps]))
    row["retune_s_per_replicate"] = round(float(np.mean([r["retune_s"] for r in reps])), 1)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace, total_s: float) -> str:
    lines = [
        "# Re-tuning in every bootstrap replicate: how much width it adds (issue 23, finding 8)",
        "",
        f"Generator cohorts tuned and fitted as `make train` does (n_iter {args.n_iter}, {args.cv_folds}-fold search CV, "
        f"seed {args.seed}); then B = {args.models} bootstrap samples (the samples `pipeline.train.instability` draws), "
        "each fitted twice: **fixed** = the chosen configuration refitted (what the service serves); **retuned** = "
        "every family tuned again on the sample and the family chosen again. Test = "
        f"{TEST_N:,} fresh generator patients (seed {TEST_SEED}); limit = the chosen configuration fitted on "
        f"{FRESH_N:,} fresh patients (seed {FRESH_SEED}); p_true = the generator's true risk. With B = "
        f"{args.models} the 2.5th-97.5th percentiles are close to the range of the B risks, so compare the two arms "
        "with each other (same samples, same B), not with the B = 200 figures of `bench/instability.md`.",
        "",
        f"Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores shared with other jobs, "
        f"n_jobs {args.n_jobs}, total {total_s / 60:.1f} min.",
        "",
        "| n | seed | events | chosen | median width fixed | median width retuned | median ratio retuned/fixed | "
        "coverage of the limit fixed / retuned | coverage of p_true fixed / retuned | replicates choosing another "
        "family | same configuration | retune s per replicate | load (1/5/15) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']:,} | {r['gen_seed']} | {r['events']} | {r['chosen']} | {r['median_width_fixed']:.3f} | "
            f"{r['median_width_retuned']:.3f} | {r['median_width_ratio']:.2f} | {r['coverage_limit_fixed']:.1%} / "
            f"{r['coverage_limit_retuned']:.1%} | {r['coverage_p_true_fixed']:.1%} / {r['coverage_p_true_retuned']:.1%} "
            f"| {r['other_family']:.0%} | {r['same_configuration']:.0%} | {r['retune_s_per_replicate']} | "
            f"{'/'.join(str(v) for v in r['loadavg'])} |")
    lines += ["", "## Per size (means over seeds)", "",
              "| n | cohorts | median width fixed | median width retuned | median ratio | coverage of p_true fixed / "
              "retuned |", "|---|---|---|---|---|---|"]
    for size in sorted({r["size"] for r in rows}):
        rs = [r for r in rows if r["size"] == size]

        def m(k: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([r[k] for r in rs]))

        lines.append(f"| {size:,} | {len(rs)} | {m('median_width_fixed'):.3f} | {m('median_width_retuned'):.3f} | "
                     f"{m('median_width_ratio'):.2f} | {m('coverage_p_true_fixed'):.1%} / "
                     f"{m('coverage_p_true_retuned'):.1%} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame
    from core.settings import Settings

    settings = Settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 300, 2000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--large-seeds", type=int, nargs="+", default=[1], help="generator seeds for sizes >= 1,000")
    ap.add_argument("--models", type=int, default=10)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=HERE)
    args = ap.parse_args()
    args.n_iter, args.cv_folds, args.seed = settings.n_iter, settings.search_cv_folds, settings.seed  # the shipped search
    started = time.perf_counter()
    test_df = generate_cohort(TEST_N, TEST_SEED)
    fresh_df = generate_cohort(FRESH_N, FRESH_SEED)
    test = (encode_frame(test_df), test_df["p_true"].to_numpy(dtype=float))
    fresh = (encode_frame(fresh_df), fresh_df[OUTCOME].astype(int).to_numpy())
    rows = []
    # one cohort of every size first, then the next seed (results are written after each cohort)
    cohorts = [(size, seed) for seed in sorted(set(args.seeds) | set(args.large_seeds)) for size in args.sizes
               if seed in (args.large_seeds if size >= 1000 else args.seeds)]
    for size, gen_seed in cohorts:
        row = run_cohort(size, gen_seed, settings, args.models, args.n_jobs, test, fresh)
        rows.append(row)
        print(json.dumps(row, default=float), flush=True)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "instability_retune.json").write_text(json.dumps(
            {"settings": {"n_iter": args.n_iter, "cv_folds": args.cv_folds, "seed": args.seed,
                          "models": args.models, "test_n": TEST_N, "fresh_n": FRESH_N},
             "cohorts": rows}, indent=1, default=float))
        (args.out_dir / "instability_retune.md").write_text(report(rows, args, time.perf_counter() - started))
    print(report(rows, args, time.perf_counter() - started))


if __name__ == "__main__":
    main()
