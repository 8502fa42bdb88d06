"""Does the gate keep noise out and let signal in? (issue 23, Done means (a), (b) and (e))

(a) shuffled-outcome cohorts (the generator's patients, the outcome permuted: no signal at all) of
150, 300 and 1,000 patients, five seeds each, trained as `make train` does on a fresh registry:
how many are promoted (the goal is none); (b) the same cohorts with their real outcome: how many
are promoted (the gate must not simply be closed), and the shipped model's AUROC on a fresh
20,000-patient sample beside untuned library defaults fitted on the same cohort; (e) the wall time
of `icans-risk train --n N` (what `make train N=...` runs) on 300 and 2,000 patients.

    .venv/bin/python -m bench.gate_simulation [--sizes 150 300 1000] [--seeds 1 2 3 4 5] [--timing 300 2000] [--reduced]

The gate runs do not depend on the per-patient intervals, so they train with instability_models=0
(the bootstrap models of the interval are skipped); the timing runs use every default. Writes
bench/gate_simulation.json after every training (a partial run keeps what it measured) and
bench/gate_simulation.md at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCRATCH = ROOT / ".bench-tmp" / "gate"
FRESH_N = 20_000


def cohort(kind: str, n: int, seed: int):
    from pipeline.data.synthetic import generate_cohort

    df = generate_cohort(n, seed)
    if kind == "shuffled":  # every link between predictors and outcome broken, prevalence kept
        order = np.random.default_rng(10_000 + seed).permutation(len(df))
        for col in ("severe_icans", "icans_max_grade"):  # the grade defines the outcome: moved with it
            df[col] = df[col].to_numpy()[order]
        df = df.drop(columns=["p_true"], errors="ignore")  # the generator's risk is no longer the truth
    return df


# --reduced: the settings of tests/model/test_promotion.py's gate tests (5 repeats x 3 outer folds, 2
# configurations x 2 inner folds), for a machine that cannot afford the defaults' 5 x 5 and 4 x 3.
REDUCED = dict(cv_repeats=5, cv_folds=3, n_iter=2, search_cv_folds=2)


def one(kind: str, n: int, seed: int, fresh: Any, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    from mlflow import MlflowClient

    from models.candidates import make_untuned_hist_gradient_boosting
    from core.features import encode_frame
    from pipeline.stats.metrics import auroc
    from models.registry import load_bundle, resolve
    from core.settings import Settings
    from pipeline.train.run import train
    from pipeline.train.validation import TrainingRefused

    work = SCRATCH / f"{kind}-n{n}-s{seed}"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    df = cohort(kind, n, seed)
    path = work / "cohort.csv"
    df.to_csv(path, index=False)
    settings = Settings(tracking_uri=f"sqlite:///{work / 'mlflow.db'}", artifact_root=(work / "art").as_uri(),
                        data_dir=work / "data", instability_models=0, **(overrides or {}))
    row: dict[str, Any] = {"kind": kind, "n": n, "seed": seed, "events": int(df["severe_icans"].sum()),
                           "load_average_before": os.getloadavg()}
    started = time.perf_counter()
    try:
        result = train(settings, data=path)
    except TrainingRefused as exc:
        row.update(promoted=False, gate="cohort refused", reason=str(exc), seconds=time.perf_counter() - started,
                   load_average_after=os.getloadavg())
        return row
    v = result.validated
    run = MlflowClient().get_run(result.run_id).data
    row.update(
        promoted=result.promoted, gate=run.tags.get("quality_gate"), reason=result.reason[:600],
        chosen=result.chosen, seconds=time.perf_counter() - started, load_average_after=os.getloadavg(),
        **{k: float(v.get(k, np.nan)) for k in (
            "auroc", "auroc_ci_low", "auroc_ci_high", "calibration_slope", "calibration_slope_ci_low",
            "calibration_slope_ci_high", "logistic_auroc", "m_easix_auroc", "platt_slope")},
    )
    if kind == "real":  # the shipped model against untuned library defaults, both on fresh patients
        Xf, yf = encode_frame(fresh), fresh["severe_icans"].astype(int).to_numpy()
        bundle = load_bundle(resolve(MlflowClient(), f"models:/{result.model_name}/{result.version}"))
        X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
        untuned = make_untuned_hist_gradient_boosting(settings.seed).fit(X, y)
        row["fresh_auroc"] = float(auroc(yf, bundle.predict_proba(Xf)))
        row["fresh_auroc_untuned_defaults"] = float(auroc(yf, untuned.predict_proba(Xf)[:, 1]))
    return row


def timing(n: int) -> dict[str, Any]:
    """`icans-risk train --n N` with every default, in a fresh directory (a fresh registry)."""
    work = SCRATCH / f"timing-n{n}"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    cli = Path(sys.executable).parent / "icans-risk"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICANS_", "MLFLOW_"))}
    started = time.perf_counter()
    done = subprocess.run([str(cli), "train", "--n", str(n)], cwd=work, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    return {"n": n, "seconds": round(seconds, 1), "exit": done.returncode,
            "last_lines": done.stdout.strip().splitlines()[-12:], "load_average_after": os.getloadavg()}


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for kind in ("shuffled", "real"):
        for n in sorted({r["n"] for r in rows if r["kind"] == kind}):
            cell = [r for r in rows if r["kind"] == kind and r["n"] == n]
            gates: dict[str, int] = {}
            for r in cell:
                gates[str(r.get("gate"))] = gates.get(str(r.get("gate")), 0) + 1
            s = {"kind": kind, "n": n, "runs": len(cell), "promoted": sum(bool(r["promoted"]) for r in cell),
                 "gate": gates, "median_auroc": float(np.nanmedian([r.get("auroc", np.nan) for r in cell])),
                 "median_auroc_ci_low": float(np.nanmedian([r.get("auroc_ci_low", np.nan) for r in cell])),
                 "median_slope_ci_width": float(np.nanmedian([r.get("calibration_slope_ci_high", np.nan)
                                                              - r.get("calibration_slope_ci_low", np.nan) for r in cell])),
                 "median_seconds": float(np.nanmedian([r["seconds"] for r in cell]))}
            if kind == "real":
                s["median_fresh_auroc"] = float(np.nanmedian([r.get("fresh_auroc", np.nan) for r in cell]))
                s["median_fresh_auroc_untuned_defaults"] = float(np.nanmedian(
                    [r.get("fresh_auroc_untuned_defaults", np.nan) for r in cell]))
                s["shipped_beats_defaults_on_fresh"] = sum(
                    r.get("fresh_auroc", np.nan) > r.get("fresh_auroc_untuned_defaults", np.nan) for r in cell)
            out.append(s)
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Gate simulation (bench/gate_simulation.py)", "",
             f"Command: {report['command']}; {report['machine']}.", "",
             "Settings: " + report["settings"] + ". Every cell was planned with seeds 1-5; a cell with fewer runs "
             "was cut short by the session's deadline (its seeds are listed).", "",
             "| cohort | patients | runs (seeds) | promoted | gate verdicts | median AUROC (lower 95% limit) | "
             "median slope-CI width | fresh AUROC: shipped / untuned defaults (shipped better) | median s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in report["summary"]:
        fresh = (f"{s['median_fresh_auroc']:.3f} / {s['median_fresh_auroc_untuned_defaults']:.3f} "
                 f"({s['shipped_beats_defaults_on_fresh']}/{s['runs']})" if s["kind"] == "real" else "-")
        gates = ", ".join(f"{k} {v}" for k, v in sorted(s["gate"].items()))
        seeds = ",".join(str(r["seed"]) for r in sorted(report["runs"], key=lambda r: r["seed"])
                         if r["kind"] == s["kind"] and r["n"] == s["n"])
        lines.append(f"| {s['kind']} | {s['n']} | {s['runs']} ({seeds}) | **{s['promoted']}** of {s['runs']} | {gates} | "
                     f"{s['median_auroc']:.3f} ({s['median_auroc_ci_low']:.3f}) | {s['median_slope_ci_width']:.2f} | "
                     f"{fresh} | {s['median_seconds']:.0f} |")
    if report.get("timing"):
        lines += ["", "Training wall time, `icans-risk train --n N` with every default on a fresh registry "
                  "(what `make train N=...` runs; the machine was shared, load average shown):", ""]
        for t in report["timing"]:
            lines.append(f"- {t['n']} patients: {t['seconds']:.0f} s (exit {t['exit']}, load average after "
                         f"{t['load_average_after'][0]:.1f})")
    lines += ["", "Each run (the full reason is in bench/gate_simulation.json; load average: 1-minute, before / "
              "after the training):", "",
              "| cohort | n | seed | events | gate | promoted | chosen | validated AUROC (95% CI) | "
              "calibration slope (95% CI) | logistic / m-EASIX AUROC | fresh AUROC shipped / untuned | s | load |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["runs"]:
        def f(key: str, fmt: str = ".3f") -> str:
            return "-" if r.get(key) is None or np.isnan(r.get(key)) else format(r[key], fmt)
        fresh = f"{f('fresh_auroc')} / {f('fresh_auroc_untuned_defaults')}" if r["kind"] == "real" else "-"
        load = f"{r.get('load_average_before', [np.nan])[0]:.1f} / {r.get('load_average_after', [np.nan])[0]:.1f}"
        lines.append(f"| {r['kind']} | {r['n']} | {r['seed']} | {r['events']} | {r.get('gate')} | {r['promoted']} | "
                     f"{r.get('chosen', '-')} | {f('auroc')} ({f('auroc_ci_low')}-{f('auroc_ci_high')}) | "
                     f"{f('calibration_slope', '.2f')} ({f('calibration_slope_ci_low', '.2f')} to "
                     f"{f('calibration_slope_ci_high', '.2f')}) | {f('logistic_auroc')} / {f('m_easix_auroc')} | "
                     f"{fresh} | {r['seconds']:.0f} | {load} |")
    lines += ["", "Reasons (first 300 characters):", ""]
    for r in report["runs"]:
        lines.append(f"- {r['kind']} n={r['n']} seed={r['seed']}: {str(r.get('reason', ''))[:300]}")
    return "\n".join(lines) + "\n"


def merge(paths: list[Path], out: Path) -> None:
    """One report (json and md) from the parts of a run split across processes."""
    parts = [json.loads(p.read_text()) for p in paths if p.exists()]
    commands = sorted({p["command"].strip("`") for p in parts})
    command = f"`{commands[0]}`" if len(commands) == 1 else (
        f"{len(parts)} invocations of `python -m bench.gate_simulation --kinds KIND --sizes N --seeds SEED --timing "
        "--out PART.json` (one per cohort, so that a run cut short keeps every finished cohort), merged with `--merge`")
    report = {"command": command, "machine": parts[0]["machine"],
              "settings": parts[0]["settings"], "runs": [r for p in parts for r in p["runs"]],
              "timing": [t for p in parts for t in p.get("timing", [])]}
    report["summary"] = summarise(report["runs"])
    out.write_text(json.dumps(report, indent=1, default=float))
    out.with_suffix(".md").write_text(markdown(report))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[150, 300, 1000])
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("--kinds", nargs="+", default=["shuffled", "real"])
    ap.add_argument("--timing", type=int, nargs="*", default=[300, 2000])
    ap.add_argument("--out", type=Path, default=HERE / "gate_simulation.json")
    ap.add_argument("--reduced", action="store_true", help=f"Gate runs with {REDUCED} instead of the defaults.")
    ap.add_argument("--merge", type=Path, nargs="*", default=None, help="Only merge these parts into --out.")
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, args.out)
        return
    from pipeline.data.synthetic import generate_cohort

    fresh = generate_cohort(FRESH_N, 987_654)
    report: dict[str, Any] = {
        "command": "`python -m bench.gate_simulation " + " ".join(sys.argv[1:]) + "`",
        "machine": f"{os.cpu_count()} cores, shared (load average at start {os.getloadavg()[0]:.1f})",
        "settings": ("instability_models=0 and " + (f"{REDUCED}" if args.reduced else "every other default"))
        + " for the gate runs", "runs": [], "timing": []}
    for n in args.sizes:
        for kind in args.kinds:
            for seed in args.seeds:
                row = one(kind, n, seed, fresh, REDUCED if args.reduced else None)
                report["runs"].append(row)
                report["summary"] = summarise(report["runs"])
                args.out.write_text(json.dumps(report, indent=1, default=float))
                args.out.with_suffix(".md").write_text(markdown(report))
                print(f"{kind} n={n} seed={seed}: promoted={row['promoted']} gate={row.get('gate')} "
                      f"AUROC {row.get('auroc', float('nan')):.3f} ({row.get('auroc_ci_low', float('nan')):.3f}) "
                      f"{row['seconds']:.0f} s", flush=True)
    for n in args.timing:
        report["timing"].append(timing(n))
        args.out.write_text(json.dumps(report, indent=1, default=float))
        print(f"timing n={n}: {report['timing'][-1]['seconds']} s", flush=True)
    report["summary"] = summarise(report["runs"])
    args.out.write_text(json.dumps(report, indent=1, default=float))
    args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
