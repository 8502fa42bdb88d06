"""The same training on a Dask LocalCluster of two worker processes gives byte-identical results."""

from __future__ import annotations

import json
import re

import pytest

from pipeline.data.synthetic_centres import CentreSpec, generate_consortium
from tests.helpers import make_settings


def test_cluster_setting_is_validated(tmp_path):
    from pydantic import ValidationError

    assert make_settings(tmp_path).cluster is None
    assert make_settings(tmp_path, cluster="tcp://dask-scheduler:8786").cluster == "tcp://dask-scheduler:8786"
    for bad in ("http://x:1", "local; rm", "tcp://host"):
        with pytest.raises(ValidationError):
            make_settings(tmp_path, cluster=bad)


def test_no_address_runs_in_process():
    from pipeline.train.cluster import joblib_backend

    with joblib_backend(None) as client:
        assert client is None


def _served(settings, records) -> tuple[dict[str, float], str]:
    """Every MLflow metric of the training's runs but the timings, and the served answers (without
    the model's name and run), of the store in `settings`."""
    import mlflow
    from mlflow import MlflowClient

    from models.registry import load_bundle, resolve
    from serving.predictor import Predictor

    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    metrics = {f"{r.info.run_name}/{k}": v for r in runs for k, v in r.data.metrics.items()
               if not k.endswith("_seconds")}
    resolved = resolve(client, settings.resolved_model_uri)
    answers = [{k: v for k, v in a.items() if k != "model"}
               for a in Predictor(load_bundle(resolved), resolved).predict(records)]
    return metrics, json.dumps(answers, sort_keys=True)


@pytest.mark.slow
def test_a_training_on_a_local_cluster_of_two_workers_is_byte_identical(tmp_path):
    """The folds of the repeated cross-validation, the bootstrap models and the left-out centres
    run on the workers, and the metrics and served risks are those of the in-process run."""
    from distributed import get_task_stream

    from pipeline.train.cluster import session
    from pipeline.train.run import train
    from tests.helpers import random_records

    path = tmp_path / "consortium.csv"
    generate_consortium((CentreSpec("A", 150), CentreSpec("B", 150), CentreSpec("C", 150, logit_shift=0.5)),
                        seed=3).to_csv(path, index=False)
    small = dict(validation="repeated_cv", cv_repeats=1, cv_folds=3, n_iter=1, search_cv_folds=2,
                 instability_models=4)
    records = random_records(40, seed=1)
    here = make_settings(tmp_path / "here", **small)
    train(here, data=path)
    there = make_settings(tmp_path / "there", cluster="local", cluster_workers=2, **small)
    with session(there.cluster, there.cluster_workers) as client, get_task_stream(client) as stream:
        train(there, data=path)  # its loops reuse this session's cluster
        assert len(client.nthreads()) == 2
    # each task whole on one worker: the fits inside it are not sent back to the scheduler
    ran = {re.sub(r"^batch_of_(.+)_[0-9]+_calls-.*$", r"\1", str(t["key"])) for t in stream.data}
    assert ran == {"_run_folds", "_replicate", "_leave_out"}, ran

    metrics_here, served_here = _served(here, records)
    metrics_there, served_there = _served(there, records)
    assert any(k.endswith("/iecv_auroc") for k in metrics_here) and any("instability_" in k for k in metrics_here)
    assert json.dumps(metrics_here, sort_keys=True).encode() == json.dumps(metrics_there, sort_keys=True).encode()
    assert served_here.encode() == served_there.encode()
