"""What a training records in its MLflow run and on its registered version.

Its inputs (tags, parameters, counts, dataset digests), its figures and the verdicts (the bundle's
metadata says the same), its artifacts (plots, the evidence report, the model card that ships in
the bundle), the version's description, and the run's description in the UI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient

from core import display
from models.artifact import Explained, ModelBundle
from models.candidates import CANDIDATES, SMALL_DATA_EVENTS, TREE_FAMILIES
from pipeline.report import plots
from pipeline.train.assessment import Evaluation
from pipeline.train.gate import GATE_RULE, PROMOTION_RULE, gate_status
from pipeline.train.iecv import IECVResult
from core.contract import CONTRACT_VERSION, FEATURE_NAMES
from pipeline.evidence.directions import feature_directions, unconstrained_fit
from core.features import N_MATRIX
from pipeline.monitor.statistics import reference_summary
from models.registry import BUNDLE_ARTIFACT
from pipeline.report import render_validation_report, save_plots, write_model_card
from pipeline.report.forest_plot import transport_summary
from pipeline.tracking.runs import git_commit, log_dataset, log_quarantine
from pipeline.train.training_run import GateVerdict, TrainingRun
from pipeline.train.validation import MODEL, RESAMPLING, SPLIT, Fitted


def log_inputs(run: TrainingRun) -> None:
    """The run's tags, parameters and counts, the datasets it used, and the rows it rejected."""
    settings, cohort, data, synthetic, outcome = run.settings, run.cohort, run.data, run.synthetic, run.outcome
    design, dev, test, y_dev, empty = run.design, run.frame, run.test, run.y_dev, run.empty
    mlflow.set_tags(
        {
            "mlflow.source.git.commit": git_commit(),
            "outcome": outcome,
            "data_source": "synthetic" if synthetic else data.name,
            "contract_version": CONTRACT_VERSION,
            "validation_design": design.kind,
            "validation_reason": design.reason,
            "empty_columns": ", ".join(empty) if empty else "none",
        }
    )
    mlflow.log_params(
        {
            "outcome": outcome,
            "seed": settings.seed,
            "data_sha256": cohort.sha256,
            "data_file": data.name,
            "synthetic": synthetic,
            "on_invalid": run.on_invalid,
            "cv_folds": settings.cv_folds,
            "n_iter": settings.n_iter,
            "search_cv_folds": settings.search_cv_folds,
            "validation_design": design.kind,
            "test_fraction": settings.test_fraction if design.kind == SPLIT else 0.0,
            "cv_repeats": design.repeats if design.kind == RESAMPLING else 0,
            "search_space": "small-data" if y_dev.sum() < SMALL_DATA_EVENTS else "standard",
        }
    )
    mlflow.log_metrics(
        {
            "n_rows_file": cohort.report.n_rows,
            "n_rows_rejected": len(cohort.rejected),
            "n_rows_used": len(cohort.data),
            "n_dev": len(dev),
            "n_test": 0 if test is None else len(test),
            "events_dev": int(y_dev.sum()),
            "events_test": 0 if test is None else int(test[outcome].sum()),
            "n_empty_columns": len(empty),
        }
    )
    source = "synthetic cohort" if synthetic else data.name
    log_dataset(dev, outcome, source, "training", f"{data.stem}-{'development' if test is not None else 'all'}")
    if test is not None:
        log_dataset(test, outcome, source, "test", f"{data.stem}-held-out")
    if empty:
        print(f"NOTE: no value in any row for {', '.join(empty)}: every model is fitted without them "
              "(the trees never split on them, the logistic model imputes them); they change no answer.")
    if len(cohort.rejected):
        log_quarantine(cohort)


def add_reference(bundle: ModelBundle, dev: pd.DataFrame, X_dev: np.ndarray) -> None:
    """The development patients' summary that monitoring compares the served patients with."""
    development = bundle.explain(X_dev)
    bundle.metadata["reference"] = reference_summary(
        dev, development.risk, dict(zip(bundle.feature_names, np.mean(np.abs(development.contributions), axis=0)))
    )


