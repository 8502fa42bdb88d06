"""`icans-risk monitor`: the served version's answers against its own development data, as an MLflow run.

The audited answers (features as submitted, the risk given) of the served model version in a time
window are compared with the development summary the bundle carries (`pipeline.monitor.statistics`):
input, missingness and predicted-risk drift with family-wise error control, and explanation drift.
The run goes to the experiment `icans-risk-monitoring`, tagged with the model version, with
metrics under stable names, the tables as CSV and a self-contained `monitoring_report.html`.
The CLI reads the audit rows (from the service's store) and hands them here: this module does not
import the service.

Patients, not requests: one observation per patient and model version (the audit trail's keyed
patient hash; without a patient id, a hash of the submitted feature vector), the patient's first
answer of that version, counted in the window of that first answer; repeat views, the explanation
and CDS Hooks chart openings never count again. Outcomes are judged only for answers whose
follow-up has ended (`follow_up_days`, 30 by default: ICANS is known within about 30 days), with
the risk-adjusted CUSUM charts of `pipeline.monitor.statistics` as the error-controlled alarm.
"""

from __future__ import annotations

import hashlib
import html
import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterable

import mlflow
import numpy as np
import pandas as pd

from core import display

MONITORING_EXPERIMENT = "icans-risk-monitoring"


class MonitoringError(ValueError):
    """One line that names why no monitoring run could be made."""


@dataclass
class MonitorResult:
    run_id: str
    model: str
    n: int
    alarms: list[str]
    drift: pd.DataFrame
    verdict: dict[str, Any]
    calibration: dict[str, float]
    model_name: str = ""
    model_version: str = ""
    n_answers: int = 0  # the audited answers in the window that the `n` patients stand for
    outcome_alarms: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the service shows of this run (`GET /v1/model`, the icans_monitor_* gauges)."""
        figures = {k: float(v) for k, v in self.calibration.items()
                   if k in ("observed_expected", "calibration_intercept", "calibration_slope", "auroc", "brier",
                            "events") and np.isfinite(v)}
        return {"verdict": self.verdict["verdict"], "verdict_text": self.verdict["text"], "alarms": self.alarms,
                "n": self.n, "n_answers": self.n_answers, "n_with_outcome": int(self.calibration.get("n", 0)),
                **figures}


def _inputs(row: dict[str, Any]) -> dict[str, Any]:
    value = row["inputs"]
    return json.loads(value) if isinstance(value, str) else dict(value)


def patient_key(row: dict[str, Any]) -> str:
    """Who an audited answer is about: the keyed patient hash, or without a patient id a hash of the
    submitted feature vector (key order and JSON spelling do not matter). Two patients with every
    feature equal and no id would count once: rare with continuous laboratory values."""
    if row.get("patient_hash"):
        return "patient:" + str(row["patient_hash"])
    canonical = json.dumps(_inputs(row), sort_keys=True, separators=(",", ":"), default=str)
    return "features:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class Patients:
    """The window's patients (one row each: their first answer of the version), and what they stand for."""

    frame: pd.DataFrame
    risk: np.ndarray
    n_answers: int  # answers of the version in the window (repeats, explanations and card views included)
    first_seen: dict[str, datetime]  # every patient of the version, whenever first seen: key -> time


def one_per_patient(rows: Iterable[dict[str, Any]], name: str, version: str, since: datetime | None = None,
                    until: datetime | None = None) -> Patients:
    """One observation per patient of this model version: the patient's first answer, in the window
    only if that first answer is (a patient first seen before `since` is not counted again)."""
    first: dict[str, dict[str, Any]] = {}
    n_answers = 0
    for row in sorted((r for r in rows if r["model_name"] == name and str(r["model_version"]) == str(version)),
                      key=lambda r: (r["time"], r.get("id") or 0)):
        t = row["time"]
        if not ((since and t < since) or (until and t >= until)):
            n_answers += 1
        first.setdefault(patient_key(row), row)
    kept = [r for r in first.values() if not ((since and r["time"] < since) or (until and r["time"] >= until))]
    return Patients(pd.DataFrame([_inputs(r) for r in kept]), np.asarray([float(r["risk"]) for r in kept], dtype=float),
                    n_answers, {k: r["time"] for k, r in first.items()})


