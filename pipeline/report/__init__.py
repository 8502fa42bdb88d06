"""Figures and documents from an `Evidence`: PNG plots, one self-contained HTML validation report
(`validation_report.html`) and a model card (Markdown and HTML, Mitchell et al. 2019).

Pure rendering: no MLflow, no computation of metrics (that is `pipeline.evidence`). Every file goes
into a directory the caller gives; the HTML embeds its images as data URIs, carries no script and
no external resource, so it opens as-is from the MLflow UI's artifact view or from disk.

    document           the one renderer: sections of blocks -> Markdown / HTML (Jinja2 templates)
    figures            the evidence's PNG figures
    sections           the tables and blocks both documents show
    validation_report  render_validation_report
    model_card         render_model_card, write_model_card
Templates and prose: pipeline/report/templates/.
"""

from core import style
from pipeline.report.document import BANNER
from pipeline.report.figures import (
    CAPTIONS,
    PLOT_FILES,
    plot_calibration,
    plot_decision_curve,
    plot_learning_curve,
    plot_subgroups,
    save_plots,
)
from pipeline.report.model_card import (
    MODEL_CARD_HTML,
    MODEL_CARD_MD,
    MODEL_CARD_SECTIONS,
    render_model_card,
    write_model_card,
)
from pipeline.report.validation_report import REFERENCES, REPORT_FILE, render_validation_report

# One name per series, in every figure and table (core.style).
DISPLAY = style.NAMES

__all__ = [
    "BANNER", "CAPTIONS", "DISPLAY", "MODEL_CARD_HTML", "MODEL_CARD_MD", "MODEL_CARD_SECTIONS", "PLOT_FILES",
    "REFERENCES", "REPORT_FILE", "plot_calibration", "plot_decision_curve", "plot_learning_curve",
    "plot_subgroups", "render_model_card", "render_validation_report", "save_plots", "write_model_card",
]
