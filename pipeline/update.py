"""Adopting the champion at a new centre: the smallest update the local data justify.

A centre validates a model trained elsewhere on its own patients and, when calibration is off,
updates it as little as its data allow (Steyerberg, Clinical Prediction Models, ch. 20; Vergouwe
et al. 2017, closed testing). With lp the champion's calibrated log-odds:

  (0) original            p = expit(lp)
  (1) recalibration in the large   p = expit(a + lp)             1 parameter
  (2) logistic recalibration       p = expit(a + b lp)           2 parameters
  (3) model revision      the same family refitted on the local patients with the champion's
                          hyperparameters and its own Platt calibration

Closed testing at level `alpha`, in Vergouwe's order: (2) against (0) by a likelihood-ratio test
with 2 df; if not significant, keep (0). Otherwise (2) against (1) with 1 df: not significant ->
(1), else (2). Revision is considered only after (2) has been chosen, and a tree model has no
parameter count for a likelihood-ratio test, so it is judged on cross-validated log-likelihood
(5 folds: the refit and its calibration never see the patients they are scored on; the
recalibration is cross-validated the same way): (3) is chosen only when twice its gain over (2)
exceeds the chi-squared(1) critical value. We refit on the local patients alone (not the local
data added to the development data) because the bundle carries no development rows by design.

(1) and (2) are affine maps of the log-odds, so the explanation stays exact: the new bundle's
calibration is a' + b'(a + b m) = (a' + b'a) + (b'b) m on the trees' margin m, and every
contribution is scaled by b'b; nothing else changes.
"""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from scipy.special import expit
from scipy.stats import chi2
from sklearn.model_selection import StratifiedKFold

from models.artifact import ModelBundle
from models.baselines import SCORES
from pipeline import instability
from pipeline.contract import OUTCOMES
from pipeline.evidence import build_evidence, paired_difference
from pipeline.features import N_MATRIX, encode_frame
from pipeline.io import read_cohort
from pipeline.metrics import calibration_slope_intercept
from pipeline.registry import champion, load_bundle, promotion_lock
from pipeline.report import render_validation_report, save_plots, write_model_card
from pipeline.runs import mark_alive, now_text
from pipeline.settings import Settings
from pipeline.validation import TrainingRefused

from pipeline.recalibration import (  # noqa: F401 - re-exported: the methods are named here for the CLI
    INTERCEPT,
    LOGISTIC,
    NONE,
    REVISION,
    ClosedTest,
    loglik,
    closed_test,
    fit_recalibration,
)
METHOD_TEXT = {
    NONE: "no update (the original model fits the local data)",
    INTERCEPT: "recalibration in the large (intercept only)",
    LOGISTIC: "logistic recalibration (intercept and slope on the log-odds)",
    REVISION: "model revision (refitted on the local patients with the original hyperparameters)",
}


def _cv_logistic_recalibration(y: np.ndarray, lp: np.ndarray, folds: StratifiedKFold) -> np.ndarray:
    out = np.empty_like(lp)
    for tr, te in folds.split(lp.reshape(-1, 1), y):
        a, b = fit_recalibration(y[tr], lp[tr], with_slope=True)
        out[te] = a + b * lp[te]
    return out


def _revision_oof(bundle: ModelBundle, X: np.ndarray, y: np.ndarray, folds: StratifiedKFold, seed: int) -> np.ndarray:
    """Out-of-fold calibrated log-odds of the family refitted with the champion's hyperparameters."""
    out = np.empty(len(y))
    for tr, te in folds.split(X, y):
        fitted = _refit(bundle, X[tr], y[tr], seed)
        out[te] = fitted.predict_logit(X[te])
    return out


@dataclass
class _Refit:
    estimator: Any
    intercept: float
    slope: float

    def predict_logit(self, X: np.ndarray) -> np.ndarray:
        p = np.clip(self.estimator.predict_proba(X)[:, 1], 1e-7, 1 - 1e-7)
        return self.intercept + self.slope * np.log(p / (1 - p))


