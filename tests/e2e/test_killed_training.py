"""A training killed at any stage leaves no run lying and no tag that contradicts the alias.

Each case runs `icans-risk train` in a real process, holds it at a stage (a hook in a wrapper
script writes a marker and waits), then sends SIGTERM or SIGKILL and reads the MLflow store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow import MlflowClient

from pipeline.data.synthetic import generate_cohort

pytestmark = pytest.mark.slow

WRAPPER = """
import sys, time, pathlib
stage, marker = sys.argv[1], pathlib.Path(sys.argv[2])
import pipeline.train.promote as promote
import pipeline.train.tuning as tuning

def hold(real):
    def held(*args, **kwargs):
        marker.write_text("here")
        time.sleep(600)
        return real(*args, **kwargs)
    return held

if stage == "tune":
    tuning.tune = hold(tuning.tune)
elif stage == "log_model":  # the logged model exists, PENDING, its artifacts not yet uploaded
    from mlflow import MlflowClient
    MlflowClient.log_model_artifacts = hold(MlflowClient.log_model_artifacts)
elif stage == "promote":  # the decision (the gate's verdict, then the champion comparison), whatever it is
    import pipeline.train.run as run
    run.promote_if_allowed = hold(run.promote_if_allowed)
from cli.main import main
sys.argv = ["icans-risk", "train", "--data", sys.argv[3]]
main()
"""


@pytest.fixture
def workspace(tmp_path):
    path = tmp_path / "cohort.csv"
    generate_cohort(300, 4).to_csv(path, index=False)
    (tmp_path / "wrapper.py").write_text(WRAPPER)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "ICANS_ARTIFACT_ROOT": (tmp_path / "art").as_uri(), "ICANS_DATA_DIR": str(tmp_path),
           "ICANS_CV_REPEATS": "1", "ICANS_SEARCH_CV_FOLDS": "2", "ICANS_ALLOW_UNGATED": "1",  # not a test of the gate
           "ICANS_N_ITER": "2", "ICANS_CV_FOLDS": "3", "OMP_NUM_THREADS": "1"}
    return tmp_path, path, env


def _train_until(workspace, stage: str) -> subprocess.Popen:
    root, path, env = workspace
    marker = root / f"at-{stage}"
    proc = subprocess.Popen([sys.executable, str(root / "wrapper.py"), stage, str(marker), str(path)],
                            env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the training never reached the stage"
        time.sleep(0.1)
    return proc


def _train(workspace) -> subprocess.CompletedProcess:
    root, path, env = workspace
    return subprocess.run([sys.executable, "-m", "cli.main", "train", "--data", str(path)], env=env, cwd=root,
                          capture_output=True, text=True, timeout=600)


def _client(workspace) -> MlflowClient:
    mlflow.set_tracking_uri(f"sqlite:///{workspace[0] / 'mlflow.db'}")
    return MlflowClient()


def _runs(client: MlflowClient):
    exp = client.get_experiment_by_name("icans-risk")
    return client.search_runs([exp.experiment_id]) if exp else []


def _state(client) -> list[tuple[str, str, str]]:
    return sorted((r.info.run_name, r.info.status, r.data.tags.get("failure_reason", "")[:40]) for r in _runs(client))


def test_sigterm_during_tuning_ends_every_run_killed(workspace):
    proc = _train_until(workspace, "tune")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "interrupted" in err
    client = _client(workspace)
    runs = _runs(client)
    print("after SIGTERM in tuning:", _state(client))
    assert runs and {r.info.status for r in runs} == {"KILLED"}
    assert all(r.info.end_time for r in runs)
    assert all("interrupted (signal SIGTERM)" in r.data.tags["failure_reason"] for r in runs)


def test_sigkill_is_found_by_the_next_training_and_by_the_sweep_command(workspace):
    client = _client(workspace)
    proc = _train_until(workspace, "tune")
    proc.kill()
    proc.wait(30)
    print("after SIGKILL in tuning:", _state(client))
    assert {r.info.status for r in _runs(client)} == {"RUNNING"}  # what SIGKILL leaves
    root, _, env = workspace
    swept = subprocess.run([sys.executable, "-m", "cli.main", "runs", "sweep"], env=env, cwd=root,
                           capture_output=True, text=True, timeout=120)
    assert swept.returncode == 0 and swept.stdout.startswith("2 run(s) marked KILLED"), swept.stdout + swept.stderr
    print("after the sweep:", _state(client))
    runs = _runs(client)
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all("ended without a word" in r.data.tags["failure_reason"] for r in runs)

    # killed while logging the model: its logged model is PENDING until the next training's sweep
    proc = _train_until(workspace, "log_model")
    exp = client.get_experiment_by_name("icans-risk").experiment_id
    pending = [m for m in client.search_logged_models([exp]) if str(m.status).endswith("PENDING")]
    assert pending
    proc.kill()
    proc.wait(30)
    done = _train(workspace)
    assert done.returncode == 0, done.stderr
    assert "marked KILLED" in done.stdout
    print("after the next training:", _state(client))
    statuses = [r.info.status for r in _runs(client)]
    # KILLED: the first training's parent and child, the second's parent (its 3 children had finished)
    assert statuses.count("RUNNING") == 0 and statuses.count("KILLED") == 3 and statuses.count("FINISHED") == 7
    assert str(client.get_logged_model(pending[0].model_id).status).endswith("FAILED")


def test_a_version_registered_before_the_kill_and_a_replaced_champion_say_so(workspace):
    client = _client(workspace)
    first = _train(workspace)
    assert first.returncode == 0, first.stderr
    proc = _train_until(workspace, "promote")  # v2 registered, no decision yet
    proc.kill()
    proc.wait(30)
    v2 = client.get_model_version("icans-risk", "2")
    assert "promotion" not in v2.tags
    third = _train(workspace)  # v3: sweeps, then decides on itself
    assert third.returncode in (0, 3), third.stderr  # 3: refused by the gate, which a champion makes final
    versions = {str(v.version): v for v in client.search_model_versions("name = 'icans-risk'")}
    holder = str(client.get_model_version_by_alias("icans-risk", "champion").version)
    for number, v in sorted(versions.items()):
        print(f"v{number}: aliases={v.aliases} promotion={v.tags.get('promotion')!r}: {v.tags.get('promotion_reason')}")
    assert versions["2"].tags["promotion"] == "not decided"
    assert "killed" in versions["2"].tags["promotion_reason"]
    champions = [n for n, v in versions.items() if v.tags.get("promotion") == "champion"]
    assert champions == [holder]  # no tag contradicts the alias
    if holder == "3":
        assert versions["1"].tags["promotion"] == "replaced" and versions["1"].tags["replaced_by"] == "v3"
        assert versions["1"].tags["promotion_reason"] == "no champion yet"  # the decision it was made on stays
    assert all(r.info.status != "RUNNING" for r in _runs(client))
