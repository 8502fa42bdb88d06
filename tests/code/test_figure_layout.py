"""No text on a figure overlaps another: the waterfall, the evidence figures and the instability plot,
laid out as they are saved (a layout assertion on the drawn text boxes, in pixels)."""

from __future__ import annotations

import math
from itertools import combinations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.text import Text

from pipeline.report import plots
from pipeline import report
from core import waterfall
from core.contract import FEATURES, example_request

TOLERANCE_PX = 1.0  # boxes that only touch (anti-aliasing) are not an overlap


def overlapping(fig: matplotlib.figure.Figure) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts whose drawn boxes overlap by more than TOLERANCE_PX each way."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text().strip() or t.axes is not None and not t.get_in_layout():
            continue
        bb = t.get_window_extent(renderer)
        if bb.width > 0 and bb.height > 0:
            boxes.append((t.get_text()[:40], bb))
    out = []
    for (a, p), (b, q) in combinations(boxes, 2):
        dx = min(p.x1, q.x1) - max(p.x0, q.x0)
        dy = min(p.y1, q.y1) - max(p.y0, q.y0)
        if dx > TOLERANCE_PX and dy > TOLERANCE_PX:
            out.append((a, b))
    return out


def _answer(seed: int, missing_labs: bool) -> dict:
    rng = np.random.default_rng(seed)
    record = example_request()
    contributions = []
    for f in FEATURES:
        value = None if (missing_labs and not f.required) else record.get(f.name)
        contributions.append({"feature": f.name, "value": value, "unit": f.unit, "log_odds": float(rng.normal(0, 0.4))})
    contributions.sort(key=lambda c: -abs(c["log_odds"]))
    base = -2.0
    total = base + sum(c["log_odds"] for c in contributions)
    return {"risk": 1 / (1 + math.exp(-total)), "risk_group": "intermediate", "log_odds": total,
            "explanation": {"base_log_odds": base, "contributions": contributions},
            "model": {"name": "icans-risk", "version": "12"}}


def test_the_overlap_check_finds_an_overlap():
    fig, ax = plt.subplots()
    ax.text(0.5, 0.5, "one label here")
    ax.text(0.5, 0.5, "another label")
    assert overlapping(fig)
    plt.close(fig)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("missing_labs", [False, True])
def test_the_waterfall_has_no_overlapping_text(seed, missing_labs):
    fig = waterfall.figure(_answer(seed, missing_labs), thresholds=(0.05, 0.2))
    assert overlapping(fig) == []


@pytest.fixture()
def laid_out(monkeypatch):
    """The figures as plots.save lays them out (caption included), kept open instead of closed."""
    kept: list = []
    close = plt.close  # the real one: the teardown runs while the patch is still on
    monkeypatch.setattr(plots.plt, "close", lambda fig=None: kept.append(fig))
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, *a, **k: None)
    yield kept
    for fig in list(kept):
        if fig is not None:
            close(fig)


def test_the_instability_plot_has_no_overlapping_text(monkeypatch, tmp_path):
    from pipeline.train.instability import Instability, instability_plot

    kept: list = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: kept.append(fig))
    rng = np.random.default_rng(0)
    final = rng.beta(2, 10, 300)
    risks = np.clip(final[:, None] + rng.normal(0, 0.03, (300, 20)), 0, 1)
    inst = Instability(ensemble=None, summary={"mape": 0.04, "group_change": 0.2}, risks=risks,  # type: ignore[arg-type]
                       final_risk=final)
    instability_plot(inst, 0.05, 0.2, tmp_path / "instability.png")
    (fig,) = kept
    assert overlapping(fig) == []
    close(fig)


def test_figure_titles_name_the_validation_design_used(evidence, laid_out, tmp_path):  # noqa: F811
    from dataclasses import replace

    for design, words in (("repeated_cv", "out-of-fold risks (repeated CV)"), ("split", "held-out set")):
        ev = replace(evidence, validation={"design": design})
        report.plot_decision_curve(ev, tmp_path / "d.png")
        report.plot_subgroups(ev, tmp_path / "s.png")
        for fig in laid_out[-2:]:
            title = fig.axes[0].get_title()
            assert words in title, title
            assert ("held-out" in title) == (design == "split"), title


@pytest.fixture(scope="module")
def small_evidence():
    """A small fixed Evidence (300 + 200 synthetic patients, 20 bootstrap resamples): every table
    and curve the figures draw, built in about a second, no training."""
    from scipy.special import expit, logit

    from pipeline import evidence as ev
    from pipeline.data.synthetic import generate_cohort

    dev, test = generate_cohort(300, 31), generate_cohort(200, 32)
    rng = np.random.default_rng(1)
    p_test = expit(logit(test["p_true"].to_numpy()) + rng.normal(0, 0.5, len(test)))
    p_dev = expit(logit(dev["p_true"].to_numpy()) + rng.normal(0, 0.5, len(dev)))
    learning = pd.DataFrame(
        [{"size": s, "events_train": s // 6, "model": m, "auroc": a + s / 1e4, "seconds": 0.1}
         for s in (100, 200, 300) for m, a in (("xgboost", 0.70), ("logistic", 0.72), ("m_easix", 0.67),
                                                (ev.ORACLE, 0.82))])
    return ev.build_evidence(
        dev["severe_icans"].astype(int).to_numpy(), p_dev, dev,
        test["severe_icans"].astype(int).to_numpy(), p_test, test,
        {"low": 0.08, "high": 0.3}, 24, n_boot=20, curve_boot=10, learning_curve=learning,
        other_predictions={"logistic": np.clip(p_test + rng.normal(0, 0.03, len(test)), 0.001, 0.999)},
    )


@pytest.mark.parametrize("design", ["repeated_cv", "split"])
def test_the_evidence_figures_have_no_overlapping_text(small_evidence, laid_out, tmp_path, design):
    """Every evidence PNG (calibration, decision curve, subgroups, learning curve, ROC) as saved,
    caption included: no title, axis label, tick label, legend entry or caption overlaps another."""
    from dataclasses import replace

    ev = replace(small_evidence, validation={"design": design})
    saved = report.save_plots(ev, tmp_path)
    scores = {"model": ev.predictions["model"], "logistic": ev.predictions["logistic"]}
    plots.roc_plot(ev.y_test, scores, tmp_path / "roc.png", "ROC, out-of-fold risks (severe_icans)")
    frame = _frame(len(ev.y_test))
    contributions = np.random.default_rng(2).normal(0, 0.3, (len(frame), len(FEATURES)))
    plots.shap_summary_plot(contributions, np.full(len(frame), -2.0), frame, [f.name for f in FEATURES],
                            tmp_path / "shap_summary.png")
    assert set(saved) == {"calibration", "decision_curve", "subgroups", "learning_curve"}
    assert len(laid_out) == len(saved) + 2
    for fig, name in zip(laid_out, [*saved, "roc", "shap_summary"]):
        assert sum(bool(t.get_text().strip()) for t in fig.findobj(Text)) > 10, name  # a real figure
        assert overlapping(fig) == [], name


def _frame(n: int) -> pd.DataFrame:
    """n synthetic patients' contract columns (the SHAP summary colours its dots by them)."""
    from pipeline.data.synthetic import generate_cohort

    return generate_cohort(n, 33)[[f.name for f in FEATURES]]