def due_outcomes(labelled: Iterable[dict[str, Any]], name: str, version: str, cutoff: datetime,
                 since: datetime | None = None) -> list[dict[str, Any]]:
    """The labelled answers of this version whose follow-up has ended (answer time < `cutoff`), one per
    patient (the latest outcome report), in the order the outcomes were observed."""
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in labelled if r["model_name"] == name and str(r["model_version"]) == str(version)
                     and r["time"] < cutoff and (since is None or r["time"] >= since)),
                    key=lambda r: (r["observed_on"], r.get("id") or 0)):
        latest[patient_key(r)] = r
    return sorted(latest.values(), key=lambda r: (r["observed_on"], r.get("id") or 0))


def monitor(settings: Any, rows: Iterable[dict[str, Any]], since: datetime | None = None,
            until: datetime | None = None, alpha: float = 0.05, seed: int = 0,
            labelled: Iterable[dict[str, Any]] = (), horizon_runs: int | None = None,
            follow_up_days: float | None = None, all_outcomes: bool = False,
            now: datetime | None = None) -> MonitorResult:
    """`rows`: audited answers (all of them, or from `since`: a patient first seen earlier then
    counts here if their earlier answers are not given); `labelled`: audited answers with an
    observed outcome `y` (from the service's outcomes).

    Drift: the patients first seen in [since, until), each feature tested at `alpha / horizon_runs`
    (the horizon's false-alarm probability `alpha` spent evenly over its runs) with an effect-size
    floor. Calibration: the answers whose follow-up (`follow_up_days`) has ended by `until` (or now),
    in the window, or with `all_outcomes` every one of the version (the schedule's choice: its
    window is one interval, far shorter than the follow-up)."""
    from mlflow import MlflowClient

    from core.features import encode_frame
    from pipeline.monitor.statistics import HORIZON_RUNS, calibration_now, drift_tests, explanation_drift
    from models.registry import load_bundle, resolve
    from pipeline.tracking.runs import setup_mlflow

    horizon_runs = int(horizon_runs or HORIZON_RUNS)
    follow_up = float(getattr(settings, "monitor_follow_up_days", 30.0) if follow_up_days is None else follow_up_days)
    alpha_run = alpha / horizon_runs
    mlflow.set_tracking_uri(settings.tracking_uri)
    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    bundle = load_bundle(resolved)
    reference = bundle.metadata.get("reference")
    if not reference:
        raise MonitoringError(f"{resolved.name} v{resolved.version} carries no summary of its development data "
                              "(trained before monitoring existed): retrain it to monitor it")
    patients = one_per_patient(rows, resolved.name, str(resolved.version), since, until)
    frame, risk = patients.frame, patients.risk
    if len(frame) == 0:
        raise MonitoringError(f"no patients first seen by {resolved.name} v{resolved.version} in the window "
                              f"({patients.n_answers} audited answers in it, all of patients seen before)"
                              if patients.n_answers else
                              f"no audited answers of {resolved.name} v{resolved.version} in the window")
    drift = drift_tests(reference, frame, risk, alpha=alpha_run, seed=seed)
    contributions = bundle.explain(encode_frame(frame)).contributions
    explained = explanation_drift(reference, contributions, list(bundle.feature_names))
    alarms = [f"{r.feature} ({r.test})" for r in drift.itertuples() if r.alarm]

    end = min(until, now or datetime.now(UTC)) if until else (now or datetime.now(UTC))
    cutoff = end - timedelta(days=follow_up)
    due = due_outcomes(labelled, resolved.name, str(resolved.version), cutoff, None if all_outcomes else since)
    n_due = sum(1 for t in patients.first_seen.values() if t < cutoff and (all_outcomes or not since or t >= since))
    y = np.array([r["y"] for r in due], dtype=int)
    p = np.array([r["risk"] for r in due], dtype=float)
    est = (bundle.metadata.get("validation") or {}).get("estimates", {})
    development_auroc = (est.get("auroc"), est.get("auroc_ci_low", np.nan), est.get("auroc_ci_high", np.nan))
    calibration = calibration_now(y, p, seed=seed) if len(y) else None
    charts = _charts(y, p, reference, seed)
    outcome_alarms = [f"calibration CUSUM ({name})" for name in charts.signalled]
    decision = _decide(y, p, development_auroc, alpha, alpha_run, charts)
    experiment_id = setup_mlflow(settings, MONITORING_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id,
                          run_name=f"monitor-{resolved.name}-v{resolved.version}") as run:
        design = {"alpha": alpha, "alpha_run": alpha_run, "horizon_runs": horizon_runs, "follow_up_days": follow_up}
        mlflow.set_tags({"model_name": resolved.name, "model_version": str(resolved.version),
                         "since": since.isoformat() if since else "", "until": until.isoformat() if until else "",
                         "outcomes_before": cutoff.isoformat(timespec="seconds"),
                         "alarms": ", ".join(alarms + outcome_alarms) or "none", "verdict": decision["verdict"],
                         "verdict_text": decision["text"][:4000],
                         "mlflow.note.content": _describe(resolved, len(frame), patients.n_answers, alarms,
                                                          outcome_alarms, design, decision, len(y))})
        metrics = {"monitor_n": len(frame), "monitor_n_answers": patients.n_answers,
                   "monitor_alarms": len(alarms) + len(outcome_alarms), "monitor_drift_alarms": len(alarms),
                   "monitor_outcome_alarms": len(outcome_alarms), "monitor_alpha": alpha,
                   "monitor_alpha_run": alpha_run, "monitor_horizon_runs": horizon_runs,
                   "monitor_follow_up_days": follow_up, "monitor_n_due": n_due,
                   "monitor_mean_risk": float(risk.mean()),
                   "monitor_reference_mean_risk": _reference_mean_risk(reference)}
        for r in drift.itertuples():
            key = f"{r.feature}_{r.test}"
            metrics[f"drift_p_holm_{key}"] = r.p_holm
            if np.isfinite(r.psi):
                metrics[f"drift_psi_{r.feature}"] = r.psi
        for r in explained.itertuples():
            metrics[f"mean_abs_shap_{r.feature}"] = float(r.mean_abs_shap_now)
        metrics["monitor_n_with_outcome"] = len(y)
        for name, h in charts.limits.items():
            metrics[f"monitor_cusum_{name}_h"] = h
            metrics[f"monitor_cusum_{name}_value"] = float(charts.paths[name][-1]) if len(y) else 0.0
            at = charts.signals[name]
            if at is not None:
                metrics[f"monitor_cusum_{name}_signal_at"] = at
        if calibration is not None:
            for k, v in calibration.figures.items():
                metrics[f"monitor_{k}"] = v
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            drift.to_csv(t / "drift.csv", index=False)
            explained.to_csv(t / "explanation_drift.csv", index=False)
            chart = _cusum_chart(charts, t / "calibration_drift.png") if len(y) else None
            (t / "monitoring_report.html").write_text(
                _report(resolved, len(frame), patients.n_answers, drift, explained, alarms, design, decision,
                        calibration, charts, n_due, chart), encoding="utf-8")
            mlflow.log_artifacts(str(t))
        return MonitorResult(run.info.run_id, f"{resolved.name} v{resolved.version}", len(frame),
                             alarms + outcome_alarms, drift, decision,
                             calibration.figures if calibration is not None else {},
                             resolved.name, str(resolved.version), patients.n_answers, outcome_alarms)