def _refit(bundle: ModelBundle, X: np.ndarray, y: np.ndarray, seed: int) -> _Refit:
    from sklearn.model_selection import cross_val_predict

    from models.calibration import PlattOnMargin
    from models.candidates import CANDIDATES

    params = dict(bundle.metadata.get("params") or {})
    model = CANDIDATES[bundle.kind].factory(seed, 1).set_params(**params)
    cv = StratifiedKFold(min(5, int(min(y.sum(), len(y) - y.sum()))), shuffle=True, random_state=seed)
    oof = np.clip(cross_val_predict(model, X, y, cv=cv, method="predict_proba")[:, 1], 1e-7, 1 - 1e-7)
    platt = PlattOnMargin().fit(np.log(oof / (1 - oof)), y)
    return _Refit(model.fit(X, y), float(platt.intercept_), float(platt.slope_))


def updated_bundle(parent: ModelBundle, test: ClosedTest, info: dict[str, Any]) -> ModelBundle:
    """The parent's trees with the recalibration composed into their affine calibration."""
    new = copy.copy(parent)
    new.calibration_intercept = test.intercept + test.slope * parent.calibration_intercept
    new.calibration_slope = test.slope * parent.calibration_slope
    new.metadata = {**copy.deepcopy(parent.metadata), "update": info}
    if parent.instability is not None:  # the parent's bootstrap models, recalibrated by the same map
        new.instability = parent.instability.recalibrated(test.intercept, test.slope)
        new.metadata["instability"]["note"] = (
            "intervals from the parent version's bootstrap models, recalibrated by this update's map; the "
            "uncertainty of the local recalibration itself is not included")
    new.documents = {}
    return new


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


def _figures(y: np.ndarray, p: np.ndarray, seed: int) -> dict[str, float]:
    """Calibration and discrimination on the local data, as monitoring reports them."""
    from pipeline.monitoring import calibration_now

    return calibration_now(y, p, seed=seed).figures


def _optimism(y: np.ndarray, lp: np.ndarray, method: str, seed: int, n_boot: int = 200) -> dict[str, float]:
    """Harrell's bootstrap optimism of the recalibration's calibration slope and intercept: the
    local data both fit and judge the update. (Exact for 1-2 parameters; no trees are refitted.)"""
    if method not in (INTERCEPT, LOGISTIC):
        return {"calibration_slope": 0.0, "calibration_intercept": 0.0}
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if not 0 < y[idx].sum() < len(idx):
            continue
        a, b = fit_recalibration(y[idx], lp[idx], with_slope=method == LOGISTIC)
        boot = calibration_slope_intercept(y[idx], expit(a + b * lp[idx]))
        orig = calibration_slope_intercept(y, expit(a + b * lp))
        diffs.append(np.subtract(boot, orig))
    d = np.nanmean(np.asarray(diffs), axis=0)
    return {"calibration_slope": float(d[0]), "calibration_intercept": float(d[1])}


