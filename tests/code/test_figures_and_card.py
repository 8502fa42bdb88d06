"""One visual language for the figures (core.style) and a model card that says what it means."""

from __future__ import annotations

import html
import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.colors import to_hex

from pipeline import evidence as ev
from pipeline.report import plots
from pipeline import report
from core import style
from core.contract import FEATURES
from pipeline.report.sections import headline


@pytest.fixture()
def captured(monkeypatch):
    """The figures the plotting functions draw, kept open instead of saved."""
    figures: dict[str, plt.Figure] = {}

    def keep(fig, path, caption=None, **layout):
        figures[path.name] = fig
        return path

    monkeypatch.setattr(plots, "save", keep)  # every figure is saved by pipeline.report.plots.save
    yield figures
    for fig in figures.values():
        plt.close(fig)


def _labelled_lines(fig):
    ax = fig.axes[0]
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_one_name_and_one_colour_per_series_across_figures(evidence, captured, tmp_path):  # noqa: F811
    rng = np.random.default_rng(1)
    y = evidence.y_test
    p = evidence.predictions[ev.MODEL]
    plots.roc_plot(y, {"xgboost (chosen)": p, "logistic": np.clip(p + rng.normal(0, 0.05, len(p)), 0, 1),
                       "easix": rng.random(len(p)), "m_easix": rng.random(len(p)), "oracle (p_true)": p},
                   tmp_path / "roc.png", "ROC")
    report.plot_calibration(evidence, tmp_path / "calibration_curve.png")
    report.plot_decision_curve(evidence, tmp_path / "decision_curve.png")
    report.plot_learning_curve(evidence.learning_curve, tmp_path / "learning_curve.png")
    seen: dict[str, set[str]] = {}
    for fig in captured.values():
        for label, colour in _labelled_lines(fig).items():
            for key, name in style.NAMES.items():
                if label == name or label.startswith(name + " (AUROC") or label.startswith(name + ":"):
                    seen.setdefault(key, set()).add(colour)
        text = " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
        for raw in ("m_easix", "(chosen)", "p_true", "hgb_untuned"):
            assert raw not in text, (raw, text)
    for key, colours in seen.items():
        assert colours == {style.COLOURS[key]}, (key, colours)
    assert {style.MODEL, style.M_EASIX, style.ORACLE, "logistic"} <= set(seen)
    roc_labels = list(_labelled_lines(captured["roc.png"]))
    assert any(label.startswith("oracle: the generator's true risk, synthetic data only (AUROC") for label in roc_labels)
    assert any(label.startswith("model (AUROC") for label in roc_labels)


def test_calibration_axes_contain_every_curve_and_band(evidence, captured, tmp_path):  # noqa: F811
    report.plot_calibration(evidence, tmp_path / "calibration_curve.png")
    ax = captured["calibration_curve.png"].axes[0]
    top_x, top_y = ax.get_xlim()[1], ax.get_ylim()[1]
    for line in ax.get_lines():
        xs, ys = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert np.nanmax(xs) <= top_x + 1e-9 and np.nanmax(ys) <= top_y + 1e-9, line.get_label()
    for coll in ax.collections:  # the bootstrap band and the decile intervals
        for path in coll.get_paths():
            v = path.vertices
            if len(v):
                assert np.nanmax(v[:, 1]) <= top_y + 1e-9
    band = evidence.calibration_curves[ev.MODEL]["smoothed"]["observed_ci_high"]
    assert np.nanmax(band) <= top_y


def test_figures_carry_a_caption(evidence, tmp_path):  # noqa: F811
    figs = report.save_plots(evidence, tmp_path)
    for name, path in figs.items():
        assert path.read_bytes().startswith(b"\x89PNG"), name
    assert set(figs) >= {"calibration", "decision_curve", "subgroups", "learning_curve"}
    assert all(key in report.CAPTIONS for key in figs)


def test_shap_summary_gives_categories_no_colour_scale():
    import pandas as pd

    col = pd.Series(["CD19", "CD22", "CD19"])
    assert plots._colour_values(col, "target_antigen").isna().all()
    assert plots._colour_values(pd.Series([1.0, 2.0]), "ldh_u_l").tolist() == [1.0, 2.0]


def _card(evidence, **info):  # noqa: F811
    return report.render_model_card(
        evidence, {"name": "icans-risk", "version": None, "run_id": "0123abcd", **info},
        {"synthetic": True, "seed": 21, "n_rows": 1000},
    )


def test_card_says_where_the_registered_version_is(evidence):  # noqa: F811
    markdown, page = _card(evidence)
    assert markdown.startswith("# Model card: icans-risk\n")
    assert "<h1>Model card: icans-risk</h1>" in page
    assert f"| registered version | {report.model_card.PENDING_VERSION} |" in markdown
    assert "vthe" not in markdown and "Served as" not in markdown
    numbered, _ = _card(evidence, version="7")
    assert "| registered version | 7 |" in numbered
    # the run's copy, rewritten once the registry has numbered it, names its version
    assert report.model_card.with_version(markdown, "7") == numbered
    assert "not yet registered" not in report.model_card.with_version(page, "7")


def test_card_calls_target_antigen_an_input(evidence):  # noqa: F811
    markdown, _ = _card(evidence)
    assert "target_antigen" in {f.name for f in FEATURES}
    assert not re.search(r"target antigen[^.]*not in the data contract", markdown, flags=re.I)
    assert "Target antigen (CD19, CD22, CD19/CD22) is an input of the data contract" in markdown


def test_card_says_the_sample_size_warning_once_and_shows_no_backticks(evidence):  # noqa: F811
    warning = evidence.sample_size["warning"]
    assert warning  # 600 development patients for 24 parameters: too few
    markdown, page = _card(evidence)
    assert markdown.count(warning) == 1
    assert page.count(html.escape(warning)) == 1
    assert "`" not in page
    assert "<code>make evaluate</code>" in page


def test_report_says_when_a_comparator_beats_the_model_and_shows_no_circular_calibration(evidence, tmp_path):  # noqa: F811
    import copy

    better = copy.deepcopy(evidence)
    model_auroc = better.discrimination[ev.MODEL]["auroc"]
    better.discrimination["logistic"] = {**better.discrimination[ev.MODEL], "auroc": model_auroc + 0.02}
    lines = headline(better)
    assert any(line.startswith("NOTE: logistic regression reaches a higher AUROC than the model") for line in lines)
    beaten_by = [n for n, d in evidence.discrimination.items() if n not in (ev.MODEL, ev.ORACLE) and d["auroc"] > model_auroc]
    assert sum("reaches a higher AUROC" in line for line in headline(evidence)) == len(beaten_by)
    page = report.render_validation_report(better, tmp_path, tmp_path / "r.html").read_text()
    dev_section = page.split("Development data (out-of-fold predictions)")[1].split("<h2>")[0]
    assert "calibration slope</td>" not in dev_section and "by construction" in dev_section
