"""The run's ROC and SHAP summary figures, in the project's one visual language (core.style),
and `save`, how every figure of the pipeline is laid out, captioned and written.

The calibration figure is the validation report's (`calibration_curve.png`, pipeline.report.figures);
there is no second one here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is first imported: the imports below follow it on purpose
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score, roc_curve

from core import display, style
from core.contract import FEATURES_BY_NAME

ROC_CAPTION = (
    "Each curve ranks the same patients by one score; higher and further left is better, and the "
    "AUROC in the legend summarises it. 'model' is the served model (the chosen family, calibrated). "
    "EASIX and m-EASIX are the published laboratory scores. The oracle ranks by the generator's true "
    "risk, which only synthetic data has: the best any model could do, not a competitor."
)
SHAP_CAPTION = (
    "One dot per patient and input: its SHAP contribution to that patient's log-odds (right raises the "
    "risk). Colour is the input's value from low (blue) to high (red) for numbers and yes/no inputs; "
    "categories (product, domain, antigen, lymphodepletion, sex) have no order and are drawn grey."
)


def roc_plot(y: np.ndarray, scores: dict[str, np.ndarray], path: Path, title: str) -> Path:
    """ROC curves of the model and its comparators; labels and colours from core.style."""
    fig, ax = plt.subplots(figsize=(6.4, 7.0))
    ax.plot([0, 1], [0, 1], color=style.COLOURS["chance"], lw=1, ls=":", label="chance (AUROC 0.5)")
    for label, s in scores.items():
        s = np.asarray(s, dtype=float)
        keep = np.isfinite(s)
        if keep.sum() < 2 or len(np.unique(y[keep])) < 2:
            continue
        fpr, tpr, _ = roc_curve(y[keep], s[keep])
        auc = roc_auc_score(y[keep], s[keep])
        key = style.series(label)
        ax.plot(fpr, tpr, color=style.colour(key), lw=2.2 if key == style.MODEL else 1.4,
                ls="--" if key == style.ORACLE else "-", label=f"{style.name(key)} (AUROC {display.figure('auroc', auc)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.005)
    ax.set_aspect("equal")
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7.5, loc="lower right")
    return save(fig, path, ROC_CAPTION)


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
    with warnings.catch_warnings():  # a column with no value (or a category) is all NaN: drawn grey, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        shap.plots.beeswarm(explanation, max_display=len(feature_names), show=False)
    fig = plt.gcf()
    fig.set_size_inches(9, 8)
    fig.axes[0].set_xlabel("SHAP contribution to the log-odds (right raises the risk)")
    plt.title("SHAP contributions to the log-odds of the outcome, one dot per patient", fontsize=10)
    return save(fig, path, SHAP_CAPTION)


def _colour_values(col: pd.Series, name: str) -> pd.Series:
    """Colour scale for the beeswarm: numbers as they are, booleans 0/1; a category has no order,
    so it gets no colour (NaN, drawn grey by shap)."""
    f = FEATURES_BY_NAME[name]
    if f.kind == "category":
        return pd.Series(np.nan, index=col.index, dtype=float)
    return pd.to_numeric(col.astype("Float64"), errors="coerce")


def save(fig: plt.Figure, path: Path, caption: str | None = None, bottom: float = 0.1,
         tight: bool = True) -> Path:
    """Lay the figure out (leaving `bottom` of its height for the caption), caption it, write it
    as PNG at style.DPI (creating the directory) and close it. tight=False keeps the caller's own
    subplots_adjust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight and caption:
        fig.tight_layout(rect=(0, bottom, 1, 1))
    elif tight:
        fig.tight_layout()
    if caption:
        style.caption(fig, caption)
    fig.savefig(path, dpi=style.DPI)
    plt.close(fig)
    return path