def update(settings: Settings, data: Path, outcome: str | None = None, on_invalid: str = "refuse") -> UpdateResult:
    """Validate the champion on a local cohort, choose the update by closed testing, register it.
    Interrupted (SIGINT, or SIGTERM through `pipeline.runs.sigterm_interrupts`), its run ends KILLED."""
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
    from pipeline.train import log_bundle_version, quality_gate, setup_mlflow, _promote

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
    test = closed_test(y, lp, settings.update_alpha)
    if test.method == LOGISTIC and test.slope <= 0:
        raise TrainingRefused(
            f"the model does not discriminate at this site (fitted recalibration slope {test.slope:.2f} <= 0 on "
            f"{len(y)} local patients): no update can mend that; nothing was registered (train on local data instead)")
    folds = StratifiedKFold(5, shuffle=True, random_state=settings.seed)
    revision: _Refit | None = None
    revision_oof: np.ndarray | None = None
    if test.method == LOGISTIC and parent.kind in ("xgboost", "hist_gradient_boosting") and min(events, non_events) >= 10:
        ll_recal = loglik(y, _cv_logistic_recalibration(y, lp, folds))
        revision_oof = _revision_oof(parent, X, y, folds, settings.seed)
        ll_rev = loglik(y, revision_oof)
        gain = max(0.0, 2 * (ll_rev - ll_recal))
        test.statistics.update(cv_loglik_logistic=ll_recal, cv_loglik_revision=ll_rev, cv_lr_revision_vs_logistic=gain,
                               p_revision_vs_logistic=float(chi2.sf(gain, 1)))
        if test.statistics["p_revision_vs_logistic"] < settings.update_alpha:
            test.method = REVISION
            revision = _refit(parent, X, y, settings.seed)

    before = _figures(y, p0, settings.seed)
    info = {"method": test.method, "parent_version": str(parent_ref.version), "parent_run_id": parent_ref.run_id,
            "local_data_sha256": cohort.sha256, "n_local": int(len(y)), "events_local": events,
            "alpha": settings.update_alpha, "updated_at": now_text(),
            "statistics": {k: round(float(v), 6) for k, v in test.statistics.items()}}
    inst = None
    if test.method == NONE:
        new_bundle, p1 = None, p0
        validated, judged_risk, after = {}, p0, before
    else:
        if test.method == REVISION:
            new_bundle = _revision_bundle(parent, revision, df, info, cohort.sha256)
            # the revision's own instability: the same refit on bootstrap samples of the local patients
            inst = instability.analyse(new_bundle, parent.kind, dict(parent.metadata.get("params") or {}), X, y,
                                       settings, max(1, os.cpu_count() or 1))
        else:
            new_bundle = updated_bundle(parent, test, info)
        p1 = new_bundle.predict_proba(X)
        # the local data both fit and judge the update: every "after" figure is corrected for that
        validated, judged_risk, after = _validated(y, p1, lp, df, test.method, settings.seed, revision_oof)
        for k in ("calibration_slope", "calibration_intercept"):
            for suffix in ("", "_ci_low", "_ci_high"):
                after[k + suffix] = validated[k + suffix]
        _describe_bundle(new_bundle, validated, df, X)
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
        evidence = build_evidence(
            None, None, None, y, judged_risk, df, {"low": parent.low_threshold, "high": parent.high_threshold},
            N_MATRIX, outcome, other_predictions={f"original v{parent_ref.version}": p0}, seed=settings.seed,
            meta={"model": f"{name} v{parent_ref.version} updated by {METHOD_TEXT[test.method]}"},
        )
        honest = ("a revision is shown by its out-of-fold risks (5-fold: refit and calibration never saw the "
                  "patient); a recalibration's slope and intercept are corrected for optimism by Harrell's "
                  "bootstrap (200 repetitions); its AUROC is the original's")
        evidence.validation = {
            "design": "local update" if new_bundle is not None else "local validation",
            "reason": (f"{METHOD_TEXT[test.method]}, chosen by closed testing at {settings.update_alpha} on {len(y)} "
                       f"local patients ({events} events); the local data both fit and judge the update: {honest}"
                       if new_bundle is not None else
                       f"the closed test at {settings.update_alpha} did not reject the original model on {len(y)} "
                       f"local patients ({events} events)"),
            "estimates": validated or before,
            "evaluated_on": f"the {len(y)} local patients, the original model beside the update",
        }
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            save_plots(evidence, t / "plots")
            mlflow.log_artifacts(str(t / "plots"), artifact_path="plots")
            report = render_validation_report(
                evidence, t / "plots", t / "report" / "update_report.html",
                title=f"Local update of {name} v{parent_ref.version}: {METHOD_TEXT[test.method]}")
            mlflow.log_artifact(str(report))
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
            bundle_dir = new_bundle.save(t / "bundle")
            card = {"name": name, "version": "see GET /v1/model", "run_id": run.info.run_id,
                    "trained_at": parent.metadata.get("trained_at"), "kind": new_bundle.kind,
                    "params": new_bundle.metadata.get("params", {}),
                    "thresholds": {"low": new_bundle.low_threshold, "high": new_bundle.high_threshold},
                    "contract_version": new_bundle.contract_version, "git_commit": "", "n_params": N_MATRIX,
                    "gate": new_bundle.metadata["gate"], "instability": new_bundle.metadata.get("instability")}
            provenance = {"synthetic": False, "sha256": cohort.sha256, "file": Path(data).name, "n_rows": len(df),
                          "n_dev": len(df), "n_test": "none (the local data fit and judge the update)",
                          "seed": settings.seed, "n_rows_rejected": len(cohort.rejected)}
            write_model_card(evidence, card, provenance, bundle_dir)
            _prepend_update_note(bundle_dir, info)
            version = log_bundle_version(bundle_dir, name)
        result.version = version
        for key, value in (("outcome", outcome), ("update_method", test.method),
                           ("parent_version", str(parent_ref.version)), ("local_data_sha256", cohort.sha256),
                           ("validation_design", "local_update"), ("validated_auroc", f"{validated['auroc']:.4f}"),
                           ("quality_gate", "passed" if gate_ok else "failed")):
            client.set_model_version_tag(name, version, key, value)
        for key in ("lr_logistic_vs_original", "p_logistic_vs_original", "lr_logistic_vs_intercept",
                    "p_logistic_vs_intercept"):
            client.set_model_version_tag(name, version, key, f"{test.statistics[key]:.4g}")
        client.set_model_version_tag(name, parent_ref.version, f"updated_as_v{version}", test.method)

        def compare(champ: ModelBundle) -> dict[str, float]:
            d = paired_difference(y, judged_risk, champ.predict_proba(X), seed=settings.seed)
            return {"champion_auroc": d["auroc_other"], "difference": d["difference"],
                    "ci_low": d["ci_low"], "ci_high": d["ci_high"]}

        with promotion_lock(settings.lock_url or settings.tracking_uri, settings.data_dir, name):
            if gate_ok:
                result.promoted, result.reason, _ = _promote(client, settings, name, version, compare, validated["auroc"])
            else:
                result.reason = f"quality gate: {gate_reason}"
                client.set_model_version_tag(name, version, "promotion", "not promoted")
                client.set_model_version_tag(name, version, "promotion_reason", result.reason)
                client.set_model_version_tag(name, version, "promotion_time", now_text())
        mlflow.set_tags({"promoted": str(result.promoted).lower(), "promotion_reason": result.reason,
                         "new_version": version})
        mlflow.set_tag("mlflow.note.content", _describe(name, parent_ref.version, version, test, before, after, result))
    return result


