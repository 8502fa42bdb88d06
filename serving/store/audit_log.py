"""The append-only audit trail: one row per scored patient, written before the answer leaves.

Rows are inserted with one executemany of plain tuples (the hot path), the patient id is replaced
by a keyed hash, and several SQLite worker processes take turns on a lock file before writing.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import math
import os
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.store.strict_json import dumps
from serving.store.tables import AUDIT_COLUMNS, as_utc, audit_log


@dataclass(frozen=True)
class AuditRecord:
    """One scored patient. `patient_id` is hashed by the store and never written as given."""

    request_id: str
    client_id: str | None
    endpoint: str
    model_name: str
    model_version: str
    inputs: Mapping[str, Any]
    risk: float
    risk_group: str
    top_contributions: Any
    latency_ms: float
    patient_id: str | None = None
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    # the answer's model-development interval and P(another risk group); None without bootstrap models
    risk_low: float | None = None
    risk_high: float | None = None
    risk_group_change_probability: float | None = None


_AUDIT_INSERT_COLUMNS = tuple(c for c in AUDIT_COLUMNS if c != "id")
_AUDIT_JSON = frozenset({"inputs", "top_contributions"})
_AUDIT_INSERT_SQLITE = (
    f"INSERT INTO audit_log ({', '.join(_AUDIT_INSERT_COLUMNS)}) VALUES ({', '.join('?' for _ in _AUDIT_INSERT_COLUMNS)})"
)
_AUDIT_INSERT_PG = (
    f"INSERT INTO audit_log ({', '.join(_AUDIT_INSERT_COLUMNS)}) VALUES "
    f"({', '.join('%s::jsonb' if c in _AUDIT_JSON else '%s' for c in _AUDIT_INSERT_COLUMNS)})"
)


def _sqlite_time(value: datetime) -> str:
    """What SQLAlchemy's SQLite DateTime stores: naive UTC text (the table's UTCDateTime reads it back)."""
    return as_utc(value).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def hash_patient_id(patient_id: str, key: bytes) -> str:
    """HMAC-SHA256 hex: links one patient's records, but cannot be reversed or guessed without the key."""
    return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


