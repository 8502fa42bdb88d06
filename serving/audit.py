"""Group commit for the audit trail, with one invariant: exactly one audit record per answer
given, none for an answer not given, whatever the store does.

Every answer waits for its own record, but concurrent requests share one transaction (and one
fsync). Async routes `await submit(...)` (the event loop keeps serving while the writer thread
commits); synchronous callers use `write(...)`.

How the invariant holds when the store stalls or fails:

- The database gives up first: the store's own timeouts (SQLite busy timeout, PostgreSQL
  lock_timeout / statement_timeout, `ICANS_STORE_TIMEOUT_S`) are shorter than the caller's wait
  (`ICANS_AUDIT_TIMEOUT_S`), and the writer takes a record into a transaction only while its
  caller has at least two store timeouts left.
- A caller that gives up while its record is still queued (or inserted but not yet committing)
  abandons it: the writer skips it, or rolls the transaction back and commits the others.
- The commit itself is the point of no return: a caller whose record is committing waits for the
  outcome (bounded by the store timeouts). If the COMMIT fails, its outcome is unknown: the
  callers keep waiting while the writer asks the store whether the rows are there (PostgreSQL:
  after ending the session that sent the COMMIT), and the answer is given if and only if they are.
  Only a store that stays silent for twice the caller's wait leaves it unresolved: 503, an ERROR
  line and `unresolved` (the audit log is append-only, so nothing is deleted).
- A breaker: after a store failure new requests get 503 at once (no queueing, no wait) while the
  writer probes the store every `probe_interval_s`; a successful probe lets requests through again
  and the next commit closes the breaker (a failed one opens it again).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
import time
from typing import Any, Callable, Sequence

log = logging.getLogger("icans_risk.serving")

_STOP = object()
Done = Callable[[BaseException | None], None]

# item states
PENDING, CLAIMED, COMMITTING, DONE, ABANDONED = "pending", "claimed", "committing", "done", "abandoned"


class StoreUnavailable(Exception):
    """The audit store cannot be written now (the breaker is open): no answer is given."""


class _Abandoned(Exception):
    """Raised by the commit point: some caller gave up, roll the transaction back."""


class _Item:
    __slots__ = ("rows", "finished", "deadline", "state")

    def __init__(self, rows: Sequence[Any], finished: Done, deadline: float) -> None:
        self.rows = rows
        self.finished = finished
        self.deadline = deadline
        self.state = PENDING


def is_store_failure(exc: BaseException) -> bool:
    """A failure of the store itself (locked, unreachable, disk full, timed out), as opposed to a
    record it refused (a bad value): the former opens the breaker, the latter fails one request."""
    if isinstance(exc, (OSError, TimeoutError, StoreUnavailable)):
        return True
    try:
        import sqlalchemy as sa
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.InternalError)):
        return True
    return isinstance(exc, sa.exc.DBAPIError) and bool(exc.connection_invalidated)


class AuditWriter:
    def __init__(
        self,
        store: Any,
        max_batch: int = 512,
        timeout_s: float = 10.0,
        store_timeout_s: float | None = None,
        probe_interval_s: float = 1.0,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.store = store
        self.max_batch = max_batch
        self.timeout_s = timeout_s
        # the longest one store attempt can take (its own timeouts); a record is only taken into a
        # transaction while its caller has twice that left
        self.store_timeout_s = store_timeout_s if store_timeout_s is not None else timeout_s / 4
        self.probe_interval_s = probe_interval_s
        self.on_change = on_change
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._open = False  # the breaker
        self._reason: str | None = None
        self._next_probe = 0.0
        self.unresolved = 0  # records possibly stored for answers not given (should stay 0)
        self._checked = "before_commit" in _parameters(getattr(store, "append_many", None))
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()

    # -- state seen by readiness and the routes ---------------------------------------------------

    @property
    def available(self) -> bool:
        return not self._open

    @property
    def reason(self) -> str | None:
        """Why the audit store cannot be written (None while it can)."""
        return self._reason if self._open else None

    # -- callers ------------------------------------------------------------------------------------

    def write(self, rows: Sequence[Any]) -> None:
        """Block until `rows` are committed; raise what the store raised if they were not."""
        if self._open:
            raise StoreUnavailable(self._reason or "the audit store is unavailable")
        done = threading.Event()
        outcome: list[BaseException | None] = [None]

        def finished(error: BaseException | None) -> None:
            outcome[0] = error
            done.set()

        item = _Item(rows, finished, time.monotonic() + self.timeout_s)
        self._queue.put(item)
        if not done.wait(self.timeout_s):
            if self._give_up(item):
                raise self._timeout()
            done.wait()  # committing: the outcome comes within the store's own timeouts
        if outcome[0] is not None:
            raise outcome[0]

    async def submit(self, rows: Sequence[Any]) -> None:
        """Wait (without blocking the event loop) until `rows` are committed; raise as `write` does."""
        if self._open:  # the breaker: 503 at once, nothing queued
            raise StoreUnavailable(self._reason or "the audit store is unavailable")
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def finished(error: BaseException | None) -> None:
            loop.call_soon_threadsafe(_settle, future, error)

        item = _Item(rows, finished, time.monotonic() + self.timeout_s)
        self._queue.put(item)

        def expire() -> None:
            if self._give_up(item):
                _settle(future, self._timeout())
            # else: the record is being committed; the writer settles the future

        timer = loop.call_later(self.timeout_s, expire)  # a plain timer: asyncio.wait_for costs ~4x more
        try:
            await future
        finally:
            timer.cancel()

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=self.timeout_s)

    def _timeout(self) -> TimeoutError:
        return TimeoutError(f"audit write not committed within {self.timeout_s:.0f} s")

    def _give_up(self, item: _Item) -> bool:
        """The caller's wait is over: True if its record will never be written (answer 503)."""
        with self._lock:
            if item.state in (PENDING, CLAIMED):
                item.state = ABANDONED
                return True
            return item.state == ABANDONED

    # -- the writer thread --------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                item = self._queue.get(timeout=self.probe_interval_s if self._open else None)
            except queue.Empty:
                item = None
            batch: list[_Item] = []
            stop = item is _STOP
            if item is not None and not stop:
                batch.append(item)
                while len(batch) < self.max_batch:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
            try:
                if self._open:
                    for it in batch:  # queued before the breaker opened: refused, never written
                        self._finish(it, StoreUnavailable(self._reason or "the audit store is unavailable"), ABANDONED)
                    self._maybe_probe()
                elif batch:
                    self._flush(batch)
            except BaseException as exc:  # the writer thread must survive anything
                log.exception("audit writer: unexpected error (%s)", type(exc).__name__)
                for it in batch:
                    if it.state not in (DONE, ABANDONED):
                        self._finish(it, exc, ABANDONED)
            if stop:
                return

    def _claim(self, batch: list[_Item]) -> list[_Item]:
        """Take into the transaction the records whose callers still wait long enough for the store
        to give up first; the others are refused now (their callers get 503 without waiting)."""
        live = []
        latest = time.monotonic() + 2 * self.store_timeout_s
        late = []
        with self._lock:
            for it in batch:
                if it.state != PENDING:
                    continue  # abandoned while queued: never written
                if it.deadline < latest:
                    it.state = ABANDONED
                    late.append(it)
                else:
                    it.state = CLAIMED
                    live.append(it)
        for it in late:
            self._tell(it, self._timeout())
        return live

    def _flush(self, batch: list[_Item]) -> None:
        live = self._claim(batch)
        while live:
            rows = [row for it in live for row in it.rows]
            try:
                if self._checked:
                    self.store.append_many(rows, before_commit=lambda: self._commit_point(live))
                else:  # a store without a commit point (test doubles): see _committed
                    self.store.append_many(rows)
            except _Abandoned:  # rolled back: commit the records whose callers still wait
                live = self._claim_again(live)
                continue
            except BaseException as exc:  # handed to the waiting requests
                committing = any(it.state == COMMITTING for it in live)
                if committing:
                    self._commit_unknown(live, exc)
                elif is_store_failure(exc):
                    self._failed(exc)
                    for it in live:
                        self._finish(it, exc, ABANDONED)
                elif len(live) > 1:  # one request's bad record must not fail the others
                    for it in live:
                        with self._lock:
                            if it.state == CLAIMED:
                                it.state = PENDING
                        self._flush([it])
                else:
                    self._finish(live[0], exc, ABANDONED)
                return
            self._committed(live)
            return

    def _commit_point(self, live: list[_Item]) -> None:
        """Just before COMMIT: every caller must still be waiting, and from now on they wait for the
        outcome (a caller that gave up during the insert makes the writer roll back and retry)."""
        with self._lock:
            if any(it.state != CLAIMED for it in live):
                raise _Abandoned()
            for it in live:
                it.state = COMMITTING

    def _claim_again(self, live: list[_Item]) -> list[_Item]:
        with self._lock:
            for it in live:
                if it.state == CLAIMED:
                    it.state = PENDING
        return self._claim(live)

    def _committed(self, live: list[_Item]) -> None:
        self._succeeded()
        orphans = []
        with self._lock:
            for it in live:
                if it.state == ABANDONED:  # only with a store without a commit point (test doubles)
                    orphans.append(it)
                else:
                    it.state = DONE
        for it in live:
            if it.state == DONE:
                self._tell(it, None)
        if orphans:
            self._orphaned(sum(len(it.rows) for it in orphans), "its caller gave up during the commit")

    def _commit_unknown(self, live: list[_Item], exc: BaseException) -> None:
        """The COMMIT failed, so its outcome is unknown: the callers (who wait while their records
        are committing) learn it from the store itself, asked again until it answers."""
        rows = [row for it in live for row in it.rows]
        self._failed(exc)
        cap = max(it.deadline for it in live) + self.timeout_s
        present = None
        while present is None:
            try:
                present = self.store.audit_present(rows)
            except BaseException:  # the store is still away: ask again
                if time.monotonic() > cap:
                    break
                time.sleep(min(self.probe_interval_s, 0.2))
        if present == len(rows):
            log.warning("audit: a failed COMMIT had in fact committed %d records; their answers are given", len(rows))
            self._committed(live)
            return
        if present is None:  # cannot tell even after twice the caller's wait: 503, and say so
            self._orphaned(len(rows), "the commit's outcome is unknown (the store did not answer)")
        for it in live:
            self._finish(it, exc, ABANDONED)

    def _orphaned(self, n: int, why: str) -> None:
        self.unresolved += n
        log.error("audit: %d records may be in the store for answers that were not given: %s", n, why)

    def _maybe_probe(self) -> None:
        now = time.monotonic()
        if now < self._next_probe:
            return
        probe = getattr(self.store, "probe_write", None)
        try:
            if probe is not None:
                probe()
        except BaseException as exc:
            self._failed(exc)
            return
        with self._lock:  # half-open: requests go through; the next commit closes it or opens it again
            self._open = False
        log.warning("audit store: probe succeeded, accepting requests again")
        if self.on_change:
            self.on_change(True)

    def _failed(self, exc: BaseException) -> None:
        reason = f"the audit store cannot be written ({type(exc).__name__})"
        self._next_probe = time.monotonic() + self.probe_interval_s
        if self._open:
            return
        with self._lock:
            self._open, self._reason = True, reason
        log.error("%s: scoring answers 503 until it can; probing every %.1f s", reason, self.probe_interval_s)
        if self.on_change:
            self.on_change(False)

    def _succeeded(self) -> None:
        if self._reason is not None and not self._open:
            self._reason = None
            log.warning("audit store: writes succeed again")

    def _finish(self, it: _Item, error: BaseException | None, state: str) -> None:
        with self._lock:
            it.state = state
        self._tell(it, error)

    @staticmethod
    def _tell(it: _Item, error: BaseException | None) -> None:
        try:
            it.finished(error)
        except RuntimeError:  # the waiter's event loop has closed (shutdown): nobody to tell
            pass


def _parameters(fn: Any) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():  # the waiter timed out or was cancelled
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
