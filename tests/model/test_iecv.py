"""Internal-external cross-validation by centre, the federated summaries and their pooling."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from pipeline.data.synthetic_centres import CentreSpec, generate_centre, generate_consortium
from pipeline.data.synthetic_draws import PRODUCT_MIX
from tests.helpers import make_settings

# five centres of 150-260 patients, one with a doubled prevalence, and one far too small to estimate
SPECS = (
    CentreSpec("A", 220), CentreSpec("B", 200), CentreSpec("C", 260, logit_shift=-0.2),
    CentreSpec("DOUBLE", 200, prevalence_factor=2.0), CentreSpec("E", 180), CentreSpec("TINY", 25),
)


@pytest.fixture(scope="module")
def consortium(tmp_path_factory) -> tuple[pd.DataFrame, object]:
    root = tmp_path_factory.mktemp("iecv")
    df = generate_consortium(SPECS, seed=11)
    settings = make_settings(root, n_iter=1, search_cv_folds=2)
    return df, settings


@pytest.fixture(scope="module")
def result(consortium):
    from pipeline.train.iecv import run_iecv

    df, settings = consortium
    return run_iecv(df, "severe_icans", settings, {"low": 0.08, "high": 0.3}, n_jobs=1)


def test_generator_doubles_the_prevalence_and_keeps_the_mix():
    base = generate_centre(CentreSpec("X", 400), seed=5)
    double = generate_centre(CentreSpec("X", 400, prevalence_factor=2.0), seed=5)
    assert double["p_true"].mean() == pytest.approx(2 * base["p_true"].mean(), rel=1e-9)
    assert (double["severe_icans"] == (double["icans_max_grade"] >= 3)).all()
    paed = generate_centre(CentreSpec("P", 400, {k: (0.9 if k == "tisagenlecleucel" else 0.1 / 3)
                                                  for k in PRODUCT_MIX}), seed=5)
    assert (paed["product"] == "tisagenlecleucel").mean() > 0.8 > (base["product"] == "tisagenlecleucel").mean()
    again = generate_consortium(SPECS, seed=11)
    assert generate_consortium(SPECS, seed=11).equals(again)
    assert list(again["centre"].unique()) == [s.code for s in SPECS]


def test_centre_is_read_but_never_a_feature(tmp_path, consortium):
    from core.features import encode_frame
    from pipeline.data.read import read_cohort

    df, _ = consortium
    path = tmp_path / "c.csv"
    df.to_csv(path, index=False)
    cohort = read_cohort(path, "severe_icans")
    assert cohort.data["centre"].tolist() == df["centre"].tolist()
    np.testing.assert_array_equal(encode_frame(cohort.data), encode_frame(cohort.data.drop(columns="centre")))


def test_a_bad_centre_code_is_named_without_its_value(tmp_path, consortium):
    from pipeline.data.read import CohortError, read_cohort

    df, _ = consortium
    bad = df.head(50).copy()
    bad.loc[3, "centre"] = "Hôpital Saint-Louis, Paris"
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(CohortError) as exc:
        read_cohort(path, "severe_icans")
    text = str(exc.value)
    assert "centre" in text and "short code" in text and "Louis" not in text


def test_iecv_reports_every_centre_and_pools_the_estimable(result):
    rows = {r["centre"]: r for r in result.rows}
    assert set(rows) == {s.code for s in SPECS}
    assert rows["TINY"]["estimable"] is False and "fewer than 10" in rows["TINY"]["reason"]
    for code in ("A", "B", "C", "DOUBLE", "E"):
        r = rows[code]
        assert r["estimable"] and 0.5 < r["auroc"] < 1 and r["auroc_se"] > 0 and r["oe_se"] > 0
        assert np.isfinite(r["calibration_slope_se"]) and np.isfinite(r["net_benefit_low_se"])
    assert result.pooled["auroc"].k == 5
    m = result.metrics()
    for key in ("iecv_auroc", "iecv_auroc_pi_low", "iecv_auroc_pi_high", "iecv_oe_tau2", "iecv_calibration_slope_i2",
                "centre_A_auroc", "centre_DOUBLE_oe", "centre_TINY_n"):
        assert key in m, key
    assert "centre_TINY_auroc" not in m
    p = result.pooled["auroc"]
    assert p.pi_low <= p.ci_low < p.estimate < p.ci_high <= p.pi_high
    assert not np.isnan(result.predictions).any()
    assert "Internal-external cross-validation over 6 centres" in result.transport_sentence()


def test_a_centre_with_doubled_prevalence_shows_oe_about_two(result):
    rows = {r["centre"]: r for r in result.rows}
    assert 1.6 < rows["DOUBLE"]["oe"] < 2.6
    others = [rows[c]["oe"] for c in ("A", "B", "E")]
    assert all(0.6 < oe < 1.45 for oe in others), others
    # the between-centre variance of O/E is what the doubled centre adds
    assert result.pooled["oe"].tau2 > 0.02


def test_iecv_refuses_too_few_centres_with_events(consortium):
    from pipeline.train.iecv import IECVRefused, run_iecv

    df, settings = consortium
    two = df[df["centre"].isin(["A", "B", "TINY"])]
    with pytest.raises(IECVRefused, match="at least 3 centres") as exc:
        run_iecv(two, "severe_icans", settings)
    assert "TINY" not in str(exc.value)
    none = df[df["centre"].isin(["A", "B"])].copy()
    none.loc[none["centre"] == "B", "severe_icans"] = False
    with pytest.raises(IECVRefused, match=r"0 of 2 centres|1 of 2 centres") as exc:
        run_iecv(none, "severe_icans", settings)
    assert "1 with no events at all" in str(exc.value)
    with pytest.raises(IECVRefused, match="'centre' column"):
        run_iecv(df.drop(columns="centre"), "severe_icans", settings)


def _summaries(result, df, tmp_path, codes, version="3"):
    from pipeline.federated import summarise, write_summary

    paths = []
    y = df["severe_icans"].astype(int).to_numpy()
    for code in codes:
        mask = (df["centre"] == code).to_numpy()
        doc = summarise(df[mask], y[mask], result.predictions[mask], {"name": "icans-risk", "version": version,
                        "run_id": "r"}, "severe_icans", {"low": 0.08, "high": 0.3})
        paths.append(write_summary(doc, tmp_path / f"{code}.json"))
    return paths


def test_federated_summaries_pool_to_the_iecv_of_those_centres(result, consortium, tmp_path):
    from pipeline.federated import meta
    from pipeline.stats.meta_analysis import pool_measures

    df, settings = consortium
    codes = ["A", "DOUBLE"]
    out = meta(_summaries(result, df, tmp_path, codes), settings, log=False)
    direct = pool_measures([r for r in result.rows if r["centre"] in codes],
                           ("auroc", "calibration_slope", "calibration_intercept", "oe", "net_benefit_high",
                            "net_benefit_low"))
    assert set(out["pooled"]) == set(direct)
    for m, p in direct.items():
        q = out["pooled"][m]
        for field in ("estimate", "ci_low", "ci_high", "tau2", "i2", "se"):
            assert getattr(q, field) == pytest.approx(getattr(p, field), abs=1e-9, nan_ok=True), (m, field)


def test_the_summary_has_no_row_level_data(result, consortium, tmp_path):
    from core.contract import FEATURE_NAMES
    from pipeline.federated import MIN_CELL

    df, _ = consortium
    (path,) = _summaries(result, df, tmp_path, ["B"])
    text = path.read_text()
    doc = json.loads(text)
    assert "patient_id" not in text and "B-0" not in text  # no identifier
    assert not any(name in text for name in FEATURE_NAMES)
    (entry,) = doc["centres"]
    numbers = [v for v in entry.values() if isinstance(v, (int, float))]
    assert len(numbers) < 30 and len(entry["calibration_bins"]) <= 6  # aggregates, not one per patient
    for b in entry["calibration_bins"]:
        assert b["n"] >= MIN_CELL
        assert b["events"] == 0 or b["events"] >= MIN_CELL
        assert b["n"] - b["events"] == 0 or b["n"] - b["events"] >= MIN_CELL
    assert sum(b["n"] for b in entry["calibration_bins"]) == entry["n"]
    tiny = (df["centre"] == "TINY").to_numpy()
    from pipeline.federated import centre_entry

    small = centre_entry("TINY", df["severe_icans"].to_numpy()[tiny], result.predictions[tiny], {})
    assert set(small) == {"centre", "estimable", "reason"}


def test_meta_refuses_another_model_version(result, consortium, tmp_path):
    from pipeline.federated import SummaryError, read_summaries

    df, _ = consortium
    a = _summaries(result, df, tmp_path, ["A"], version="3")
    e = _summaries(result, df, tmp_path, ["E"], version="4")
    with pytest.raises(SummaryError, match="another model version"):
        read_summaries(a + e)
    with pytest.raises(SummaryError, match="another model version"):
        read_summaries(a, version="5")
    with pytest.raises(SummaryError, match="more than one summary"):
        read_summaries(a + a)


def test_meta_cli_pools_and_logs(result, consortium, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cli.main import main

    df, settings = consortium
    paths = _summaries(result, df, tmp_path, ["A", "B", "E"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("ICANS_ARTIFACT_ROOT", (tmp_path / "art").as_uri())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = CliRunner().invoke(main, ["meta", *map(str, paths)])
    assert out.exit_code == 0, out.output
    assert "auroc:" in out.output and "prediction interval" in out.output
    other = tmp_path / "v9"
    other.mkdir()
    bad = CliRunner().invoke(main, ["meta", str(paths[0]), str(_summaries(result, df, other, ["DOUBLE"], "9")[0])])
    assert bad.exit_code == 2 and "another model version" in bad.output and "Traceback" not in bad.output


def test_iecv_command_logs_a_run_and_refuses_a_file_without_centres(consortium, tmp_path, monkeypatch):
    import mlflow
    from click.testing import CliRunner
    from mlflow import MlflowClient

    from cli.main import main

    df, _ = consortium
    data = tmp_path / "consortium.csv"
    df[df["centre"] != "TINY"].to_csv(data, index=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for key, value in {"MLFLOW_TRACKING_URI": uri, "ICANS_ARTIFACT_ROOT": (tmp_path / "art").as_uri(),
                       "ICANS_RESAMPLE_N_ITER": "1", "ICANS_RESAMPLE_CV_FOLDS": "2", "ICANS_SEED": "7"}.items():
        monkeypatch.setenv(key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = CliRunner().invoke(main, ["iecv", "--data", str(data)])
    assert out.exit_code == 0, out.output
    run_id = out.output.split("IECV run ", 1)[1].split(":", 1)[0]
    mlflow.set_tracking_uri(uri)
    run = MlflowClient().get_run(run_id)
    assert run.data.metrics["iecv_centres"] == 5 and "iecv_auroc_pi_low" in run.data.metrics
    assert "Internal-external" in run.data.tags["mlflow.note.content"]
    plain = tmp_path / "plain.csv"
    df.drop(columns="centre").to_csv(plain, index=False)
    refused = CliRunner().invoke(main, ["iecv", "--data", str(plain)])
    assert refused.exit_code == 2 and "'centre' column" in refused.output and "Traceback" not in refused.output
