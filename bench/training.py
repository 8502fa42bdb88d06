"""Training time: `icans-risk train` on the plan's cohort, wall time and peak RSS."""

from __future__ import annotations

from typing import Any

from bench.plan import Plan
from bench.processes import run_timed, tool


def step_train(plan: Plan, env: dict[str, str]) -> dict[str, Any]:
    # the bench measures time, not the gate: a quick cohort's model may be refused, and is served anyway
    argv = [tool("icans-risk"), "train", "--allow-ungated"]
    if plan.n_train:
        argv += ["--n", str(plan.n_train)]
    if plan.n_iter:
        argv += ["--n-iter", str(plan.n_iter)]
    train_env = {k: v for k, v in env.items() if k != "OMP_NUM_THREADS"}  # as `make train` runs it
    if plan.cv_folds:
        train_env["ICANS_CV_FOLDS"] = str(plan.cv_folds)
    r = run_timed(argv, train_env, timeout=900)
    from core.settings import Settings

    def default(name: str) -> Any:
        return Settings.model_fields[name].default

    summary = [line for line in r["stdout"].splitlines() if line.strip()]
    return {
        "wall_s": r["wall_s"],
        "peak_rss_mb": r["peak_rss_mb"],
        "rss_method": r["rss_method"],
        "n_patients": plan.n_train or default("default_cohort_size"),
        "n_iter": plan.n_iter or default("n_iter"),
        "cv_folds": plan.cv_folds or default("cv_folds"),
        "command": "icans-risk train" + ("" if not plan.quick else f" --n {plan.n_train} --n-iter {plan.n_iter}"),
        "output": summary[-4:],
    }
