"""`make train` on a synthetic 5-centre file validates by centre (IECV) beside its design."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_settings


@pytest.mark.slow
def test_a_five_centre_file_trains_with_iecv(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from pipeline.data.synthetic_centres import CentreSpec, generate_consortium
    from pipeline.train.run import train

    specs = (CentreSpec("A", 160), CentreSpec("B", 160), CentreSpec("C", 160, logit_shift=-0.3),
             CentreSpec("D", 160, prevalence_factor=1.6), CentreSpec("E", 160))
    path = tmp_path / "consortium.csv"
    generate_consortium(specs, seed=5).to_csv(path, index=False)
    settings = make_settings(tmp_path, validation="repeated_cv", cv_repeats=1, cv_folds=3, n_iter=1,
                             search_cv_folds=2, instability_models=0)
    result = train(settings, data=path)
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = MlflowClient().get_run(result.run_id)
    m = run.data.metrics
    for code in "ABCDE":
        assert 0.4 < m[f"centre_{code}_auroc"] < 1 and m[f"centre_{code}_auroc_se"] > 0
        assert f"centre_{code}_oe" in m and f"centre_{code}_calibration_slope" in m
    for key in ("iecv_auroc", "iecv_auroc_ci_low", "iecv_auroc_pi_low", "iecv_auroc_pi_high", "iecv_oe_tau2",
                "iecv_calibration_slope_pi_low", "iecv_net_benefit_high"):
        assert key in m, key
    assert m["iecv_centres"] == 5
    assert run.data.tags["validation_iecv"] == "true"
    assert "Internal-external cross-validation over 5 centres" in run.data.tags["mlflow.note.content"]
    files = {f.path for f in MlflowClient().list_artifacts(result.run_id, "iecv")}
    assert {"iecv/forest_auroc.png", "iecv/forest_oe.png", "iecv/iecv_centres.csv"} <= files
    # the gate judged the pooled estimates too, and the version says how the model transports
    assert run.data.tags["iecv_heterogeneity_too_large"] in ("true", "false")
    version = MlflowClient().get_model_version(result.model_name, result.version)
    assert "Internal-external cross-validation over 5 centres" in version.description
    assert "95% PI" in version.tags["iecv_calibration_slope"] and "iecv_heterogeneity_too_large" in version.tags
    # the validation report and the model card show the four forest plots (embedded; the card's Markdown links them)
    out = Path(MlflowClient().download_artifacts(result.run_id, "", str(tmp_path / "artifacts")))
    report = (out / "validation_report.html").read_text()
    card_html = (out / "evidence" / "model_card.html").read_text()
    card_md = (out / "evidence" / "model_card.md").read_text()
    for measure in ("AUROC", "calibration slope", "calibration-in-the-large", "observed / expected events"):
        alt = f'alt="forest plot: {measure} by centre" src="data:image/png;base64,'
        assert alt in report and alt in card_html, measure
    assert "Transport to a new centre" in report and "95% prediction interval (new centre)" in card_html
    for name in ("forest_auroc.png", "forest_calibration_slope.png", "forest_calibration_intercept.png", "forest_oe.png"):
        assert f"]({name})" in card_md and (out / "evidence" / name).is_file(), name
    # the served model never sees the centre
    assert "centre" not in {c for c in MlflowClient().get_run(result.run_id).data.params.values()}
