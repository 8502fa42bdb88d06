"""Fault cases of the audit store (issue 13, items 1 and 6), through the real app under load.

Another session stalls the store (SQLite: a write lock held by another process with BEGIN
IMMEDIATE; PostgreSQL: LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE) while 8 callers keep
scoring. The invariant: exactly one audit row per answer given (200), none for a 503. While the
store is stalled the breaker answers 503 at once and /readyz says why; afterwards both recover.
`pytest -s` prints the measured figures.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from fastapi.testclient import TestClient

from core.contract import example_request
from serving.app import create_app
from tests.helpers import open_store
from tests.helpers import PG_HOST, PG_PORT, pg_connect

STALL_S = float(os.environ.get("ICANS_FAULT_STALL_S", "5"))  # the stalls were 12-14 s


def _ready(c: TestClient) -> None:
    deadline = time.time() + 60
    while c.get("/readyz").status_code != 200:
        assert time.time() < deadline, c.get("/readyz").json()
        time.sleep(0.05)


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class _Load:
    """8 threads posting /v1/risk until stopped; every (status, latency) is kept."""

    def __init__(self, client: TestClient, n: int = 8) -> None:
        self.client = client
        self.stop = threading.Event()
        self.results: list[tuple[int, float, float]] = []  # (status, latency s, start time)
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(n)]

    def _work(self) -> None:
        body = example_request()
        while not self.stop.is_set():
            t0 = time.perf_counter()
            r = self.client.post("/v1/risk", json=body)
            with self._lock:
                self.results.append((r.status_code, time.perf_counter() - t0, t0))

    def __enter__(self) -> "_Load":
        [t.start() for t in self.threads]
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        [t.join(timeout=30) for t in self.threads]


def _stall_and_measure(c: TestClient, stall: threading.Thread, holding: threading.Event, store, label: str) -> None:
    """Run load through a stall of the store; assert the invariant and the recovery."""
    readiness: list[tuple[float, int, str]] = []
    with _Load(c) as load:
        time.sleep(1.0)
        stall.start()
        assert holding.wait(10), "the lock holder did not start"
        t_lock = time.perf_counter()
        while stall.is_alive():
            r = c.get("/readyz")
            readiness.append((time.perf_counter() - t_lock, r.status_code, r.json().get("reason", "")))
            time.sleep(0.2)
        t_release = time.perf_counter()
        stall.join()
        deadline = time.time() + 20
        while True:  # back to ready once the store can be written again
            r = c.get("/readyz")
            readiness.append((time.perf_counter() - t_lock, r.status_code, r.json().get("reason", "")))
            if r.status_code == 200 or time.time() > deadline:
                break
            time.sleep(0.1)
        recovered_after = time.perf_counter() - t_release
        time.sleep(1.0)  # answers after the recovery
    results = load.results
    ok = sum(1 for s, _, _ in results if s == 200)
    refused = [lat for s, lat, _ in results if s == 503]
    during = [lat for s, lat, t0 in results if s == 200 and t_lock <= t0 <= t_release]
    rows = store.count()
    unready = [x for x in readiness if x[1] == 503]
    print(
        f"\n[{label}] store stalled {STALL_S:.0f} s under 8 callers: {len(results)} requests, {ok} answers (200), "
        f"{len(refused)} x 503, other statuses {len(results) - ok - len(refused)}; audit rows {rows} "
        f"(answers {ok}); 503 latency p50 {_pct(refused, 0.5) * 1000:.1f} ms, p99 {_pct(refused, 0.99) * 1000:.0f} ms, "
        f"max {max(refused, default=0) * 1000:.0f} ms; answers during the stall {len(during)}; "
        f"/readyz 503 in {len(unready)} of {len(readiness)} polls "
        f"(first at +{unready[0][0]:.2f} s: {unready[0][2]!r}); ready again {recovered_after:.2f} s after the lock went"
        if unready else f"\n[{label}] readiness never went 503; results {len(results)} ok {ok} rows {rows}"
    )
    assert rows == ok, f"audit rows {rows} != answers given {ok}"
    assert len(results) == ok + len(refused), "only 200 and 503 are expected"
    assert refused, "the stall must have refused some requests"
    assert unready and "audit store" in unready[0][2]
    assert readiness[-1][1] == 200, "ready again after the stall"
    # the breaker answers at once: most refusals do not wait for the caller's 10 s
    assert _pct(refused, 0.5) < c.app.state.settings.audit_timeout_s / 2


def test_sqlite_write_lock_held_by_another_process(trained, tmp_path):
    settings, _ = trained
    settings = settings.model_copy(update=dict(store_url=f"sqlite:///{tmp_path / 'stall.db'}", auth="off"))
    store = open_store(settings)
    holding = threading.Event()

    def hold() -> None:
        code = (
            "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True); time.sleep(float(sys.argv[2])); "
            "c.execute('ROLLBACK')"
        )
        p = subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path / "stall.db"), str(STALL_S)], stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline().strip() == "locked"
        holding.set()
        p.wait(timeout=60)

    with TestClient(create_app(settings)) as c:
        _ready(c)
        _stall_and_measure(c, threading.Thread(target=hold), holding, store, "sqlite")


@contextmanager
def _fresh_pg() -> Iterator[tuple[str, str]]:
    admin, user = pg_connect()
    name = f"icans_test_{secrets.token_hex(6)}"
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}", name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_postgresql_access_exclusive_lock_on_the_audit_table(trained):
    settings, _ = trained
    with _fresh_pg() as (url, name):
        settings = settings.model_copy(update=dict(store_url=url, auth="off"))
        store = open_store(settings)
        holding = threading.Event()

        def hold() -> None:
            conn, _ = pg_connect(name)
            try:
                conn.execute("BEGIN")
                conn.execute("LOCK TABLE audit_log IN ACCESS EXCLUSIVE MODE")
                holding.set()
                time.sleep(STALL_S)
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        with TestClient(create_app(settings)) as c:
            _ready(c)
            _stall_and_measure(c, threading.Thread(target=hold), holding, store, "postgresql")
        store.close()


class _FailingStore:
    """A working store whose audit writes fail while `failing` is set (a full disk)."""

    def __init__(self, real) -> None:
        self.real = real
        self.failing = threading.Event()

    def __getattr__(self, name):
        return getattr(self.real, name)

    def append_many(self, rows, before_commit=None):
        if self.failing.is_set():
            raise OSError(28, "No space left on device")
        return self.real.append_many(rows, before_commit=before_commit)

    def probe_write(self):
        if self.failing.is_set():
            raise OSError(28, "No space left on device")
        return self.real.probe_write()


def test_readiness_and_logs_under_a_failing_store(trained, tmp_path, caplog):
    settings, _ = trained
    settings = settings.model_copy(update=dict(store_url=f"sqlite:///{tmp_path / 'full.db'}", auth="off"))
    store = _FailingStore(open_store(settings))
    with TestClient(create_app(settings, store=store)) as c:
        _ready(c)
        assert c.post("/v1/risk", json=example_request()).status_code == 200
        store.failing.set()
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="icans_risk.serving"):
            statuses = [c.post("/v1/risk", json=example_request()).status_code for _ in range(300)]
            ready = c.get("/readyz")
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        print(
            f"\n[disk full] 300 requests: {statuses.count(503)} x 503, {statuses.count(200)} x 200; "
            f"/readyz {ready.status_code} {ready.json().get('reason')!r}; ERROR log lines {len(errors)}"
        )
        assert statuses == [503] * 300
        assert ready.status_code == 503 and "audit store cannot be written" in ready.json()["reason"]
        assert len(errors) <= 5, [r.getMessage() for r in errors]
        assert "icans_audit_store_writable 0.0" in c.get("/metrics").text
        store.failing.clear()
        deadline = time.time() + 15
        while c.get("/readyz").status_code != 200:
            assert time.time() < deadline, c.get("/readyz").json()
            time.sleep(0.1)
        assert c.post("/v1/risk", json=example_request()).status_code == 200
        assert "icans_audit_store_writable 1.0" in c.get("/metrics").text
    assert store.real.count() == 2  # the two answers given, nothing else
