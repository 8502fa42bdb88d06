"""Offline scoring of a cohort file with the served model, explanations included."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipeline.contract import FEATURE_NAMES, FEATURES_BY_NAME, ID_COLUMN
from pipeline.data import write_new
from pipeline.features import encode_frame
from pipeline.io import read_cohort
from pipeline.settings import Settings

if TYPE_CHECKING:
    from models.artifact import ModelBundle
    from pipeline.registry import ResolvedModel

CHUNK = 10_000
log = logging.getLogger(__name__)


def score_frame(bundle: ModelBundle, df: pd.DataFrame) -> pd.DataFrame:
    """risk, risk_group, log_odds and one shap_<feature> column per feature, in chunks."""
    n = len(df)
    if n == 0:
        return pd.DataFrame()
    X = encode_frame(df)  # row by row the same as encoding each chunk
    risk = np.empty(n)
    log_odds = np.empty(n)
    base = np.empty(n)
    contributions = np.empty((n, len(FEATURE_NAMES)))
    for start in range(0, n, CHUNK):
        stop = min(start + CHUNK, n)
        ex = bundle.explain(X[start:stop])
        risk[start:stop] = ex.risk
        log_odds[start:stop] = ex.log_odds
        base[start:stop] = ex.base
        contributions[start:stop] = ex.contributions
    columns = {
        "risk": risk,
        "risk_group": bundle.risk_group(risk),
        "log_odds": log_odds,
        "shap_base": base,
    }
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
    from pipeline.registry import load_bundle, resolve_configured

    resolved = resolve_configured(settings.tracking_uri, settings.resolved_model_uri)
    return resolved, load_bundle(resolved, nthread=max(1, settings.predictor_threads))


def score_file(
    settings: Settings, data: Path, out: Path, overwrite: bool = False, on_invalid: str = "refuse"
) -> tuple[int, str, int]:
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
    write_new(result, Path(out), overwrite=overwrite)
    return len(result), f"{resolved.name} v{resolved.version}", len(cohort.rejected)
