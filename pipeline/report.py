"""Figures and documents from an `Evidence`: PNG plots, one self-contained HTML validation report
(`validation_report.html`) and a model card (Markdown and HTML, Mitchell et al. 2019).

Pure rendering: no MLflow, no computation of metrics (that is `pipeline.evidence`). Every file goes
into a directory the caller gives; the HTML embeds its images as data URIs, carries no script and
no external resource, so it opens as-is from the MLflow UI's artifact view or from disk.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from pipeline import plots, style  # noqa: E402
from pipeline.contract import INTENDED_USE, OUTCOMES  # noqa: E402
from pipeline.evidence import (  # noqa: E402
    EASIX,
    M_EASIX,
    MODEL,
    NET_BENEFIT_REPORTED,
    ORACLE,
    SMALL_SUBGROUP_EVENTS,
    SMALL_SUBGROUP_N,
    TREAT_ALL,
    TREAT_NONE,
    Evidence,
    learning_curve_summary,
)

BANNER = "Research use only. Not a medical device. No treatment advice."
REPORT_FILE = "validation_report.html"
MODEL_CARD_MD = "model_card.md"
MODEL_CARD_HTML = "model_card.html"
PLOT_FILES: dict[str, str] = {
    "calibration": "calibration_curve.png",
    "decision_curve": "decision_curve.png",
    "subgroups": "subgroup_auroc.png",
    "learning_curve": "learning_curve.png",
}
# One name and one colour per series, in every figure and table (pipeline.style).
DISPLAY = style.NAMES
_DPI = style.DPI
_COLOURS = style.COLOURS
assert (MODEL, EASIX, M_EASIX, ORACLE, TREAT_ALL, TREAT_NONE) == (
    style.MODEL, style.EASIX, style.M_EASIX, style.ORACLE, style.TREAT_ALL, style.TREAT_NONE)
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

REFERENCES = (
    "Collins GS et al. TRIPOD+AI statement. BMJ 2024;385:e078378.",
    "Mitchell M et al. Model cards for model reporting. FAT* 2019:220-229.",
    "Austin PC, Steyerberg EW. The Integrated Calibration Index (ICI). Stat Med 2019;38:4051-4065.",
    "Van Calster B et al. Calibration: the Achilles heel of predictive analytics. BMC Med 2019;17:230.",
    "Vickers AJ, Elkin EB. Decision curve analysis. Med Decis Making 2006;26:565-574.",
    "Riley RD et al. Minimum sample size for developing a multivariable prediction model: Part II. "
    "Stat Med 2019;38:1276-1296; Calculating the sample size required for developing a clinical "
    "prediction model. BMJ 2020;368:m441.",
    "Riley RD, Van Calster B, Collins GS. Estimating the Cox-Snell R2 from a reported C statistic. "
    "Stat Med 2021;40:859-864.",
    "Korell F et al. EASIX and severe CAR T-cell toxicity. Front Immunol 2022;13:877477; "
    "Pennisi M et al. m-EASIX. Blood Adv 2021;5:3397-3406.",
)


# --------------------------------------------------------------------------- formatting


def _num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f):
        return "n/a"
    return f"{f:.{digits}f}"


def _ci(d: Mapping[str, Any], key: str, digits: int = 3) -> str:
    """'0.741 (0.682 to 0.804)' from d[key], d[key_ci_low], d[key_ci_high]."""
    point = _num(d.get(key), digits)
    low, high = d.get(f"{key}_ci_low"), d.get(f"{key}_ci_high")
    if low is None or high is None or not (math.isfinite(float(low)) and math.isfinite(float(high))):
        return point
    return f"{point} ({_num(low, digits)} to {_num(high, digits)})"


def _pct(v: Any, digits: int = 1) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "n/a"
    return f"{100 * f:.{digits}f}%" if math.isfinite(f) else "n/a"


def _name(key: str) -> str:
    return style.name(key)


# --------------------------------------------------------------------------- document model
# A document is a list of sections (title, blocks); a block is ("p", text), ("ul", [items]),
# ("table", headers, rows), ("img", alt, path) or ("note", text). The same structure renders to
# Markdown and to HTML, so the two versions of the model card cannot drift apart.

Block = tuple
Section = tuple[str, list[Block]]


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _to_markdown(title: str, sections: Sequence[Section], banner: str) -> str:
    lines = [f"# {title}", "", f"> **{banner}**", ""]
    for heading, blocks in sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            kind = block[0]
            if kind in ("p", "note"):
                lines += [(f"> {block[1]}" if kind == "note" else block[1]), ""]
            elif kind == "ul":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                headers, rows = block[1], block[2]
                lines.append("| " + " | ".join(_md_cell(h) for h in headers) + " |")
                lines.append("|" + "---|" * len(headers))
                lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
                lines.append("")
            elif kind == "img":
                lines += [f"![{block[1]}]({Path(block[2]).name})", ""]
    return "\n".join(lines).rstrip() + "\n"


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:1.6em}
.banner{background:#fff3cd;border:2px solid #c0392b;color:#7b1d12;padding:.7em 1em;font-weight:bold;
font-size:1.05em;margin:1em 0}
.note{background:#f4f6f8;border-left:4px solid #d9822b;padding:.5em .8em;margin:.6em 0}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#eef2f6}tr.small td{color:#8a4b00;background:#fff8ec}
img{max-width:100%;height:auto;border:1px solid #ddd;margin:.4em 0}
.refs li{font-size:.88em}code{background:#f4f6f8;padding:0 .2em;font-size:.92em}
"""


