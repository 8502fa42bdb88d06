"""Is the validation honest? Train on generator cohorts of 150, 300 and 2,000 patients (five seeds
each) exactly as `make train` does, and set each run's estimates beside the truth: the AUROC and
calibration slope of the same fitted model on a fresh 20,000-patient sample of the generator.

    .venv/bin/python -m bench.cohort_sizes [--sizes 150 300 2000] [--seeds 1 2 3 4 5]

Writes bench/cohort_sizes.md and bench/cohort_sizes.json. Takes about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FRESH_N = 20_000


def one(size: int, seed: int, fresh, root: Path) -> dict:
    import mlflow
    from mlflow import MlflowClient

    from models.candidates import make_logistic, make_untuned_hist_gradient_boosting
    from pipeline.data.synthetic import generate_cohort
    from core.features import encode_frame
    from pipeline.stats.metrics import binary_metrics
    from models.registry import load_bundle, resolve
    from core.settings import Settings
    from pipeline.train.run import train

    work = root / f"n{size}-s{seed}"
    work.mkdir()
    settings = Settings(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", artifact_root=(work / "art").as_uri(),
                        data_dir=work / "data", seed=seed)
    df = generate_cohort(size, seed)
    path = work / "cohort.csv"
    df.to_csv(path, index=False)
    started = time.perf_counter()
    result = train(settings, data=path)
    seconds = time.perf_counter() - started
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    bundle = load_bundle(resolve(client, f"models:/{result.model_name}/{result.version}"))
    Xf, yf = encode_frame(fresh), fresh["severe_icans"].astype(int).to_numpy()
    truth = binary_metrics(yf, bundle.predict_proba(Xf))
    m = result.metrics
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    children = client.search_runs([client.get_run(result.run_id).info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'")
    c = next(float(r.data.params["best_model__C"]) for r in children if r.data.tags.get("family") == "logistic")
    logistic = make_logistic(seed).set_params(model__C=c).fit(X, y)
    hgb = make_untuned_hist_gradient_boosting(seed).fit(X, y)
    design = result.design
    pre = "test" if design == "split" else "validated"
    return {
        "size": size, "seed": seed, "events": int(y.sum()), "design": design, "chosen": result.chosen,
        "apparent_auroc": m.get("apparent_auroc", np.nan), "apparent_slope": m.get("apparent_calibration_slope", np.nan),
        "validated_auroc": result.validated["auroc"], "validated_auroc_ci": [result.validated["auroc_ci_low"],
                                                                             result.validated["auroc_ci_high"]],
        "validated_slope": result.validated["calibration_slope"],
        "fresh_auroc": truth["auroc"], "fresh_slope": truth["calibration_slope"],
        "hgb_untuned_validated_auroc": m.get(f"{pre}_hgb_untuned_auroc", np.nan),
        "hgb_untuned_fresh_auroc": binary_metrics(yf, hgb.predict_proba(Xf)[:, 1])["auroc"],
        "logistic_validated_auroc": m.get(f"{pre}_logistic_auroc", np.nan),
        "logistic_fresh_auroc": binary_metrics(yf, logistic.predict_proba(Xf)[:, 1])["auroc"],
        "gate": client.get_run(result.run_id).data.tags.get("quality_gate"),
        "promoted": result.promoted, "reason": result.reason, "seconds": seconds,
    }


def table(rows: list[dict]) -> str:
    head = ("| n | seed | events | design | chosen | apparent AUROC | validated AUROC (95% CI) | fresh AUROC | "
            "apparent slope | validated slope | fresh slope | untuned HGB validated / fresh | "
            "logistic validated / fresh | gate | wall s |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        lo, hi = r["validated_auroc_ci"]
        out.append(
            f"| {r['size']} | {r['seed']} | {r['events']} | {r['design']} | {r['chosen']} | {r['apparent_auroc']:.3f} | "
            f"{r['validated_auroc']:.3f} ({lo:.3f}-{hi:.3f}) | {r['fresh_auroc']:.3f} | {r['apparent_slope']:.2f} | "
            f"{r['validated_slope']:.2f} | {r['fresh_slope']:.2f} | {r['hgb_untuned_validated_auroc']:.3f} / "
            f"{r['hgb_untuned_fresh_auroc']:.3f} | {r['logistic_validated_auroc']:.3f} / {r['logistic_fresh_auroc']:.3f} | "
            f"{r['gate']} | {r['seconds']:.0f} |")
    out += ["", "| n | mean validated AUROC | mean fresh AUROC | mean (validated - fresh) | mean validated slope | "
                "mean fresh slope | untuned HGB fresh | logistic fresh | mean wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for size in sorted({r["size"] for r in rows}):
        part = [r for r in rows if r["size"] == size]
        mean = lambda k: float(np.mean([r[k] for r in part]))  # noqa: E731
        out.append(f"| {size} | {mean('validated_auroc'):.3f} | {mean('fresh_auroc'):.3f} | "
                   f"{mean('validated_auroc') - mean('fresh_auroc'):+.3f} | {mean('validated_slope'):.2f} | "
                   f"{mean('fresh_slope'):.2f} | {mean('hgb_untuned_fresh_auroc'):.3f} | "
                   f"{mean('logistic_fresh_auroc'):.3f} | {mean('seconds'):.0f} |")
    return "\n".join(out)


def main() -> None:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    from pipeline.data.synthetic import generate_cohort

    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 300, 2000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    args = ap.parse_args()
    fresh = generate_cohort(FRESH_N, 987_654)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            for seed in args.seeds:
                rows.append(one(size, seed, fresh, Path(tmp)))
                print(json.dumps(rows[-1], default=float), flush=True)
    (HERE / "cohort_sizes.json").write_text(json.dumps(rows, indent=1, default=float))
    text = ("# Validation honesty by cohort size (generator cohorts; truth = the same model on a fresh "
            f"{FRESH_N:,}-patient sample)\n\n" + table(rows) + "\n")
    (HERE / "cohort_sizes.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
