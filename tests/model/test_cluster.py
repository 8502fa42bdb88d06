"""The same work on a Dask LocalCluster of two worker processes gives byte-identical results."""

from __future__ import annotations

import json

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


@pytest.mark.slow
def test_local_cluster_of_two_workers_gives_byte_identical_metrics(tmp_path):
    from pipeline.train.iecv import run_iecv

    df = generate_consortium((CentreSpec("A", 150), CentreSpec("B", 150), CentreSpec("C", 150, logit_shift=0.5)),
                             seed=3)
    thresholds = {"low": 0.08, "high": 0.3}
    here = run_iecv(df, "severe_icans", make_settings(tmp_path, n_iter=1, search_cv_folds=2), thresholds)
    there = run_iecv(df, "severe_icans", make_settings(tmp_path, n_iter=1, search_cv_folds=2,
                                                       cluster="local", cluster_workers=2), thresholds)
    assert json.dumps(here.metrics(), sort_keys=True).encode() == json.dumps(there.metrics(), sort_keys=True).encode()
    assert here.predictions.tobytes() == there.predictions.tobytes()
    assert (here.where, there.where) == ("in-process", "dask (2 workers)")
