"""Where joblib's parallel work runs: in this process, or on a Dask cluster (dask.distributed).

One setting, ICANS_CLUSTER: unset runs as before (joblib's own workers on this machine);
"local" starts a `LocalCluster` of ICANS_CLUSTER_WORKERS single-threaded worker processes for
the duration of the work; "tcp://host:8786" connects to a running scheduler (deploy/:
docker-compose and Kubernetes). The work is submitted through joblib's "dask" backend, so the
same code runs either way; each task carries its own seed (never a worker's), so the results are
identical with and without the cluster. MLflow is written only here, on the driver: tasks
return arrays and never log.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


QUIET_WORKERS = {"distributed.worker.profile.enabled": False,
                 "distributed.admin.system-monitor.gil.enabled": False}


@contextmanager
def joblib_backend(address: str | None, workers: int = 2) -> Iterator[Any]:
    """Inside the block, `joblib.Parallel` runs on the cluster (yields the dask Client), or, with
    no address, as usual (yields None)."""
    if not address:
        yield None
        return
    import dask
    import joblib
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
        try:
            with joblib.parallel_config(backend="dask"):
                yield client
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
