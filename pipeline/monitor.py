"""`icans-risk monitor`: the served version's answers against its own development data, as an MLflow run.

The audited answers (features as submitted, the risk given) of the served model version in a time
window are compared with the development summary the bundle carries (`pipeline.monitoring`):
input, missingness and predicted-risk drift with family-wise error control, and explanation drift.
The run goes to the experiment `icans-risk-monitoring`, tagged with the model version, with
metrics under stable names, the tables as CSV and a self-contained `monitoring_report.html`.
The CLI reads the audit rows (from the service's store) and hands them here: this module does not
import the service.
"""

from __future__ import annotations

import html
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import mlflow
import numpy as np
import pandas as pd

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

    def summary(self) -> dict[str, Any]:
        """What the service shows of this run (`GET /v1/model`, the icans_monitor_* gauges)."""
        figures = {k: float(v) for k, v in self.calibration.items()
                   if k in ("observed_expected", "calibration_intercept", "calibration_slope", "auroc", "brier",
                            "events") and np.isfinite(v)}
        return {"verdict": self.verdict["verdict"], "verdict_text": self.verdict["text"], "alarms": self.alarms,
                "n": self.n, "n_with_outcome": int(self.calibration.get("n", 0)), **figures}


def _rows_frame(rows: Iterable[dict[str, Any]], name: str, version: str, since: datetime | None,
                until: datetime | None) -> tuple[pd.DataFrame, np.ndarray]:
    inputs, risks = [], []
    for row in rows:
        if row["model_name"] != name or str(row["model_version"]) != str(version):
            continue
        t = row["time"]
        if (since and t < since) or (until and t >= until):
            continue
        value = row["inputs"]
        inputs.append(json.loads(value) if isinstance(value, str) else dict(value))
        risks.append(float(row["risk"]))
    return pd.DataFrame(inputs), np.asarray(risks, dtype=float)


