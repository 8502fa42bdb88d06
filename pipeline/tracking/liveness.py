"""No training run left lying: interrupted runs end KILLED, dead ones are found, tags follow the alias.

A training that is stopped (SIGTERM, SIGINT) ends its MLflow runs as KILLED with a reason; a training
whose process died without a word (SIGKILL, a lost machine) leaves its runs RUNNING, so every
training first sweeps: a RUNNING run of this experiment whose process is gone (same host, pid no
longer alive) or whose heartbeat is older than `stale_after_s` (another host) is marked KILLED,
its pending logged models FAILED, and a version it registered without a decision is tagged so.
The registry alias is the truth: a version that lost `@champion` says so in its tags.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from contextlib import contextmanager
from types import FrameType
from typing import Iterator, NoReturn

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus

from core.contract import OUTCOMES

HOST_TAG, PID_TAG, HEARTBEAT_TAG = "icans.host", "icans.pid", "icans.heartbeat"
FAILURE_TAG = "failure_reason"


class TrainingInterrupted(KeyboardInterrupt):
    """SIGTERM, raised where the training is so that its runs end as KILLED."""


def now_text() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into TrainingInterrupted for the duration (SIGINT already is KeyboardInterrupt)."""
    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise TrainingInterrupted(f"signal {signal.Signals(signum).name}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def mark_alive() -> None:
    """Tag the active run with who runs it and when it last made progress."""
    mlflow.set_tags({HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: str(int(time.time()))})


def heartbeat() -> None:
    mlflow.set_tag(HEARTBEAT_TAG, str(int(time.time())))


def end_interrupted(client: MlflowClient, parent_run_id: str, why: str) -> None:
    """End every active run of this training (children first) as KILLED, with the reason."""
    reason = f"interrupted ({why}) at {now_text()}"
    while mlflow.active_run() is not None:
        mlflow.set_tag(FAILURE_TAG, reason)
        mlflow.end_run(RunStatus.to_string(RunStatus.KILLED))
    # a child run's own context manager has already ended it as FAILED on the way out
    run = client.get_run(parent_run_id)
    for child in client.search_runs([run.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'"):
        if child.info.status in ("FAILED", "RUNNING") and FAILURE_TAG not in child.data.tags:
            client.set_tag(child.info.run_id, FAILURE_TAG, reason)
            client.set_terminated(child.info.run_id, RunStatus.to_string(RunStatus.KILLED))
    _fail_pending_models(client, parent_run_id)


def _process_gone(host: str | None, pid: str | None) -> bool:
    if host != socket.gethostname() or pid is None or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return int(pid) == os.getpid()  # our own pid on a RUNNING run we did not start: a reused pid


def _fail_pending_models(client: MlflowClient, run_id: str) -> int:
    run = client.get_run(run_id)
    failed = 0
    try:
        models = client.search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
    except Exception:  # a store without logged models
        return 0
    for model in models:
        if str(model.status).endswith("PENDING"):
            client.finalize_logged_model(model.model_id, "FAILED")
            failed += 1
    return failed


def sweep(client: MlflowClient, experiment_id: str, stale_after_s: float, champion_alias: str = "champion") -> list[str]:
    """Mark the runs of dead trainings KILLED and make the registry's tags agree with the alias.

    Returns the ids of the runs marked (parents and their children)."""
    now = time.time()
    running = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000)
    dead: list[str] = []
    for run in running:
        tags = run.data.tags
        if "mlflow.parentRunId" in tags:
            continue  # children follow their parent
        beat = tags.get(HEARTBEAT_TAG)
        stale = beat is not None and beat.isdigit() and now - int(beat) > stale_after_s
        if _process_gone(tags.get(HOST_TAG), tags.get(PID_TAG)) or stale:
            dead.append(run.info.run_id)
    reason = f"the training process ended without a word; found by the sweep at {now_text()}"
    marked = []
    for run in running:
        parent = run.data.tags.get("mlflow.parentRunId")
        if run.info.run_id in dead or parent in dead:
            client.set_tag(run.info.run_id, FAILURE_TAG, reason)
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            marked.append(run.info.run_id)
    for run_id in dead:
        _fail_pending_models(client, run_id)
    for outcome in OUTCOMES.values():
        reconcile_tags(client, outcome.registered_model, champion_alias, killed_runs=set(dead))
    return marked


def reconcile_tags(client: MlflowClient, name: str, champion_alias: str = "champion",
                   killed_runs: set[str] | None = None) -> None:
    """Tags never contradict the alias: a version tagged champion that no longer holds it says who
    replaced it; a version of a killed training with no decision says there was none."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except Exception:
        return
    try:  # search_model_versions does not return aliases: ask for the alias itself
        holder = client.get_model_version_by_alias(name, champion_alias).version
    except Exception:
        holder = None
    for v in versions:
        tags = v.tags or {}
        if tags.get("promotion") == "champion" and str(v.version) != str(holder):
            # the decision that made it champion stays in promotion_reason; what happened since is added
            client.set_model_version_tag(name, v.version, "promotion", "replaced")
            client.set_model_version_tag(name, v.version, "replaced_by", f"v{holder}" if holder else "none")
            client.set_model_version_tag(name, v.version, "replaced_at", now_text())
        elif "promotion" not in tags and killed_runs and v.run_id in killed_runs:
            client.set_model_version_tag(name, v.version, "promotion", "not decided")
            client.set_model_version_tag(name, v.version, "promotion_reason",
                                         "the training was killed after registering this version and before "
                                         f"deciding on it (found at {now_text()})")
