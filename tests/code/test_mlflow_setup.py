"""The MLflow UI set up for this project: the classic view, descriptions, nothing a user set overwritten."""

from __future__ import annotations

from mlflow import MlflowClient

from pipeline.tracking.runs import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    describe_registered_model,
    setup_mlflow,
)
from tests.helpers import make_settings


def test_a_new_experiment_opens_on_training_runs_with_a_description(tmp_path) -> None:
    settings = make_settings(tmp_path)
    exp_id = setup_mlflow(settings, settings.experiment)
    tags = MlflowClient().get_experiment(exp_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert "validated_auroc" in tags["mlflow.note.content"]


def test_an_older_experiment_gets_the_tags_it_lacks_and_keeps_a_users(tmp_path) -> None:
    settings = make_settings(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    exp_id = client.create_experiment(settings.experiment, tags={"mlflow.note.content": "our own notes"})
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(exp_id).tags
    assert setup_mlflow(settings, settings.experiment) == exp_id
    tags = client.get_experiment(exp_id).tags
    assert tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert tags["mlflow.note.content"] == "our own notes"


def test_the_registered_model_is_described_once(tmp_path) -> None:
    settings = make_settings(tmp_path)
    setup_mlflow(settings, settings.experiment)
    client = MlflowClient()
    client.create_registered_model("icans-risk")
    describe_registered_model(client, "icans-risk")
    text = client.get_registered_model("icans-risk").description
    assert "severe ICANS" in text or "ICANS grade" in text
    assert "@champion" in text and "Research use only" in text
    client.update_registered_model("icans-risk", description="edited by the team")
    describe_registered_model(client, "icans-risk")
    assert client.get_registered_model("icans-risk").description == "edited by the team"
