"""External validation: the served model on a cohort it has never seen, as a new MLflow run."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient

from models.baselines import SCORES
from pipeline.report import plots
from pipeline.train.assessment import add_oracle
from pipeline.evidence import build_evidence
from core.features import N_MATRIX, encode_frame
from pipeline.data.loading import load_cohort
from pipeline.stats.metrics import binary_metrics, ranking_metrics
from models.registry import load_bundle, resolve
from pipeline.report import render_validation_report, save_plots
from core.settings import Settings
from pipeline.tracking.runs import git_commit, setup_mlflow


def evaluate(
    settings: Settings, data: Path | None = None, outcome: str | None = None, on_invalid: str = "refuse"
) -> dict[str, Any]:
    outcome = outcome or settings.outcome
    # without a file: an independent synthetic centre, another seed than any training default
    cohort, data, synthetic = load_cohort(settings, data, outcome, on_invalid, seed=settings.seed + 1000)
    experiment_id = setup_mlflow(settings, settings.evaluation_experiment)
    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    bundle = load_bundle(resolved)
    df = cohort.data
    y = df[outcome].astype(int).to_numpy()
    ex = bundle.explain(encode_frame(df))
    metrics = binary_metrics(y, ex.risk)
    evidence = build_evidence(
        None, None, None, y, ex.risk, df,
        {"low": bundle.low_threshold, "high": bundle.high_threshold}, N_MATRIX, outcome,
        meta={"model": f"{resolved.name} v{resolved.version}", "external": True},
    )
    out = {f"external_{k}": v for k, v in metrics.items()}
    out.update(evidence.flat_metrics(prefix="external"))
    scores = {f"{resolved.name} v{resolved.version}": ex.risk}
    for name, fn in SCORES.items():
        s = fn(df)
        out.update({f"external_{name}_{k}": v for k, v in ranking_metrics(y, s).items() if k in ("auroc", "auprc")})
        scores[name] = s
    add_oracle(y, df, outcome, out, "external_oracle_auroc", scores)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"evaluate-{resolved.name}-v{resolved.version}") as run:
        mlflow.set_tags(
            {
                "mlflow.source.git.commit": git_commit(),
                "model_name": resolved.name,
                "model_version": resolved.version,
                "model_run_id": resolved.run_id or "",
                "data_source": "synthetic" if synthetic else data.name,
            }
        )
        mlflow.log_params({"data_sha256": cohort.sha256, "outcome": outcome, "model_uri": settings.resolved_model_uri})
        mlflow.log_metrics({k: float(v) for k, v in out.items() if np.isfinite(v)})
        mlflow.log_metric("n_rows_rejected", len(cohort.rejected))
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            plots.roc_plot(y, scores, t / "roc.png", f"ROC, external cohort ({outcome})")
            save_plots(evidence, t)
            mlflow.log_artifacts(str(t), artifact_path="plots")
            report = render_validation_report(
                evidence, t, t / "report" / "validation_report.html",
                title=f"External validation of {resolved.name} v{resolved.version}",
            )
            mlflow.log_artifact(str(report))
        run_id = run.info.run_id
    MlflowClient().set_model_version_tag(
        resolved.name, resolved.version, f"external_validation_{run_id[:8]}", repr(float(metrics["auroc"]))
    )
    return {"run_id": run_id, "model": f"{resolved.name} v{resolved.version}", "metrics": metrics}
