"""Group commit for the audit trail: every answer waits for its own record, but concurrent
requests share one transaction (and one fsync), so the audit costs little more under load
than one insert.

A request's records are written before its answer leaves (the caller waits until the batch
that holds them is committed) and a failure reaches exactly the requests whose records failed.
Async routes `await submit(...)`: the event loop keeps serving while the writer thread commits,
with no threadpool hop per request; synchronous callers use `write(...)`.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable, Sequence

_STOP = object()
Done = Callable[[BaseException | None], None]


class AuditWriter:
    def __init__(self, store: Any, max_batch: int = 512, timeout_s: float = 10.0) -> None:
        self.store = store
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    def write(self, rows: Sequence[Any]) -> None:
        """Block until `rows` are committed; raise what the store raised if they were not."""
        done = threading.Event()
        outcome: list[BaseException | None] = [None]

        def finished(error: BaseException | None) -> None:
            outcome[0] = error
            done.set()

        self._queue.put((rows, finished))
        if not done.wait(self.timeout_s):
            raise TimeoutError(f"audit write not committed within {self.timeout_s:.0f} s")
        if outcome[0] is not None:
            raise outcome[0]

    async def submit(self, rows: Sequence[Any]) -> None:
        """Wait (without blocking the event loop) until `rows` are committed; raise as `write` does."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def finished(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        self._queue.put((rows, finished))
        timer = loop.call_later(  # a plain timer: asyncio.wait_for costs ~4x more per request
            self.timeout_s, _settle, future, TimeoutError(f"audit write not committed within {self.timeout_s:.0f} s")
        )
        try:
            await future
        finally:
            timer.cancel()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=self.timeout_s)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            self._flush(batch)
            if stop:
                return

    def _flush(self, batch: list[tuple[Sequence[Any], Done]]) -> None:
        try:
            self.store.append_many([row for rows, _ in batch for row in rows])
            error: BaseException | None = None
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting requests
            if len(batch) > 1:  # one request's bad record must not fail the others
                for item in batch:
                    self._flush([item])
                return
            error = exc
        for _, finished in batch:
            try:
                finished(error)
            except RuntimeError:  # the waiter's event loop has closed (shutdown): nobody to tell
                pass


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the waiter timed out or was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