def _validated(y, p1, lp, df, method, seed, revision_oof) -> tuple[dict[str, float], np.ndarray, dict[str, float]]:
    """The gate's figures for the update on the local data, corrected for the fit on the same data,
    the risks they are read from, and those risks' uncorrected figures. A revision is judged on its
    out-of-fold risks (`revision_oof`, the closed test's); a recalibration by Harrell's bootstrap optimism."""
    risk = expit(revision_oof) if method == REVISION else p1
    fig = _figures(y, risk, seed)
    opt = _optimism(y, lp, method, seed)
    v = {"auroc": fig["auroc"], "auroc_ci_low": fig["auroc_ci_low"], "auroc_ci_high": fig["auroc_ci_high"],
         "brier": fig["brier"], "brier_ci_low": fig["brier_ci_low"], "brier_ci_high": fig["brier_ci_high"]}
    for k in ("calibration_slope", "calibration_intercept"):
        v[k] = fig[k] - opt[k]
        v[f"{k}_ci_low"] = fig[f"{k}_ci_low"] - opt[k]
        v[f"{k}_ci_high"] = fig[f"{k}_ci_high"] - opt[k]
        v[f"optimism_{k}"] = opt[k]
    m_easix = SCORES["m_easix"](df)
    if np.all(np.isfinite(m_easix)):
        d = paired_difference(y, risk, m_easix, seed=seed)
        v.update(m_easix_auroc=d["auroc_other"], auroc_minus_m_easix=d["difference"],
                 auroc_minus_m_easix_ci_low=d["ci_low"], auroc_minus_m_easix_ci_high=d["ci_high"])
    return v, risk, dict(fig)