class AuditLog:
    """The Store's audit-trail methods (a mixin: the engine and the write lock are set up by StoreCore)."""

    engine: Engine
    backend: str
    _hmac_key: bytes
    _lock_path: str | None
    _lock_fd: int | None
    _writer_pid: int | None
    _lock_guard: threading.Lock

    def hash_patient_id(self, patient_id: str) -> str:
        """Keyed hash of a patient id with this store's key (see the module-level function)."""
        return hash_patient_id(patient_id, self._hmac_key)

    def append(self, record: AuditRecord) -> None:
        """Write one audit row, committed before returning; raises on any failure (never drops)."""
        self.append_many([record])

    def append_many(self, records: Iterable[AuditRecord], before_commit: Callable[[], None] | None = None) -> None:
        """Write several rows in one transaction: all of them or (on any error) none.

        `before_commit` runs after the insert and before COMMIT; if it raises, the transaction is
        rolled back and its exception propagates (the audit writer's point of no return)."""
        sqlite = self.backend == "sqlite"
        times: dict[datetime, Any] = {}  # the records of one request share their time
        params = [self._audit_params(r, sqlite, times) for r in records]
        if not params:
            return
        # One executemany of plain tuples, JSON already serialised: a third of the CPU of the Core
        # insert's per-row bind processing, with the same stored values.
        sql = _AUDIT_INSERT_SQLITE if sqlite else _AUDIT_INSERT_PG
        with self._writer_turn(), self.engine.begin() as conn:
            if not sqlite:  # the session to end if this COMMIT's outcome is unknown (audit_present)
                self._writer_pid = _backend_pid(conn)
            conn.exec_driver_sql(sql, params)
            if before_commit is not None:
                before_commit()

    def _audit_keys(self, records: Iterable[AuditRecord]) -> dict[tuple[str, datetime], int]:
        """(request_id, time) -> number of rows: what identifies one request's records."""
        keys: dict[tuple[str, datetime], int] = {}
        for r in records:
            k = (r.request_id, as_utc(r.time))
            keys[k] = keys.get(k, 0) + 1
        return keys

    def _audit_match(self, keys: dict[tuple[str, datetime], int]) -> Any:
        return sa.or_(*(sa.and_(audit_log.c.request_id == rid, audit_log.c.time == t) for rid, t in keys))

    def audit_present(self, records: Sequence[AuditRecord]) -> int:
        """How many of these records are in the table, after a COMMIT whose outcome is unknown.

        Definitive: on PostgreSQL the session that sent the COMMIT is terminated first and gone
        before the rows are counted, so a COMMIT still in flight cannot land after the answer
        (SQLite commits in this process: when the call has returned, the outcome is on disk)."""
        keys = self._audit_keys(records)
        if not keys:
            return 0
        with self.engine.connect() as conn:
            pid = self._writer_pid
            if self.backend == "postgresql" and pid not in (None, _backend_pid(conn)):
                conn.exec_driver_sql("SELECT pg_terminate_backend(%(pid)s)", {"pid": pid})
                deadline = time.monotonic() + 30
                while conn.exec_driver_sql(
                    "SELECT 1 FROM pg_stat_activity WHERE pid = %(pid)s", {"pid": pid}
                ).first() is not None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"backend {pid} still running")
                    time.sleep(0.05)
                conn.rollback()
            found = conn.execute(sa.select(sa.func.count()).select_from(audit_log).where(self._audit_match(keys)))
            return int(found.scalar_one())

    def probe_write(self) -> None:
        """Raise unless an audit write could take its lock now (the audit breaker's probe): a write
        statement that changes nothing, rolled back; it waits as long as a real insert would."""
        with self._writer_turn(), self.engine.connect() as conn:
            with conn.begin() as tx:
                conn.exec_driver_sql("DELETE FROM audit_log WHERE 1 = 0")
                tx.rollback()

    @contextmanager
    def _writer_turn(self) -> Iterator[None]:
        """SQLite with several worker processes: take turns on a lock file before writing.

        SQLite's own busy handler sleeps 1, 2, 5, 10 ms... between retries, so a worker that finds
        another one committing (an fsync, ~4 ms here) waits ~8 ms; a blocking flock wakes as soon
        as the other commit ends. The busy timeout still covers writers that skip this lock."""
        if self._lock_path is None:
            yield
            return
        with self._lock_guard:  # one thread of this process at a time holds the descriptor
            if self._lock_fd is None:
                try:
                    self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
                except OSError:  # no lock file possible: SQLite's own locking (and error) decides
                    yield
                    return
            # blocking: the kernel wakes the waiter as soon as the holder lets go (polling with
            # LOCK_NB starved a worker behind a busy one: p99 330 ms at 2 workers). A writer stuck
            # while holding it cannot hang answers: AuditWriter's timeout gives 503.
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _audit_params(self, r: AuditRecord, sqlite: bool, times: dict[datetime, Any]) -> tuple[Any, ...]:
        """One record as the insert's parameters, in _AUDIT_INSERT_COLUMNS order (validated)."""
        inputs = r.inputs
        patient_id = r.patient_id
        if "patient_id" in inputs:  # the raw identifier never reaches the table
            inputs = dict(inputs)
            embedded = inputs.pop("patient_id")
            if patient_id is None:
                patient_id = embedded
            elif embedded is not None and embedded != patient_id:
                raise ValueError("AuditRecord.patient_id and inputs['patient_id'] disagree")
        if patient_id is not None and not isinstance(patient_id, str):
            raise TypeError("patient_id must be a string")
        if not (math.isfinite(r.risk) and math.isfinite(r.latency_ms)):
            raise ValueError("risk and latency_ms must be finite numbers")
        interval = (r.risk_low, r.risk_high, r.risk_group_change_probability)
        if any(v is not None and not math.isfinite(v) for v in interval):
            raise ValueError("the interval and the group-change probability must be finite numbers or None")
        return (
            (times[r.time] if r.time in times else times.setdefault(r.time, _sqlite_time(r.time)))
            if sqlite else as_utc(r.time),  # a naive time is UTC, not the database session's zone
            r.request_id,
            r.client_id,
            r.endpoint,
            r.model_name,
            str(r.model_version),
            None if patient_id is None else self.hash_patient_id(patient_id),
            dumps(inputs),
            float(r.risk),
            r.risk_group,
            dumps(r.top_contributions),
            float(r.latency_ms),
            *(None if v is None else float(v) for v in interval),
        )

    def count(self, since: datetime | None = None) -> int:
        """Audit rows with time >= since (all of them without since)."""
        q = sa.select(sa.func.count()).select_from(audit_log)
        if since is not None:
            q = q.where(audit_log.c.time >= since)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar_one())

    def iter_audit(
        self, since: datetime | None = None, chunk_size: int = 5000
    ) -> Generator[list[dict[str, Any]], None, None]:
        """Audit rows in insertion order, in chunks (server-side cursor on PostgreSQL)."""
        q = sa.select(audit_log).order_by(audit_log.c.id)
        if since is not None:
            q = q.where(audit_log.c.time >= since)
        with self.engine.connect() as conn:
            result = conn.execution_options(stream_results=True, yield_per=chunk_size).execute(q)
            for part in result.partitions():
                yield [dict(row._mapping) for row in part]


def _backend_pid(conn: sa.Connection) -> int:
    """The PostgreSQL session (psycopg's backend pid) behind a checked-out connection."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None  # None only once the connection has been invalidated or closed
    pid: int = dbapi.info.backend_pid
    return pid