def collect_metrics(
    ev: Evaluation, bundle: ModelBundle, fitted: Fitted, tuned: dict[str, dict[str, Any]], explained: Explained,
) -> dict[str, float]:
    """Every figure of the parent run: the design's, the validated estimates, calibration and thresholds."""
    metrics = ev.metrics
    metrics.update({f"validated_{k}": v for k, v in ev.validated.items()})
    metrics["calibration_platt_slope"] = fitted.platt.slope_
    metrics["calibration_platt_intercept"] = fitted.platt.intercept_
    metrics["threshold_low"] = bundle.low_threshold
    metrics["threshold_high"] = bundle.high_threshold
    metrics["explanation_max_additivity_error"] = float(
        np.max(np.abs(explained.raw_margin - bundle.explainer.margin(ev.X)))
    )
    for name in CANDIDATES:
        metrics[f"cv_log_loss_{name}"] = tuned[name]["cv_log_loss"]
    return metrics


def record_verdicts(run: TrainingRun, ev: Evaluation, bundle: ModelBundle, metrics: dict[str, float],
                    gate: GateVerdict) -> None:
    """The figures and the gate's verdict in the bundle's metadata, the evidence and the run."""
    gate_ok, gate_reason, ungated, empty = gate.ok, gate.reason, gate.ungated, run.empty
    design = ev.design
    # full precision: machines read these (GET /v1/model); people read them rounded by core.display
    bundle.metadata["test_metrics"] = {k: float(v) for k, v in metrics.items() if np.isfinite(v)}
    bundle.metadata["gate"] = {"passed": gate_ok, "reason": gate_reason, "ungated": ungated, "rule": GATE_RULE,
                               "status": gate_status(gate_ok, gate_reason)}
    bundle.metadata["validation"] = {
        "design": design.kind,
        "description": design.reason,
        "estimates": {k: float(v) for k, v in ev.validated.items() if np.isfinite(v)},
        "optimism": ({k: float(v) for k, v in ev.resampled.optimism(MODEL).items()} if ev.resampled else {}),
    }
    ev.evidence.validation = validation_section(ev)
    if empty:
        ev.evidence.notes.append(f"no value in any row for {', '.join(empty)}: every model was fitted without "
                                 "them, and they change no answer of this model")
    constrained = bundle.kind in TREE_FAMILIES
    # the logistic family takes no monotone constraint: the model is its own unconstrained fit (no refit)
    free = (unconstrained_fit(bundle.kind, dict(bundle.metadata.get("params") or {}), ev.X, ev.y, 0)
            if constrained else bundle.predict_proba)
    ev.evidence.directions = d = feature_directions(ev.X, bundle.predict_proba, free, constrained)
    contradictions = d.loc[d["contradiction"], "feature"].tolist()
    metrics["direction_contradictions"] = len(contradictions)
    if contradictions:
        mlflow.set_tag("direction_contradictions", ", ".join(contradictions))
    overridden = d.loc[d["constraint_against_data"], "feature"].tolist()  # unconstrained, the data go the other way
    metrics["direction_constraints_against_data"] = len(overridden)
    if overridden:
        mlflow.set_tag("direction_constraints_against_data", ", ".join(overridden))
    mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
    status = gate_status(gate_ok, gate_reason)
    mlflow.set_tags({"quality_gate": status + (", ungated" if ungated else ""), "quality_gate_reason": gate_reason[:5000],
                     "quality_gate_rule": GATE_RULE})


