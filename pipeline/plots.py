"""Figures for the MLflow UI, drawn with the libraries' own displays (sklearn, shap)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.calibration import CalibrationDisplay  # noqa: E402
from sklearn.metrics import RocCurveDisplay  # noqa: E402

from pipeline.contract import FEATURES_BY_NAME  # noqa: E402


def roc_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, s in scores.items():
        RocCurveDisplay.from_predictions(y, s, name=name, ax=ax, plot_chance_level=name == list(scores)[-1])
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def calibration_plot(y: np.ndarray, probs: dict[str, np.ndarray], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 6))
    for name, p in probs.items():
        CalibrationDisplay.from_predictions(y, p, n_bins=10, strategy="quantile", name=name, ax=ax)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def shap_summary_plot(
    contributions: np.ndarray,
    base: np.ndarray,
    data: pd.DataFrame,
    feature_names: list[str],
    path: Path,
) -> Path:
    import shap

    values = pd.DataFrame({name: _colour_values(data[name], name) for name in feature_names})
    explanation = shap.Explanation(
        values=contributions,
        base_values=base,
        data=values.to_numpy(dtype=float, na_value=np.nan),
        feature_names=feature_names,
    )
    plt.figure()
    shap.plots.beeswarm(explanation, max_display=len(feature_names), show=False)
    fig = plt.gcf()
    fig.set_size_inches(9, 7)
    plt.title("SHAP values (log-odds of severe outcome), held-out set")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colour_values(col: pd.Series, name: str) -> pd.Series:
    """Colour scale for the beeswarm: a category by its position in the contract, booleans 0/1."""
    f = FEATURES_BY_NAME[name]
    if f.kind == "category":
        return col.map({c: float(i) for i, c in enumerate(f.categories)})
    return pd.to_numeric(col.astype("Float64"), errors="coerce")
