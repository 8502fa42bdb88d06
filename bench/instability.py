"""How sure is 18%? (issue 17) Is the served 95% model-development interval honest, and what does it cost?

1. Simulation: generator cohorts of 150, 300 and 2,000 patients (several generator seeds each) are
   tuned and fitted exactly as `make train` does (every family tuned, `fit_procedure`, thresholds
   from the out-of-fold risks), then B bootstrap models of the chosen configuration are fitted
   (`pipeline.train.instability.bootstrap_ensemble`). Reported per size: MAPE and median 95% interval
   width (development patients and fresh test patients) and the mean P(another risk group).
   Coverage: the same configuration (family, parameters, Platt calibration on out-of-fold margins,
   fit on all; not re-tuned) fitted on 20,000 fresh generator patients gives "the limit a bigger
   sample would reach" for 2,000 fresh test patients; coverage is the share of them whose limit
   lies inside the small model's interval. Coverage of the generator's p_true is shown for context.
2. Speed: on one 2,000-patient model, one patient's explanation against its B margins + summary,
   batch rows/s on 100,000 rows and the ensemble's size.

    .venv/bin/python -m bench.instability [--sizes 150 300 2000] [--seeds 1 2 3] [--models 200]

Writes bench/instability.md and bench/instability.json (`--from-json` rewrites the .md only). Measured: 27
minutes on 2 cores shared with other jobs (load average 4-10; about 15 CPU-minutes in all).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
from joblib import Parallel, delayed

HERE = Path(__file__).resolve().parent
FRESH_N = 20_000  # the sample the "limit" model is fitted on
TEST_N = 2_000  # fresh test patients the intervals are checked on
BATCH_N = 100_000
FRESH_SEED, TEST_SEED, BATCH_SEED = 987_654, 123_457, 555_001
OUTCOME = "severe_icans"


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), 1e-7, 1 - 1e-7)
    return np.log(p / (1 - p))


def coverage(low: np.ndarray, high: np.ndarray, target: np.ndarray) -> float:
    """Share of rows whose target lies inside [low, high] (both ends included)."""
    low, high, target = (np.asarray(a, dtype=float) for a in (low, high, target))
    if low.shape != target.shape or high.shape != target.shape:
        raise ValueError("low, high and target must have one value per row")
    return float(np.mean((low <= target) & (target <= high)))


def fit_configuration(kind: str, params: dict[str, Any], X: np.ndarray, y: np.ndarray, cv_folds: int, seed: int,
                      n_jobs: int) -> Callable[[np.ndarray], np.ndarray]:
    """The procedure without re-tuning, as each bootstrap replicate runs it
    (`pipeline.train.validation.fit_configuration`). Returns risk(X)."""
    from models.calibration import risk_of
    from pipeline.train.validation import fit_configuration as fit

    final, platt, _ = fit(kind, params, X, y, cv_folds, seed, n_jobs)
    return lambda Z: risk_of(platt.transform(_logit(final.predict_proba(Z)[:, 1])))


def tune_and_fit(size: int, gen_seed: int, settings: Any, n_jobs: int) -> dict[str, Any]:
    """Tune every family and run `fit_procedure` on a generator cohort, as `make train` does."""
    from models.candidates import CANDIDATES
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame
    from pipeline.train.tuning import choose_thresholds
    from pipeline.train.validation import Search, choose_design, fit_procedure, tune

    df = generate_cohort(size, gen_seed)
    X, y = encode_frame(df), df[OUTCOME].astype(int).to_numpy()
    design = choose_design(int(y.sum()), len(y), settings)
    search = Search.of(settings)  # the shipped search (pipeline.train.tuning: tune_candidates, choose)
    t0 = time.perf_counter()
    tuned = {name: tune(name, X, y, search.n_iter, search.cv_folds, settings.seed, n_jobs) for name in CANDIDATES}
    fitted = fit_procedure(X, y, tuned, search.cv_folds, settings.seed, n_jobs)
    low, high = choose_thresholds(y, fitted.oof_risk)
    return {"size": size, "gen_seed": gen_seed, "X": X, "y": y, "fitted": fitted, "low": low, "high": high,
            "design": design.kind, "tune_fit_s": round(time.perf_counter() - t0, 1)}


def bundle_of(dev: dict[str, Any], ensemble: Any) -> Any:
    """The bundle training would build (final model, calibration, thresholds, the B models)."""
    from models.artifact import ModelBundle

    fitted = dev["fitted"]
    return ModelBundle(
        kind=fitted.chosen,
        estimator=fitted.estimator.get_booster() if fitted.chosen == "xgboost" else fitted.estimator,
        calibration_intercept=fitted.platt.intercept_, calibration_slope=fitted.platt.slope_,
        low_threshold=dev["low"], high_threshold=dev["high"], outcome=OUTCOME,
        metadata={"params": fitted.params, "n_dev": dev["size"]}, instability=ensemble,
    )


def assess(dev: dict[str, Any], settings: Any, n_models: int, n_jobs: int, test, fresh) -> tuple[dict, Any]:
    """B bootstrap models of the chosen configuration; instability and coverage figures."""
    from pipeline.train.instability import bootstrap_ensemble, summarise

    fitted, X, y = dev["fitted"], dev["X"], dev["y"]
    t0 = time.perf_counter()
    ens, redraws = bootstrap_ensemble(fitted.chosen, fitted.params, X, y, n_models, settings.cv_folds,
                                      settings.seed, n_jobs)
    bootstrap_s = time.perf_counter() - t0
    bundle = bundle_of(dev, ens)
    inst = summarise(ens, X, bundle.explain(X).log_odds, bundle.low_threshold, bundle.high_threshold, len(y))
    Xt, pt = test
    test_log_odds = bundle.explain(Xt).log_odds
    lo, hi, change = bundle.uncertainty(Xt, test_log_odds)
    t1 = time.perf_counter()
    Xf, yf = fresh
    limit = fit_configuration(fitted.chosen, fitted.params, Xf, yf, settings.cv_folds, settings.seed, n_jobs)(Xt)
    limit_s = time.perf_counter() - t1
    s = inst.summary
    final_test = 1 / (1 + np.exp(-test_log_odds))
    row = {
        "size": dev["size"], "gen_seed": dev["gen_seed"], "design": dev["design"], "events": int(y.sum()),
        "chosen": fitted.chosen, "platt_refused": bool(getattr(fitted, "platt_refused", False)), "params": {k: (v.item() if hasattr(v, "item") else v) for k, v in fitted.params.items()},
        "low": dev["low"], "high": dev["high"], "redrawn_samples": redraws,
        "mean_risk_dev": s["mean_risk"], "mape_dev": s["mape"], "mape_p90_dev": s["mape_p90"],
        "median_width_dev": s["median_interval_width"], "group_change_dev": s["group_change"],
        "median_width_test": float(np.median(hi - lo)), "group_change_test": float(np.mean(change)),
        "mape_test": float(np.mean(np.abs(1 / (1 + np.exp(-ens.margins(Xt))) - final_test[:, None]))),
        "coverage_limit": coverage(lo, hi, limit),
        "limit_below": float(np.mean(limit < lo)), "limit_above": float(np.mean(limit > hi)),
        "coverage_p_true": coverage(lo, hi, pt),
        "mean_abs_final_minus_limit": float(np.mean(np.abs(final_test - limit))),
        "tune_fit_s": dev["tune_fit_s"], "bootstrap_s": round(bootstrap_s, 1), "limit_fit_s": round(limit_s, 1),
        "ensemble_mb": round(ens.nbytes / 2**20, 2),
        "loadavg": [round(v, 2) for v in os.getloadavg()],
    }
    return row, bundle


# --------------------------------------------------------------------------- speed


def _median_us(fn: Callable[[], object], calls: int) -> dict[str, Any]:
    fn()  # warm (numba compilation, caches)
    ns = []
    load0 = os.getloadavg()
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        ns.append(time.perf_counter_ns() - t)
    return {"median_us": float(np.median(ns)) / 1000, "p90_us": float(np.quantile(ns, 0.9)) / 1000,
            "calls": calls, "loadavg": [round(v, 2) for v in (*load0[:1], *os.getloadavg())]}


def _rows_per_s(fn: Callable[[], object], rows: int, repeats: int = 3) -> dict[str, Any]:
    fn()
    best = float("inf")
    load0 = os.getloadavg()
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return {"rows_per_s": rows / best, "best_s": best, "repeats": repeats,
            "loadavg": [round(v, 2) for v in (*load0[:1], *os.getloadavg())]}


def speed(bundle: Any, X_one_source: np.ndarray, calls: int = 3000) -> dict[str, Any]:
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame

    ens = bundle.instability
    rows = [X_one_source[i:i + 1].copy() for i in range(len(X_one_source))]
    own = bundle.explain(X_one_source).log_odds
    own_rows = [own[i:i + 1].copy() for i in range(len(own))]
    counter = iter(range(10**9))
    current = [0]

    def pick() -> np.ndarray:
        current[0] = next(counter) % len(rows)
        return rows[current[0]]

    explain = _median_us(lambda: bundle.explain(pick()), calls)

    def uncertainty_one() -> object:
        x = pick()
        return bundle.uncertainty(x, own_rows[current[0]])

    def both_one() -> object:
        x = pick()
        e = bundle.explain(x)
        return bundle.uncertainty(x, e.log_odds)

    uncertainty = _median_us(uncertainty_one, calls)
    margins = _median_us(lambda: ens.margins(pick()), calls)
    both = _median_us(both_one, calls)
    Xb = encode_frame(generate_cohort(BATCH_N, BATCH_SEED))
    log_odds = bundle.explain(Xb).log_odds
    batch_summary = _rows_per_s(lambda: bundle.uncertainty(Xb, log_odds), BATCH_N)
    batch_summary_par = _rows_per_s(lambda: bundle.uncertainty(Xb, log_odds, parallel=True), BATCH_N)
    batch_explain = _rows_per_s(lambda: bundle.explain(Xb), BATCH_N)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instability.npz"
        ens.save(path)
        saved_mb = path.stat().st_size / 2**20
    walked = int(ens.tree_model.shape[0])
    return {
        "kind": bundle.kind, "models": ens.n_models, "explain_one": explain, "uncertainty_one": uncertainty,
        "margins_one": margins, "explain_plus_uncertainty_one": both,
        "added_us_per_request": both["median_us"] - explain["median_us"],
        "batch_uncertainty": batch_summary, "batch_uncertainty_parallel": batch_summary_par,
        "batch_explain": batch_explain, "ensemble_mb": round(ens.nbytes / 2**20, 2),
        "ensemble_file_mb": round(saved_mb, 2), "mixed_feature_trees_walked": walked,
        "numba_threads": _numba_threads(),
    }


def _numba_threads() -> int:
    import numba

    return int(numba.get_num_threads())


# --------------------------------------------------------------------------- report


def main() -> None:
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame
    from core.settings import Settings

    default = Settings()
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 300, 2000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--extra-small-seeds", type=int, nargs="*", default=[4, 5],
                    help="more generator seeds for the sizes below 1,000 (cheap)")
    ap.add_argument("--models", type=int, default=default.instability_models)
    ap.add_argument("--n-jobs", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=HERE)
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--from-json", type=Path, help="rewrite the .md from a results .json, without running")
    ap.add_argument("--before", type=Path, default=HERE / "instability_before_issue23.json",
                    help="an earlier run's .json, shown beside this one (before / after table)")
    args = ap.parse_args()
    if args.from_json:
        from bench.instability_report import report

        saved = json.loads(args.from_json.read_text())
        for k in ("n_iter", "cv_folds", "seed", "models", "n_jobs", "search_cv_folds", "runs"):
            setattr(args, k, saved["settings"].get(k))
        text = report(saved["cohorts"], saved["speed"], args, saved["total_s"], saved.get("finished"), _before(args))
        (args.out_dir / "instability.md").write_text(text)
        print(text)
        return
    settings = default
    args.n_iter, args.cv_folds, args.seed = settings.n_iter, settings.cv_folds, settings.seed
    args.search_cv_folds = settings.search_cv_folds
    started = time.perf_counter()
    test_df = generate_cohort(TEST_N, TEST_SEED)
    fresh_df = generate_cohort(FRESH_N, FRESH_SEED)
    test = (encode_frame(test_df), test_df["p_true"].to_numpy(dtype=float))
    fresh = (encode_frame(fresh_df), fresh_df[OUTCOME].astype(int).to_numpy())
    cohorts = [(size, gen_seed) for size in args.sizes
               for gen_seed in list(args.seeds) + (list(args.extra_small_seeds) if size < 1000 else [])]
    # Tuning is single-threaded scikit-learn search: run the cohorts side by side, one core each
    # (the largest first, so that the two workers finish together).
    print(f"tuning {len(cohorts)} cohorts on {args.n_jobs} workers ...", flush=True)
    order = sorted(cohorts, key=lambda c: -c[0])
    devs = Parallel(n_jobs=args.n_jobs)(delayed(tune_and_fit)(n, g, settings, 1) for n, g in order)
    devs.sort(key=lambda d: (d["size"], d["gen_seed"]))
    print(f"[{(time.perf_counter() - started) / 60:5.1f} min] tuned", flush=True)
    rows: list[dict] = []
    speed_source = None
    for dev in devs:
        row, bundle = assess(dev, settings, args.models, args.n_jobs, test, fresh)
        rows.append(row)
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] n={row['size']} seed={row['gen_seed']} "
              f"{row['chosen']}: MAPE {row['mape_dev']:.4f}, width dev/test {row['median_width_dev']:.3f}/"
              f"{row['median_width_test']:.3f}, coverage limit {row['coverage_limit']:.1%} "
              f"p_true {row['coverage_p_true']:.1%} (tune {row['tune_fit_s']} s, bootstrap {row['bootstrap_s']} s, "
              f"load {row['loadavg'][0]})", flush=True)
        if row["size"] == max(args.sizes) and speed_source is None:
            speed_source = (bundle, test[0])
        _write(args, rows, None, time.perf_counter() - started, partial=True)  # a cut-short run keeps its rows
    spd = None
    if speed_source is not None and not args.no_speed:
        print("speed ...", flush=True)
        spd = speed(*speed_source)
        print(json.dumps({k: v for k, v in spd.items() if not isinstance(v, dict)}, default=float), flush=True)
    print(_write(args, rows, spd, time.perf_counter() - started, partial=False))


def _before(args: argparse.Namespace) -> dict | None:
    return json.loads(args.before.read_text()) if args.before and args.before.exists() else None


def _write(args: argparse.Namespace, rows: list[dict], spd: dict | None, total: float, partial: bool) -> str:
    """bench/instability.json and .md (after every cohort: a run cut short keeps what it measured)."""
    from bench.instability_report import report

    args.out_dir.mkdir(parents=True, exist_ok=True)
    finished = time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()) + (" (partial: still running)" if partial else "")
    (args.out_dir / "instability.json").write_text(json.dumps(
        {"settings": {"n_iter": args.n_iter, "search_cv_folds": args.search_cv_folds, "cv_folds": args.cv_folds,
                      "seed": args.seed, "models": args.models, "n_jobs": args.n_jobs, "fresh_n": FRESH_N,
                      "test_n": TEST_N, "batch_n": BATCH_N, "sizes": args.sizes, "seeds": args.seeds,
                      "extra_small_seeds": args.extra_small_seeds},
         "cohorts": rows, "speed": spd, "total_s": round(total, 1), "finished": finished}, indent=1, default=float))
    text = report(rows, spd, args, total, finished, _before(args))
    (args.out_dir / "instability.md").write_text(text)
    return text


if __name__ == "__main__":
    main()
