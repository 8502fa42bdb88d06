"""Offline scoring of a cohort file with the served model, explanations included."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipeline.tracking import progress
from core.contract import FEATURE_NAMES, FEATURES_BY_NAME, ID_COLUMN, outcome_of
from pipeline.data.write import write_new
from core.features import encode_frame
from pipeline.data.read import read_cohort
from core.settings import Settings

if TYPE_CHECKING:
    from models.artifact import ModelBundle
    from models.registry import ResolvedModel

CHUNK = 10_000
log = logging.getLogger(__name__)


def score_frame(bundle: ModelBundle, df: pd.DataFrame) -> pd.DataFrame:
    """risk, risk_group, the 95% model-development interval (risk_low, risk_high) and
    risk_group_change_probability when the bundle carries its bootstrap models, log_odds and one
    shap_<feature> column per feature, in chunks."""
    n = len(df)
    if n == 0:
        return pd.DataFrame()
    X = encode_frame(df)  # row by row the same as encoding each chunk
    risk = np.empty(n)
    log_odds = np.empty(n)
    base = np.empty(n)
    contributions = np.empty((n, len(FEATURE_NAMES)))
    unc = np.empty((3, n)) if bundle.instability is not None else None
    starts = range(0, n, CHUNK)
    for start in progress.steps(starts, f"scoring {n:,} patients (chunks of {CHUNK:,})") if len(starts) > 1 else starts:
        stop = min(start + CHUNK, n)
        ex = bundle.explain(X[start:stop])
        if unc is not None:
            unc[:, start:stop] = bundle.uncertainty(X[start:stop], ex.log_odds, parallel=True)
        risk[start:stop] = ex.risk
        log_odds[start:stop] = ex.log_odds
        base[start:stop] = ex.base
        contributions[start:stop] = ex.contributions
    columns: dict[str, np.ndarray] = {"risk": risk}
    if unc is not None:
        columns.update({"risk_low": unc[0], "risk_high": unc[1]})
    columns["risk_group"] = bundle.risk_group(risk)
    if unc is not None:
        columns["risk_group_change_probability"] = unc[2]
    columns.update({"log_odds": log_odds, "shap_base": base})
    columns.update({f"shap_{f}": contributions[:, j] for j, f in enumerate(FEATURE_NAMES)})
    return pd.DataFrame(columns, index=df.index)


def distribution_warnings(bundle: ModelBundle, df: pd.DataFrame) -> list[str]:
    """Columns with many values outside the development data's 1st-99th percentile.

    A unit mistake (CRP in mg/dL where mg/L is expected) usually stays inside the hard range;
    it shows instead as a whole column shifted out of the range the model was trained on.
    """
    out = []
    for name, (lo, hi) in bundle.training_ranges.items():
        if name not in df:
            continue
        values = pd.to_numeric(df[name], errors="coerce").dropna()
        if values.empty:
            continue
        share = float(((values < lo) | (values > hi)).mean())
        if share > 0.10:  # by construction about 2% fall outside on data like the training data
            out.append(
                f"{name}: {share:.0%} of values are outside the training range "
                f"({lo:.4g}-{hi:.4g} {FEATURES_BY_NAME[name].unit}); check the unit"
            )
    return out


def _load_model(settings: Settings) -> tuple[ResolvedModel, ModelBundle]:
    """The configured model version and its bundle, resolved as the service resolves it."""
    from models.registry import load_bundle, resolve_configured

    resolved = resolve_configured(settings.tracking_uri, settings.resolved_model_uri)
    return resolved, load_bundle(resolved, nthread=max(1, settings.predictor_threads))


def _plain(v):
    """A cell as the API's answer holds it: Python types, missing as None."""
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.floating):
        return None if np.isnan(v) else float(v)
    if isinstance(v, np.integer):
        return float(v)
    return v


