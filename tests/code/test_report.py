"""The validation report and the model card (pipeline.report): self-contained, escaped, complete."""

from __future__ import annotations

import re

import pytest

from pipeline import evidence as ev
from pipeline import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def rendered(evidence, tmp_path_factory):
    plots = tmp_path_factory.mktemp("plots")
    (plots / "roc.png").write_bytes(PNG_MAGIC + b"not really a png")  # another module's figure
    out = report.render_validation_report(evidence, plots, plots.parent / "validation_report.html")
    return plots, out, out.read_text(encoding="utf-8")


def test_plots_are_png_files(rendered):
    plots, _, _ = rendered
    for name in report.PLOT_FILES.values():
        assert (plots / name).read_bytes().startswith(PNG_MAGIC), name


def test_report_is_one_self_contained_file(rendered):
    _, out, page = rendered
    assert out.name == report.REPORT_FILE
    assert report.BANNER in page
    assert "not a medical device" in page.lower() and "no treatment advice" in page.lower()
    # four figures of the evidence + the extra PNG found in the plots directory
    assert page.count('src="data:image/png;base64,') == len(report.PLOT_FILES) + 1
    assert "<script" not in page.lower()
    assert "<link" not in page.lower()
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', page, flags=re.I)
    assert "@import" not in page


def test_report_holds_the_evidence(rendered, evidence):
    _, _, page = rendered
    d = evidence.discrimination[ev.MODEL]
    assert f"{d['auroc']:.3f} ({d['auroc_ci_low']:.3f} to {d['auroc_ci_high']:.3f})" in page
    for heading in ("Discrimination", "Calibration", "decision curve", "Subgroups", "Sample size", "Learning curve"):
        assert heading in page
    assert "SMALL" in page  # obe-cel / other have few patients at n = 400
    assert "obecabtagene_autoleucel" in page


def test_report_escapes_html(rendered):
    _, _, page = rendered
    assert "<b>bold</b>" not in page
    assert "&lt;b&gt;bold&lt;/b&gt;" in page


def test_model_card_has_every_section(evidence):
    markdown, page = report.render_model_card(
        evidence,
        {"name": "icans-risk", "version": "7", "run_id": "0123abcd", "trained_at": "2025-01-01T00:00:00+00:00",
         "kind": "xgboost", "params": {"max_depth": 2}, "contract_version": "1"},
        {"synthetic": True, "seed": 21, "sha256": "ab" * 32, "n_rows": 1000, "n_dev": 600, "n_test": 400},
    )
    for section in report.MODEL_CARD_SECTIONS:
        assert f"\n## {section}\n" in markdown, section
        assert f"<h2>{section}</h2>" in page, section
    assert report.BANNER in markdown and report.BANNER in page
    for text in ("0123abcd", "ab" * 32, "B-ALL", "CD19", "CD22", "baseline", "latent random effect", "SYNTHETIC"):
        assert text in markdown, text
    assert "<script" not in page.lower()


def test_model_card_escapes_and_shows_real_data_provenance(evidence):
    markdown, page = report.render_model_card(
        evidence,
        {"name": "<script>alert(1)</script>", "version": "1"},
        {"synthetic": False, "file": "centre|b.csv", "sha256": "f" * 64},
    )
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;" in page
    assert "f" * 64 in markdown and "centre\\|b.csv" in markdown  # a pipe cannot break the table
    assert "SYNTHETIC DATA" not in markdown
    assert "not recorded" in markdown  # missing entries are said, not invented


def test_write_model_card(evidence, tmp_path):
    md_path, html_path = report.write_model_card(evidence, {"name": "icans-risk", "version": "1"}, {"synthetic": True}, tmp_path)
    assert md_path.name == report.MODEL_CARD_MD and html_path.name == report.MODEL_CARD_HTML
    assert md_path.read_text().startswith("# Model card")
    assert html_path.read_text().startswith("<!DOCTYPE html>")


def _instability(mape: float, warning: bool) -> dict:
    return {"models": 200, "n_dev": 150, "mape": mape, "mape_p90": 2 * mape, "max_ape": 0.4, "mean_risk": 0.16,
            "median_interval_width": 0.21, "group_change": 0.34, "warning": warning,
            "by_group": {"low": {"patients": 60, "mape": 0.03, "group_change": 0.2, "median_width": 0.1},
                         "high": {"patients": 30, "mape": 0.09, "group_change": 0.5, "median_width": 0.35}}}


@pytest.mark.parametrize("warning", [True, False])
def test_model_card_shows_instability_and_warns_only_when_unstable(evidence, tmp_path, warning):
    from pipeline.train.instability import MAPE_WARNING_RATIO

    mape = 0.16 * MAPE_WARNING_RATIO * (1.5 if warning else 0.5)
    info = _instability(mape, warning)
    markdown, page = report.render_model_card(evidence, {"name": "icans-risk", "instability": info}, {"n_dev": 150})
    assert "Prediction instability" in markdown and "Riley" in markdown
    assert f"{mape:.3f}" in markdown and "not a range for the patient's outcome" in markdown
    caveats = markdown.split("## Caveats and recommendations", 1)[1]
    assert ("Individual risks are unstable" in caveats) is warning
    assert "| high | 30 |" in markdown  # the figures by risk group
    out = report.render_validation_report(evidence, tmp_path, tmp_path / "r.html", instability=info)
    assert "Prediction instability" in out.read_text()


def test_model_card_without_instability_says_nothing_of_it(evidence):
    markdown, _ = report.render_model_card(evidence, {"name": "icans-risk"}, {})
    assert "Prediction instability" not in markdown
