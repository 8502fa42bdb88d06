"""Federated evaluation: a centre shares a summary, never rows; summaries are pooled centrally.

`icans-risk evaluate --summary OUT.json` scores the centre's own file with the served model and
writes, per centre: n, events, each measure with its standard error (`pipeline.evidence.centre_performance`,
the same function the internal-external cross-validation uses, so both pool alike) and the
calibration-bin counts. No patient row, identifier, date or single patient's value leaves.

Small-cell rule (documented in docs/multi-centre.md): the calibration bins have fixed risk edges;
adjacent bins are merged until every bin holds at least `MIN_CELL` patients, and its events and
non-events are each 0 or at least `MIN_CELL`. Merging (not blanking) means no suppressed count can
be recovered by subtraction from the totals. A centre with fewer than `MIN_CENTRE_EVENTS` events
or non-events shares no counts at all, only that it was too small.

`icans-risk meta SUMMARY.json...` pools the summaries (`pipeline.stats.meta_analysis`) into an MLflow
run with the per-centre and pooled metrics and the forest plots. Summaries of different model
versions (or outcomes) are refused: their estimates describe different models.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evidence.centre_performance import MEASURES, MIN_CENTRE_EVENTS, centre_row
from core.contract import CENTRE_COLUMN, CENTRE_PATTERN
from pipeline.stats.meta_analysis import Pooled, pool_measures

FORMAT = "icans-risk-centre-summary/1"
MIN_CELL = 5
BIN_EDGES = (0.0, 0.05, 0.10, 0.20, 0.30, 0.50, 1.0)
# the keys a centre's entry may carry: anything else in a file is refused
_ALLOWED = {"centre", "estimable", "reason", "n", "events", "expected", "calibration_bins"}


class SummaryError(ValueError):
    """A summary cannot be written or pooled; the message names the rule, never a value."""


def calibration_bins(y: np.ndarray, p: np.ndarray) -> list[dict[str, float]]:
    """Counts by fixed risk bins, merged with a neighbour until every cell obeys the small-cell rule."""
    idx = np.clip(np.searchsorted(BIN_EDGES, p, side="right") - 1, 0, len(BIN_EDGES) - 2)
    bins = [{"low": BIN_EDGES[i], "high": BIN_EDGES[i + 1], "n": int((idx == i).sum()),
             "events": int(y[idx == i].sum()), "expected": float(p[idx == i].sum())}
            for i in range(len(BIN_EDGES) - 1)]
    bins = [b for b in bins if b["n"] > 0]

    def ok(b: dict[str, float]) -> bool:
        ev, non = b["events"], b["n"] - b["events"]
        return b["n"] >= MIN_CELL and (ev == 0 or ev >= MIN_CELL) and (non == 0 or non >= MIN_CELL)

    while len(bins) > 1 and not all(ok(b) for b in bins):
        i = next(j for j, b in enumerate(bins) if not ok(b))
        j = i + 1 if i + 1 < len(bins) else i - 1  # merge with the next bin (the previous at the end)
        a, b = sorted((i, j))
        merged = {"low": bins[a]["low"], "high": bins[b]["high"], "n": bins[a]["n"] + bins[b]["n"],
                  "events": bins[a]["events"] + bins[b]["events"],
                  "expected": bins[a]["expected"] + bins[b]["expected"]}
        bins[a:b + 1] = [merged]
    return [{**b, "expected": round(b["expected"], 6)} for b in bins]


def centre_entry(code: str, y: np.ndarray, risk: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    """One centre's shareable summary."""
    row = centre_row(y, risk, thresholds)
    if not row["estimable"]:
        return {"centre": code, "estimable": False,
                "reason": f"fewer than {MIN_CENTRE_EVENTS} events or non-events: no counts shared"}
    entry = {"centre": code, **{k: v for k, v in row.items() if k != "reason"}}
    entry["calibration_bins"] = calibration_bins(np.asarray(y).astype(int), np.asarray(risk, float))
    return entry


def summarise(frame: Any, y: np.ndarray, risk: np.ndarray, model: dict[str, str], outcome: str,
              thresholds: dict[str, float], centre: str | None = None) -> dict[str, Any]:
    """The summary of a file: one entry per centre (the file's `centre` column, or `centre`)."""
    import re

    if CENTRE_COLUMN in frame:
        codes = frame[CENTRE_COLUMN].astype(str).to_numpy()
    elif centre is not None:
        if not re.match(CENTRE_PATTERN, centre):
            raise SummaryError("--centre must be a short code: 1-16 letters, digits, '_' or '-'")
        codes = np.full(len(y), centre, dtype=object)
    else:
        raise SummaryError(f"name the centre: a '{CENTRE_COLUMN}' column in the file, or --centre CODE")
    entries = [centre_entry(c, y[codes == c], risk[codes == c], thresholds) for c in sorted(set(codes))]
    return {"format": FORMAT, "model": model, "outcome": outcome,
            "small_cell_rule": f"bins merged until n >= {MIN_CELL} and events, non-events each 0 or >= {MIN_CELL}; "
                               f"centres with < {MIN_CENTRE_EVENTS} events or non-events share no counts",
            "centres": entries}


def write_summary(summary: dict[str, Any], path: Path, overwrite: bool = False) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise SummaryError("the summary file exists already; pass --overwrite to replace it")
    path.write_text(json.dumps(summary, indent=2, sort_keys=True, allow_nan=False, default=_plain) + "\n")
    return path


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    raise TypeError(type(v).__name__)