def answers(df: pd.DataFrame, scored: pd.DataFrame, model: dict) -> list[dict]:
    """The scored rows as the API's answers (risk, risk_group, log_odds, explanation by absolute
    effect, model), for drawing; no patient id."""
    from core.contract import FEATURES_BY_NAME as F

    shap = scored[[f"shap_{f}" for f in FEATURE_NAMES]].to_numpy(float)
    out = []
    for i in range(len(scored)):
        contributions: list[dict[str, Any]] = [
            {"feature": f, "value": _plain(df[f].iloc[i]) if f in df else None, "unit": F[f].unit, "log_odds": float(shap[i, j])}
            for j, f in enumerate(FEATURE_NAMES)
        ]
        contributions.sort(key=lambda c: -abs(c["log_odds"]))
        out.append({
            "risk": float(scored["risk"].iloc[i]),
            "risk_group": str(scored["risk_group"].iloc[i]),
            "log_odds": float(scored["log_odds"].iloc[i]),
            "uncertainty": {
                "interval": (float(scored["risk_low"].iloc[i]), float(scored["risk_high"].iloc[i])),
                "level": 0.95,
                "risk_group_change_probability": float(scored["risk_group_change_probability"].iloc[i]),
            } if "risk_low" in scored else None,
            "explanation": {"base_log_odds": float(scored["shap_base"].iloc[i]), "contributions": contributions},
            "model": model,
        })
    return out


def write_waterfalls(
    bundle: ModelBundle, resolved: ResolvedModel, df: pd.DataFrame, scored: pd.DataFrame, directory: Path,
    fmt: str = "svg", overwrite: bool = False,
) -> list[str]:
    """One waterfall per scored row, named by its row in the output (patient-000001.svg, ...),
    never by the patient id; returns the file names in row order."""
    from core import waterfall

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = [f"patient-{i:06d}.{fmt}" for i in range(1, len(scored) + 1)]
    if not overwrite:
        taken = [n for n in names if (directory / n).exists()]
        if taken:
            raise FileExistsError(f"{directory / taken[0]} already exists (pass --overwrite to replace it)")
    model = {"name": resolved.name, "version": str(resolved.version), "run_id": resolved.run_id}
    outcome = outcome_of(bundle.outcome).label
    drawn = zip(names, answers(df.reset_index(drop=True), scored.reset_index(drop=True), model))
    for name, answer in progress.steps(drawn, "drawing waterfalls", total=len(names)):
        image = waterfall.render(answer, fmt, (bundle.low_threshold, bundle.high_threshold), outcome)
        (directory / name).write_bytes(image)
    return names


def score_file(
    settings: Settings, data: Path, out: Path, overwrite: bool = False, on_invalid: str = "refuse",
    waterfalls: Path | None = None, waterfall_format: str = "svg",
) -> tuple[int, str, int]:
    """Score `data` into `out`; with `waterfalls`, also draw each patient's explanation into that
    directory (one file per row, named in the output's `waterfall` column)."""
    if Path(out).exists() and not overwrite:
        raise FileExistsError(f"{out} already exists (pass --overwrite to replace it)")
    cohort = read_cohort(Path(data), outcome=None, on_invalid=on_invalid, require_id=False)
    if len(cohort.rejected):
        log.warning("%s", cohort.report.summary())
    resolved, bundle = _load_model(settings)
    for warning in distribution_warnings(bundle, cohort.data):
        log.warning("%s", warning)
    scored = score_frame(bundle, cohort.data)
    ids = cohort.data[ID_COLUMN] if ID_COLUMN in cohort.data else pd.Series(
        np.arange(1, len(cohort.data) + 1), name=ID_COLUMN
    )
    result = pd.concat([ids.rename(ID_COLUMN).reset_index(drop=True), scored.reset_index(drop=True)], axis=1)
    result["model_version"] = f"{resolved.name}/{resolved.version}"
    if waterfalls is not None:
        log.info("drawing %d waterfalls into %s", len(result), waterfalls)
        result["waterfall"] = write_waterfalls(
            bundle, resolved, cohort.data, scored, Path(waterfalls), waterfall_format, overwrite=overwrite
        )
    write_new(result, Path(out), overwrite=overwrite)
    return len(result), f"{resolved.name} v{resolved.version}", len(cohort.rejected)
