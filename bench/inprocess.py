"""In-process timings, run in their own process: `python -m bench.inprocess --calls N --rows M`.

Reads the registered champion from MLFLOW_TRACKING_URI (the benchmark's temporary store) and
prints one line `BENCH_JSON {...}`:
- per-call latency of the floor (bare xgboost `inplace_predict` on one float32 numpy row; for a
  HistGradientBoosting champion its `predict_proba`) and of the service's path without HTTP
  (`PatientFeatures.model_validate(dict)` + `Predictor.predict([...])`: validate, encode,
  predict, explain, build the answer), measured in interleaved rounds so drift hits both alike;
- a breakdown of the service path into its steps;
- bulk rates: bare prediction and `encode_frame` + `ModelBundle.explain` over M cohort rows.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # what `icans-risk serve` sets; before xgboost loads

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Callable  # noqa: E402

import numpy as np  # noqa: E402


def _stats(ns: list[int]) -> dict[str, float]:
    a = np.asarray(ns, dtype=np.float64) / 1e3
    return {
        "median_us": float(np.median(a)),
        "p99_us": float(np.percentile(a, 99)),
        "mean_us": float(a.mean()),
        "n": int(a.size),
    }


def time_interleaved(fns: dict[str, Callable[[], object]], calls: int, rounds: int = 5,
                     warmup: int = 50) -> dict[str, dict[str, float]]:
    """Per-call wall time of each function, `calls` in total, alternating in `rounds` blocks."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[int]] = {k: [] for k in fns}
    per_round = max(1, calls // rounds)
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, fn in fns.items():
            out = samples[name]
            for _ in range(per_round):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return {k: _stats(v) for k, v in samples.items()}


def model_facts(bundle) -> dict[str, object]:
    facts: dict[str, object] = {"kind": bundle.kind, "params": bundle.metadata.get("params", {})}
    if bundle.kind == "xgboost":
        dump = bundle.estimator.get_dump(dump_format="json")
        facts["n_trees"] = len(dump)
        depths = []
        leaves = 0
        for tree in dump:
            node = json.loads(tree)

            def walk(n, d=0):
                nonlocal leaves
                if "leaf" in n:
                    leaves += 1
                    depths.append(d)
                    return
                for c in n["children"]:
                    walk(c, d + 1)

            walk(node)
        facts["max_depth"] = int(max(depths)) if depths else 0
        facts["n_leaves"] = leaves
    return facts


def run(calls: int, rows: int, tracking_uri: str) -> dict[str, object]:
    import mlflow
    from mlflow import MlflowClient

    from pipeline.data.synthetic import generate_cohort
    from core.contract import example_request
    from core.features import N_MATRIX, encode_frame, encode_record
    from models.registry import load_bundle, resolve
    from core.settings import get_settings
    from serving.predictor import Predictor
    from serving.schemas import PatientFeatures, RiskResponse

    settings = get_settings(tracking_uri=tracking_uri)
    mlflow.set_tracking_uri(settings.tracking_uri)
    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    bundle = load_bundle(resolved, nthread=settings.predictor_threads)
    predictor = Predictor(bundle, resolved)
    _ = bundle.explainer  # sets the booster to the serving thread count before anything is timed

    request = example_request()
    row64 = np.empty((1, N_MATRIX), dtype=np.float64)
    encode_record(request, row64[0])
    row32 = row64.astype(np.float32)

    if bundle.kind == "xgboost":
        booster = bundle.estimator
        floor_name = "xgboost Booster.inplace_predict(1-row float32 numpy)"

        def floor() -> object:
            return booster.inplace_predict(row32, missing=np.nan)
    else:
        floor_name = "HistGradientBoostingClassifier.predict_proba(1-row numpy) (no xgboost model chosen)"
        est = bundle.estimator

        def floor() -> object:
            return est.predict_proba(row64)

    def service() -> object:
        return predictor.predict([PatientFeatures.model_validate(request).model_dump()])

    headline = time_interleaved({"floor": floor, "service": service}, calls)

    # Where the service path spends its time (each step alone, same interleaving).
    validated = PatientFeatures.model_validate(request).model_dump()
    answer = predictor.predict([validated])[0]
    answer.update(request_id="0" * 32, notice="n")
    steps: dict[str, Callable[[], object]] = {
        "validate (model_validate + model_dump)": lambda: PatientFeatures.model_validate(request).model_dump(),
        "encode_record into a numpy row": lambda: encode_record(validated, row64[0]),
        "ModelBundle.explain (margin + TreeSHAP + calibration)": lambda: bundle.explain(row64),
        "Predictor.predict (encode + explain + answer)": lambda: predictor.predict([validated]),
        "response model validate + JSON (what FastAPI adds)": lambda: RiskResponse.model_validate(answer).model_dump_json(),
    }
    if bundle.kind == "xgboost":
        import xgboost as xgb

        steps["reference: xgboost's own TreeSHAP, DMatrix(1 row) + predict(pred_contribs)"] = lambda: booster.predict(
            xgb.DMatrix(row32, missing=np.nan, nthread=1), pred_contribs=True
        )
    breakdown = time_interleaved(steps, max(calls // 2, 100), rounds=3, warmup=20)

    # Bulk rates over cohort rows (features only; the cohort's own NaN are the missing values).
    cohort = generate_cohort(rows, seed=11)
    gc.collect()
    t0 = time.perf_counter()
    X = encode_frame(cohort)
    t_encode = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex = bundle.explain(X)
    t_explain = time.perf_counter() - t0
    t0 = time.perf_counter()
    if bundle.kind == "xgboost":
        booster.inplace_predict(X.astype(np.float32), missing=np.nan)
    else:
        bundle.estimator.predict_proba(X)
    t_predict = time.perf_counter() - t0
    additivity = float(np.max(np.abs(ex.base + ex.contributions.sum(axis=1) - ex.log_odds)))
    # The same on every core (what `icans-risk score` could use; it runs with predictor_threads).
    cores = os.cpu_count() or 1
    bundle_all = load_bundle(resolved, nthread=cores)
    t0 = time.perf_counter()
    bundle_all.explain(X)
    t_explain_all = time.perf_counter() - t0

    floor_med = headline["floor"]["median_us"]
    return {
        "model": {"name": resolved.name, "version": resolved.version, **model_facts(bundle)},
        "floor_name": floor_name,
        "floor": headline["floor"],
        "service": headline["service"],
        "ratio_service_to_floor_median": headline["service"]["median_us"] / floor_med,
        "ratio_service_to_floor_p99": headline["service"]["p99_us"] / headline["floor"]["p99_us"],
        "breakdown": breakdown,
        "bulk": {
            "rows": rows,
            "nthread": settings.predictor_threads,
            "encode_rows_per_s": rows / t_encode,
            "explain_rows_per_s": rows / t_explain,
            "encode_and_explain_rows_per_s": rows / (t_encode + t_explain),
            "predict_only_rows_per_s": rows / t_predict,
            "explain_all_cores_rows_per_s": rows / t_explain_all,
            "all_cores": cores,
            "max_additivity_error": additivity,
        },
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"))
    args = ap.parse_args(argv)
    if not args.tracking_uri:
        raise SystemExit("set --tracking-uri or MLFLOW_TRACKING_URI (the benchmark's own store)")
    print("BENCH_JSON " + json.dumps(run(args.calls, args.rows, args.tracking_uri)), flush=True)


if __name__ == "__main__":
    main()
