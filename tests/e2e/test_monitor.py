"""Monitoring end to end: answers through the real app, read back from the audit trail, compared
with the development summary the served bundle carries, logged as an MLflow run."""

from __future__ import annotations

import time

import mlflow
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from pipeline.data.synthetic import generate_cohort
from core.contract import FEATURES
from pipeline.monitor.run import MONITORING_EXPERIMENT, MonitoringError, monitor
from serving.app import create_app
from tests.helpers import open_store, wait_ready

pytestmark = pytest.mark.slow


def _records(df: pd.DataFrame) -> list[dict]:
    out = []
    for rec in df[[f.name for f in FEATURES]].to_dict("records"):
        out.append({k: (None if isinstance(v, float) and v != v else v) for k, v in rec.items()})
    return out


def _rows(settings, since):
    store = open_store(settings)
    try:
        return [row for chunk in store.iter_audit(since) for row in chunk]
    finally:
        store.close()


def test_monitoring_run_from_audited_answers(trained, tokens):
    settings, _ = trained
    app = create_app(settings.model_copy(update={"batch_limit": 500}))
    shifted = generate_cohort(150, 31)
    shifted["product"] = shifted["product"].iloc[0]
    shifted["marrow_blasts_pct"] = (shifted["marrow_blasts_pct"] * 2).clip(upper=100)
    with TestClient(app, headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        start = pd.Timestamp.now(tz="UTC").to_pydatetime()
        r = client.post("/v1/risk/batch", json={"patients": _records(generate_cohort(150, 30))})
        assert r.status_code == 200, r.text
        middle = pd.Timestamp.now(tz="UTC").to_pydatetime()
        r = client.post("/v1/risk/batch", json={"patients": _records(shifted)})
        assert r.status_code == 200, r.text
        end = pd.Timestamp.now(tz="UTC").to_pydatetime()

    like = monitor(settings, _rows(settings, start), since=start, until=middle)
    assert like.n == 150 and like.alarms == []
    drifted = monitor(settings, _rows(settings, middle), since=middle, until=end)
    assert drifted.n == 150
    assert {"product (distribution)", "marrow_blasts_pct (distribution)"} <= set(drifted.alarms)

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    run = client.get_run(drifted.run_id)
    assert client.get_experiment(run.info.experiment_id).name == MONITORING_EXPERIMENT
    assert run.data.tags["model_version"] and "marrow_blasts_pct" in run.data.tags["alarms"]
    assert run.data.metrics["monitor_n"] == 150 and run.data.metrics["monitor_alarms"] >= 2
    assert run.data.metrics["drift_p_holm_product_distribution"] < 0.05
    report = mlflow.artifacts.download_artifacts(run_id=drifted.run_id, artifact_path="monitoring_report.html")
    text = open(report, encoding="utf-8").read()
    assert "Research use only" in text and "marrow_blasts_pct" in text and "http" not in text.lower()

    with pytest.raises(MonitoringError, match="no audited answers"):
        monitor(settings, [], since=end)
    # the same patients asked again later are not new patients: nothing to judge in that window
    again = pd.Timestamp.now(tz="UTC").to_pydatetime()
    with TestClient(app, headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert client.post("/v1/risk/batch", json={"patients": _records(shifted)}).status_code == 200
    with pytest.raises(MonitoringError, match="all of patients seen before"):
        monitor(settings, _rows(settings, None), since=again)


def test_outcomes_move_the_verdict(trained, tokens):
    """Outcomes twice as frequent as predicted (in log-odds: +1) -> recalibrate the intercept."""
    import numpy as np
    from scipy.special import expit, logit

    from serving.outcomes import OutcomeRecord, labelled_answers, record_outcome

    settings, _ = trained
    app = create_app(settings.model_copy(update={"batch_limit": 500}))
    patients = _records(generate_cohort(400, 41))
    ids = [f"mon-{i}" for i in range(len(patients))]
    with TestClient(app, headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        start = pd.Timestamp.now(tz="UTC").to_pydatetime()
        r = client.post("/v1/risk/batch", json={"patients": [{"patient_id": i, **p} for i, p in zip(ids, patients)]})
        assert r.status_code == 200, r.text
        risks = np.array([a["risk"] for a in r.json()["results"]])
    rng = np.random.default_rng(5)
    y = rng.random(len(risks)) < expit(logit(risks) + 1.0)
    store = open_store(settings)
    try:
        for i, (pid, event) in enumerate(zip(ids, y)):
            record_outcome(store, OutcomeRecord(outcome_id=f"mon-o-{i}", patient_id=pid, observed_on=pd.Timestamp(
                "2026-03-01").date(), source="test registry", icans_max_grade=3 if event else 1))
        labelled = labelled_answers(store)
    finally:
        store.close()
    # answers of today: their follow-up has not ended, so by default they are not judged yet
    waiting = monitor(settings, _rows(settings, start), since=start, labelled=labelled)
    assert waiting.calibration == {} and waiting.verdict["verdict"] == "too few events to say"
    result = monitor(settings, _rows(settings, start), since=start, labelled=labelled, follow_up_days=0)
    print(f"\n{result.verdict}; O/E {result.calibration['observed_expected']:.2f}")
    assert result.calibration["n"] == 400 and result.calibration["observed_expected"] > 1.3
    assert result.verdict["verdict"] == "recalibrate the intercept"
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["verdict"] == "recalibrate the intercept"
    assert run.data.metrics["monitor_observed_expected"] > 1.3
    arts = {a.path for a in MlflowClient().list_artifacts(result.run_id)}
    assert {"calibration_drift.png", "monitoring_report.html", "drift.csv"} <= arts
    assert "calibration CUSUM (odds_up)" in result.alarms  # the sequential chart, not only this run's test
    assert run.data.metrics["monitor_cusum_odds_up_signal_at"] <= 400


def test_a_patient_asked_several_times_counts_once(trained, tokens):
    """The answer, its explanation picture and a batch that repeats it are one patient (with a
    patient id: its keyed hash; without: the feature vector)."""
    settings, _ = trained
    patients = _records(generate_cohort(30, 61))
    with TestClient(create_app(settings.model_copy(update={"batch_limit": 500})),
                    headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        start = pd.Timestamp.now(tz="UTC").to_pydatetime()
        for i, p in enumerate(patients[:15]):  # with a patient id: asked, explained, asked again
            body = {"patient_id": f"repeat-{i}", **p}
            assert client.post("/v1/risk", json=body).status_code == 200
            assert client.post("/v1/risk/explanation", json=body).status_code == 200
        assert client.post("/v1/risk/batch", json={"patients": [{"patient_id": f"repeat-{i}", **p}
                                                                for i, p in enumerate(patients[:15])]}).status_code == 200
        for p in patients[15:]:  # without one: the same features twice
            assert client.post("/v1/risk", json=p).status_code == 200
        assert client.post("/v1/risk/batch", json={"patients": patients[15:]}).status_code == 200
    result = monitor(settings, _rows(settings, None), since=start)
    assert result.n == 30 and result.n_answers == 15 * 3 + 15 * 2
    run = MlflowClient().get_run(result.run_id)
    assert run.data.metrics["monitor_n"] == 30 and run.data.metrics["monitor_n_answers"] == 75
    assert "30 patients (75 audited answers" in run.data.tags["mlflow.note.content"]


def test_a_scheduled_run_judges_outcomes_that_are_due(trained, tokens):
    """Answers given 40 days ago with their outcomes, and this interval's new patients: the scheduled
    run tests drift on the new patients and reaches a verdict on the old ones' outcomes (before,
    it kept only the outcomes of the last interval's answers: always "too few events")."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import sqlalchemy as sa

    from cli.main import _monitor_once
    from serving.monitoring_runs import monitoring_runs
    from serving.outcomes import OutcomeRecord, record_outcome
    from serving.store import AuditRecord

    settings, _ = trained
    mlflow.set_tracking_uri(settings.tracking_uri)
    from models.registry import resolve

    resolved = resolve(MlflowClient(), settings.resolved_model_uri)
    old = generate_cohort(300, 71)
    with TestClient(create_app(settings.model_copy(update={"batch_limit": 500})),
                    headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        answers = client.post("/v1/risk/batch", json={"patients": _records(old)}).json()["results"]
    risks = np.array([a["risk"] for a in answers])
    then = datetime.now(UTC) - timedelta(days=40)
    store = open_store(settings)
    try:  # the same answers, as the audit trail held them 40 days ago, with the patients' ids
        store.append_many([AuditRecord(request_id=f"due-{i}", client_id="test", endpoint="/v1/risk",
                                       model_name=resolved.name, model_version=str(resolved.version),
                                       inputs=rec, risk=float(r), risk_group="low", top_contributions=[],
                                       latency_ms=1.0, patient_id=f"due-{i}", time=then + timedelta(minutes=i))
                           for i, (rec, r) in enumerate(zip(_records(old), risks))])
        rng = np.random.default_rng(7)
        y = rng.random(risks.size) < risks
        for i, event in enumerate(y):
            record_outcome(store, OutcomeRecord(outcome_id=f"due-o-{i}", patient_id=f"due-{i}",
                                                observed_on=(then + timedelta(days=30)).date(), source="registry",
                                                icans_max_grade=3 if event else 0))
    finally:
        store.close()
    since = datetime.now(UTC)
    with TestClient(create_app(settings.model_copy(update={"batch_limit": 500})),
                    headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        assert client.post("/v1/risk/batch", json={"patients": _records(generate_cohort(40, 72))}).status_code == 200
    scheduled = _monitor_once(settings, since=since, all_outcomes=True)
    print(f"\nscheduled: {scheduled.n} new patients; {scheduled.calibration.get('n')} due outcomes, "
          f"{scheduled.calibration.get('events')} events; {scheduled.verdict}")
    assert scheduled.n == 40
    assert scheduled.calibration["n"] >= 300 and scheduled.calibration["events"] >= 10
    assert scheduled.verdict["verdict"] != "too few events to say"
    store = open_store(settings)
    try:
        with store.engine.connect() as conn:
            last = conn.execute(sa.select(monitoring_runs.c.summary).order_by(monitoring_runs.c.id.desc())).first()
    finally:
        store.close()
    assert last is not None and last.summary["n_with_outcome"] >= 300 and last.summary["n_answers"] == 40


def test_the_monitor_command(trained, tokens):
    """`icans-risk monitor` (what `make monitor` runs) on the service's store: one run, its verdict."""
    from click.testing import CliRunner

    from cli.main import main

    settings, _ = trained
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        assert client.post("/v1/risk/batch", json={"patients": _records(generate_cohort(60, 51))}).status_code == 200
    env = {"MLFLOW_TRACKING_URI": settings.tracking_uri, "ICANS_STORE_URL": settings.store_url,
           "ICANS_AUDIT_HMAC_KEY": settings.audit_hmac_key.get_secret_value(),
           "ICANS_ARTIFACT_ROOT": settings.artifact_root}
    result = CliRunner().invoke(main, ["monitor", "--since", "2000-01-01"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("monitoring run ") and "verdict: " in result.output
    bad = CliRunner().invoke(main, ["monitor", "--since", "not-a-date"], env=env)
    assert bad.exit_code != 0 and "Traceback" not in bad.output

    # the service shows the newest monitoring of the version it serves: /v1/model and the gauges
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        shown = client.get("/v1/model").json()["monitoring"]
        assert shown["run_id"] in result.output and shown["verdict"] and shown["n"] >= 60
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {tokens['admin']}"}).text
        assert f"icans_monitor_n {float(shown['n'])}" in metrics
        assert f'icans_monitor_verdict_info{{verdict="{shown["verdict"]}"}} 1.0' in metrics


def test_the_schedule_in_serve_runs_and_records(trained, tokens):
    """ICANS_MONITOR_INTERVAL_S: the serving command's thread monitors the last interval's answers."""
    import threading

    import sqlalchemy as sa

    from cli.main import _monitor_on_schedule
    from serving.monitoring_runs import monitoring_runs

    settings, _ = trained
    store = open_store(settings)
    with store.engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(monitoring_runs)).scalar_one()
    stop = threading.Event()
    thread = threading.Thread(target=_monitor_on_schedule, args=(settings, 3.0, stop), daemon=True)
    thread.start()  # every 3 s, the answers of the last 3 s: the batch below falls in one of them
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {tokens['score']}"}) as client:
        assert wait_ready(client).status_code == 200
        assert client.post("/v1/risk/batch", json={"patients": _records(generate_cohort(40, 52))}).status_code == 200
    deadline = time.time() + 120
    while time.time() < deadline:
        with store.engine.connect() as conn:
            if conn.execute(sa.select(sa.func.count()).select_from(monitoring_runs)).scalar_one() > before:
                break
        time.sleep(0.5)
    stop.set()
    thread.join(30)
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(monitoring_runs)).scalar_one() > before
    store.close()
