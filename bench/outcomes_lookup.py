"""Outcome posts by patient id against a large audit trail, and a 20-row import (issue 25, finding 7).

    python -m bench.outcomes_lookup [--rows 200000] [--posts 50] [--backend sqlite|postgresql]

Builds a store with `--rows` audit rows (one patient each, two clients), then times `record_outcome`
by patient id (the work of POST /v1/outcomes behind the HTTP layer, as the client that was scored)
and an import of 20 rows by patient id. Run from a checkout: its `serving` package is the code
measured, so the same script measures main (per-row import, no index) and this branch. With
`--drop-index` the patient-hash index of this branch is dropped first (the lookup as it was).
PostgreSQL: a database houtcomes_bench_<random> on 127.0.0.1:5432, dropped afterwards.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

KEY = b"bench-hmac-key-0123456789abcdef"


def _rows(store: Any, n: int) -> None:
    from serving.store import AuditRecord

    inputs = {"age": 55.0, "crp": 12.5, "cns_involvement": False, "product": "tisagenlecleucel"}
    for start in range(0, n, 5000):
        store.append_many([
            AuditRecord(request_id=f"req-{i:08d}", client_id="clinic-a" if i % 2 else "clinic-b", endpoint="/v1/risk",
                        model_name="icans-risk", model_version="1", inputs=inputs, risk=0.2, risk_group="low",
                        top_contributions=[], latency_ms=1.0, patient_id=f"patient-{i:08d}")
            for i in range(start, min(n, start + 5000))])


def _post(store: Any, rec: Any, owner: str) -> Any:
    from serving.outcomes import record_outcome

    try:
        return record_outcome(store, rec, owner=owner)
    except TypeError:  # main: no owner (any client's answer)
        return record_outcome(store, rec)


def _lookup(store: Any, patients: list[str]) -> tuple[list[float], str]:
    """The patient-hash lookup alone (no commit): its time per patient, and the database's plan."""
    sql = "SELECT id FROM audit_log WHERE patient_hash = {p} AND client_id = {p}"
    p = "?" if store.backend == "sqlite" else "%s"
    times = []
    with store.engine.connect() as conn:
        if store.backend == "postgresql":
            conn.exec_driver_sql("ANALYZE audit_log")
        for pid in patients:
            t = time.perf_counter()
            conn.exec_driver_sql(sql.format(p=p), (store.hash_patient_id(pid), "clinic-a")).all()
            times.append((time.perf_counter() - t) * 1000)
        explain = "EXPLAIN QUERY PLAN " if store.backend == "sqlite" else "EXPLAIN "
        plan = " | ".join(str(r[-1]) for r in conn.exec_driver_sql(explain + sql.format(p=p),
                                                                    (store.hash_patient_id(patients[0]), "clinic-a")))
    return times, plan


def measure(url: str, rows: int, posts: int, drop_index: bool) -> dict[str, Any]:
    import serving.outcomes as so
    from serving.outcomes import OutcomeRecord
    from serving.store import Store

    store = Store(url, KEY)
    store.migrate()
    t0 = time.perf_counter()
    _rows(store, rows)
    fill_s = time.perf_counter() - t0
    if drop_index:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP INDEX ix_audit_log_patient_hash")
    odd = [i for i in range(1, rows, 2)]  # clinic-a's patients
    picks = odd[:: max(1, len(odd) // (posts + 20))][: posts + 20]
    lookup, plan = _lookup(store, [f"patient-{i:08d}" for i in picks[:posts]])
    times = []
    for k, i in enumerate(picks[:posts]):
        rec = OutcomeRecord(outcome_id=f"o-{k}", patient_id=f"patient-{i:08d}", icans_max_grade=k % 5,
                            observed_on=date(2026, 3, 1), source="bench")
        t = time.perf_counter()
        _post(store, rec, "clinic-a")
        times.append((time.perf_counter() - t) * 1000)
    batch = [OutcomeRecord(outcome_id=f"imp-{k}", patient_id=f"patient-{i:08d}", icans_max_grade=1,
                           observed_on=date(2026, 3, 1), source="bench") for k, i in enumerate(picks[posts:])]
    t = time.perf_counter()
    if hasattr(so, "record_outcomes"):
        results = list(so.record_outcomes(store, batch))
        assert not any(isinstance(r, Exception) for _, r in results)
        mode = "record_outcomes (batched)"
    else:
        for rec in batch:
            so.record_outcome(store, rec)
        mode = "record_outcome per row"
    import_s = time.perf_counter() - t
    store.close()
    times.sort()
    return {"backend": store.backend, "audit_rows": rows, "posts": posts, "index_dropped": drop_index,
            "fill_s": round(fill_s, 1), "post_ms_median": round(statistics.median(times), 2),
            "post_ms_p90": round(times[int(0.9 * (len(times) - 1))], 2), "post_ms_max": round(times[-1], 2),
            "lookup_ms_median": round(statistics.median(lookup), 3), "lookup_plan": plan,
            "import_rows": len(batch), "import_s": round(import_s, 3), "import_mode": mode}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--posts", type=int, default=50)
    ap.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--drop-index", action="store_true")
    args = ap.parse_args()
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            out = measure(f"sqlite:///{Path(tmp) / 'store.db'}", args.rows, args.posts, args.drop_index)
    else:
        import psycopg

        name = f"houtcomes_bench_{secrets.token_hex(4)}"
        admin = psycopg.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres", autocommit=True)
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            out = measure(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", args.rows, args.posts,
                          args.drop_index)
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