def monitor(settings: Any, rows: Iterable[dict[str, Any]], since: datetime | None = None,
            until: datetime | None = None, alpha: float = 0.05, seed: int = 0,
            labelled: Iterable[dict[str, Any]] = ()) -> MonitorResult:
    """`rows`: audited answers; `labelled`: audited answers with an observed outcome `y` (from the
    service's outcomes), for calibration and the verdict."""
    from mlflow import MlflowClient

    from pipeline.features import encode_frame
    from pipeline.monitoring import drift_tests, explanation_drift
    from pipeline.registry import load_bundle, resolve
    from pipeline.tracking import setup_mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    bundle = load_bundle(resolved)
    reference = bundle.metadata.get("reference")
    if not reference:
        raise MonitoringError(f"{resolved.name} v{resolved.version} carries no summary of its development data "
                              "(trained before monitoring existed): retrain it to monitor it")
    frame, risk = _rows_frame(rows, resolved.name, resolved.version, since, until)
    if len(frame) == 0:
        raise MonitoringError(f"no audited answers of {resolved.name} v{resolved.version} in the window")
    drift = drift_tests(reference, frame, risk, alpha=alpha, seed=seed)
    contributions = bundle.explain(encode_frame(frame)).contributions
    explained = explanation_drift(reference, contributions, list(bundle.feature_names))
    alarms = [f"{r.feature} ({r.test})" for r in drift.itertuples() if r.alarm]
    from pipeline.monitoring import calibration_now, verdict

    labelled = [r for r in labelled if r["model_name"] == resolved.name and str(r["model_version"]) == str(
        resolved.version) and (not since or r["time"] >= since) and (not until or r["time"] < until)]
    labelled.sort(key=lambda r: (r["observed_on"], r["id"]))
    y = np.array([r["y"] for r in labelled], dtype=int)
    p = np.array([r["risk"] for r in labelled], dtype=float)
    est = (bundle.metadata.get("validation") or {}).get("estimates", {})
    development_auroc = (est.get("auroc"), est.get("auroc_ci_low", np.nan), est.get("auroc_ci_high", np.nan))
    calibration = calibration_now(y, p, seed=seed) if len(y) else None
    decision = verdict(y, p, development_auroc, alpha=alpha)
    experiment_id = setup_mlflow(settings, MONITORING_EXPERIMENT)
    with mlflow.start_run(experiment_id=experiment_id,
                          run_name=f"monitor-{resolved.name}-v{resolved.version}") as run:
        mlflow.set_tags({"model_name": resolved.name, "model_version": str(resolved.version),
                         "since": since.isoformat() if since else "", "until": until.isoformat() if until else "",
                         "alarms": ", ".join(alarms) or "none", "verdict": decision["verdict"],
                         "verdict_text": decision["text"][:4000],
                         "mlflow.note.content": _describe(resolved, len(frame), alarms, alpha, decision, len(y))})
        metrics = {"monitor_n": len(frame), "monitor_alarms": len(alarms), "monitor_alpha": alpha,
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
        if calibration is not None:
            for k, v in calibration.figures.items():
                metrics[f"monitor_{k}"] = v
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        with tempfile.TemporaryDirectory() as tmp:
            t = Path(tmp)
            drift.to_csv(t / "drift.csv", index=False)
            explained.to_csv(t / "explanation_drift.csv", index=False)
            chart = _cusum_chart(calibration, t / "calibration_drift.png") if calibration is not None else None
            (t / "monitoring_report.html").write_text(
                _report(resolved, len(frame), drift, explained, alarms, alpha, decision, calibration, chart),
                encoding="utf-8")
            mlflow.log_artifacts(str(t))
        return MonitorResult(run.info.run_id, f"{resolved.name} v{resolved.version}", len(frame), alarms, drift,
                             decision, calibration.figures if calibration is not None else {},
                             resolved.name, str(resolved.version))


def _reference_mean_risk(reference: dict[str, Any]) -> float:
    q = reference["features"].get("predicted_risk", {}).get("quantiles") or []
    return float(np.mean(q)) if q else float("nan")


def _describe(resolved, n: int, alarms: list[str], alpha: float, decision: dict[str, Any], n_outcomes: int) -> str:
    found = ", ".join(alarms) if alarms else "none"
    return (f"**Monitoring of {resolved.name} v{resolved.version}** on {n} audited answers against its development "
            f"data. Drift alarms (family-wise alpha {alpha}, Holm): {found}. Outcomes: {n_outcomes}. "
            f"**Verdict: {decision['verdict']}**: {decision['text']}. Research use only.")


def _cusum_chart(calibration, path: Path) -> Path:
    """Cumulative observed minus expected events, in the order the outcomes were observed: a slow
    drift shows as a steady slope before any quarter's figures are significant."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    cusum = calibration.cusum
    ax.plot(np.arange(1, cusum.size + 1), cusum, color="#1f5fa8", label="observed - expected events")
    ax.axhline(0, color="#888888", lw=0.8)
    ax.set_xlabel("patients with an outcome, in the order observed")
    ax.set_ylabel("cumulative O - E (events)")
    ax.set_title("Calibration drift (CUSUM of observed minus expected)")
    ax.legend(loc="best", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _report(resolved, n, drift: pd.DataFrame, explained: pd.DataFrame, alarms: list[str], alpha: float,
            decision: dict[str, Any], calibration, chart: Path | None) -> str:
    def table(df: pd.DataFrame) -> str:
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
        body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in df.itertuples(index=False))
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    shown = drift[["feature", "test", "n_now", "n_reference", "p", "p_holm", "alarm", "psi", "wasserstein"]]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Monitoring {html.escape(resolved.name)}
v{html.escape(str(resolved.version))}</title><style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px;text-align:right}}</style></head><body>
<h1>Monitoring of {html.escape(resolved.name)} v{html.escape(str(resolved.version))}</h1>
<p><strong>Research use only; not a medical device.</strong> {n} audited answers compared with the development data
the model carries in summary form (counts per decile bin, never patient rows).</p>
<p>Alarms at a family-wise false-alarm rate of {alpha} (permutation tests of each feature's distribution, Fisher's exact
test of its share missing, Holm's adjustment over all tests): <strong>{html.escape(", ".join(alarms) or "none")}</strong>.
PSI and Wasserstein distances are descriptions, not alarms.</p>
<h2>Input, missingness and predicted-risk drift</h2>{table(shown)}
<h2>Explanation drift: mean |SHAP| per feature (log-odds)</h2>{table(explained)}
<h2>Outcomes and calibration</h2>{_calibration_html(decision, calibration, chart)}
</body></html>"""


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
    v, lo, hi = f.get(key, np.nan), f.get(f"{key}_ci_low", np.nan), f.get(f"{key}_ci_high", np.nan)
    if not np.isfinite(v):
        return ""
    return f"{v:.3f}" + (f" (95% CI {lo:.3f} to {hi:.3f})" if np.isfinite(lo) and np.isfinite(hi) else "")


def _cell(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{v:.4g}"
    return html.escape(str(v))