def _charts(y: np.ndarray, p: np.ndarray, reference: dict[str, Any], seed: int):
    from pipeline.monitor.statistics import CusumDesign, sequential_charts

    return sequential_charts(y, p, reference, CusumDesign(), seed=seed)


def _decide(y: np.ndarray, p: np.ndarray, development_auroc, alpha: float, alpha_run: float, charts) -> dict[str, Any]:
    """The verdict: the closed test says which update, the CUSUM charts say whether to act. A single
    run's closed test at `alpha`, repeated every run on growing data, would raise false alarms at
    far more than `alpha` over a year; the charts hold it over the planned horizon."""
    from pipeline.monitor.statistics import CHART_WORDS, verdict

    decision = verdict(y, p, development_auroc, alpha=alpha, retrain_alpha=alpha_run)
    signalled = charts.signalled
    chart_text = "; ".join(f"the {n} chart signalled at patient {charts.signals[n]} ({CHART_WORDS[n]})"
                           for n in signalled)
    if decision["verdict"] in ("too few events to say", "retrain"):
        if signalled:
            decision = {**decision, "text": decision["text"] + "; " + chart_text}
        return decision
    if decision["verdict"] in ("recalibrate the intercept", "recalibrate intercept and slope"):
        if signalled:
            return {**decision, "text": decision["text"] + "; " + chart_text}
        return {**decision, "verdict": "no action", "text": (
            f"no sequential chart has signalled (the charts hold the false-alarm rate over repeated runs); the "
            f"closed test of this run alone would say '{decision['verdict']}': watch the next runs")}
    if signalled:  # the charts signalled, the closed test is not yet significant
        action = "recalibrate intercept and slope" if "slope" in signalled else "recalibrate the intercept"
        return {**decision, "verdict": action,
                "text": f"{chart_text}; make update on the local outcomes would do it"}
    return decision


