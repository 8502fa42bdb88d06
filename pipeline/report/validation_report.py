"""The validation report: ONE self-contained HTML file (`validation_report.html`) with the
evidence's tables and figures, its images embedded as data URIs, no script, no external resource,
so it opens as-is from the MLflow UI's artifact view or from disk.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Mapping

from core.contract import INTENDED_USE
from pipeline.evidence import SMALL_SUBGROUP_EVENTS, SMALL_SUBGROUP_N, Evidence
from pipeline.report import sections as s
from pipeline.report.document import BANNER, Block, Section, ci, rounded, prose, to_html
from pipeline.report.figures import CAPTIONS, save_plots

REPORT_FILE = "validation_report.html"
# The figures other modules draw (pipeline.report.plots) that the report names, when they are all there is.
NAMED_OTHER_FIGURES = {"roc.png", "shap_summary.png"}
INSTABILITY_PNG = "instability.png"  # drawn by pipeline.train.instability
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


def _b64(path: Path) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_validation_report(
    evidence: Evidence,
    plots_dir: Path,
    out_path: Path,
    title: str | None = None,
    instability: Mapping[str, Any] | None = None,
    transport: Mapping[str, Any] | None = None,
) -> Path:
    """Write ONE self-contained HTML validation report to out_path (usually
    `<dir>/validation_report.html`) and the evidence's PNG figures to plots_dir.

    Figures are embedded as base64 data URIs; any other PNG already in plots_dir (e.g. the ROC and
    SHAP plots of `pipeline.report.plots`) is embedded under "Other figures". No script, no external
    resource. Returns out_path. `instability`: the model's instability summary (pipeline.train.instability),
    shown with `<plots_dir>/instability.png` when given. `transport`: the IECV's summary
    (`pipeline.report.forest_plot.transport_summary`), shown with its forest plots when given.
    """
    plots_dir = Path(plots_dir)
    figures = save_plots(evidence, plots_dir)
    ours = {p.name for p in figures.values()}
    unstable_png = plots_dir / INSTABILITY_PNG
    ours |= {INSTABILITY_PNG} if instability else set()
    others = sorted(p for p in plots_dir.glob("*.png") if p.name not in ours)
    images = {str(p): _b64(p) for p in list(figures.values()) + others
              + ([unstable_png] if instability and unstable_png.exists() else [])}
    images.update({str(p): _b64(Path(p)) for p in (transport or {}).get("plots", {}).values()})
    ev = evidence
    text = prose("validation_report")
    meta_rows = [[k.replace("_", " "), str(v)] for k, v in ev.meta.items()]
    meta_rows.insert(0, ["outcome", s.outcome_text(ev.outcome)])
    sections: list[Section] = [
        ("Intended use", [("p", INTENDED_USE), ("table", ["item", "value"], meta_rows)]),
        ("Validation design", s.validation_blocks(ev)),
        ("Summary", [("ul", s.headline(ev))] + [("note", n) for n in ev.notes]),
        ("Discrimination", [s.discrimination_table(ev), s.comparison_table(ev), ("p", text.discrimination())]),
        ("Calibration", [s.calibration_table(ev), ("img", "calibration plot", str(figures["calibration"])),
                         ("p", text.calibration())]),
        ("Clinical utility: decision curve", [("img", "decision curve", str(figures["decision_curve"])),
                                              s.net_benefit_table(ev), ("p", text.net_benefit())]),
        ("Risk-group thresholds (chosen on development data)", [s.thresholds_table(ev), s.risk_group_table(ev)]),
        ("Subgroups", [("p", text.small_subgroups(SMALL_SUBGROUP_N, SMALL_SUBGROUP_EVENTS)),
                       s.subgroup_table(ev), ("img", "subgroup forest plot", str(figures["subgroups"]))]),
        ("Sample size and events per parameter (development data)", s.sample_size_blocks(ev)),
        ("Learning curve (synthetic data)", s.learning_curve_blocks(ev, figures.get("learning_curve"))),
        ("Directions of effect", s.direction_blocks(ev)),
    ]
    if instability:
        picture: list[Block] = [("img", "instability plot", str(unstable_png))] if unstable_png.exists() else []
        sections.append(("Prediction instability", s.instability_blocks(instability) + picture))
    if transport:
        sections.append(("Transport to a new centre (internal-external cross-validation)",
                         s.transport_blocks(transport)))
    if ev.development is not None:
        dv = ev.development
        sections.append(("Development data (out-of-fold predictions)", [("table", ["quantity", "value"], [
            ["AUROC (95% CI)", ci(dv, "auroc")], ["AUPRC (95% CI)", ci(dv, "auprc")],
            ["ICI", rounded("ici", dv.get("ici"))], ["Brier", rounded("brier", dv.get("brier"))],
        ]), ("p", text.development())]))
    if others:
        blocks: list[Block] = []
        for p in others:
            blocks.append(("img", p.stem.replace("_", " "), str(p)))
            if p.name in CAPTIONS:
                blocks.append(("p", CAPTIONS[p.name]))
        named = NAMED_OTHER_FIGURES >= {p.name for p in others}
        sections.append(("ROC curves and SHAP summary" if named else "Other figures", blocks))
    sections.append(("References", [("ul", list(REFERENCES))]))
    doc = to_html(title or f"Validation report: {s.outcome_text(ev.outcome)}", sections, BANNER, images)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(doc, encoding="utf-8")
    return out_path
