"""What a local update writes: its validation report and plots, the new version's model card, the run's note.

The update's evidence is the local patients, the original model beside the update; the card says in
its first line that the version is a local update of another (`prepend_update_note`).
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from core import display
from models.artifact import ModelBundle
from pipeline.evidence import Evidence, build_evidence
from core.features import N_MATRIX
from pipeline.data.read import Cohort
from pipeline.stats.recalibration import INTERCEPT, LOGISTIC, NONE, REVISION, ClosedTest
from pipeline.report import render_validation_report, save_plots, write_model_card

METHOD_TEXT = {
    NONE: "no update (the original model fits the local data)",
    INTERCEPT: "recalibration in the large (intercept only)",
    LOGISTIC: "logistic recalibration (intercept and slope on the log-odds)",
    REVISION: "model revision (refitted on the local patients with the original hyperparameters)",
}


def update_evidence(y: np.ndarray, risk: np.ndarray, df: pd.DataFrame, p0: np.ndarray, parent: ModelBundle,
                    parent_version: str, name: str, outcome: str, method: str, alpha: float, seed: int,
                    estimates: dict[str, float], updated: bool) -> Evidence:
    """The evidence on the local patients: the update's risks (`risk`) beside the original's (`p0`)."""
    events = int(y.sum())
    evidence = build_evidence(
        None, None, None, y, risk, df, {"low": parent.low_threshold, "high": parent.high_threshold},
        N_MATRIX, outcome, other_predictions={f"original v{parent_version}": p0}, seed=seed,
        meta={"model": f"{name} v{parent_version} updated by {METHOD_TEXT[method]}"},
    )
    honest = ("a revision is shown by its out-of-fold risks (5-fold: refit and calibration never saw the "
              "patient); a recalibration's slope and intercept are corrected for optimism by Harrell's "
              "bootstrap (200 repetitions); its AUROC is the original's")
    evidence.validation = {
        "design": "local update" if updated else "local validation",
        "reason": (f"{METHOD_TEXT[method]}, chosen by closed testing at {alpha} on {len(y)} "
                   f"local patients ({events} events); the local data both fit and judge the update: {honest}"
                   if updated else
                   f"the closed test at {alpha} did not reject the original model on {len(y)} "
                   f"local patients ({events} events)"),
        "estimates": estimates,
        "evaluated_on": f"the {len(y)} local patients, the original model beside the update",
    }
    return evidence


def log_report(evidence: Evidence, tmp: Path, title: str) -> None:
    """The plots and the HTML validation report, logged to the active MLflow run."""
    save_plots(evidence, tmp / "plots")
    mlflow.log_artifacts(str(tmp / "plots"), artifact_path="plots")
    report = render_validation_report(evidence, tmp / "plots", tmp / "report" / "update_report.html", title=title)
    mlflow.log_artifact(str(report))


def save_with_card(bundle: ModelBundle, evidence: Evidence, directory: Path, *, name: str, run_id: str,
                   parent: ModelBundle, cohort: Cohort, df: pd.DataFrame, data: Path, seed: int,
                   info: dict[str, Any]) -> Path:
    """The updated bundle saved with its model card (which says it is a local update); its directory."""
    bundle_dir = bundle.save(directory)
    card = {"name": name, "version": "see GET /v1/model", "run_id": run_id,
            "trained_at": parent.metadata.get("trained_at"), "kind": bundle.kind,
            "params": bundle.metadata.get("params", {}),
            "thresholds": {"low": bundle.low_threshold, "high": bundle.high_threshold},
            "contract_version": bundle.contract_version, "git_commit": "", "n_params": N_MATRIX,
            "gate": bundle.metadata["gate"], "instability": bundle.metadata.get("instability")}
    provenance = {"synthetic": False, "sha256": cohort.sha256, "file": Path(data).name, "n_rows": len(df),
                  "n_dev": len(df), "n_test": "none (the local data fit and judge the update)",
                  "seed": seed, "n_rows_rejected": len(cohort.rejected)}
    write_model_card(evidence, card, provenance, bundle_dir)
    prepend_update_note(bundle_dir, info)
    return bundle_dir


def prepend_update_note(bundle_dir: Path, info: dict[str, Any]) -> None:
    """The model card's first line (Markdown and HTML): a local update of which version, on what data."""
    text = (f"This version is a local update of version {info['parent_version']}: {METHOD_TEXT[info['method']]}, "
            f"fitted on {info['n_local']} local patients ({info['events_local']} events), data SHA-256 "
            f"{info['local_data_sha256'][:12]}..., on {info['updated_at']}.")
    md = bundle_dir / "model_card.md"
    if md.exists():
        md.write_text(f"> **Updated model.** {text}\n\n" + md.read_text(encoding="utf-8"), encoding="utf-8")
    page = bundle_dir / "model_card.html"
    if page.exists():
        body = page.read_text(encoding="utf-8")
        page.write_text(body.replace("<body>", f'<body><p class="update"><strong>Updated model.</strong> '
                                               f"{html.escape(text)}</p>", 1), encoding="utf-8")


def before_after(m: dict[str, float]) -> str:
    """'calibration intercept -0.12, slope 0.91, AUROC 0.742' by core.display's rule for each figure."""
    return ", ".join(f"{label} {display.figure(k, m.get(k))}" for k, label in (
        ("calibration_intercept", "calibration intercept"), ("calibration_slope", "slope"), ("auroc", "AUROC")))


def run_note(name: str, parent_version: str, version: str, test: ClosedTest, before: dict[str, float],
             after: dict[str, float], promoted: bool, reason: str) -> str:
    """The update run's MLflow note: the closed test, the figures before and after, the promotion."""
    return "\n".join([
        f"**Local update of {name} v{parent_version}** -> v{version}: {METHOD_TEXT[test.method]}.",
        "",
        closed_test_text(test),
        "",
        f"Before: {before_after(before)}. After: {before_after(after)}.",
        "",
        f"Promotion: {'champion' if promoted else 'not promoted'}: {reason}. Research use only.",
    ])


def closed_test_text(test: ClosedTest) -> str:
    """The closed test's steps as one sentence, in Vergouwe's order (most extensive model against each simpler one)."""
    s = test.statistics
    if "p_extended_vs_original" in s:
        text = (f"Closed test (alpha {test.alpha}; most extensive model: a + b lp + c revision lp, the revision's "
                f"out-of-fold log-odds): against the original LR {s['lr_extended_vs_original']:.2f} "
                f"(3 df, p {s['p_extended_vs_original']:.3g}); against recalibration in the large LR "
                f"{s['lr_extended_vs_intercept']:.2f} (2 df, p {s['p_extended_vs_intercept']:.3g}); against logistic "
                f"recalibration LR {s['lr_extended_vs_logistic']:.2f} (1 df, p {s['p_extended_vs_logistic']:.3g}).")
    else:
        text = (f"Closed test (alpha {test.alpha}): logistic vs original LR {s['lr_logistic_vs_original']:.2f} "
                f"(p {s['p_logistic_vs_original']:.3g}); logistic vs intercept-only LR "
                f"{s['lr_logistic_vs_intercept']:.2f} (p {s['p_logistic_vs_intercept']:.3g}).")
    return " ".join([text, *test.notes])
