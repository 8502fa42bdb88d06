"""The cost of the served interval for the largest configurations the search space allows.

`bench/instability.py` times the configuration training happened to choose (often depth-1 trees,
which all fold into the per-feature tables, the cheap case). Here the configuration is forced to the
largest of the search space, 300 xgboost trees of depth 2 and of depth 3, fitted on a 2,000-patient
generator cohort, with B bootstrap models (that configuration refitted): the expensive case, where most trees
mix features and must be evaluated as trees. Results: bench/instability_speed.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = {"depth 2": {"n_estimators": 300, "max_depth": 2, "learning_rate": 0.05},
           "depth 3": {"n_estimators": 300, "max_depth": 3, "learning_rate": 0.05}}


def main() -> None:
    from bench.instability import OUTCOME, TEST_N, TEST_SEED, speed
    from models.artifact import ModelBundle
    from models.calibration import PlattOnMargin
    from models.candidates import CANDIDATES
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame
    from pipeline.train.instability import bootstrap_ensemble
    from core.settings import Settings

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", type=int, default=Settings().instability_models)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--calls", type=int, default=2000)
    args = ap.parse_args()
    settings = Settings()
    df = generate_cohort(2000, 1)
    X, y = encode_frame(df), df[OUTCOME].astype(int).to_numpy()
    X_test = encode_frame(generate_cohort(TEST_N, TEST_SEED))[:500]
    out = {}
    for name, params in CONFIGS.items():
        t0 = time.perf_counter()
        ens, _ = bootstrap_ensemble("xgboost", params, X, y, args.models, settings.cv_folds, settings.seed, args.n_jobs)
        fit_s = time.perf_counter() - t0
        final = CANDIDATES["xgboost"].factory(settings.seed, 1).set_params(**params).fit(X, y)
        p = final.predict_proba(X)[:, 1]
        platt = PlattOnMargin().fit(final.predict(X, output_margin=True), y)  # only to give the bundle a calibration
        bundle = ModelBundle(kind="xgboost", estimator=final.get_booster(), calibration_intercept=platt.intercept_,
                             calibration_slope=platt.slope_, low_threshold=float(sorted(p)[len(p) // 2]),
                             high_threshold=float(sorted(p)[int(len(p) * 0.8)]), outcome=OUTCOME, instability=ens)
        out[name] = {"params": params, "bootstrap_fit_s": round(fit_s, 1), "walked_trees": int(ens.tree_model.shape[0]),
                     "all_trees": args.models * params["n_estimators"], "loadavg": os.getloadavg(),
                     **speed(bundle, X_test, calls=args.calls)}
        print(name, json.dumps({k: v for k, v in out[name].items() if not isinstance(v, dict)}, default=float),
              flush=True)
    (HERE / "instability_speed.json").write_text(json.dumps(out, indent=1, default=float))
    lines = [
        "# The served interval's cost, largest configurations (bench/instability_speed.py)",
        "",
        f"xgboost with 300 trees of depth 2 and of depth 3 (the largest of the search space), fitted on 2,000 "
        f"generator patients; {args.models} bootstrap models by the training procedure. Shared machine: the "
        f"1-minute load average is given beside each figure. Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        "",
        "| configuration | trees walked / all | explain, 1 patient (µs) | B margins + summary, 1 patient (µs) | "
        "added per request (µs) | batch with intervals (rows/s, 1 thread / 2 threads) | batch explain (rows/s) | "
        "ensemble MB | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in out.items():
        lines.append(
            f"| {name} | {r['walked_trees']:,} / {r['all_trees']:,} | {r['explain_one']['median_us']:.1f} | "
            f"{r['uncertainty_one']['median_us']:.1f} | {r['added_us_per_request']:.1f} | "
            f"{r['batch_uncertainty']['rows_per_s']:,.0f} / {r['batch_uncertainty_parallel']['rows_per_s']:,.0f} | "
            f"{r['batch_explain']['rows_per_s']:,.0f} | {r['ensemble_mb']} | {r['loadavg'][0]:.1f} |")
    (HERE / "instability_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