def _reference_mean_risk(reference: dict[str, Any]) -> float:
    q = reference["features"].get("predicted_risk", {}).get("quantiles") or []
    return float(np.mean(q)) if q else float("nan")


def _describe(resolved, n: int, n_answers: int, alarms: list[str], outcome_alarms: list[str],
              design: dict[str, Any], decision: dict[str, Any], n_outcomes: int) -> str:
    found = ", ".join(alarms) if alarms else "none"
    charts = ", ".join(outcome_alarms) if outcome_alarms else "none"
    return (f"**Monitoring of {resolved.name} v{resolved.version}** on {n} patients ({n_answers} audited answers: "
            f"repeats count once) against its development data. Drift alarms (alpha {design['alpha']} over "
            f"{design['horizon_runs']} runs: {design['alpha_run']:.2g} this run, Holm, with effect-size floors): "
            f"{found}. Outcomes due ({design['follow_up_days']:g} days of follow-up): {n_outcomes}; CUSUM "
            f"signals: {charts}. **Verdict: {decision['verdict']}**: {decision['text']}. Research use only.")


def _cusum_chart(charts, path: Path) -> Path:
    """The three risk-adjusted CUSUM charts in the order the outcomes were observed, each with its
    decision limit h: a chart that crosses its line has signalled."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from pipeline.monitor.statistics import CHART_WORDS

    fig = Figure(figsize=(7, 3.8))
    ax = fig.subplots()
    for (name, values), colour in zip(charts.paths.items(), ("#b2182b", "#2166ac", "#762a83")):
        ax.plot(np.arange(1, values.size + 1), values, color=colour, label=CHART_WORDS[name])
        ax.axhline(charts.limits[name], color=colour, lw=0.8, ls="--")
    ax.set_xlabel("patients with an outcome, in the order observed")
    ax.set_ylabel("CUSUM (log-likelihood ratio)")
    ax.set_title("Calibration: risk-adjusted CUSUM charts (dashed: decision limits h)")
    ax.legend(loc="upper left", frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _report(resolved, n: int, n_answers: int, drift: pd.DataFrame, explained: pd.DataFrame, alarms: list[str],
            design: dict[str, Any], decision: dict[str, Any], calibration, charts, n_due: int,
            chart: Path | None) -> str:
    def table(df: pd.DataFrame) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    shown = drift[["feature", "test", "n_now", "n_reference", "p", "p_holm", "effect", "floor", "alarm", "psi",
                   "wasserstein"]]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Monitoring {html.escape(resolved.name)}
v{html.escape(str(resolved.version))}</title><style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head><body>
<h1>Monitoring of {html.escape(resolved.name)} v{html.escape(str(resolved.version))}</h1>
<p><strong>Research use only; not a medical device.</strong> {n} patients first seen in the window, standing for
{n_answers} audited answers (one observation per patient and model version: the keyed patient hash, or the
feature vector without a patient id; repeat views, explanations and chart openings count once), compared with the
development data the model carries in summary form (counts per decile bin, never patient rows).</p>
<p>Drift alarms: a false-alarm probability of {design['alpha']} spent over a planned horizon of
{design['horizon_runs']} runs, {design['alpha_run']:.2g} this run (permutation tests of each feature's distribution,
Fisher's exact test of its share missing, Holm's adjustment over all tests), and only where the shift is not
trivial: PSI at least the floor for a distribution, |standardised difference| at least the floor for a share
missing: <strong>{html.escape(", ".join(alarms) or "none")}</strong>.</p>
<h2>Input, missingness and predicted-risk drift</h2>{table(shown)}
<h2>Explanation drift: mean |SHAP| per feature (log-odds)</h2>{table(explained)}
<h2>Outcomes and calibration</h2>
<p>Answers whose follow-up of {design['follow_up_days']:g} days has ended: {n_due} patients, of whom
{int(calibration.figures['n']) if calibration is not None else 0} have an outcome.</p>
{_charts_html(charts)}{_calibration_html(decision, calibration, chart)}
</body></html>"""


