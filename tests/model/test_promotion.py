"""The champion gate: a worse retrain never silently replaces the served model."""

from __future__ import annotations


import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from pipeline.data.synthetic import generate_cohort
from core.features import encode_frame
from pipeline.stats.metrics import ranking_metrics
from pipeline.train.promote import promote as _promote
from tests.helpers import make_settings


def test_worse_candidate_stays_registered_without_the_alias(trained):
    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    name = result.model_name
    champ = client.get_model_version_by_alias(name, "champion")
    candidate = client.create_model_version(name, source=champ.source, run_id=champ.run_id)
    df = generate_cohort(400, seed=99)
    X, y = encode_frame(df), df["severe_icans"].astype(int).to_numpy()
    seen = {}

    def clearly_worse(bundle):
        seen["champion_auroc"] = ranking_metrics(y, bundle.predict_proba(X))["auroc"]
        return {"champion_auroc": seen["champion_auroc"], "difference": -0.2, "ci_low": -0.3, "ci_high": -0.1}

    def within_noise(bundle):
        return {"champion_auroc": 0.7, "difference": -0.02, "ci_low": -0.08, "ci_high": 0.04}

    try:
        promoted, reason, champ_auroc = _promote(client, settings, name, candidate.version, clearly_worse, 0.5)
        assert not promoted and "clearly worse" in reason
        assert champ_auroc == seen["champion_auroc"] > 0.45  # the champion was really loaded and scored
        assert client.get_model_version_by_alias(name, "champion").version == champ.version
        tags = client.get_model_version(name, candidate.version).tags
        assert tags["promotion"] == "not promoted" and "-0.200" in tags["promotion_reason"]

        # a coin flip's worth of difference does not keep the newer model out
        promoted, reason, _ = _promote(client, settings, name, candidate.version, within_noise, 0.68)
        assert promoted and "not clearly worse" in reason and "-0.080 to +0.040" in reason
        assert client.get_model_version_by_alias(name, "champion").version == candidate.version
    finally:
        client.set_registered_model_alias(name, "champion", champ.version)


def test_training_result_records_the_decision(trained):
    settings, result = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["promoted"] == "true"
    assert run.data.tags["promotion_reason"] == "no champion yet"
    # every number of the foundation issue is in the run
    for key in (
        "test_auroc", "test_auprc", "test_brier", "test_log_loss", "test_calibration_slope",
        "test_calibration_intercept", "test_easix_auroc", "test_m_easix_auroc", "test_oracle_auroc",
        "test_logistic_auroc", "cv_log_loss_xgboost", "cv_log_loss_hist_gradient_boosting",
    ):
        assert np.isfinite(run.data.metrics[key]), key
    assert len(run.data.params["data_sha256"]) == 64
    # what the MLflow UI shows without opening a metric: the description, the chosen candidate, the datasets
    chosen = run.data.tags["chosen_family"]
    assert any(k.startswith("chosen_") for k in run.data.params) and "chosen_cv_log_loss" in run.data.metrics
    assert chosen in run.data.tags["mlflow.note.content"] and "Validation" in run.data.tags["mlflow.note.content"]
    assert {d.dataset.name for d in run.inputs.dataset_inputs}
    version = MlflowClient().get_model_version(result.model_name, result.version)
    assert "AUROC" in version.description and "model_card.html" in version.description
    children = MlflowClient().search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert {c.data.tags["family"] for c in children} == {"xgboost", "hist_gradient_boosting", "logistic"}
    for key in (
        "test_auroc_ci_low", "test_auroc_ci_high", "test_m_easix_auroc_ci_low", "test_auroc_minus_m_easix",
        "test_ici", "test_scaled_brier", "net_benefit_at_10pct", "events_per_parameter",
        "threshold_high_sensitivity", "subgroup_costimulatory_domain_cd28_auroc",
    ):
        assert np.isfinite(run.data.metrics[key]), key
    assert run.data.metrics["test_auroc_ci_low"] < run.data.metrics["test_auroc"] < run.data.metrics["test_auroc_ci_high"]
    client = MlflowClient()
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {
        "plots/roc.png", "plots/shap_summary.png", "plots/decision_curve.png",
        "plots/calibration_curve.png", "plots/subgroup_auroc.png", "plots/learning_curve.png",
    } <= artifacts
    assert "plots/calibration.png" not in artifacts  # one calibration figure: the report's
    assert "validation_report.html" in {a.path for a in client.list_artifacts(result.run_id)}
    assert {"evidence/model_card.md", "evidence/model_card.html", "evidence/evidence.json"} <= {
        a.path for a in client.list_artifacts(result.run_id, "evidence")
    }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_promotion_waits_for_a_concurrent_promotion(trained, tmp_path, backend):
    """While another training holds the promotion lock, a second one cannot move the alias."""
    import threading

    from models.registry import promotion_lock

    settings, result = trained
    uri = settings.tracking_uri if backend == "sqlite" else "postgresql://postgres@127.0.0.1:5432/postgres"
    entered = threading.Event()
    release = threading.Event()
    order: list[str] = []

    def holder():
        with promotion_lock(uri, tmp_path, result.model_name):
            entered.set()
            release.wait(10)
            order.append("first done")

    def second():
        entered.wait(10)
        with promotion_lock(uri, tmp_path, result.model_name):
            order.append("second inside")

    t1, t2 = threading.Thread(target=holder), threading.Thread(target=second)
    t1.start(), t2.start()
    entered.wait(10)
    t2.join(0.5)
    assert t2.is_alive() and order == []  # blocked while the first holds the lock
    release.set()
    t1.join(10), t2.join(10)
    assert order == ["first done", "second inside"]


