"""Adopting the champion at a new centre: the smallest update the local data justify.

A centre validates a model trained elsewhere on its own patients and, when calibration is off,
updates it as little as its data allow (Steyerberg, Clinical Prediction Models, ch. 20; Vergouwe
et al. 2017, closed testing). With lp the champion's calibrated log-odds:

  (0) original            p = expit(lp)
  (1) recalibration in the large   p = expit(a + lp)             1 parameter
  (2) logistic recalibration       p = expit(a + b lp)           2 parameters
  (3) model revision      the same family refitted on the local patients with the champion's
                          hyperparameters and its own Platt calibration

Closed testing at level `alpha`, in Vergouwe's order (Vergouwe et al., Stat Med 2017): the most
extensive update is tested against the original, then against (1), then against (2), each by a
likelihood-ratio test; the first test that is not significant chooses the simpler model, and all
three significant choose the most extensive. For a tree champion with at least 10 local patients
in each class the most extensive model is (3), tested through the model that nests all four,
a + b lp + c r with r the revision's 5-fold out-of-fold log-odds (refit and calibration never see
the patient they score; `pipeline.stats.recalibration.closed_test_with_revision`): so a site whose
predictor effects differ while its overall calibration is fine can be revised, and a site that
needs nothing is updated with probability at most alpha. A chosen revision is served only when its
own out-of-fold log-likelihood beats the cross-validated logistic recalibration's (else (2) is kept,
and the run says why). Otherwise the test runs among (0), (1), (2) with (2) as the most extensive.
We refit on the local patients alone (not the local data added to the development data) because
the bundle carries no development rows by design.

(1) and (2) are affine maps of the log-odds, so the explanation stays exact: the new bundle's
calibration is a' + b'(a + b m) = (a' + b'a) + (b'b) m on the trees' margin m, and every
contribution is scaled by b'b; nothing else changes.

`update` is the sequence; the steps live in the modules named for them: `pipeline.stats.recalibration`
(the closed test), `pipeline.update.bundles` (the updated models), `pipeline.update.figures` (their
figures, corrected for the fit on the same data) and `pipeline.update.report` (report, card, note).
"""


from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.model_selection import StratifiedKFold

from models.artifact import ModelBundle
from models.candidates import CANDIDATES
from pipeline.train import instability
from pipeline.train.gate import quality_gate
from core.contract import OUTCOMES
from pipeline.evidence import paired_difference
from core.features import encode_frame
from pipeline.data.read import read_cohort
from pipeline.train.promote import promote
from pipeline.stats.recalibration import (
    INTERCEPT,
    LOGISTIC,
    NONE,
    REVISION,
    closed_test,
    closed_test_with_revision,
    fit_recalibration,
    loglik,
)
from models.registry import champion, load_bundle, promotion_lock
from pipeline.tracking.liveness import mark_alive, now_text
from core.settings import Settings
from pipeline.tracking.runs import log_bundle_version, setup_mlflow
from pipeline.update.figures import describe_bundle, local_figures, validated_figures
from pipeline.update.bundles import (
    Refit,
    cv_logistic_recalibration,
    refit,
    revision_bundle,
    revision_oof_log_odds,
    updated_bundle,
)
from pipeline.update.report import METHOD_TEXT, log_report, run_note, save_with_card, update_evidence
from pipeline.train.validation import TrainingRefused

# Re-exported: tests/model/test_update.py imports the methods and the closed test from here.
__all__ = ["INTERCEPT", "LOGISTIC", "NONE", "REVISION", "UpdateResult", "closed_test", "closed_test_with_revision",
           "fit_recalibration", "update"]


@dataclass
class UpdateResult:
    method: str
    statistics: dict[str, float]
    run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    reason: str = ""
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)



def update(settings: Settings, data: Path, outcome: str | None = None, on_invalid: str = "refuse") -> UpdateResult:
    """Validate the champion on a local cohort, choose the update by closed testing, register it.
    Interrupted (SIGINT, or SIGTERM through `pipeline.tracking.liveness.sigterm_interrupts`), its run ends KILLED."""
    started: dict[str, str] = {}
    try:
        return _update(settings, Path(data), outcome, on_invalid, started)
    except KeyboardInterrupt as exc:
        if "run_id" in started:
            client = MlflowClient()
            client.set_tag(started["run_id"], "failure_reason", f"interrupted ({exc or 'SIGINT'}) at {now_text()}")
            client.set_terminated(started["run_id"], "KILLED")
        raise