def _charts_html(charts) -> str:
    from pipeline.monitor.statistics import CHART_WORDS

    d = charts.design
    rows = "".join(
        f"<tr><th>{html.escape(CHART_WORDS[name])}</th><td>{charts.limits[name]:.2f}</td>"
        f"<td>{(charts.paths[name][-1] if charts.paths[name].size else 0.0):.2f}</td>"
        f"<td>{charts.signals[name] if charts.signals[name] is not None else 'no'}</td></tr>"
        for name in charts.limits)
    return (f"<p>The outcome alarm: risk-adjusted Bernoulli CUSUM charts (Steiner, Cook, Farewell &amp; Treasure 2000) "
            f"against odds ratio {d.odds_up:g}, odds ratio {d.odds_down:g} and calibration slope {d.slope:g}; each "
            f"decision limit h is set by simulation from the development patients' risks so that, with the model "
            f"calibrated, any chart signals within {d.horizon} patients with outcomes with probability "
            f"{d.alpha:g}.</p><table><tr><th>chart</th><th>h</th><th>now</th><th>signalled at patient</th></tr>"
            f"{rows}</table>")


def _calibration_html(decision: dict[str, Any], calibration, chart: Path | None) -> str:
    import base64

    parts = [f"<p><strong>Verdict: {html.escape(decision['verdict'])}</strong>: {html.escape(decision['text'])}.</p>"]
    if calibration is not None:
        f = calibration.figures
        rows = [("patients with an outcome", f.get("n")), ("events", f.get("events")),
                ("expected events", f.get("expected_events")),
                ("observed / expected", _ci_text(f, "observed_expected")),
                ("calibration intercept", _ci_text(f, "calibration_intercept")),
                ("calibration slope", _ci_text(f, "calibration_slope")), ("AUROC", _ci_text(f, "auroc")),
                ("Brier", _ci_text(f, "brier"))]
        parts.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{_cell(v)}</td></tr>" for k, v in rows)
                     + "</table>")
    if chart is not None:
        data = base64.b64encode(chart.read_bytes()).decode()
        parts.append(f'<p><img alt="calibration drift" src="data:image/png;base64,{data}"></p>')
    return "".join(parts)


def _ci_text(f: dict[str, float], key: str) -> str:
    if not np.isfinite(f.get(key, np.nan)):
        return ""
    return display.figure_ci(f, key, "95% CI ")


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))
