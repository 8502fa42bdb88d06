"""`make train` on a synthetic 5-centre file validates by centre (IECV) beside its design."""

from __future__ import annotations

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
    # the served model never sees the centre
    assert "centre" not in {c for c in MlflowClient().get_run(result.run_id).data.params.values()}
