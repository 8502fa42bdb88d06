"""`icans-risk train` on the synthetic consortium, in-process and on a local Dask cluster, and the
per-task costs that extrapolate it to a larger consortium on a real cluster (issue 27).

    nice -n 10 .venv/bin/python -m bench.train_cluster trainings [--modes in-process local]
    nice -n 10 .venv/bin/python -m bench.train_cluster tasks [--sizes 400 1400 2800 5600]
    nice -n 10 .venv/bin/python -m bench.train_cluster consortium-tasks   # after `trainings`
    nice -n 10 .venv/bin/python -m bench.train_cluster target-tasks
    nice -n 10 .venv/bin/python -m bench.train_cluster tuning-threads
    .venv/bin/python -m bench.train_cluster estimate   # the 20-centre estimate, from target-tasks

Results in bench/train_cluster.json; read in bench/train_cluster.md.

Each training is the command a user runs (a subprocess, default settings, fresh MLflow store in
.bench-tmp/train_cluster/), on the 5-centre consortium of `generate --consortium` (seed 42). Wall
seconds, and CPU seconds of the command and every process it started and reaped (loky's or the
LocalCluster's workers: getrusage RUSAGE_CHILDREN), with the load average before and after (the
machine is shared with other work: the load is part of the result). The stage seconds come from
the run's MLflow metrics.

A task's cost is its CPU seconds in one process on one thread (threadpoolctl), what it costs on a
dedicated core; measured on the generator's cohort of n patients (one fold's procedure: n
development patients; one bootstrap model: the chosen configuration refitted on n; one IECV
centre: the procedure on n patients of the other centres).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).with_name("train_cluster.json")
MD = Path(__file__).with_name("train_cluster.md")
WORK = ROOT / ".bench-tmp" / "train_cluster"
SEED = 42
BOOTSTRAP_REPEATS = 3  # bootstrap models timed per size (their mean)


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def training(mode: str, data: Path, workers: int) -> dict[str, Any]:
    """One `icans-risk train --data` in a fresh store; `mode`: "in-process" or a cluster address."""
    import mlflow
    from mlflow import MlflowClient

    work = WORK / mode.replace("/", "_").replace(":", "_")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ICANS_", "MLFLOW_"))}
    env["ICANS_CLUSTER_WORKERS"] = str(workers)
    if mode != "in-process":
        env["ICANS_CLUSTER"] = mode
    load0, cpu0, t0 = os.getloadavg(), _children_cpu(), time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).with_name("icans-risk")), "train", "--data", str(data),
                           "--seed", str(SEED)], cwd=work, env=env, capture_output=True, text=True)
    wall, cpu, load1 = time.perf_counter() - t0, _children_cpu() - cpu0, os.getloadavg()
    (work / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: training failed ({proc.returncode}); see {work / 'train.log'}")
    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             "attributes.run_name LIKE 'train-%'")[0]
    m = run.data.metrics
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"mode": mode, "commit": commit, "workers": workers if mode != "in-process" else os.cpu_count(), "wall_seconds": wall,
            "cpu_seconds": cpu, "load_average_start": load0, "load_average_end": load1,
            "stages": {k: m[k] for k in sorted(m) if k.endswith("_seconds")},
            "auroc_cv": m.get("cv_auroc"), "iecv_auroc": m.get("iecv_auroc"),
            "metrics_digest": _digest({k: v for k, v in m.items() if not k.endswith("_seconds")})}


def _digest(metrics: dict[str, float]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(metrics, sort_keys=True).encode()).hexdigest()[:16]


def task_costs(sizes: list[int]) -> list[dict[str, Any]]:
    """CPU and wall seconds of one task of each kind, on one thread, by the patients it fits on."""
    from threadpoolctl import threadpool_limits

    from core.features import encode_frame
    from core.settings import Settings
    from models.candidates import CANDIDATES
    from pipeline.data.synthetic import generate_cohort
    from pipeline.train.instability import _replicate
    from pipeline.train.validation import Procedure, Search, fit_procedure, tune

    settings = Settings(seed=SEED)
    search = Search.of(settings)
    out = []
    for n in sizes:
        df = generate_cohort(n, seed=SEED)
        X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
        proc = Procedure(search.n_iter, search.cv_folds, space_events=int(y.sum()))
        with threadpool_limits(1):
            load0, t0, c0 = os.getloadavg(), time.perf_counter(), time.process_time()
            proc.run(X, y, SEED)  # one fold's (or one IECV centre's) whole procedure on n patients
            procedure = (time.perf_counter() - t0, time.process_time() - c0)
            # the configuration the bootstrap models refit: the procedure's choice (untimed, again)
            tuned = {name: tune(name, X, y, search.n_iter, search.cv_folds, SEED, 1) for name in CANDIDATES}
            fitted = fit_procedure(X, y, tuned, search.cv_folds, SEED, 1)
            t0, c0 = time.perf_counter(), time.process_time()
            for b in range(BOOTSTRAP_REPEATS):
                _replicate(fitted.chosen, fitted.params, X, y, settings.cv_folds, SEED, b)
            boot = ((time.perf_counter() - t0) / BOOTSTRAP_REPEATS, (time.process_time() - c0) / BOOTSTRAP_REPEATS)
        out.append({"n": n, "events": int(y.sum()), "procedure_seconds": procedure[0],
                    "procedure_cpu_seconds": procedure[1], "bootstrap_model_seconds": boot[0],
                    "bootstrap_model_cpu_seconds": boot[1], "bootstrap_configuration": fitted.chosen,
                    "load_average_start": load0, "load_average_end": os.getloadavg()})
        print(json.dumps(out[-1]), flush=True)
    return out


# The consortium of the estimate: 20 centres, 10,000 patients, about 18% events (the generator's
# prevalence), so 1,800 events: the "auto" design holds out 25% (450 expected held-out events >= 100),
# the final model is tuned on 7,500 patients, the 200 bootstrap models refit on those 7,500, and
# each IECV task runs the whole procedure on the other 19 centres (about 9,500 patients).
TARGET = {"centres": 20, "patients": 10_000, "dev": 7_500, "iecv_train": 9_500, "bootstrap_models": 200,
          "cv_train": 8_000, "cv_tasks": 10}
NODES = 4


def estimate(target: dict[str, Any], cores_per_node: int) -> dict[str, Any]:
    """Wall seconds of the 20-centre training's parallel loops and final tuning on NODES nodes of
    `cores_per_node` single-threaded workers, from the tasks' CPU seconds measured at their own
    sizes (`target_tasks`): each loop waits for its last wave of equal tasks (ceil(tasks / workers)
    x the task's cost); the final model's tuning runs on the driver, on one core. Assumes dedicated
    cores (no other load) and no per-task overhead (a task ships X: 10,000 x 26 doubles, 2 MB)."""
    t = TARGET
    driver = target[f"procedure_{t['dev']}"]["cpu_seconds"]
    boot = float(np.mean([r["cpu_seconds"] for r in target[f"bootstrap_model_{t['dev']}"]]))
    iecv = target[f"procedure_{t['iecv_train']}"]["cpu_seconds"]
    fold = target[f"procedure_{t['cv_train']}"]["cpu_seconds"]
    w = NODES * cores_per_node
    waves = {"bootstrap": -(-t["bootstrap_models"] // w), "iecv": -(-t["centres"] // w), "cv": -(-t["cv_tasks"] // w)}
    split = driver + waves["bootstrap"] * boot + waves["iecv"] * iecv
    cpu = driver + t["bootstrap_models"] * boot + t["centres"] * iecv
    return {"workers": w, "cores_per_node": cores_per_node,
            "task_cpu_seconds": {"final_tuning_driver": driver, "bootstrap_model": boot, "iecv_centre": iecv,
                                 "cv_fold": fold},
            "waves": waves, "cpu_seconds_total_split_design": cpu, "wall_seconds_split_design": split,
            "wall_seconds_with_repeated_cv": split + waves["cv"] * fold,
            "wall_seconds_one_core_split_design": cpu}


def consortium_tasks(data: Path, run_db: Path) -> dict[str, Any]:
    """The three task kinds of the measured training, on its own data and configuration, one after
    another on one thread: two outer folds, five bootstrap models, the largest and smallest IECV centre."""
    import mlflow
    import pandas as pd
    from mlflow import MlflowClient
    from threadpoolctl import threadpool_limits

    from core.contract import CENTRE_COLUMN
    from core.features import encode_frame
    from core.settings import Settings
    from pipeline.train.assessment import validation_procedure
    from pipeline.train.instability import _replicate
    from pipeline.train.validation import outer_splits

    df = pd.read_csv(data)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    settings = Settings(seed=SEED)
    mlflow.set_tracking_uri(f"sqlite:///{run_db}")
    client = MlflowClient()
    run = client.search_runs([e.experiment_id for e in client.search_experiments()],
                             "attributes.run_name LIKE 'train-%'")[0]
    p = run.data.params
    kind = "xgboost" if "chosen_reg_lambda" in p else "hist_gradient_boosting"
    params = {k.removeprefix("chosen_"): json.loads(v) for k, v in p.items() if k.startswith("chosen_")}
    procedure = validation_procedure(settings, int(y.sum()))
    centre = df[CENTRE_COLUMN].astype(str).to_numpy()
    sizes = df[CENTRE_COLUMN].value_counts()
    out: dict[str, Any] = {"n": len(y), "chosen": kind, "params": params, "load_average_start": os.getloadavg()}

    def timed(fn: Any, *args: Any) -> dict[str, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        fn(*args)
        return {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}

    with threadpool_limits(1):
        out["fold"] = [{"train_n": len(tr), **timed(procedure.run, X[tr], y[tr], s)}
                       for _, s, tr, _ in outer_splits(y, 2, settings.cv_folds, SEED)[:2]]
        out["bootstrap_model"] = [{"train_n": len(y), **timed(_replicate, kind, params, X, y, settings.cv_folds, SEED, b)}
                                  for b in range(5)]
        out["iecv_centre"] = [{"left_out": c, "train_n": int((centre != c).sum()),
                               **timed(procedure.run, X[centre != c], y[centre != c], SEED)}
                              for c in (sizes.index[0], sizes.index[-1])]
    out["load_average_end"] = os.getloadavg()
    return out


def target_tasks() -> dict[str, Any]:
    """The tasks of the 20-centre, 10,000-patient training at their own sizes (the generator's cohort
    of 10,000, subsets of it): the whole procedure on 9,500 (an IECV centre), 8,000 (an outer fold)
    and 7,500 patients (the final model's tuning, on the driver), and three bootstrap models on the
    7,500 with the configuration that procedure chooses there."""
    from threadpoolctl import threadpool_limits

    from core.features import encode_frame
    from core.settings import Settings
    from models.candidates import CANDIDATES
    from pipeline.data.synthetic import generate_cohort
    from pipeline.train.instability import _replicate
    from pipeline.train.validation import Procedure, Search, fit_procedure, tune

    settings = Settings(seed=SEED)
    search = Search.of(settings)
    df = generate_cohort(TARGET["patients"], seed=SEED)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    out: dict[str, Any] = {"events": int(y.sum()), "load_average_start": os.getloadavg()}
    with threadpool_limits(1):
        for name in ("iecv_train", "cv_train", "dev"):
            n = TARGET[name]
            proc = Procedure(search.n_iter, search.cv_folds, space_events=int(y[:n].sum()))
            t0, c0 = time.perf_counter(), time.process_time()
            proc.run(X[:n], y[:n], SEED)
            out[f"procedure_{n}"] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
            print(name, out[f"procedure_{n}"], flush=True)
        n = TARGET["dev"]
        tuned = {k: tune(k, X[:n], y[:n], search.n_iter, search.cv_folds, SEED, 1) for k in CANDIDATES}
        fitted = fit_procedure(X[:n], y[:n], tuned, search.cv_folds, SEED, 1)
        out["bootstrap_configuration"] = {"kind": fitted.chosen, **fitted.params}
        runs = []
        for b in range(BOOTSTRAP_REPEATS):
            t0, c0 = time.perf_counter(), time.process_time()
            _replicate(fitted.chosen, fitted.params, X[:n], y[:n], settings.cv_folds, SEED, b)
            runs.append({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0})
        out[f"bootstrap_model_{n}"] = runs
    out["load_average_end"] = os.getloadavg()
    return out


def tuning_threads(data: Path) -> list[dict[str, Any]]:
    """The final model's tuning as the driver runs it (each tree family with n_jobs=2 and its
    libraries' default threads) against the same search on one thread, on the consortium."""
    import pandas as pd
    from threadpoolctl import threadpool_limits

    from core.features import encode_frame
    from core.settings import Settings
    from pipeline.train.validation import Search, tune

    df = pd.read_csv(data)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    search = Search.of(Settings(seed=SEED))
    out = []
    for threads in ("default", "one", "default"):
        for name in ("hist_gradient_boosting", "xgboost"):
            t0, c0, load0 = time.perf_counter(), time.process_time(), os.getloadavg()[0]
            if threads == "one":
                with threadpool_limits(1):
                    tune(name, X, y, search.n_iter, search.cv_folds, SEED, 1)
            else:
                tune(name, X, y, search.n_iter, search.cv_folds, SEED, 2)
            out.append({"family": name, "threads": threads, "seconds": time.perf_counter() - t0,
                        "cpu_seconds": time.process_time() - c0, "load_average": [load0, os.getloadavg()[0]]})
            print(json.dumps(out[-1]), flush=True)
    return out


def _load() -> dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.exists() else {}


def _save(result: dict[str, Any]) -> None:
    OUT.write_text(json.dumps(result, indent=1, default=float))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=("trainings", "tasks", "consortium-tasks", "target-tasks", "tuning-threads", "estimate"))
    ap.add_argument("--modes", nargs="+", default=["in-process", "local"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 1400, 2800, 5600])
    args = ap.parse_args()
    result = _load()
    result.setdefault("machine", {"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0))})
    if args.what == "trainings":
        from pipeline.data.synthetic_centres import DEFAULT_CONSORTIUM, generate_consortium

        WORK.mkdir(parents=True, exist_ok=True)
        data = WORK / "consortium.csv"
        generate_consortium(DEFAULT_CONSORTIUM, seed=SEED).to_csv(data, index=False)
        runs = result.setdefault("trainings", [])
        for mode in args.modes:
            runs.append(training(mode, data, args.workers))
            print(json.dumps(runs[-1]), flush=True)
            _save(result)
    elif args.what == "tasks":
        result["task_costs"] = task_costs(args.sizes)
        _save(result)
    elif args.what == "consortium-tasks":
        result["consortium_tasks"] = consortium_tasks(WORK / "consortium.csv", WORK / "in-process" / "mlflow.db")
        print(json.dumps(result["consortium_tasks"]))
        _save(result)
    elif args.what == "target-tasks":
        result["target_tasks"] = target_tasks()
        print(json.dumps(result["target_tasks"]))
        _save(result)
    elif args.what == "tuning-threads":
        result["tuning_threads"] = tuning_threads(WORK / "consortium.csv")
        _save(result)
    else:
        result["estimates"] = [estimate(result["target_tasks"], c) for c in (2, 8)]
        _save(result)
    print(OUT)


if __name__ == "__main__":
    main()