def _esc(text: Any) -> str:
    """HTML-escaped text whose `code spans` (Markdown backticks) become <code> elements."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(str(text)))


def _to_html(title: str, sections: Sequence[Section], banner: str, images: Mapping[str, str] | None = None) -> str:
    esc = _esc
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f'<div class="banner" role="alert">{esc(banner)}</div>',
        f"<h1>{esc(title)}</h1>",
    ]
    for heading, blocks in sections:
        out.append(f"<h2>{esc(heading)}</h2>")
        for block in blocks:
            kind = block[0]
            if kind == "p":
                out.append(f"<p>{esc(block[1])}</p>")
            elif kind == "note":
                out.append(f'<div class="note">{esc(block[1])}</div>')
            elif kind == "ul":
                out.append("<ul>" + "".join(f"<li>{esc(str(i))}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                headers, rows = block[1], block[2]
                flags = block[3] if len(block) > 3 else [False] * len(rows)
                out.append("<table><thead><tr>" + "".join(f"<th>{esc(str(h))}</th>" for h in headers) + "</tr></thead><tbody>")
                for row, small in zip(rows, flags):
                    cls = ' class="small"' if small else ""
                    out.append(f"<tr{cls}>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>")
                out.append("</tbody></table>")
            elif kind == "img":
                data = (images or {}).get(str(block[2]))
                if data:
                    out.append(f'<img alt="{html.escape(block[1])}" src="data:image/png;base64,{data}">')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


# --------------------------------------------------------------------------- plots


def _save(fig: plt.Figure, path: Path, caption: str | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if caption:
        fig.tight_layout(rect=(0, 0.11, 1, 1))
        style.caption(fig, caption)
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_calibration(evidence: Evidence, path: Path) -> Path:
    """Model: deciles of predicted risk (observed proportion with Wilson 95% intervals) and the
    loess curve with its bootstrap band; comparators' loess curves; distribution of the model's
    predictions by outcome below."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(6.4, 8.0), gridspec_kw={"height_ratios": [4, 1]}, sharex=True)
    top = 0.0  # the axes contain every drawn point, band and interval
    for name, curves in evidence.calibration_curves.items():
        colour = _COLOURS.get(name)
        sm = curves["smoothed"]
        if len(sm):
            ax.plot(sm["predicted"], sm["observed"], color=colour, lw=2 if name == MODEL else 1.3,
                    ls="-" if name == MODEL else "--", label=f"{_name(name)}: loess")
            top = max(top, float(np.nanmax(sm["predicted"])), float(np.nanmax(sm["observed"])))
            if name == MODEL and sm["observed_ci_low"].notna().any():
                ax.fill_between(sm["predicted"], sm["observed_ci_low"], sm["observed_ci_high"], color=colour,
                                alpha=0.18, lw=0, label=f"{_name(name)}: 95% bootstrap band")
                top = max(top, float(np.nanmax(sm["observed_ci_high"])))
        b = curves["binned"]
        if name == MODEL and len(b):
            yerr = np.vstack([b["observed"] - b["observed_ci_low"], b["observed_ci_high"] - b["observed"]])
            ax.errorbar(b["mean_predicted"], b["observed"], yerr=yerr, fmt="o", color=colour, ms=5, capsize=3,
                        label=f"{_name(name)}: tenths of predicted risk (95% CI)")
            top = max(top, float(b["mean_predicted"].max()), float(b["observed_ci_high"].max()))
    top = min(1.0, max(0.1, top * 1.05))
    ax.plot([0, top], [0, top], color="grey", lw=1, ls=":", label="perfect calibration")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_ylabel("observed proportion")
    cal = evidence.calibration.get(MODEL, {})
    ax.set_title(f"Calibration ({evidence.outcome}): slope {_num(cal.get('calibration_slope'), 2)}, "
                 f"ICI {_num(cal.get('ici'), 3)}", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    if evidence.y_test is not None and MODEL in evidence.predictions:
        p, y = evidence.predictions[MODEL], evidence.y_test
        bins = np.linspace(0, top, 31)
        hist.hist(p[y == 0], bins=bins, color="grey", alpha=0.6, label="no event")
        hist.hist(p[y == 1], bins=bins, color=_COLOURS[MODEL], alpha=0.8, label="event")
        hist.legend(fontsize=7)
    hist.set_xlabel("predicted risk")
    hist.set_ylabel("patients")
    return _save(fig, path, CAPTIONS["calibration"])


def plot_decision_curve(evidence: Evidence, path: Path) -> Path:
    """Net benefit against threshold probability: models, treat all, treat none."""
    dc = evidence.decision_curve
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    for name, part in dc.groupby("model", sort=False):
        colour = _COLOURS.get(name)
        ls = {TREAT_ALL: "--", TREAT_NONE: ":"}.get(name, "-")
        if name == MODEL and "nb_ci_low" in part and part["nb_ci_low"].notna().any():
            ax.fill_between(part["threshold"], part["nb_ci_low"], part["nb_ci_high"], color=colour, alpha=0.15,
                            lw=0, label="model, 95% bootstrap band")
        ax.plot(part["threshold"], part["net_benefit"], ls=ls, color=colour, lw=2 if name == MODEL else 1.3,
                label=_name(name))
    prevalence = float(np.mean(evidence.y_test)) if evidence.y_test is not None else float(dc["net_benefit"].max())
    ax.set_ylim(-0.05, max(0.02, prevalence * 1.1))
    ax.set_xlim(float(dc["threshold"].min()), float(dc["threshold"].max()))
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(f"Decision curve ({evidence.outcome}, held-out set)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path, CAPTIONS["decision_curve"])


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
                ax.errorbar([r.auroc], [y], xerr=[[low], [high]], fmt="o", color=_COLOURS[MODEL], capsize=3,
                            mfc="white" if small else _COLOURS[MODEL], ms=6)
            note = f"n={r.n}, events={r.events}" + (" (small)" if small else "")
            if not r.n or not math.isfinite(r.auroc):
                note += "; AUROC not estimable"
            ax.text(1.01, y, note, va="center", fontsize=7, transform=ax.get_yaxis_transform())
            labels.append(f"   {r.level_label}")
            ys.append(y)
            row += 1
    overall = evidence.discrimination.get(MODEL, {}).get("auroc", float("nan"))
    if math.isfinite(overall):
        ax.axvline(overall, color=_COLOURS[MODEL], ls="--", lw=1, label=f"overall {overall:.3f}")
    ax.axvline(0.5, color="grey", lw=1, label="no discrimination")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("AUROC (95% bootstrap interval); hollow = small subgroup")
    ax.set_title("Subgroups, held-out set", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")
    fig.subplots_adjust(left=0.3, right=0.72, top=1 - 0.45 / fig.get_figheight(), bottom=1.25 / fig.get_figheight())
    style.caption(fig, CAPTIONS["subgroups"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_learning_curve(table: pd.DataFrame, path: Path) -> Path:
    """Held-out AUROC against training size (log scale); the oracle as a horizontal ceiling."""
    summary = learning_curve_summary(table)
    fig, ax = plt.subplots(figsize=(9.6, 5.2))
    for name, part in summary.groupby("model", sort=False):
        part = part.sort_values("size")
        if name == ORACLE:
            ax.axhline(float(part["auroc"].mean()), color=_COLOURS[ORACLE], ls="--", lw=1.3,
                       label=f"{_name(ORACLE)}: ceiling")
            continue
        colour = _COLOURS.get(name)
        line = ax.plot(part["size"], part["auroc"], marker="o", color=colour, label=_name(name))[0]
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
    return _save(fig, path, CAPTIONS["learning_curve"])


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


# --------------------------------------------------------------------------- shared content


def _outcome_text(outcome: str) -> str:
    o = OUTCOMES.get(outcome)
    return f"{o.description} ({outcome})" if o else outcome


def _discrimination_table(ev: Evidence) -> Block:
    rows = []
    for name, d in ev.discrimination.items():
        rows.append([_name(name), _ci(d, "auroc"), _ci(d, "auprc"), _num(d.get("prevalence"))])
    return ("table", ["score", "AUROC (95% CI)", "AUPRC (95% CI)", "prevalence (AUPRC no-skill)"], rows)


def _comparison_table(ev: Evidence) -> Block:
    rows = [[f"model minus {_name(name)}", _num(c["difference"]), f"{_num(c['ci_low'])} to {_num(c['ci_high'])}",
             _pct(c.get("share_model_better"))] for name, c in ev.comparisons.items()]
    return ("table", ["AUROC difference", "estimate", "95% paired bootstrap CI", "resamples with model better"], rows)


def _calibration_table(ev: Evidence) -> Block:
    rows = []
    for name, c in ev.calibration.items():
        rows.append([_name(name), _num(c.get("calibration_in_the_large"), 4), _num(c.get("observed_expected_ratio")),
                     _ci(c, "calibration_intercept"), _ci(c, "calibration_slope"), _num(c.get("ici"), 4),
                     _num(c.get("e50"), 4), _num(c.get("e90"), 4), _ci(c, "brier", 4), _num(c.get("scaled_brier"))])
    return ("table", ["probability", "CITL (mean p - mean y)", "O/E", "intercept (95% CI)", "slope (95% CI)",
                      "ICI", "E50", "E90", "Brier (95% CI)", "scaled Brier"], rows)


def _net_benefit_table(ev: Evidence, thresholds: Iterable[float] = (0.05, 0.10, 0.15, 0.20, 0.30)) -> Block:
    names = [MODEL] + [n for n in ev.predictions if n != MODEL] + [TREAT_ALL, TREAT_NONE]
    rows = [[_pct(t, 0)] + [_num(ev.net_benefit_at(n, t), 4) for n in names] for t in thresholds]
    return ("table", ["threshold"] + [_name(n) for n in names], rows)


def _thresholds_table(ev: Evidence) -> Block:
    rows = [[r["name"], _num(r["threshold"], 4), r["n_at_or_above"], _num(r["sensitivity"]), _num(r["specificity"]),
             _num(r["ppv"]), _num(r["npv"])] for r in ev.thresholds.to_dict(orient="records")]
    return ("table", ["threshold", "risk >=", "patients at or above", "sensitivity", "specificity", "PPV", "NPV"], rows)


def _risk_group_table(ev: Evidence) -> Block:
    rows = [[r["group"], r["n"], r["events"], _pct(r["observed_risk"]), _pct(r["mean_predicted"])]
            for r in ev.risk_groups.to_dict(orient="records")]
    return ("table", ["risk group", "patients", "events", "observed risk", "mean predicted risk"], rows)


def _subgroup_table(ev: Evidence) -> Block:
    rows, flags = [], []
    for r in ev.subgroups.to_dict(orient="records"):
        rows.append([r["group_label"], r["level_label"], r["n"], r["events"], _ci(r, "auroc"),
                     _num(r["calibration_in_the_large"], 4), _num(r["brier"], 4),
                     ("SMALL: " + r["small_reason"]) if r["small"] else ""])
        flags.append(bool(r["small"]))
    return ("table", ["subgroup", "level", "n", "events", "AUROC (95% CI)", "CITL (mean p - mean y)", "Brier", "flag"],
            rows, flags)


def _sample_size_blocks(ev: Evidence) -> list[Block]:
    s = ev.sample_size
    if s is None:
        return [("p", "Not applicable: no development data in this evaluation (external validation).")]
    blocks: list[Block] = [("table", ["quantity", "value"], [
        ["development patients / events", f"{s['n']} / {s['events']} (prevalence {_pct(s['prevalence'])})"],
        ["candidate predictor parameters", s["n_params"]],
        ["events per candidate parameter (EPP)", _num(s["events_per_parameter"], 1)],
        ["anticipated Cox-Snell R2", f"{_num(s['anticipated_r2_cs'])} from {s['anticipated_r2_source']}"],
        ["max Cox-Snell R2 at this prevalence", _num(s["max_r2_cs"])],
        ["criterion 1: shrinkage >= 0.9", f"n >= {s['n_required_shrinkage']}"],
        ["criterion 2: Nagelkerke R2 optimism <= 0.05", f"n >= {s['n_required_optimism']}"],
        ["criterion 3: overall risk within +/- 0.05", f"n >= {s['n_required_intercept']}"],
        ["minimum n / events / EPP", f"{s['n_required']} / {math.ceil(s['events_required'])} / {_num(s['epp_required'], 1)}"],
        ["expected shrinkage at the actual n", _num(s["expected_shrinkage"])],
        ["adequate", "yes" if s["adequate"] else "NO"],
    ])]
    if s["warning"]:
        blocks.append(("note", "WARNING: " + s["warning"]))
    return blocks


def _learning_curve_blocks(ev: Evidence, image: Path | None) -> list[Block]:
    lc = ev.learning_curve
    if lc is None or not len(lc):
        return [("p", "Not computed for this run.")]
    summary = learning_curve_summary(lc)
    wide = summary.pivot_table(index="size", columns="model", values="auroc", sort=False)
    events = summary.groupby("size")["events_train"].first()
    repeats = int(summary["repeats"].max())
    cols = [c for c in wide.columns if c != ORACLE] + ([ORACLE] if ORACLE in wide.columns else [])
    trained = [c for c in cols if c not in (ORACLE, EASIX, M_EASIX)]
    rows = []
    for size in wide.index:
        best = max(trained, key=lambda c: wide.loc[size, c]) if trained else None
        runner = max((wide.loc[size, c] for c in trained if c != best), default=np.nan)
        verdict = f"{_name(best)} by {_num(wide.loc[size, best] - runner)}" if best is not None else "-"
        rows.append([int(size), _num(events[size], 0)] + [_num(wide.loc[size, c]) for c in cols] + [verdict])
    fitted = "once" if repeats == 1 else f"on {repeats} independent training cohorts (mean shown)"
    blocks: list[Block] = [
        ("p", "Held-out AUROC on one fixed synthetic test set against the number of synthetic training "
              f"patients, each size fitted {fitted} with the training's own procedure (search, family choice, "
              "calibration), beside an untuned HistGradientBoosting and the logistic comparator. The oracle is "
              "the AUROC of the true probability; it includes a latent random effect that no feature "
              "carries, so the ceiling reachable from the features is lower. EASIX and m-EASIX are scored on "
              "that synthetic test set too, so their figures here differ from the headline figures above, which "
              "are on this run's validation patients."),
        ("table", ["training patients", "training events"] + [_name(c) for c in cols] + ["best fitted model"], rows),
    ]
    if image is not None:
        blocks.append(("img", "learning curve", str(image)))
    return blocks


def _headline(ev: Evidence) -> list[str]:
    d = ev.discrimination[MODEL]
    c = ev.calibration[MODEL]
    items = [
        f"AUROC {_ci(d, 'auroc')}; AUPRC {_ci(d, 'auprc')} (prevalence {_num(d['prevalence'])}); "
        f"n = {d['n']}, events = {d['events']}; {ev.n_boot} bootstrap resamples.",
        f"Calibration: slope {_ci(c, 'calibration_slope')}, intercept {_ci(c, 'calibration_intercept')}, "
        f"calibration-in-the-large {_num(c['calibration_in_the_large'], 4)}, ICI {_num(c['ici'], 4)}; "
        f"Brier {_num(c['brier'], 4)}, scaled Brier {_num(c['scaled_brier'])}.",
    ]
    for name, cmp_ in ev.comparisons.items():
        items.append(f"AUROC model minus {_name(name)}: {_num(cmp_['difference'])} "
                     f"({_num(cmp_['ci_low'])} to {_num(cmp_['ci_high'])}).")
    if ev.y_test is not None:
        nb = ", ".join(f"{_pct(t, 0)}: {_num(ev.net_benefit_at(MODEL, t), 4)} (treat all "
                       f"{_num(ev.net_benefit_at(TREAT_ALL, t), 4)})" for t in NET_BENEFIT_REPORTED)
        items.append(f"Net benefit at thresholds {nb}.")
    if ORACLE in ev.discrimination:
        items.append(f"Oracle AUROC (true synthetic probability): {_ci(ev.discrimination[ORACLE], 'auroc')}.")
    return items + _better_than_model(ev)


def _better_than_model(ev: Evidence) -> list[str]:
    """Say it in words when another fitted model or score discriminates better than the model."""
    d, c = ev.discrimination[MODEL], ev.calibration[MODEL]
    out = []
    for name, other in ev.discrimination.items():
        if name in (MODEL, ORACLE) or not (math.isfinite(other.get("auroc", math.nan)) and other["auroc"] > d["auroc"]):
            continue
        text = (f"NOTE: {_name(name)} reaches a higher AUROC than the model on the same patients: "
                f"{_num(other['auroc'])} against {_num(d['auroc'])}")
        oc = ev.calibration.get(name) or {}
        if math.isfinite(float(oc.get("brier", math.nan))):
            text += f" (Brier {_num(oc['brier'], 4)} against {_num(c['brier'], 4)})"
        out.append(text + ". The model's family was chosen on development data (cross-validated log-loss), "
                          "not on these figures.")
    return out


def _resampled(ev: Evidence) -> bool:
    return bool(ev.validation) and ev.validation.get("design") == "repeated_cv"


def _evaluation_text(ev: Evidence, d: Mapping[str, Any], synthetic: bool) -> Block:
    tail = " Synthetic." if synthetic else ""
    if _resampled(ev):
        return ("p", f"No patients were held out (n = {d['n']}, events = {d['events']}, prevalence "
                     f"{_pct(d['prevalence'])}): the model is fitted on all of them and every figure comes from "
                     "repeated cross-validation of the whole procedure (tuning, family choice and calibration "
                     "inside every fold); the tables show the out-of-fold risks of the first repeat." + tail)
    return ("p", f"Held-out patients never used for fitting, tuning, calibration or threshold choice: n = {d['n']}, "
                 f"events = {d['events']} (prevalence {_pct(d['prevalence'])})." + tail)


def _validation_blocks(ev: Evidence) -> list[Block]:
    """The design (split or repeated cross-validation), why, and the estimates the gate used."""
    v = ev.validation
    if not v:
        return [("p", "External validation: every figure below is on the validation cohort.")]
    est = v.get("estimates", {})
    rows = [[_name(k), _ci(est, k, 4 if k == "brier" else 3)]
            for k in ("auroc", "calibration_slope", "calibration_intercept", "brier") if k in est]
    if "auroc_minus_m_easix" in est:
        rows.append(["AUROC minus m-EASIX", _ci(est, "auroc_minus_m_easix")])
    blocks: list[Block] = [
        ("p", f"Design: {v['design']}. {v['reason']}. The figures below the summary are on {v['evaluated_on']}."),
        ("table", ["estimate used by the quality gate and the champion comparison", "value (95% CI)"], rows),
    ]
    rs = v.get("resampling")
    if rs:
        names = list(rs["cross_validated"])
        head = ["model", "apparent AUROC", "cross-validated AUROC", "optimism", "SD over repeats",
                "cross-validated slope"]
        table = [[_name(n), _num(rs["apparent"].get(n, {}).get("auroc")), _num(rs["cross_validated"][n]["auroc"]),
                  _num(rs["optimism"][n]["auroc"]), _num(rs["spread_over_repeats"][n]["auroc"]),
                  _num(rs["cross_validated"][n]["calibration_slope"], 2)] for n in names]
        blocks += [
            ("p", f"{rs['repeats']} x {rs['folds']}-fold cross-validation of the whole procedure ({rs['seconds']:.0f} s): "
                  "in every fold the families are searched again, the family is chosen again and the "
                  "calibration is fitted again; the final model is fitted on all patients. Apparent: the "
                  "final fit scored on its own patients (optimistic); optimism = apparent - cross-validated."),
            ("table", head, table),
        ]
    return blocks


def _direction_blocks(ev: Evidence) -> list[Block]:
    d = ev.directions
    if d is None or not len(d):
        return [("p", "Not computed for this run.")]
    rows = [[r.feature, _num(r.low, 3), _num(r.high, 3), _num(r.risk_low, 3), _num(r.risk_high, 3),
             _num(r.effect, 4), r.model_direction, r.published_direction,
             "CONTRADICTION" if r.contradiction else (r.note or "")] for r in d.itertuples()]
    n_bad = int(d["contradiction"].sum())
    blocks: list[Block] = [
        ("p", "Each feature's conditional effect: the mean predicted risk with the feature set to a low and "
              "to a high value (10th/90th percentile; false/true; first/second level) and everything else as "
              "recorded, against the direction the literature gives it (the contract's monotone "
              "constraint)."),
        ("table", ["feature", "low", "high", "risk at low", "risk at high", "effect", "in the model",
                   "published", "flag"], rows),
    ]
    if n_bad:
        blocks.append(("note", f"WARNING: {n_bad} feature(s) act against their published direction."))
    return blocks


# --------------------------------------------------------------------------- validation report


def render_validation_report(
    evidence: Evidence,
    plots_dir: Path,
    out_path: Path,
    title: str | None = None,
) -> Path:
    """Write ONE self-contained HTML validation report to out_path (usually
    `<dir>/validation_report.html`) and the evidence's PNG figures to plots_dir.

    Figures are embedded as base64 data URIs; any other PNG already in plots_dir (e.g. the ROC and
    SHAP plots of `pipeline.plots`) is embedded under "Other figures". No script, no external
    resource. Returns out_path.
    """
    plots_dir = Path(plots_dir)
    figures = save_plots(evidence, plots_dir)
    ours = {p.name for p in figures.values()}
    others = sorted(p for p in plots_dir.glob("*.png") if p.name not in ours)
    images = {str(p): _b64(p) for p in list(figures.values()) + others}
    ev = evidence
    meta_rows = [[k.replace("_", " "), str(v)] for k, v in ev.meta.items()]
    meta_rows.insert(0, ["outcome", _outcome_text(ev.outcome)])
    sections: list[Section] = [
        ("Intended use", [("p", INTENDED_USE), ("table", ["item", "value"], meta_rows)]),
        ("Validation design", _validation_blocks(ev)),
        ("Summary", [("ul", _headline(ev))] + [("note", n) for n in ev.notes]),
        ("Discrimination", [_discrimination_table(ev), _comparison_table(ev),
                            ("p", "Percentile bootstrap intervals; differences use the same resamples for both "
                                  "scores. EASIX and m-EASIX are ranked as published scores; m-EASIX is also "
                                  "rescaled to a probability on the development data for calibration and "
                                  "decision curves.")]),
        ("Calibration", [_calibration_table(ev), ("img", "calibration plot", str(figures["calibration"])),
                         ("p", "CITL: mean predicted minus observed risk (> 0: over-prediction). Intercept: "
                               "logistic calibration-in-the-large with logit(p) as offset (> 0: "
                               "under-prediction). Slope: logistic recalibration on logit(p) (< 1: predictions "
                               "too extreme). ICI/E50/E90: mean/median/90th percentile of |p - loess-smoothed "
                               "observed risk|.")]),
        ("Clinical utility: decision curve", [("img", "decision curve", str(figures["decision_curve"])),
                                              _net_benefit_table(ev),
                                              ("p", "Net benefit = TP/n - FP/n x t/(1 - t), treating patients "
                                                    "with predicted risk >= t. A model is useful at t only where "
                                                    "its curve lies above both treat all and treat none.")]),
        ("Risk-group thresholds (chosen on development data)", [_thresholds_table(ev), _risk_group_table(ev)]),
        ("Subgroups", [("p", f"Small subgroups (n < {SMALL_SUBGROUP_N} or events < {SMALL_SUBGROUP_EVENTS}) are "
                             "flagged, not hidden: their figures are unstable."),
                       _subgroup_table(ev), ("img", "subgroup forest plot", str(figures["subgroups"]))]),
        ("Sample size and events per parameter (development data)", _sample_size_blocks(ev)),
        ("Learning curve (synthetic data)", _learning_curve_blocks(ev, figures.get("learning_curve"))),
        ("Directions of effect", _direction_blocks(ev)),
    ]
    if ev.development is not None:
        dv = ev.development
        sections.append(("Development data (out-of-fold predictions)", [("table", ["quantity", "value"], [
            ["AUROC (95% CI)", _ci(dv, "auroc")], ["AUPRC (95% CI)", _ci(dv, "auprc")],
            ["ICI", _num(dv.get("ici"), 4)], ["Brier", _num(dv.get("brier"), 4)],
        ]), ("p", "No calibration slope or intercept here: the Platt calibration was fitted on these "
                  "out-of-fold predictions, so they are 1 and 0 by construction and are no evidence. The "
                  "calibration evidence is in the Calibration section above.")]))
    if others:
        blocks: list[Block] = []
        for p in others:
            blocks.append(("img", p.stem.replace("_", " "), str(p)))
            if p.name in CAPTIONS:
                blocks.append(("p", CAPTIONS[p.name]))
        named = {"roc.png", "shap_summary.png"} >= {p.name for p in others}
        sections.append(("ROC curves and SHAP summary" if named else "Other figures", blocks))
    sections.append(("References", [("ul", list(REFERENCES))]))
    doc = _to_html(title or f"Validation report: {_outcome_text(ev.outcome)}", sections, BANNER, images)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(doc, encoding="utf-8")
    return out_path


# --------------------------------------------------------------------------- model card

MODEL_CARD_SECTIONS = (
    "Model details",
    "Intended use",
    "Factors",
    "Metrics",
    "Evaluation data",
    "Training data",
    "Quantitative analyses",
    "Ethical considerations",
    "Caveats and recommendations",
)


def _get(d: Mapping[str, Any], key: str, default: str = "not recorded") -> str:
    v = d.get(key)
    return default if v is None or v == "" else str(v)


def render_model_card(
    evidence: Evidence,
    model_info: Mapping[str, Any],
    data_provenance: Mapping[str, Any],
) -> tuple[str, str]:
    """The model card (Mitchell et al., FAT* 2019) as (markdown, html), from one run's evidence.

    model_info (all optional): name, version, run_id, trained_at, kind, params, thresholds,
      calibration, contract_version, git_commit, n_params.
    data_provenance (all optional): synthetic (bool), sha256, file, n_rows, n_dev, n_test, seed,
      n_rows_rejected, description.
    Missing entries show as "not recorded". The HTML is self-contained and escaped.
    """
    ev = evidence
    d = ev.discrimination[MODEL]
    synthetic = bool(data_provenance.get("synthetic"))
    outcome = _outcome_text(ev.outcome)
    name = _get(model_info, "name", "icans-risk")
    # The card is written before the registry numbers the version that will carry it.
    version = _get(model_info, "version", f"see the model registry (models:/{name}) or GET /v1/model")
    params = model_info.get("params")
    thresholds = model_info.get("thresholds") or {r["name"]: r["threshold"] for r in ev.thresholds.to_dict(orient="records")}

    details = ("table", ["item", "value"], [
        ["name", name], ["registered version", version], ["MLflow run id", _get(model_info, "run_id")],
        ["date", _get(model_info, "trained_at")],
        ["model type", _get(model_info, "kind")],
        ["hyper-parameters", ", ".join(f"{k}={v}" for k, v in params.items()) if isinstance(params, Mapping) else _get(model_info, "params")],
        ["calibration", _get(model_info, "calibration", "Platt scaling on out-of-fold margins of the development data")],
        ["risk-group thresholds", ", ".join(f"{k} {_num(v, 4)}" for k, v in thresholds.items()) or "not recorded"],
        ["data contract version", _get(model_info, "contract_version")],
        ["code version (git commit)", _get(model_info, "git_commit")],
        ["outcome", outcome],
    ])
    source = ("synthetic cohort from pipeline.cohort.generate_cohort"
              + (f" (seed {data_provenance['seed']})" if data_provenance.get("seed") is not None else "")
              if synthetic else f"cohort file {_get(data_provenance, 'file')}")
    provenance_rows = [
        ["source", source],
        ["file sha256", _get(data_provenance, "sha256")],
        ["rows used", _get(data_provenance, "n_rows")],
        ["rows rejected by the contract", _get(data_provenance, "n_rows_rejected")],
        ["development / held-out patients", f"{_get(data_provenance, 'n_dev')} / {_get(data_provenance, 'n_test', str(d['n']))}"],
    ]
    if data_provenance.get("description"):
        provenance_rows.append(["description", str(data_provenance["description"])])

    subgroup_lines = []
    for r in ev.subgroups.to_dict(orient="records"):
        flag = f" [SMALL: {r['small_reason']}]" if r["small"] else ""
        subgroup_lines.append(f"{r['group_label']} {r['level_label']}: n = {r['n']}, events = {r['events']}, "
                              f"AUROC {_ci(r, 'auroc')}, CITL {_num(r['calibration_in_the_large'], 4)}{flag}")

    gate = model_info.get("gate") or {}
    if gate and not gate.get("passed", True):
        details[2].append(["quality gate", f"FAILED: {gate.get('reason')}"
                           + ("; registered as champion with ALLOW_UNGATED=1 (ungated)" if gate.get("ungated") else "")])
    caveats = [
        "Baseline (pre-lymphodepletion) features only: the model ignores everything after infusion, including "
        "CRS, the strongest driver of ICANS; it cannot replace monitoring.",
        "Discrimination of baseline-only models for severe ICANS is modest in the literature (no externally "
        "validated baseline-only ALL model with AUROC > 0.85); read the intervals, not the point estimates.",
        "Subgroups with few patients or events have unstable figures (flagged SMALL); products, ages and centres "
        "absent from the training data are outside the model's evidence.",
        "Calibration drifts between centres and over time: recalibrate (intercept, then slope) on local data "
        "before any use, and re-check with `make evaluate` on every new cohort.",
    ]
    # the sample-size warning is said once, in "Training data" (_sample_size_blocks)
    said_elsewhere = {ev.sample_size.get("warning")} if ev.sample_size is not None else set()
    if synthetic:
        caveats[:0] = [
            "SYNTHETIC DATA: these figures come from a simulated cohort whose effect sizes are taken from "
            "published summaries and documented assumptions. They show that the pipeline works; they say "
            "nothing about performance in real patients.",
            "The synthetic oracle AUROC (of the true probability p_true) includes a latent random effect "
            "(unmeasured patient heterogeneity) that no feature carries: the ceiling reachable from the "
            "features alone is lower than the oracle.",
            "Synthetic outcomes are generated from the same functional forms a model can learn; real data have "
            "measurement error, label noise (ICANS grading), missingness that is not at random, and case mix "
            "shifts that the generator does not reproduce.",
        ]
    caveats.append("Recommendation: external validation on real, multi-centre B-ALL CAR-T cohorts (TRIPOD+AI) "
                   "before any clinical research use beyond method development.")

    sections: list[Section] = [
        ("Model details", [details]),
        ("Intended use", [
            ("p", INTENDED_USE),
            ("ul", [
                f"Primary use: research on the risk of {outcome} after CD19-, CD22- or CD19/CD22-directed CAR T-cell "
                "therapy for B-cell acute lymphoblastic leukaemia (B-ALL).",
                "Inputs: baseline features measured before lymphodepletion only (data contract "
                f"v{_get(model_info, 'contract_version', '1')}); no post-infusion information.",
                "Primary users: researchers and clinical statisticians studying neurotoxicity risk.",
                "Out of scope: treatment decisions or advice for individual patients, use as a medical device, "
                "other diseases (e.g. lymphoma, myeloma) or products outside the training data, and any input "
                "measured after infusion.",
            ]),
        ]),
        ("Factors", [
            ("p", "Relevant factors, each evaluated as a subgroup: age group (< 18 / >= 18 years), costimulatory "
                  "domain (4-1BB / CD28), CAR T-cell product, sex, and tumour burden (marrow blasts <= 20% / "
                  "> 20%). Target antigen (CD19, CD22, CD19/CD22) is an input of the data contract but is not "
                  "evaluated as a subgroup. Centre and ethnicity are not in the data contract and are not evaluated."),
        ]),
        ("Metrics", [
            ("ul", [
                "Discrimination: AUROC and AUPRC with 95% percentile-bootstrap intervals "
                f"({ev.n_boot} resamples); paired bootstrap AUROC differences against EASIX and m-EASIX.",
                "Calibration: calibration-in-the-large, logistic calibration intercept and slope, ICI/E50/E90 "
                "(loess), Brier and scaled Brier.",
                "Clinical utility: net benefit over thresholds 1-50% against treat all / treat none.",
                "Risk groups: sensitivity, specificity, PPV and NPV at thresholds chosen on development data only.",
            ]),
        ]),
        ("Evaluation data", [_evaluation_text(ev, d, synthetic)] + _validation_blocks(ev)),
        ("Training data", [("table", ["item", "value"], provenance_rows)] + _sample_size_blocks(ev)),
        ("Quantitative analyses", [
            ("ul", _headline(ev)),
            _discrimination_table(ev),
            _calibration_table(ev),
            _net_benefit_table(ev),
            _thresholds_table(ev),
            ("p", "Subgroups (held-out set):" if not _resampled(ev) else "Subgroups (out-of-fold risks):"),
            ("ul", subgroup_lines),
        ] + _direction_blocks(ev)[1:] + ([("p", "Learning curve (synthetic):")] + _learning_curve_blocks(ev, None)[1:2]
             if ev.learning_curve is not None and len(ev.learning_curve) else [])),
        ("Ethical considerations", [
            ("ul", [
                "Research use only; not a medical device; no treatment advice. A risk estimate can cause harm "
                "through false reassurance (a 'low' group still contains events) or unnecessary intervention.",
                "Automation bias: the estimate must not replace clinical judgement or ICANS monitoring.",
                "Fairness: performance is reported by sex, age group, product and tumour burden; differences "
                "and small subgroups are shown, not hidden.",
                "Privacy: no patient-level data is written to the tracking server; the example input is a "
                "made-up patient." + (" The training data are synthetic." if synthetic else ""),
            ]),
        ]),
        ("Caveats and recommendations", [("ul", caveats)]
         + [("note", n) for n in ev.notes if n not in caveats and n not in said_elsewhere]),
    ]
    title = f"Model card: {name}"
    return _to_markdown(title, sections, BANNER), _to_html(title, sections, BANNER)


def write_model_card(evidence: Evidence, model_info: Mapping[str, Any], data_provenance: Mapping[str, Any],
                     out_dir: Path) -> tuple[Path, Path]:
    """render_model_card, written to out_dir/model_card.md and out_dir/model_card.html."""
    markdown, page = render_model_card(evidence, model_info, data_provenance)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out_dir / MODEL_CARD_MD, out_dir / MODEL_CARD_HTML
    md_path.write_text(markdown, encoding="utf-8")
    html_path.write_text(page, encoding="utf-8")
    return md_path, html_path