def read_summaries(paths: list[Path], version: str | None = None) -> tuple[dict[str, str], str, list[dict[str, Any]]]:
    """(model, outcome, centre entries) of several summaries; refuses mixed models or outcomes,
    a repeated centre, unknown keys, or (with `version`) another model version."""
    model: dict[str, str] | None = None
    outcome: str | None = None
    entries: list[dict[str, Any]] = []
    for i, path in enumerate(paths, 1):
        try:
            doc = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            raise SummaryError(f"summary {i}: not a readable JSON file") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SummaryError(f"summary {i}: not an icans-risk centre summary (format must be {FORMAT})")
        m = doc.get("model") or {}
        if version is not None and str(m.get("version")) != str(version):
            raise SummaryError(f"summary {i}: written for another model version than the one asked for; "
                               "every centre must evaluate the same version")
        if model is None:
            model, outcome = m, doc.get("outcome")
        elif (m.get("name"), str(m.get("version"))) != (model.get("name"), str(model.get("version"))):
            raise SummaryError(f"summary {i}: from another model version than summary 1; every centre must "
                               "evaluate the same version")
        elif doc.get("outcome") != outcome:
            raise SummaryError(f"summary {i}: another outcome than summary 1")
        for e in doc.get("centres", []):
            extra = {k for k in e if k not in _ALLOWED and not k.startswith(MEASURES + ("net_benefit_", "threshold_"))}
            if extra:
                raise SummaryError(f"summary {i}: unexpected fields in a centre entry (only estimates, SEs and "
                                   "counts are accepted)")
            if any(e.get("centre") == other.get("centre") for other in entries):
                raise SummaryError(f"summary {i}: a centre appears in more than one summary")
            entries.append(e)
    if model is None or not entries:
        raise SummaryError("no centres in the summaries")
    return model, str(outcome), entries


def pool_entries(entries: list[dict[str, Any]]) -> dict[str, Pooled]:
    measures = MEASURES + tuple(sorted({k[: -len("_se")] for e in entries for k in e
                                        if k.startswith("net_benefit_") and k.endswith("_se")}))
    return pool_measures([e for e in entries if e.get("estimable")], measures)


def meta(paths: list[Path], settings: Any, version: str | None = None, log: bool = True) -> dict[str, Any]:
    """Pool centre summaries; with `log`, one MLflow run (evaluation experiment) with the metrics
    (centre_<code>_*, iecv_*-like pooled `meta_*`) and the forest plots."""
    model, outcome, entries = read_summaries(paths, version)
    estimable = [e for e in entries if e.get("estimable")]
    if len(estimable) < 2:
        raise SummaryError("at least 2 centres with estimates are needed to pool")
    pooled = pool_entries(entries)
    metrics: dict[str, float] = {"meta_centres": float(len(entries)), "meta_centres_estimated": float(len(estimable))}
    for e in estimable:
        for k, v in e.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                metrics[f"centre_{e['centre']}_{k}"] = float(v)
    for m, p in pooled.items():
        metrics[f"meta_{m}"] = p.estimate
        for part in ("ci_low", "ci_high", "pi_low", "pi_high", "tau2", "i2"):
            metrics[f"meta_{m}_{part}"] = float(getattr(p, part))
    run_id = None
    if log:
        import mlflow

        from pipeline.report.forest_plot import forest_plots
        from pipeline.tracking.runs import setup_mlflow

        experiment_id = setup_mlflow(settings, settings.evaluation_experiment)
        name = f"meta-{model.get('name')}-v{model.get('version')}"
        with mlflow.start_run(experiment_id=experiment_id, run_name=name) as run:
            mlflow.set_tags({"model_name": str(model.get("name")), "model_version": str(model.get("version")),
                             "model_run_id": str(model.get("run_id", "")), "outcome": outcome,
                             "validation": "federated meta-analysis"})
            mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})
            with tempfile.TemporaryDirectory() as tmp:
                forest_plots(entries, pooled, Path(tmp))
                (Path(tmp) / "pooled.json").write_text(json.dumps({m: p.to_dict() for m, p in pooled.items()},
                                                                  indent=2, allow_nan=True))
                mlflow.log_artifacts(tmp, artifact_path="meta")
            run_id = run.info.run_id
    return {"model": model, "outcome": outcome, "pooled": pooled, "metrics": metrics, "run_id": run_id,
            "centres": entries}


def summary_of_file(settings: Any, data: Path, outcome: str, on_invalid: str, centre: str | None) -> dict[str, Any]:
    """`icans-risk evaluate --summary`: the served model on the centre's file, as a summary."""
    from mlflow import MlflowClient

    from core.features import encode_frame
    from pipeline.data.loading import load_cohort
    from models.registry import load_bundle, resolve
    from pipeline.tracking.runs import setup_mlflow

    cohort, _, _ = load_cohort(settings, data, outcome, on_invalid)
    setup_mlflow(settings, settings.evaluation_experiment)
    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    bundle = load_bundle(resolved)
    df = cohort.data
    y = df[outcome].astype(int).to_numpy()
    risk = bundle.predict_proba(encode_frame(df))
    model = {"name": resolved.name, "version": str(resolved.version), "run_id": resolved.run_id or ""}
    thresholds = {"low": float(bundle.low_threshold), "high": float(bundle.high_threshold)}
    return summarise(df, y, np.asarray(risk, float), model, outcome, thresholds, centre)