def _revision_bundle(parent: ModelBundle, revision: _Refit, df, info: dict[str, Any], sha256: str) -> ModelBundle:
    from pipeline.features import training_ranges

    estimator = revision.estimator.get_booster() if parent.kind == "xgboost" else revision.estimator
    return ModelBundle(kind=parent.kind, estimator=estimator, calibration_intercept=revision.intercept,
                       calibration_slope=revision.slope, low_threshold=parent.low_threshold,
                       high_threshold=parent.high_threshold, outcome=parent.outcome,
                       training_ranges=training_ranges(df),
                       metadata={**copy.deepcopy(parent.metadata), "update": info, "n_dev": len(df),
                                 "data_sha256": sha256, "trained_at": info["updated_at"]})


def _describe_bundle(bundle: ModelBundle, validated: dict[str, float], df, X: np.ndarray) -> None:
    """The updated version's own figures and reference, never its parent's: what /v1/model shows and
    what monitoring compares the site's patients with (the local patients it was updated on)."""
    from pipeline.monitoring import reference_summary

    bundle.metadata["test_metrics"] = {f"validated_{k}": round(float(v), 4) for k, v in validated.items()
                                       if np.isfinite(v)}
    ex = bundle.explain(X)
    bundle.metadata["reference"] = reference_summary(
        df, ex.risk, dict(zip(bundle.feature_names, np.mean(np.abs(ex.contributions), axis=0))))


def _prepend_update_note(bundle_dir: Path, info: dict[str, Any]) -> None:
    text = (f"This version is a local update of version {info['parent_version']}: {METHOD_TEXT[info['method']]}, "
            f"fitted on {info['n_local']} local patients ({info['events_local']} events), data SHA-256 "
            f"{info['local_data_sha256'][:12]}..., on {info['updated_at']}.")
    md = bundle_dir / "model_card.md"
    if md.exists():
        md.write_text(f"> **Updated model.** {text}\n\n" + md.read_text(encoding="utf-8"), encoding="utf-8")
    page = bundle_dir / "model_card.html"
    if page.exists():
        import html

        body = page.read_text(encoding="utf-8")
        page.write_text(body.replace("<body>", f'<body><p class="update"><strong>Updated model.</strong> '
                                               f"{html.escape(text)}</p>", 1), encoding="utf-8")


def _describe(name, parent_version, version, test: ClosedTest, before, after, result: UpdateResult) -> str:
    s = test.statistics
    return "\n".join([
        f"**Local update of {name} v{parent_version}** -> v{version}: {METHOD_TEXT[test.method]}.",
        "",
        f"Closed test (alpha {test.alpha}): logistic vs original LR {s['lr_logistic_vs_original']:.2f} "
        f"(p {s['p_logistic_vs_original']:.3g}); logistic vs intercept-only LR {s['lr_logistic_vs_intercept']:.2f} "
        f"(p {s['p_logistic_vs_intercept']:.3g}).",
        "",
        f"Before: calibration intercept {before['calibration_intercept']:.2f}, slope {before['calibration_slope']:.2f}, "
        f"AUROC {before['auroc']:.3f}. After: intercept {after['calibration_intercept']:.2f}, slope "
        f"{after['calibration_slope']:.2f}, AUROC {after['auroc']:.3f}.",
        "",
        f"Promotion: {'champion' if result.promoted else 'not promoted'}: {result.reason}. Research use only.",
    ])

