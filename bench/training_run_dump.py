"""Dump the MLflow params, metrics and tags of small trainings, to compare a refactor's before and after.

Three trainings with the same seed and small settings: a split design twice in one store (the
second meets a champion) and a repeated-CV design once. Values that change from run to run by
nature (times, durations, heartbeats, pids, run ids, the git commit) are masked; everything else is
written as JSON. The version tag bundle_sha256 differs for bundle.json, which records when it was trained.
Usage: .venv/bin/python -m bench.training_run_dump OUT.json
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

VOLATILE_KEYS = re.compile(r"(seconds|_time$|^icans\.heartbeat$|^icans\.pid$|^mlflow\.source|^mlflow\.user|^mlflow\.runName|git\.commit)")
RUN_ID = re.compile(r"\b[0-9a-f]{32}\b")
SECONDS = re.compile(r"\d+(\.\d+)? ?s\b")


def _mask(value: str) -> str:
    return SECONDS.sub("<s>", RUN_ID.sub("<run_id>", value))


def _run_record(client: Any, run_id: str) -> dict[str, Any]:
    run = client.get_run(run_id)
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")

    def one(r: Any) -> dict[str, Any]:
        return {
            "params": {k: _mask(v) for k, v in sorted(r.data.params.items())},
            "metrics": {k: v for k, v in sorted(r.data.metrics.items()) if not VOLATILE_KEYS.search(k)},
            "tags": {k: _mask(v) for k, v in sorted(r.data.tags.items()) if not VOLATILE_KEYS.search(k)},
        }

    return {"parent": one(run), "children": {c.data.tags.get("mlflow.runName", ""): one(c) for c in children}}


def _version_tags(client: Any, name: str, version: str) -> dict[str, str]:
    v = client.get_model_version(name, version)
    return {k: _mask(val) for k, val in sorted(v.tags.items()) if not VOLATILE_KEYS.search(k)}


def main(out: Path) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    import mlflow
    from mlflow import MlflowClient

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import make_settings  # the tests' small settings

    from pipeline.train.run import train

    dump: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, design, times in (("split", "split", 2), ("repeated_cv", "repeated_cv", 1)):
            root = Path(tmp) / label
            root.mkdir()
            settings = make_settings(root, validation=design, default_cohort_size=600, n_iter=1, cv_repeats=1,
                                     search_cv_folds=2, instability_models=0)
            for i in range(times):
                result = train(settings)
                mlflow.set_tracking_uri(settings.tracking_uri)
                client = MlflowClient()
                dump[f"{label}_{i}"] = {
                    "run": _run_record(client, result.run_id),
                    "version_tags": _version_tags(client, result.model_name, result.version),
                    "result": {"promoted": result.promoted, "reason": _mask(result.reason), "chosen": result.chosen,
                               "decision": [_mask(x) for x in result.decision], "notes": result.notes},
                }
    out.write_text(json.dumps(dump, indent=1, sort_keys=True, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