@pytest.mark.slow
def test_a_first_model_refused_by_the_gate_can_be_registered_ungated(tmp_path, monkeypatch):
    """No champion + a failed gate: the reason says how to proceed; ALLOW_UNGATED=1 serves it, tagged."""
    import pipeline.train.run as training
    from models.registry import load_bundle, resolve
    from tests.helpers import make_settings, wait_ready

    reason = "calibration slope 95% CI 0.10-0.40 lies outside the band 0.7-1.3"
    monkeypatch.setattr(training, "quality_gate", lambda validated: (False, reason))
    path = tmp_path / "cohort.csv"
    generate_cohort(300, seed=11).to_csv(path, index=False)
    cheap = dict(validation="auto", cv_repeats=1, n_iter=1, search_cv_folds=2, instability_models=0)
    settings = make_settings(tmp_path, allow_ungated=False, **cheap)
    refused = training.train(settings, data=path)
    assert not refused.promoted and "ALLOW_UNGATED=1" in refused.reason
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    assert client.get_run(refused.run_id).data.tags["quality_gate"] == "refused"
    with pytest.raises(Exception):
        client.get_model_version_by_alias(refused.model_name, "champion")

    ungated = training.train(make_settings(tmp_path, allow_ungated=True, **cheap), data=path)
    assert ungated.promoted and ungated.reason.startswith("UNGATED")
    version = client.get_model_version_by_alias(ungated.model_name, "champion")
    assert str(version.version) == ungated.version and version.tags["ungated"] == "true"
    gate = load_bundle(resolve(client, f"models:/{ungated.model_name}@champion")).metadata["gate"]
    assert {k: gate[k] for k in ("passed", "reason", "ungated", "status")} == {
        "passed": False, "reason": reason, "ungated": True, "status": "refused"}

    # with a champion in place, ALLOW_UNGATED no longer lets a refused model take its place
    again = training.train(make_settings(tmp_path, allow_ungated=True, **cheap), data=path)
    assert not again.promoted and "applies only while no champion exists" in again.reason
    assert str(client.get_model_version_by_alias(again.model_name, "champion").version) == ungated.version

    # the service says so: /readyz, /v1/model and every answer's warnings
    from fastapi.testclient import TestClient

    from core.contract import example_request
    from serving.app import create_app

    with TestClient(create_app(make_settings(tmp_path, allow_ungated=False, auth="off", **cheap))) as http:
        ready = wait_ready(http)
        assert ready.status_code == 200, ready.text
        assert ready.json()["model"]["ungated"] is True and "ALLOW_UNGATED=1" in ready.json()["warning"]
        assert http.get("/v1/model").json()["quality_gate"]["ungated"] is True
        answers = [http.post("/v1/risk", json=example_request()).json()]
        answers += http.post("/v1/risk/batch", json={"patients": [example_request()] * 2}).json()["results"]
        for answer in answers:
            assert any("did not pass the quality gate" in w and reason in w for w in answer["warnings"]), answer