def _update(settings: Settings, data: Path, outcome: str | None, on_invalid: str,
            started: dict[str, str]) -> UpdateResult:
    outcome = outcome or settings.outcome
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown outcome '{outcome}': use one of {', '.join(OUTCOMES)}")
    name = OUTCOMES[outcome].registered_model
    cohort = read_cohort(Path(data), outcome, on_invalid=on_invalid)  # raises before any logging
    df = cohort.data.reset_index(drop=True)
    y = df[outcome].astype(int).to_numpy()
    events, non_events = int(y.sum()), int(len(y) - y.sum())
    if min(events, non_events) < settings.update_min_events:
        what = f"{events} events" if events < settings.update_min_events else f"{non_events} patients without the event"
        raise TrainingRefused(f"too few events to update: {what} of '{outcome}' in {len(y)} local patients; at least "
                              f"{settings.update_min_events} are needed (ICANS_UPDATE_MIN_EVENTS); see README")
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    parent_ref = champion(client, name, settings.champion_alias)
    if parent_ref is None:
        raise TrainingRefused(f"no @{settings.champion_alias} of '{name}' to update: train one first (make train)")
    parent = load_bundle(parent_ref)
    X = encode_frame(df)
    p0 = parent.predict_proba(X)
    lp = np.log(np.clip(p0, 1e-12, 1)) - np.log(np.clip(1 - p0, 1e-12, 1))
    folds = StratifiedKFold(5, shuffle=True, random_state=settings.seed)
    revision: Refit | None = None
    revision_oof: np.ndarray | None = None
    if parent.kind in CANDIDATES and min(events, non_events) >= 10:
        # the revision is tested against the original too (Vergouwe's order), on its out-of-fold log-odds
        revision_oof = revision_oof_log_odds(parent, X, y, folds, settings.seed)
        test = closed_test_with_revision(y, lp, revision_oof, settings.update_alpha)
        ll_recal = loglik(y, cv_logistic_recalibration(y, lp, folds))
        ll_rev = loglik(y, revision_oof)
        test.statistics.update(cv_loglik_logistic=ll_recal, cv_loglik_revision=ll_rev)
        if test.method == REVISION and ll_rev <= ll_recal:
            # the local effects differ, but the refit alone predicts these patients no better out-of-fold
            # than the recalibrated original: serving it would discard what the original knows
            test.method = LOGISTIC
            test.notes.append("the closed test rejected logistic recalibration, but the revision's out-of-fold "
                              "log-likelihood is not above the recalibration's: logistic recalibration is kept; a "
                              "larger local cohort is needed for a revision")
    else:
        test = closed_test(y, lp, settings.update_alpha)
        test.notes.append("revision not considered: " + (
            f"the parent's family ({parent.kind}) cannot be refitted here" if parent.kind not in CANDIDATES
            else f"fewer than 10 local patients in a class ({events} events, {non_events} without)"))
    if test.method in (LOGISTIC, REVISION) and test.slope <= 0:
        raise TrainingRefused(
            f"the model does not discriminate at this site (fitted recalibration slope {test.slope:.2f} <= 0 on "
            f"{len(y)} local patients): no update can mend that; nothing was registered (train on local data instead)")
    if test.method == REVISION:
        revision = refit(parent, X, y, settings.seed)

    before = local_figures(y, p0, settings.seed)
    info = {"method": test.method, "parent_version": str(parent_ref.version), "parent_run_id": parent_ref.run_id,
            "local_data_sha256": cohort.sha256, "n_local": int(len(y)), "events_local": events,
            "alpha": settings.update_alpha, "updated_at": now_text(),
            "statistics": {k: round(float(v), 6) for k, v in test.statistics.items()}, "notes": list(test.notes)}
    inst = None
    validated: dict[str, float] = {}
    if test.method == NONE:
        new_bundle, p1 = None, p0
        judged_risk, after = p0, before
    else:
        if test.method == REVISION:
            assert revision is not None  # chosen above only with its refit
            new_bundle = revision_bundle(parent, revision, df, info, cohort.sha256)
            # the revision's own instability: the same refit on bootstrap samples of the local patients
            inst = instability.analyse(new_bundle, parent.kind, dict(parent.metadata.get("params") or {}), X, y,
                                       settings, max(1, os.cpu_count() or 1))
        else:
            new_bundle = updated_bundle(parent, test, info)
        p1 = new_bundle.predict_proba(X)
        # the local data both fit and judge the update: every "after" figure is corrected for that
        validated, judged_risk, after = validated_figures(y, p1, lp, df, test.method, settings.seed, revision_oof)
        for k in ("calibration_slope", "calibration_intercept"):
            for suffix in ("", "_ci_low", "_ci_high"):
                after[k + suffix] = validated[k + suffix]
        describe_bundle(new_bundle, validated, df, X)
    result = UpdateResult(test.method, test.statistics, before=before, after=after)

    experiment_id = setup_mlflow(settings, settings.experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"update-{name}-v{parent_ref.version}") as run:
        result.run_id = started["run_id"] = run.info.run_id
        mark_alive()
        mlflow.set_tags({"update_method": test.method, "parent_version": str(parent_ref.version),
                         "parent_run_id": parent_ref.run_id or "", "outcome": outcome,
                         "data_source": Path(data).name})
        mlflow.log_params({"update_alpha": settings.update_alpha, "local_data_sha256": cohort.sha256,
                           "n_local": len(y), "events_local": events})
        mlflow.log_metrics({f"update_{k}": float(v) for k, v in test.statistics.items() if np.isfinite(v)})
        mlflow.log_metrics({f"before_{k}": float(v) for k, v in before.items() if np.isfinite(v)})
        mlflow.log_metrics({f"after_{k}": float(v) for k, v in after.items() if np.isfinite(v)})
        if new_bundle is not None:
            mlflow.log_metrics(instability.log_to_mlflow(inst, new_bundle.low_threshold, new_bundle.high_threshold))
        evidence = update_evidence(y, judged_risk, df, p0, parent, parent_ref.version, name, outcome, test.method,
                                   settings.update_alpha, settings.seed, validated or before,
                                   updated=new_bundle is not None)
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            log_report(evidence, t, title=f"Local update of {name} v{parent_ref.version}: {METHOD_TEXT[test.method]}")
            if new_bundle is None:
                result.reason = "no update: the closed test did not reject the original model"
                mlflow.set_tag("promotion_reason", result.reason)
                client.set_model_version_tag(name, parent_ref.version, f"local_validation_{run.info.run_id[:8]}",
                                             "no update needed")
                return result
            gate_ok, gate_reason = quality_gate(validated)
            new_bundle.metadata["gate"] = {"passed": gate_ok, "reason": gate_reason, "ungated": False}
            new_bundle.metadata["validation"] = {
                "design": "local_update", "description": f"{METHOD_TEXT[test.method]} on {len(y)} local patients "
                f"({events} events); figures on the local data, optimism-corrected",
                "estimates": {k: round(float(v), 4) for k, v in validated.items() if np.isfinite(v)}}
            bundle_dir = save_with_card(new_bundle, evidence, t / "bundle", name=name, run_id=run.info.run_id,
                                        parent=parent, cohort=cohort, df=df, data=data, seed=settings.seed, info=info)
            version = log_bundle_version(bundle_dir, name)
        result.version = version
        for key, value in (("outcome", outcome), ("update_method", test.method),
                           ("parent_version", str(parent_ref.version)), ("local_data_sha256", cohort.sha256),
                           ("validation_design", "local_update"), ("validated_auroc", f"{validated['auroc']:.4f}"),
                           ("quality_gate", "passed" if gate_ok else "failed")):
            client.set_model_version_tag(name, version, key, value)
        for key in ("lr_logistic_vs_original", "p_logistic_vs_original", "lr_logistic_vs_intercept",
                    "p_logistic_vs_intercept", "p_extended_vs_original", "p_extended_vs_intercept",
                    "p_extended_vs_logistic"):
            if key in test.statistics:
                client.set_model_version_tag(name, version, key, f"{test.statistics[key]:.4g}")
        client.set_model_version_tag(name, parent_ref.version, f"updated_as_v{version}", test.method)

        def compare(champ: ModelBundle) -> dict[str, float]:
            d = paired_difference(y, judged_risk, champ.predict_proba(X), seed=settings.seed)
            return {"champion_auroc": d["auroc_other"], "difference": d["difference"],
                    "ci_low": d["ci_low"], "ci_high": d["ci_high"]}

        with promotion_lock(settings.lock_url or settings.tracking_uri, settings.data_dir, name):
            if gate_ok:
                result.promoted, result.reason, _ = promote(client, settings, name, version, compare, validated["auroc"])
            else:
                result.reason = f"quality gate: {gate_reason}"
                client.set_model_version_tag(name, version, "promotion", "not promoted")
                client.set_model_version_tag(name, version, "promotion_reason", result.reason)
                client.set_model_version_tag(name, version, "promotion_time", now_text())
        mlflow.set_tags({"promoted": str(result.promoted).lower(), "promotion_reason": result.reason,
                         "new_version": version})
        mlflow.set_tag("mlflow.note.content", run_note(name, parent_ref.version, version, test, before, after,
                                                      result.promoted, result.reason))
    return result