def write_artifacts(
    tmp_path: Path, ev: Evaluation, bundle: ModelBundle, explained: Explained, outcome: str,
    card_info: dict[str, Any], provenance: dict[str, Any], transport: IECVResult | None = None,
) -> Path:
    """Plots, the evidence report and the model card logged to the run; returns the saved bundle's directory.
    With an IECV (`transport`), the report and the card show its pooled figures and forest plots."""
    plots.roc_plot(ev.y, ev.plot_scores, tmp_path / "roc.png", f"ROC, {ev.label} ({outcome})")
    plots.shap_summary_plot(
        explained.contributions, explained.base, ev.frame, list(FEATURE_NAMES), tmp_path / "shap_summary.png"
    )
    save_plots(ev.evidence, tmp_path)
    mlflow.log_artifacts(str(tmp_path), artifact_path="plots")
    summary = None
    if transport is not None:  # drawn after the plots/ folder is logged (the run has them under iecv/)
        summary = transport_summary(transport.rows, transport.pooled, transport.transport_sentence(),
                                    transport.heterogeneity_too_large(), tmp_path / "iecv")
        card_info = {**card_info, "transport": summary}
    report_dir = tmp_path / "evidence"
    report_dir.mkdir()
    report_path = render_validation_report(ev.evidence, tmp_path, tmp_path / "report" / "validation_report.html",
                                           instability=bundle.metadata.get("instability"), transport=summary)
    (report_dir / "evidence.json").write_text(json.dumps(ev.evidence.to_dict(), default=str))

    bundle_dir = bundle.save(tmp_path / BUNDLE_ARTIFACT)
    write_model_card(ev.evidence, card_info, provenance, bundle_dir)  # ships with the model
    write_model_card(ev.evidence, card_info, provenance, report_dir)
    mlflow.log_artifacts(str(report_dir), artifact_path="evidence")
    mlflow.log_artifact(str(report_path))
    return bundle_dir


def card_info(run: TrainingRun, bundle: ModelBundle) -> dict[str, Any]:
    """What the model card says about the model itself."""
    return {
        "name": run.model_name,
        "version": None,  # numbered by the registry after the card is written: the card says where to look
        "run_id": run.run_id,
        "trained_at": bundle.metadata["trained_at"],
        "kind": bundle.kind,
        "params": bundle.metadata["params"],
        "thresholds": {"low": bundle.low_threshold, "high": bundle.high_threshold},
        "contract_version": CONTRACT_VERSION,
        "git_commit": git_commit(),
        "n_params": N_MATRIX,
        "gate": bundle.metadata["gate"],
        "instability": bundle.metadata.get("instability"),
    }


def provenance(run: TrainingRun) -> dict[str, Any]:
    """What the model card says about the data the model was fitted on."""
    settings, cohort, data, synthetic, dev, test, empty = (run.settings, run.cohort, run.data, run.synthetic,
                                                           run.frame, run.test, run.empty)
    return {
        "synthetic": synthetic,
        "sha256": cohort.sha256,
        "file": data.name,
        "n_rows": len(cohort.data),
        "n_dev": len(dev),
        "n_test": len(test) if test is not None else "none (repeated cross-validation on all patients)",
        "seed": settings.seed,
        "n_rows_rejected": len(cohort.rejected),
        "empty_columns": ", ".join(empty) if empty else "none",
    }


def describe_version(
    client: MlflowClient, run: TrainingRun, version: str, ev: Evaluation, chosen: str, gate: GateVerdict,
    transport: IECVResult | None = None,
) -> None:
    """The registered version's description and tags: what it is and how it was validated (and, when
    it was validated by centre, how it transports: the pooled figures and the heterogeneity verdict)."""
    model_name, outcome, run_id = run.model_name, run.outcome, run.run_id
    gate_ok, ungated, gate_reason = gate.ok, gate.ungated, gate.reason
    design = ev.design
    client.set_model_version_tag(model_name, version, "outcome", outcome)
    v = ev.validated
    client.update_model_version(model_name, version, description=(
        f"{chosen} for {outcome}: {validated_summary(v, design.kind)}. "
        f"Quality gate: {gate_status(gate_ok, gate_reason)}. Model card: "
        f"artifact model/artifacts/{BUNDLE_ARTIFACT}/model_card.html of run {run_id} (also GET /v1/model/card). "
        + (transport.transport_sentence() + " " if transport is not None else "") + "Research use only."))
    if transport is not None:
        for key, value in transport_tags(transport).items():
            client.set_model_version_tag(model_name, version, key, value)
    client.set_model_version_tag(model_name, version, "validation_design", design.kind)
    client.set_model_version_tag(model_name, version, "validated_auroc", repr(float(ev.validated["auroc"])))
    client.set_model_version_tag(model_name, version, "quality_gate", gate_status(gate_ok, gate_reason))
    client.set_model_version_tag(model_name, version, "quality_gate_reason", gate_reason[:5000])
    if ungated:
        client.set_model_version_tag(model_name, version, "ungated", "true")


