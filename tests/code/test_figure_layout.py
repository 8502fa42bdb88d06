"""No text on a figure overlaps another: the waterfall, the evidence figures and the instability plot,
laid out as they are saved (a layout assertion on the drawn text boxes, in pixels)."""

from __future__ import annotations

import math
from itertools import combinations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
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
