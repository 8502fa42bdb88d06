"""Group commit of audit records: all land, each request learns only its own failure."""

from __future__ import annotations

import threading

import pytest

from serving.audit import AuditWriter
from serving.store import AuditRecord
from tests.conftest import make_settings, open_store


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