def transport_tags(transport: IECVResult) -> dict[str, str]:
    """The pooled IECV figures the gate judged, and its heterogeneity verdict, as the version's tags."""
    tags = {"iecv_centres": str(len(transport.rows)),
            "iecv_heterogeneity_too_large": str(transport.heterogeneity_too_large()).lower()}
    for measure, p in transport.pooled.items():
        if measure in ("auroc", "calibration_slope", "calibration_intercept", "oe"):
            tags[f"iecv_{measure}"] = (f"{p.estimate:.4f} (95% CI {p.ci_low:.4f}-{p.ci_high:.4f}; "
                                       f"95% PI {p.pi_low:.4f}-{p.pi_high:.4f}; tau2 {p.tau2:.4f}; I2 {p.i2:.0f}%)")
    return tags


def validation_section(ev: Evaluation) -> dict[str, Any]:
    """The evidence report's statement of the design and of the figures the gate used."""
    out: dict[str, Any] = {"design": ev.design.kind, "reason": ev.design.reason, "estimates": ev.validated,
                           "evaluated_on": ev.label}
    if ev.resampled is not None:
        out["resampling"] = ev.resampled.to_dict()
    return out


def validated_summary(v: dict[str, float], kind: str) -> str:
    """The validated estimates in one line, as the CLI, the run's and the version's descriptions say
    them (core.display's rule for each figure, so the card and the report print the same digits)."""
    def est(key: str) -> str:
        return display.figure_ci(v, key, "95% CI ")
    return (f"{kind} AUROC {est('auroc')}, calibration slope {est('calibration_slope')}, intercept "
            f"{est('calibration_intercept')}, Brier {est('brier')}; logistic AUROC "
            f"{display.figure('auroc', v.get('logistic_auroc'))}, m-EASIX AUROC {display.figure('auroc', v.get('m_easix_auroc'))}")


def run_description(ev: Evaluation, chosen: str, gate: GateVerdict, promoted: bool, reason: str, empty: list[str],
                    notes: list[str], seconds: float) -> str:
    """The parent run's description in the MLflow UI (Markdown): what happened, without opening a metric."""
    gate_ok, ungated, gate_reason = gate.ok, gate.ungated, gate.reason
    v = ev.validated
    kind = "cross-validated (whole procedure, repeated)" if ev.design.kind == RESAMPLING else "held-out"
    lines = [
        f"**{chosen}**, {validated_summary(v, kind)}.",
        "",  # the decision second: the UI shows the first paragraphs and folds the rest
        f"Quality gate: {gate_status(gate_ok, gate_reason).upper() if not gate_ok else 'passed'}"
        f"{', registered ungated' if ungated else ''}"
        f"{'' if gate_ok else f' ({gate_reason})'}. Promotion: {'champion' if promoted else 'not promoted'}: {reason}.",
        "",
        f"Validation: **{ev.design.kind}**: {ev.design.reason}.",
        "",
        f"Gate rule: {GATE_RULE}",
        "",
        f"Promotion rule: {PROMOTION_RULE}",
    ]
    if empty:
        lines += ["", f"Columns with no value in any row (ignored by every model): {', '.join(empty)}."]
    lines += [""] + notes if notes else []
    lines += ["", f"Training took {seconds:.0f} s. Research use only; not a medical device."]
    return "\n".join(lines)
