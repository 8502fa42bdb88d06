"""`icans-risk evaluate --summary` at two centres with the served model, pooled by `icans-risk meta`."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture
def cli_env(trained, monkeypatch):
    settings, _ = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setenv("ICANS_ARTIFACT_ROOT", settings.artifact_root)
    return trained


def test_two_centres_summaries_pool_like_the_served_model_on_the_pooled_file(cli_env, tmp_path):
    from click.testing import CliRunner

    from pipeline.evidence.centre_performance import centre_row
    from cli.main import main
    from pipeline.data.synthetic_centres import CentreSpec, generate_centre
    from core.features import encode_frame
    from pipeline.federated import MIN_CELL
    from pipeline.stats.meta_analysis import pool_measures

    settings, result = cli_env
    frames = {"NORTH": generate_centre(CentreSpec("NORTH", 300), seed=21),
              "SOUTH": generate_centre(CentreSpec("SOUTH", 300, logit_shift=0.6), seed=22).drop(columns="centre")}
    paths = []
    for code, df in frames.items():
        data, out = tmp_path / f"{code}.csv", tmp_path / f"{code}.json"
        df.to_csv(data, index=False)
        args = ["evaluate", "--data", str(data), "--summary", str(out)] + ([] if "centre" in df else ["--centre", code])
        run = CliRunner().invoke(main, args)
        assert run.exit_code == 0, run.output
        assert "no patient rows" in run.output
        again = CliRunner().invoke(main, args)
        assert again.exit_code == 2 and "exists already" in again.output  # nothing overwritten
        paths.append(out)
        text = out.read_text()
        doc = json.loads(text)
        assert doc["model"]["version"] == str(result.version)
        assert f"{code}-0" not in text and "patient_id" not in text
        for b in doc["centres"][0]["calibration_bins"]:
            assert b["n"] >= MIN_CELL and (b["events"] == 0 or b["events"] >= MIN_CELL)

    pooled = CliRunner().invoke(main, ["meta", *map(str, paths), "--version", str(result.version)])
    assert pooled.exit_code == 0, pooled.output

    # the same figures from the served model on the pooled file, centre by centre
    import mlflow
    from mlflow import MlflowClient

    from models.registry import load_bundle, resolve

    mlflow.set_tracking_uri(settings.tracking_uri)
    bundle = load_bundle(resolve(MlflowClient(), settings.resolved_model_uri))
    thresholds = {"low": float(bundle.low_threshold), "high": float(bundle.high_threshold)}
    rows = []
    for df in frames.values():
        rows.append(centre_row(df["severe_icans"].astype(int).to_numpy(),
                               bundle.predict_proba(encode_frame(df)), thresholds))
    direct = pool_measures(rows)
    run_id = pooled.output.split("meta-analysis run ", 1)[1].split(":", 1)[0]
    logged = MlflowClient().get_run(run_id).data.metrics
    for m, p in direct.items():
        assert logged[f"meta_{m}"] == pytest.approx(p.estimate, abs=1e-9)
        assert logged[f"meta_{m}_ci_low"] == pytest.approx(p.ci_low, abs=1e-9)
    assert np.isfinite(logged["meta_auroc"])
