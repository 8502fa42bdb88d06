"""Training: validate (held-out split or repeated cross-validation), tune, choose, calibrate, log, register, promote.

Everything is tracked in MLflow: one parent run per training, one child run per candidate family.
The champion alias moves last, only for a model that passed the quality gate (`pipeline.compare.GATE_RULE`)
and is non-inferior to the current champion refitted on the same patients (`PROMOTION_RULE`), and
never with PROMOTE=no; a crash or a worse model never replaces what is served.

`train` is the sequence of stages; each stage lives in the module named for it:
`pipeline.loading` (the cohort), `pipeline.validation` (the design, tuning and the fitted
procedure), `pipeline.tuning` (tune, choose, calibrate, bundle), `pipeline.assessment` (what the
design says), `pipeline.compare` (the gate and the champion comparison), `pipeline.train_log`
and `pipeline.tracking` (what MLflow records) and `pipeline.promote` (the alias).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pandas as pd
from mlflow import MlflowClient
from sklearn.model_selection import train_test_split

from pipeline import iecv, instability, train_log
from pipeline.assessment import assess
from pipeline.compare import INSUFFICIENT, PROMOTION_MARGINS, comparison_notes, gate_status, quality_gate
from pipeline.contract import FEATURES, OUTCOMES
from pipeline.features import encode_frame
from pipeline.io import Cohort
from pipeline.loading import load_cohort
from pipeline.promote import Verdict, promote_if_allowed
from pipeline.registry import champion
from pipeline.runs import end_interrupted, heartbeat, mark_alive, sweep
from pipeline.settings import Settings
from pipeline.tracking import log_bundle_version, setup_mlflow
from pipeline.tuning import build_bundle, choose, tune_candidates
from pipeline.validation import SPLIT, Design, check_trainable, choose_design

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_id: str
    model_name: str
    version: str
    promoted: bool
    reason: str
    chosen: str
    metrics: dict[str, float] = field(default_factory=dict)
    design: str = SPLIT
    validated: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    decision: list[str] = field(default_factory=list)  # the gate's and the promotion's verdicts, one block


def train(
    settings: Settings,
    data: Path | None = None,
    outcome: str | None = None,
    on_invalid: str = "refuse",
    n_patients: int | None = None,
) -> TrainResult:
    outcome = outcome or settings.outcome
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome '{outcome}': use one of {', '.join(OUTCOMES)}")
    started = time.perf_counter()
    # load: raises before any logging
    cohort, data, synthetic = load_cohort(settings, data, outcome, on_invalid, n_patients=n_patients)
    design, dev, test = _split(cohort.data, outcome, settings)  # the validation design; raises before any logging
    model_name = OUTCOMES[outcome].registered_model
    experiment_id = setup_mlflow(settings, settings.experiment)
    client = MlflowClient()
    _sweep(client, experiment_id, settings)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{outcome}") as parent:
        try:
            mark_alive()
            return _train_in_run(settings, parent.info.run_id, experiment_id, client, cohort, data, synthetic,
                                 outcome, on_invalid, design, dev, test, model_name, started)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through pipeline.runs.sigterm_interrupts
            end_interrupted(client, parent.info.run_id, str(exc) or "SIGINT")
            raise
        except Exception as exc:
            # a run that stops is never left without its reason
            mlflow.set_tag("failure_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise


def _split(
    data: pd.DataFrame, outcome: str, settings: Settings
) -> tuple[Design, pd.DataFrame, pd.DataFrame | None]:
    """The validation design, and the development and held-out patients (none held out: repeated CV)."""
    # a canonical row order: the same patients in another order give the same folds, model and verdict
    df = data.sort_values(by=list(data.columns), kind="mergesort", na_position="last")
    df = df.reset_index(drop=True)
    y_all = df[outcome].astype(int).to_numpy()
    check_trainable(y_all, outcome, max(settings.min_events, 2 * settings.cv_folds))  # before any logging
    # what limits a design is the rarer class (events, or non-events above 50% prevalence)
    design = choose_design(int(min(y_all.sum(), len(y_all) - y_all.sum())), len(df), settings)
    if design.kind != SPLIT:
        return design, df, None
    dev, test = train_test_split(df, test_size=settings.test_fraction, stratify=y_all, random_state=settings.seed)
    return design, dev.reset_index(drop=True), test.reset_index(drop=True)


def _sweep(client: MlflowClient, experiment_id: str, settings: Settings) -> None:
    try:  # runs of trainings that died without a word are marked before this one starts
        swept = sweep(client, experiment_id, settings.stale_run_s, settings.champion_alias)
        if swept:
            print(f"NOTE: {len(swept)} run(s) of earlier trainings whose process had died were marked KILLED")
    except Exception as exc:  # the sweep is housekeeping; it never stops a training
        log.warning("sweep of dead runs failed: %s", exc)


def _train_in_run(
    settings: Settings, run_id: str, experiment_id: str, client: MlflowClient, cohort: Cohort, data: Path,
    synthetic: bool, outcome: str, on_invalid: str, design: Design, dev: pd.DataFrame, test: pd.DataFrame | None,
    model_name: str, started: float,
) -> TrainResult:
    X_dev = encode_frame(dev)
    y_dev = dev[outcome].astype(int).to_numpy()
    n_jobs = max(1, os.cpu_count() or 1)
    empty = _empty_features(cohort.data)
    train_log.log_inputs(settings, cohort, data, synthetic, outcome, on_invalid, design, dev, test, y_dev, empty)

    tuned = tune_candidates(X_dev, y_dev, settings, experiment_id, n_jobs)  # tune
    fitted = choose(X_dev, y_dev, tuned, settings, n_jobs)  # choose, and calibrate
    bundle = build_bundle(fitted, dev, y_dev, outcome, run_id, cohort.sha256, empty)
    ev = assess(fitted, bundle, dev, test, design, settings, n_jobs, outcome, synthetic, run_id, model_name)
    train_log.add_reference(bundle, dev, X_dev)
    explained = bundle.explain(ev.X)
    metrics = train_log.collect_metrics(ev, bundle, fitted, tuned, explained)
    inst = instability.analyse(bundle, fitted.chosen, fitted.params, X_dev, y_dev, settings, n_jobs)  # instability
    metrics.update(instability.log_to_mlflow(inst, bundle.low_threshold, bundle.high_threshold, plot=False))

    gate_ok, gate_reason = quality_gate(ev.validated)  # compare: the gate
    # ALLOW_UNGATED serves a refused model only where nothing else could be served
    ungated = not gate_ok and settings.allow_ungated and champion(client, model_name, settings.champion_alias) is None
    train_log.record_verdicts(ev, bundle, metrics, gate_ok, gate_reason, ungated, empty)  # log
    notes = comparison_notes(ev.validated, metrics, design.kind)  # compare: the simpler models
    notes += iecv.validate_by_centre(cohort.data, outcome, settings, bundle, n_jobs)  # issue 27: IECV by centre
    with tempfile.TemporaryDirectory() as tmp:
        if inst is not None:  # into the run's plots and the validation report
            instability.instability_plot(inst, bundle.low_threshold, bundle.high_threshold, Path(tmp) / "instability.png")
        bundle_dir = train_log.write_artifacts(
            Path(tmp), ev, bundle, explained, outcome, train_log.card_info(bundle, model_name, run_id),
            train_log.provenance(settings, cohort, data, synthetic, dev, test, empty),
        )
        heartbeat()
        version = log_bundle_version(bundle_dir, model_name)  # register
    train_log.describe_version(client, model_name, version, ev, outcome, fitted.chosen, gate_ok, ungated, run_id,
                               gate_reason)

    # promote: under the lock, the comparison is with whatever is champion NOW
    verdict = promote_if_allowed(client, settings, model_name, version, gate_ok, gate_reason, ungated, ev.compare,
                                 ev.validated["auroc"])
    if verdict.champion_auroc is not None:  # the champion's configuration, out of fold on these patients
        mlflow.log_metric("champion_validated_auroc", verdict.champion_auroc)
    mlflow.set_tags({"promoted": str(verdict.promoted).lower(), "promotion_reason": verdict.reason[:5000],
                     "promotion_margins": json.dumps(PROMOTION_MARGINS),
                     "promotion_decision": ("promoted" if verdict.promoted else
                                            "held (PROMOTE=no)" if verdict.alias_held else "not promoted")})
    for key, d in (verdict.comparison.get("criteria") or {}).items():
        mlflow.log_metrics({f"noninferiority_{key}_difference": d["difference"],
                            f"noninferiority_{key}_ci_low": d["ci_low"], f"noninferiority_{key}_ci_high": d["ci_high"]})
    seconds = time.perf_counter() - started
    mlflow.log_metric("train_seconds", seconds)
    mlflow.set_tag("mlflow.note.content", train_log.run_description(
        ev, fitted.chosen, gate_ok, ungated, gate_reason, verdict.promoted, verdict.reason, empty, notes, seconds))
    decision = decision_block(model_name, version, gate_ok, gate_reason, ungated, verdict)
    return TrainResult(run_id, model_name, version, verdict.promoted, verdict.reason, fitted.chosen, metrics,
                       design.kind, ev.validated, notes, decision)


def decision_block(model_name: str, version: str, gate_ok: bool, gate_reason: str, ungated: bool,
                   verdict: Verdict) -> list[str]:
    """What was decided and why, as the last lines a training prints: the gate, then the promotion."""
    status = gate_status(gate_ok, gate_reason)
    lines = [f"DECISION for {model_name} v{version}:"]
    lines.append(f"  quality gate: {status}{', served ungated (ALLOW_UNGATED=1)' if ungated and verdict.promoted else ''}")
    if not gate_ok:
        lines += [f"    - {part.strip()}" for part in gate_reason.removeprefix(f"{INSUFFICIENT}: ").split("; ")]
    if verdict.promoted:
        lines.append("  promotion: promoted to @champion")
    elif verdict.alias_held:
        lines.append("  promotion: NOT promoted: PROMOTE=no (registered only; the alias did not move)")
    else:
        lines.append("  promotion: NOT promoted")
    for line in verdict.comparison.get("lines", []):
        lines.append(f"    - {line}")
    if verdict.comparison.get("basis"):
        lines.append(f"    compared {verdict.comparison['basis']}")
    if not verdict.comparison.get("lines"):
        lines.append(f"    reason: {verdict.reason}")
    return lines


def _empty_features(df: pd.DataFrame) -> list[str]:
    """Contract features with no value in any row (absent or empty columns)."""
    return [f.name for f in FEATURES if f.name not in df or df[f.name].isna().all()]