def test_allow_ungated_is_read_from_the_environment(monkeypatch):
    from core.settings import Settings

    assert Settings().allow_ungated is False
    monkeypatch.setenv("ALLOW_UNGATED", "1")
    assert Settings().allow_ungated is True
    assert Settings().promote is True
    monkeypatch.setenv("ICANS_PROMOTE", "no")
    assert Settings().promote is False


# Small but real: 5 repeats (the gate's minimum at small n), 3 outer folds, 2 configurations by 2 folds.
GATE_SETTINGS = dict(validation="auto", cv_repeats=5, cv_folds=3, n_iter=2, search_cv_folds=2, instability_models=0)


def _shuffled(n: int, seed: int):
    from bench.gate_simulation import cohort

    return cohort("shuffled", n, seed)


@pytest.mark.slow
@pytest.mark.parametrize("n, seed", [(150, 1), (150, 2), (300, 3)])
def test_a_shuffled_outcome_cohort_is_never_promoted(tmp_path, n, seed):
    """Finding 1: pure noise is refused by the gate (no champion exists, so nothing else stops it)."""
    from pipeline.train.run import train

    path = tmp_path / "noise.csv"
    _shuffled(n, seed).to_csv(path, index=False)
    result = train(make_settings(tmp_path, allow_ungated=False, **GATE_SETTINGS), data=path)
    assert not result.promoted, result.reason
    assert result.reason.startswith("quality gate") and result.design == "repeated_cv"
    assert result.decision[0].startswith("DECISION") and "NOT promoted" in "\n".join(result.decision)
    mlflow.set_tracking_uri(make_settings(tmp_path, allow_ungated=False).tracking_uri)
    with pytest.raises(Exception):
        MlflowClient().get_model_version_by_alias(result.model_name, "champion")


@pytest.mark.slow
def test_a_challenger_meets_the_champion_out_of_fold_on_the_same_patients_and_no_promote_holds_the_alias(tmp_path):
    """Finding 2 and issue 26: the champion's configuration is refitted in the challenger's folds,
    non-inferiority margins decide, and PROMOTE=no records the decision without moving the alias."""
    import json

    from pipeline.train.gate import PROMOTION_MARGINS
    from pipeline.train.run import train

    path = tmp_path / "cohort.csv"
    generate_cohort(600, 5).to_csv(path, index=False)
    first = train(make_settings(tmp_path, allow_ungated=False, **GATE_SETTINGS), data=path)
    assert first.promoted, first.reason
    second = train(make_settings(tmp_path, allow_ungated=False, promote=False, **GATE_SETTINGS), data=path)
    assert not second.promoted and "PROMOTE=no" in second.reason
    assert "refitted inside the same 5 x 3 outer folds" in second.reason and "out of fold on the same 600" in second.reason
    mlflow.set_tracking_uri(make_settings(tmp_path, allow_ungated=False).tracking_uri)
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(second.model_name, "champion").version) == first.version
    tags = client.get_model_version(second.model_name, second.version).tags
    assert json.loads(tags["promotion_margins"]) == PROMOTION_MARGINS
    assert tags["promotion"] == "not promoted (PROMOTE=no)" or tags["promotion"] == "not promoted"
    assert {"noninferiority_auroc", "noninferiority_calibration_slope_distance", "noninferiority_net_benefit_low",
            "noninferiority_net_benefit_high"} <= set(tags)
    run = client.get_run(second.run_id).data
    assert run.tags["promotion_decision"] in ("held (PROMOTE=no)", "not promoted")
    assert json.loads(run.tags["promotion_margins"]) == PROMOTION_MARGINS
    assert np.isfinite(run.metrics["noninferiority_auroc_ci_low"])
    # the champion's AUROC is its refitted configuration's out-of-fold AUROC here, not its recorded figure
    champ = run.metrics["champion_validated_auroc"]
    assert 0.5 < champ < 0.9
    assert second.decision[-1].startswith("    compared out of fold on the same 600 patients")
