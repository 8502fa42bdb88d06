"""Group commit of audit records: all land, each request learns only its own failure."""

from __future__ import annotations

import threading

import pytest

from serving.audit import AuditWriter
from serving.store import AuditRecord
from tests.helpers import make_settings, open_store


def _record(i: int, risk: float = 0.2) -> AuditRecord:
    return AuditRecord(
        request_id=f"r{i}", client_id="c", endpoint="/v1/risk", model_name="icans-risk", model_version="1",
        inputs={"age_years": 30.0}, risk=risk, risk_group="low", top_contributions=[], latency_ms=1.0,
    )


@pytest.fixture()
def store(tmp_path):
    return open_store(make_settings(tmp_path))


def test_concurrent_writers_all_commit(store):
    writer = AuditWriter(store)
    errors = []

    def work(k):
        for i in range(25):
            try:
                writer.write([_record(k * 100 + i)])
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(16)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    writer.close()
    assert errors == []
    assert store.count() == 400


def test_a_bad_record_fails_only_its_own_request(store):
    writer = AuditWriter(store)
    barrier = threading.Barrier(3)
    results: dict[str, object] = {}

    def work(name, rows):
        barrier.wait()
        try:
            writer.write(rows)
            results[name] = "ok"
        except Exception as exc:
            results[name] = exc

    threads = [
        threading.Thread(target=work, args=("good1", [_record(1)])),
        threading.Thread(target=work, args=("bad", [_record(2), _record(3, risk=float("nan"))])),
        threading.Thread(target=work, args=("good2", [_record(4)])),
    ]
    [t.start() for t in threads]
    [t.join() for t in threads]
    writer.close()
    assert results["good1"] == "ok" and results["good2"] == "ok"
    assert isinstance(results["bad"], ValueError)
    assert store.count() == 2  # the bad request's two records were written all-or-nothing


def test_async_submits_share_commits_and_fail_alone(store):
    """The async path: many requests awaiting at once all commit; a bad one fails only itself."""
    import asyncio

    writer = AuditWriter(store)

    async def main():
        good = [writer.submit([_record(i)]) for i in range(50)]
        bad = writer.submit([_record(99), _record(100, risk=float("inf"))])
        return await asyncio.gather(*good, bad, return_exceptions=True)

    results = asyncio.run(main())
    writer.close()
    assert results[:50] == [None] * 50
    assert isinstance(results[50], ValueError)
    assert store.count() == 50


def test_async_submit_times_out_without_blocking_the_loop():
    """A stuck store: the waiter gets TimeoutError after timeout_s while the loop keeps running."""
    import asyncio

    release = threading.Event()

    class StuckStore:
        def append_many(self, rows):
            release.wait(5)

    writer = AuditWriter(StuckStore(), timeout_s=0.3)
    ticks = []

    async def ticker():
        for _ in range(10):
            ticks.append(1)
            await asyncio.sleep(0.01)

    async def main():
        t = asyncio.create_task(ticker())
        with pytest.raises(TimeoutError):
            await writer.submit([_record(1)])
        during = len(ticks)  # counted when the wait ended, before the ticker could catch up
        await t
        return during

    during = asyncio.run(main())
    release.set()
    writer.close()
    assert during == 10  # the ticker ran to the end while submit was waiting: the loop was free


def test_a_record_whose_caller_gave_up_in_the_queue_is_never_written(store):
    """The store stalls longer than the caller waits: 503 for the caller, and no record, ever."""
    gate = threading.Event()

    class SlowStore:
        def __getattr__(self, name):
            return getattr(store, name)

        def append_many(self, rows, before_commit=None):
            gate.wait(5)
            store.append_many(rows, before_commit=before_commit)

    writer = AuditWriter(SlowStore(), timeout_s=0.4, store_timeout_s=0.05)
    first = threading.Thread(target=lambda: pytest.raises(TimeoutError, writer.write, [_record(1)]))
    first.start()  # claimed, then stuck in the insert: its caller gives up before the commit point
    import time

    time.sleep(0.1)
    with pytest.raises(TimeoutError):
        writer.write([_record(2)])  # queued behind it: abandoned in the queue
    first.join()
    gate.set()
    writer.write([_record(3)])
    writer.close()
    assert [r["request_id"] for chunk in store.iter_audit() for r in chunk] == ["r3"]


def _commit_then_fail(store, presence):
    """A store whose COMMIT succeeds but the client hears an error (the outcome is unknown)."""
    import sqlalchemy as sa

    class LostCommit:
        fail = True

        def __getattr__(self, name):
            return getattr(store, name)

        def append_many(self, rows, before_commit=None):
            store.append_many(rows, before_commit=before_commit)
            if LostCommit.fail:
                LostCommit.fail = False
                raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

        def audit_present(self, rows):
            return presence(rows)

    return LostCommit()


def test_an_unknown_commit_outcome_found_committed_gives_the_answer(store):
    writer = AuditWriter(_commit_then_fail(store, store.audit_present))
    writer.write([_record(1)])  # the rows are there: the answer is given
    writer.close()
    assert store.count() == 1


def test_an_unknown_commit_outcome_waits_until_the_store_can_tell(store):
    """The store cannot be asked at first: the caller keeps waiting, then gets its answer because
    the rows were in fact committed (no 503 for an audited answer, no record without one)."""
    calls = []

    def flaky_presence(rows):
        calls.append(1)
        if len(calls) < 3:
            raise OSError("connection refused")
        return store.audit_present(rows)

    writer = AuditWriter(_commit_then_fail(store, flaky_presence), probe_interval_s=0.05)
    writer.write([_record(1)])
    writer.close()
    assert len(calls) == 3 and store.count() == 1 and writer.unresolved == 0


def test_a_lost_commit_that_did_not_land_is_a_503(store):
    import sqlalchemy as sa

    class LostBeforeCommit:
        def __getattr__(self, name):
            return getattr(store, name)

        def append_many(self, rows, before_commit=None):
            before_commit()  # committing: the caller now waits for the outcome
            raise sa.exc.OperationalError("COMMIT", {}, Exception("server closed the connection"))

    writer = AuditWriter(LostBeforeCommit())
    with pytest.raises(sa.exc.OperationalError):
        writer.write([_record(1)])
    writer.close()
    assert store.count() == 0 and writer.unresolved == 0


def test_the_breaker_refuses_at_once_and_probes(store):
    import time

    broken = threading.Event()
    broken.set()

    class Flaky:
        def __getattr__(self, name):
            return getattr(store, name)

        def append_many(self, rows, before_commit=None):
            if broken.is_set():
                raise OSError("No space left on device")
            store.append_many(rows, before_commit=before_commit)

        def probe_write(self):
            if broken.is_set():
                raise OSError("No space left on device")

    writer = AuditWriter(Flaky(), probe_interval_s=0.05)
    with pytest.raises(OSError):
        writer.write([_record(1)])
    assert not writer.available and "OSError" in writer.reason
    t0 = time.perf_counter()
    from serving.audit import StoreUnavailable

    with pytest.raises(StoreUnavailable):
        writer.write([_record(2)])
    assert time.perf_counter() - t0 < 1.0  # refused without waiting for the store
    broken.clear()
    deadline = time.time() + 5
    while not writer.available and time.time() < deadline:
        time.sleep(0.02)
    writer.write([_record(3)])
    writer.close()
    assert writer.available and writer.reason is None
    assert [r["request_id"] for chunk in store.iter_audit() for r in chunk] == ["r3"]
