"""Where joblib's parallel work runs: in this process, or on a Dask cluster (dask.distributed).

One setting, ICANS_CLUSTER: unset runs as before (joblib's own workers on this machine);
"local" starts a `LocalCluster` of ICANS_CLUSTER_WORKERS single-threaded worker processes for
the duration of the work; "tcp://host:8786" connects to a running scheduler (deploy/:
docker-compose and Kubernetes). The work is submitted through joblib's "dask" backend, so the
same code runs either way; each task carries its own seed (never a worker's), so the results are
identical with and without the cluster. MLflow is written only here, on the driver: tasks
return arrays and never log.

What runs on it: the outer folds of the repeated cross-validation (`validation.repeated_cv`), the
B bootstrap models of the interval (`instability.bootstrap_ensemble`) and the left-out centres of
IECV (`iecv.run_iecv`). The tuning of the final model, its calibration and the champion's refit
stay on the driver (one sequential fit each, or scikit-learn's own parallelism).

A training opens the cluster once (`session`, around its stages): each loop's `joblib_backend`
then reuses that client instead of starting and stopping a LocalCluster (about 5 s each on a
loaded 2-core machine) three times.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


QUIET_WORKERS = {"distributed.worker.profile.enabled": False,
                 "distributed.admin.system-monitor.gil.enabled": False}

# The client of the open `session`, with its address: reused by every `joblib_backend` inside it.
_OPEN: dict[str, Any] = {}


@contextmanager
def session(address: str | None, workers: int = 2) -> Iterator[Any]:
    """Connect to (or, for "local", start) the cluster for the whole block; yields the dask Client,
    or None with no address. Blocks inside reuse it; it is closed when the block ends."""
    if not address or address in _OPEN:
        yield _OPEN.get(address or "")
        return
    import dask
    from dask.distributed import Client, LocalCluster

    cluster = None
    # The workers' statistical profiler samples every 10 ms: measured on a loaded 2-core machine it
    # cost each task about 4x its CPU seconds (bench/iecv_consortium.py); our tasks need no profile.
    # Set here for a LocalCluster's workers (they inherit the config); a remote cluster's workers set
    # DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False themselves (deploy/).
    with dask.config.set(QUIET_WORKERS):
        if address == "local":
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=40)
            client = Client(cluster)
        else:
            client = Client(address, timeout=30)
        _OPEN[address] = client
        try:
            yield client
        finally:
            del _OPEN[address]
            client.close()
            if cluster is not None:
                cluster.close()


@contextmanager
def joblib_backend(address: str | None, workers: int = 2) -> Iterator[Any]:
    """Inside the block, `joblib.Parallel` runs on the cluster (yields the dask Client; the open
    `session`'s if there is one), or, with no address, as usual (yields None)."""
    if not address:
        yield None
        return
    import joblib

    with session(address, workers) as client, joblib.parallel_config(backend="dask"):
        yield client


class _OnOneCore:
    """A task as it runs on a worker: on one thread, with the joblib calls inside it (scikit-learn's
    grid search and out-of-fold predictions) run in the task, in order. Without this, joblib's dask
    backend would submit each inner fit back to the scheduler as a task of its own (measured: every
    `_fit_and_score` of every fold's search), with its data, for milliseconds of work each."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.__name__ = fn.__name__  # the task's name on the scheduler and its dashboard

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import joblib
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1), joblib.parallel_config(backend="sequential"):
            return self.fn(*args, **kwargs)


def task(fn: Callable[..., Any], client: Any) -> Callable[..., Any]:
    """`fn` as `joblib.delayed` should send it: unchanged in-process, on one core on a cluster."""
    return fn if client is None else _OnOneCore(fn)


def jobs(client: Any, n_jobs: int, n_tasks: int) -> int:
    """`Parallel`'s n_jobs: every worker of the cluster (joblib's dask backend counts them), else
    at most one local process per task."""
    return -1 if client is not None else max(1, min(n_jobs, n_tasks))


def where(client: Any) -> str:
    """Where the work ran, for the run's parameters and messages."""
    return f"dask ({len(client.nthreads())} workers)" if client is not None else "in-process"
