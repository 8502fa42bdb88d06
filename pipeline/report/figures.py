"""The evidence's figures (pipeline.evidence -> PNG): calibration, decision curve, subgroup forest
plot and learning curve, in the project's one visual language (core.style), laid out, captioned
and written by `pipeline.report.plots.save` like every other figure.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is first imported: the imports below follow it on purpose
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pipeline.report import plots
from core import style
from pipeline.evidence import (
    EASIX,
    M_EASIX,
    MODEL,
    ORACLE,
    TREAT_ALL,
    TREAT_NONE,
    Evidence,
    learning_curve_summary,
)
from pipeline.report.document import rounded

# One name and one colour per series, in every figure and table: the evidence's keys are style's.
assert (MODEL, EASIX, M_EASIX, ORACLE, TREAT_ALL, TREAT_NONE) == (
    style.MODEL, style.EASIX, style.M_EASIX, style.ORACLE, style.TREAT_ALL, style.TREAT_NONE)

PLOT_FILES: dict[str, str] = {
    "calibration": "calibration_curve.png",
    "decision_curve": "decision_curve.png",
    "subgroups": "subgroup_auroc.png",
    "learning_curve": "learning_curve.png",
}
# What to read from each figure; drawn under the figure and repeated under it in the report.
CAPTIONS: dict[str, str] = {
    "calibration": (
        "Points: observed proportion of events in each tenth of predicted risk, with 95% intervals; lines: "
        "loess-smoothed observed risk. On the dotted diagonal, predicted = observed; below it the model "
        "over-predicts. The histogram shows where the predictions lie."
    ),
    "decision_curve": (
        "Net benefit of treating the patients whose predicted risk is at least the threshold. A score "
        "helps at a threshold only where its curve lies above both 'treat all' and 'treat none' (0). "
        "EASIX and m-EASIX are rescaled to probabilities on the development data; the shaded band is the "
        "model's 95% bootstrap interval."
    ),
    "subgroups": (
        "AUROC within each subgroup with its 95% bootstrap interval; the dashed line is the overall AUROC. "
        "Hollow points are small subgroups whose figures are unstable."
    ),
    "learning_curve": (
        "How discrimination grows with the number of training patients, on one fixed synthetic test set "
        "(not the validation figures above). The band marks the sizes of real single-centre cohorts."
    ),
    "roc.png": plots.ROC_CAPTION,
    "shap_summary.png": plots.SHAP_CAPTION,
}


def evaluated_on(evidence: Evidence) -> str:
    """Which patients a figure shows, from the validation design actually used (for titles)."""
    design = (evidence.validation or {}).get("design")
    if design == "repeated_cv":
        return "all patients, out-of-fold risks (repeated CV)"
    if design == "split":
        return "held-out set"
    if design in ("local update", "local validation"):
        return "local patients"
    if evidence.meta.get("external"):
        return "external cohort"
    return "evaluation patients"


def auroc_text(x: float | None) -> str:
    """An AUROC in every figure, table and page, by its one rule (core.display.DECIMALS)."""
    return rounded("auroc", x)


def plot_calibration(evidence: Evidence, path: Path) -> Path:
    """Model: deciles of predicted risk (observed proportion with Wilson 95% intervals) and the
    loess curve with its bootstrap band; comparators' loess curves; distribution of the model's
    predictions by outcome below."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.4, 8.0), gridspec_kw={"height_ratios": [4, 1]}, sharex=True)
    top = 0.0  # the axes contain every drawn point, band and interval
    for name, curves in evidence.calibration_curves.items():
        colour = style.COLOURS.get(name)
        sm = curves["smoothed"]
        if len(sm):
            ax.plot(sm["predicted"], sm["observed"], color=colour, lw=2 if name == MODEL else 1.3,
                    ls="-" if name == MODEL else "--", label=f"{style.name(name)}: loess")
            top = max(top, float(np.nanmax(sm["predicted"])), float(np.nanmax(sm["observed"])))
            if name == MODEL and sm["observed_ci_low"].notna().any():
                ax.fill_between(sm["predicted"], sm["observed_ci_low"], sm["observed_ci_high"], color=colour,
                                alpha=0.18, lw=0, label=f"{style.name(name)}: 95% bootstrap band")
                top = max(top, float(np.nanmax(sm["observed_ci_high"])))
        b = curves["binned"]
        if name == MODEL and len(b):
            yerr = np.vstack([b["observed"] - b["observed_ci_low"], b["observed_ci_high"] - b["observed"]])
            ax.errorbar(b["mean_predicted"], b["observed"], yerr=yerr, fmt="o", color=colour, ms=5, capsize=3,
                        label=f"{style.name(name)}: tenths of predicted risk (95% CI)")
            top = max(top, float(b["mean_predicted"].max()), float(b["observed_ci_high"].max()))
    top = min(1.0, max(0.1, top * 1.05))
    ax.plot([0, top], [0, top], color="grey", lw=1, ls=":", label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_ylabel("observed proportion")
    cal = evidence.calibration.get(MODEL, {})
    ax.set_title(f"Calibration ({evidence.outcome}, {evaluated_on(evidence)}): slope "
                 f"{rounded('calibration_slope', cal.get('calibration_slope'))}, ICI {rounded('ici', cal.get('ici'))}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    if evidence.y_test is not None and MODEL in evidence.predictions:
        p, y = evidence.predictions[MODEL], evidence.y_test
        bins = np.linspace(0, top, 31)
        hist.hist(p[y == 0], bins=bins, color="grey", alpha=0.6, label="no event")
        hist.hist(p[y == 1], bins=bins, color=style.COLOURS[MODEL], alpha=0.8, label="event")
        hist.legend(fontsize=7)
    hist.set_xlabel("predicted risk")
    hist.set_ylabel("patients")
    return plots.save(fig, path, CAPTIONS["calibration"], bottom=0.11)


def plot_decision_curve(evidence: Evidence, path: Path) -> Path:
    """Net benefit against threshold probability: models, treat all, treat none."""
    dc = evidence.decision_curve
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    for name, part in dc.groupby("model", sort=False):
        colour = style.COLOURS.get(name)
        ls = {TREAT_ALL: "--", TREAT_NONE: ":"}.get(name, "-")
        if name == MODEL and "nb_ci_low" in part and part["nb_ci_low"].notna().any():
            ax.fill_between(part["threshold"], part["nb_ci_low"], part["nb_ci_high"], color=colour, alpha=0.15,
                            lw=0, label="model, 95% bootstrap band")
        ax.plot(part["threshold"], part["net_benefit"], ls=ls, color=colour, lw=2 if name == MODEL else 1.3,
                label=style.name(name))
    prevalence = float(np.mean(evidence.y_test)) if evidence.y_test is not None else float(dc["net_benefit"].max())
    ax.set_ylim(-0.05, max(0.02, prevalence * 1.1))
    ax.set_xlim(float(dc["threshold"].min()), float(dc["threshold"].max()))
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(f"Decision curve ({evidence.outcome}, {evaluated_on(evidence)})", fontsize=10)
    ax.legend(fontsize=8)
    return plots.save(fig, path, CAPTIONS["decision_curve"], bottom=0.11)


def plot_subgroups(evidence: Evidence, path: Path) -> Path:
    """Forest plot of subgroup AUROC with bootstrap 95% intervals; small subgroups hollow."""
    sg = evidence.subgroups.reset_index(drop=True)
    labels, ys = [], []
    fig, ax = plt.subplots(figsize=(8.8, 0.34 * (len(sg) + sg["group"].nunique()) + 1.4))
    row = 0
    for group, part in sg.groupby("group", sort=False):
        labels.append(str(part["group_label"].iloc[0]))
        ys.append(row)
        row += 1
        for r in part.itertuples():
            y = row
            small = bool(r.small)
            if r.n and math.isfinite(r.auroc):
                low = r.auroc - r.auroc_ci_low if math.isfinite(r.auroc_ci_low) else 0
                high = r.auroc_ci_high - r.auroc if math.isfinite(r.auroc_ci_high) else 0
                ax.errorbar([r.auroc], [y], xerr=[[low], [high]], fmt="o", color=style.COLOURS[MODEL], capsize=3,
                            mfc="white" if small else style.COLOURS[MODEL], ms=6)
            note = f"n={r.n}, events={r.events}" + (" (small)" if small else "")
            if not r.n or not math.isfinite(r.auroc):
                note += "; AUROC not estimable"
            ax.text(1.01, y, note, va="center", fontsize=7, transform=ax.get_yaxis_transform())
            labels.append(f"   {r.level_label}")
            ys.append(y)
            row += 1
    overall = evidence.discrimination.get(MODEL, {}).get("auroc", float("nan"))
    if math.isfinite(overall):
        ax.axvline(overall, color=style.COLOURS[MODEL], ls="--", lw=1, label=f"overall {auroc_text(overall)}")
    ax.axvline(0.5, color="grey", lw=1, label="no discrimination")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("AUROC (95% bootstrap interval); hollow = small subgroup")
    ax.set_title(f"Subgroups, {evaluated_on(evidence)}", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.subplots_adjust(left=0.3, right=0.72, top=1 - 0.45 / fig.get_figheight(), bottom=1.25 / fig.get_figheight())
    return plots.save(fig, path, CAPTIONS["subgroups"], tight=False)


def plot_learning_curve(table: pd.DataFrame, path: Path) -> Path:
    """Held-out AUROC against training size (log scale); the oracle as a horizontal ceiling."""
    summary = learning_curve_summary(table)
    fig, ax = plt.subplots(figsize=(9.6, 5.2))
    for name, part in summary.groupby("model", sort=False):
        part = part.sort_values("size")
        if name == ORACLE:
            ax.axhline(float(part["auroc"].mean()), color=style.COLOURS[ORACLE], ls="--", lw=1.3,
                       label=f"{style.name(ORACLE)}: ceiling")
            continue
        colour = style.COLOURS.get(name)
        line = ax.plot(part["size"], part["auroc"], marker="o", color=colour, label=style.name(name))[0]
        if int(part["repeats"].max()) > 1:
            ax.fill_between(part["size"], part["auroc_min"], part["auroc_max"], color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xscale("log")
    sizes = sorted(int(s) for s in table["size"].unique())
    ax.minorticks_off()
    ax.set_xticks(sizes)
    ax.set_xticklabels([str(s) for s in sizes])
    ax.axvspan(min(sizes) * 0.9, max(min(sizes) * 0.9, 500), color="#f4e3c8", alpha=0.5, lw=0,
               label="real cohort sizes (100-500)")
    finite = table["auroc"][np.isfinite(table["auroc"])]
    if len(finite):
        ax.set_ylim(max(0.4, float(finite.min()) - 0.03), min(1.0, float(finite.max()) + 0.03))
    ax.set_xlabel("training patients (synthetic)")
    ax.set_ylabel("held-out AUROC")
    ax.set_title("Learning curve on synthetic data (one fixed synthetic test set)", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)  # beside, never on, the lines
    return plots.save(fig, path, CAPTIONS["learning_curve"], bottom=0.11)


def save_plots(evidence: Evidence, plots_dir: Path) -> dict[str, Path]:
    """Write the evidence's figures (PLOT_FILES names) into plots_dir; returns name -> path."""
    plots_dir = Path(plots_dir)
    plots_dir.mkdir(parents=True, exist_ok=True)
    out = {
        "calibration": plot_calibration(evidence, plots_dir / PLOT_FILES["calibration"]),
        "decision_curve": plot_decision_curve(evidence, plots_dir / PLOT_FILES["decision_curve"]),
        "subgroups": plot_subgroups(evidence, plots_dir / PLOT_FILES["subgroups"]),
    }
    if evidence.learning_curve is not None and len(evidence.learning_curve):
        out["learning_curve"] = plot_learning_curve(evidence.learning_curve, plots_dir / PLOT_FILES["learning_curve"])
    return out
