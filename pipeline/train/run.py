"""Training: validate (held-out split or repeated cross-validation), tune, choose, calibrate, log, register, promote.

Everything is tracked in MLflow: one parent run per training, one child run per candidate family.
The champion alias moves last, only for a model that passed the quality gate (`pipeline.train.gate.GATE_RULE`)
and is non-inferior to the current champion refitted on the same patients (`PROMOTION_RULE`), and
never with PROMOTE=no; a crash or a worse model never replaces what is served.

`train` is the sequence of stages; each stage lives in the module named for it:
`pipeline.data.loading` (the cohort), `pipeline.train.validation` (the design, tuning and the fitted
procedure), `pipeline.train.tuning` (tune, choose, calibrate, bundle), `pipeline.train.assessment` (what the
design says), `pipeline.train.gate` (the gate and the champion comparison), `pipeline.train.log`
and `pipeline.tracking.runs` (what MLflow records) and `pipeline.train.promote` (the alias).
"""

from __future__ import annotations

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

from pipeline.train import cluster, iecv, instability, log as train_log
from pipeline.train.assessment import Evaluation, assess
from pipeline.train.gate import INSUFFICIENT, comparison_notes, gate_status, quality_gate
from core.contract import FEATURES, OUTCOMES
from pipeline.data.loading import load_cohort
from pipeline.train.promote import Verdict, gate_verdict, log_verdict, promote_if_allowed
from pipeline.tracking.liveness import end_interrupted, heartbeat, mark_alive, sweep
from core.settings import Settings
from pipeline.tracking.runs import log_bundle_version, setup_mlflow
from pipeline.train.training_run import GateVerdict, TrainingRun
from pipeline.train.tuning import build_bundle, choose, tune_candidates
from pipeline.train.validation import RESAMPLING, SPLIT, Design, check_trainable, choose_design

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

    def report_lines(self) -> list[str]:
        """What `icans-risk train` prints last: the run, the validated estimates (core.display's rule
        for each figure, as in the card and the report), then the decision block."""
        kind = "cross-validated" if self.design == RESAMPLING else "held-out"
        return [f"run {self.run_id}: {self.model_name} v{self.version} ({self.chosen}), validation: {self.design}",
                train_log.validated_summary(self.validated, kind), *self.decision]


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
            run = TrainingRun.of(settings, outcome, parent.info.run_id, model_name, design, dev, test, synthetic,
                                 max(1, os.cpu_count() or 1), cohort, data, on_invalid, _empty_features(cohort.data))
            return _train_in_run(run, experiment_id, client, started)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through pipeline.tracking.liveness.sigterm_interrupts
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


def _train_in_run(run: TrainingRun, experiment_id: str, client: MlflowClient, started: float) -> TrainResult:
    """The stages, then the run's description and the decision block, timed from `started`."""
    with cluster.session(run.settings.cluster, run.settings.cluster_workers):  # one cluster for every parallel loop
        result = _stages(run, experiment_id, client)
    seconds = time.perf_counter() - started
    mlflow.log_metric("train_seconds", seconds)
    mlflow.set_tag("mlflow.note.content", train_log.run_description(
        result.ev, result.chosen, result.gate, result.verdict.promoted, result.verdict.reason, run.empty,
        result.notes, seconds))
    verdict = result.verdict
    decision = decision_block(run.model_name, result.version, result.gate, verdict)
    return TrainResult(run.run_id, run.model_name, result.version, verdict.promoted, verdict.reason, result.chosen,
                       result.metrics, run.design.kind, result.ev.validated, result.notes, decision)


@dataclass
class _Stages:
    """What the stages of one run produced, for the run's description and the result."""

    ev: Evaluation
    chosen: str
    metrics: dict[str, float]
    gate: GateVerdict
    notes: list[str]
    version: str
    verdict: Verdict


def _stages(run: TrainingRun, experiment_id: str, client: MlflowClient) -> _Stages:
    """Tune, choose, assess, gate, register, promote: each stage takes the run, not its parts."""
    settings, X_dev, y_dev, n_jobs = run.settings, run.X_dev, run.y_dev, run.n_jobs
    train_log.log_inputs(run)

    tuned = tune_candidates(X_dev, y_dev, settings, experiment_id, n_jobs)  # tune
    fitted = choose(X_dev, y_dev, tuned, settings, n_jobs)  # choose, and calibrate
    bundle = build_bundle(fitted, run.frame, y_dev, run.outcome, run.run_id, run.cohort.sha256, run.empty)
    ev = assess(run, fitted, bundle)
    train_log.add_reference(bundle, run.frame, X_dev)
    explained = bundle.explain(ev.X)
    metrics = train_log.collect_metrics(ev, bundle, fitted, tuned, explained)
    inst = instability.analyse(bundle, fitted.chosen, fitted.params, X_dev, y_dev, settings, n_jobs)  # instability
    metrics.update(instability.log_to_mlflow(inst, bundle.low_threshold, bundle.high_threshold, plot=False))

    # validate by centre (a multi-centre file): its pooled estimates go to the gate (GATE_RULE (5))
    transport, centre_notes = iecv.validate_by_centre(run.cohort.data, run.outcome, settings, bundle, n_jobs)
    # compare: the gate (ALLOW_UNGATED serves a refused model only where nothing else could be served)
    judged = (ev.validated,) if transport is None else (ev.validated, transport.pooled)
    gate = gate_verdict(client, settings, run.model_name, *quality_gate(*judged))
    train_log.record_verdicts(run, ev, bundle, metrics, gate)  # log
    notes = comparison_notes(ev.validated, metrics, run.design.kind)  # compare: the simpler models
    notes += iecv.log_to_run(transport) if transport is not None else centre_notes
    with tempfile.TemporaryDirectory() as tmp:
        if inst is not None:  # into the run's plots and the validation report
            instability.instability_plot(inst, bundle.low_threshold, bundle.high_threshold, Path(tmp) / "instability.png")
        bundle_dir = train_log.write_artifacts(
            Path(tmp), ev, bundle, explained, run.outcome, train_log.card_info(run, bundle), train_log.provenance(run),
            transport,
        )
        heartbeat()
        version = log_bundle_version(bundle_dir, run.model_name)  # register
    train_log.describe_version(client, run, version, ev, fitted.chosen, gate, transport)

    # promote: under the lock, the comparison is with whatever is champion NOW
    compare = ev.compare if transport is None else iecv.with_centre_comparison(
        ev.compare, transport, run.cohort.data, run.outcome, settings,
        {"low": bundle.low_threshold, "high": bundle.high_threshold})  # PROMOTION_RULE: and by centre
    verdict = promote_if_allowed(client, settings, run.model_name, version, gate, compare, ev.validated["auroc"])
    log_verdict(verdict)
    return _Stages(ev, fitted.chosen, metrics, gate, notes, version, verdict)


def decision_block(model_name: str, version: str, gate: GateVerdict, verdict: Verdict) -> list[str]:
    """What was decided and why, as the last lines a training prints: the gate, then the promotion."""
    gate_ok, gate_reason, ungated = gate.ok, gate.reason, gate.ungated
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
