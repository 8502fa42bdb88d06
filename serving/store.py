"""The service's own store: API keys and the append-only audit trail, behind one SQLAlchemy engine.

SQLite (WAL) next to the service by default, PostgreSQL in production, selected by URL. The schema
is owned by the Alembic environment shipped in serving/migrations and applied by `Store.migrate()`;
no DDL lives in this module. Nothing here touches the database until a method is called.
"""

from __future__ import annotations

import csv
import fcntl
import hashlib
import hmac
import math
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from serving.scopes import SCOPES, Scope

ExportFormat = Literal["csv", "parquet"]
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# The newest migration's revision (a test keeps it equal to Alembic's head): a store already
# there starts without importing Alembic (~0.7 s of every worker's cold start).
SCHEMA_HEAD = "0005_monitoring_runs"

TOKEN_PREFIX = "icr_"
_KEY_ID_BYTES = 8  # 16 hex characters: an identifier, not a secret
_SECRET_BYTES = 32  # token_urlsafe(32): 256 bits, 43 characters
_TOKEN = re.compile(r"icr_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")
_TOKEN_LEN = len(TOKEN_PREFIX) + 2 * _KEY_ID_BYTES + 1 + 43
_CLIENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@ -]{0,199}")
_MIN_HMAC_KEY = 16
_CACHE_MAX = 10_000
_PG_MIGRATION_LOCK = 0x1CA5_0001  # pg_advisory_xact_lock id: one migrator at a time


# --------------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the service sees it: never the secret, never its hash."""

    key_id: str
    client: str
    scope: Scope
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None

    def allows(self, required: Scope) -> bool:
        """Admin implies every scope; a revoked key allows nothing."""
        if self.revoked:
            return False
        return self.scope == "admin" or required == self.scope


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


# --------------------------------------------------------------------------------------------------
# Table definitions used for queries (the schema itself is created by the migrations)


class UTCDateTime(sa.TypeDecorator):
    """Timezone-aware UTC in Python on both backends (SQLite has no time zones: stored as naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_meta = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    _meta,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("client", sa.String(200), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)
audit_log = sa.Table(
    "audit_log",
    _meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("client_id", sa.String(200)),
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("patient_hash", sa.String(64)),
    sa.Column("inputs", _JSON, nullable=False),
    sa.Column("risk", sa.Float(), nullable=False),
    sa.Column("risk_group", sa.String(32), nullable=False),
    sa.Column("top_contributions", _JSON, nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
)
AUDIT_COLUMNS: tuple[str, ...] = tuple(c.name for c in audit_log.columns)

# NEW (issue 6): CDS Hooks feedback and the CDS client JWT replay cache (migration 0003).
CDS_CARD_ENDPOINT = "/cds-services/icans-risk"
FEEDBACK_OUTCOMES: tuple[str, ...] = ("accepted", "overridden")
cds_feedback = sa.Table(
    "cds_feedback",
    _meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("card_uuid", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", UTCDateTime(), nullable=False),
    sa.Column("override_reason", _JSON),
    sa.Column("user_comment", sa.Text()),
    sa.Column("accepted_suggestions", _JSON),
    sa.Column("client_id", sa.String(200)),
)
cds_jti = sa.Table(
    "cds_jti",
    _meta,
    sa.Column("jti_hash", sa.String(64), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)


@dataclass(frozen=True)
class FeedbackRecord:
    """One CDS Hooks feedback entry for a card this service returned (its uuid is the audit request_id)."""

    card_uuid: str
    outcome: str  # accepted | overridden
    outcome_timestamp: datetime
    override_reason: Mapping[str, Any] | None = None  # the Coding the user chose
    user_comment: str | None = None
    accepted_suggestions: list[Any] | None = None
    client_id: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


# --------------------------------------------------------------------------------------------------
# Helpers


CACHE_MISS = object()  # Store.verify_cached: the key is not in the cache
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


def _dumps(obj: Any) -> str:
    """Strict JSON, sorted and compact (every JSON column and export): NaN and Infinity are refused
    rather than stored as invalid JSON (orjson alone would write them as null)."""
    _require_finite(obj)
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=_json_default).decode()
    except orjson.JSONEncodeError as exc:  # the hook refused a NaN: a ValueError, as above
        if isinstance(exc.__cause__, ValueError):
            raise exc.__cause__ from None
        raise


def _require_finite(obj: Any) -> None:
    """Refuse NaN and +-Infinity anywhere in a JSON document (one loop per container: hot path)."""
    if isinstance(obj, dict):
        values: Iterable[Any] = obj.values()
    elif isinstance(obj, (list, tuple)):
        values = obj
    else:
        values = (obj,)
    for v in values:
        if v.__class__ is float:
            if v - v != 0.0:  # NaN and +-inf give NaN here, every finite float 0.0
                raise ValueError("Out of range float values are not JSON compliant")
        elif isinstance(v, (dict, list, tuple)):
            _require_finite(v)
        elif isinstance(v, float) and not math.isfinite(v):  # float subclasses (numpy.float64)
            raise ValueError("Out of range float values are not JSON compliant")


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the store never writes local time)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy scalars (float32 too)
        value = obj.item()
    elif hasattr(obj, "tolist"):  # numpy arrays
        value = obj.tolist()
    else:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
    _require_finite(value)  # orjson would write a NaN returned from here as null
    return value


def hash_patient_id(patient_id: str, key: bytes) -> str:
    """HMAC-SHA256 hex: links one patient's records, but cannot be reversed or guessed without the key."""
    return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def _secret_hash(salt: bytes, secret: str) -> str:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).hexdigest()


def parse_token(token: object) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed token, else None; never raises."""
    if not isinstance(token, str) or len(token) != _TOKEN_LEN:
        return None
    m = _TOKEN.fullmatch(token)
    return (m.group(1), m.group(2)) if m else None


def normalise_url(url: str) -> sa.URL:
    """`postgresql://` and `postgres://` mean psycopg 3 here (psycopg2 is not a dependency)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() == "sqlite" and u.database in (None, "", ":memory:"):
        raise ValueError("the store needs a SQLite file (sqlite:///path/to/file.db), not an in-memory database")
    if u.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported store backend {u.get_backend_name()!r}: use sqlite or postgresql")
    return u


def _sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int, sync: str = "full") -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        # FULL: an audit row that was acknowledged survives power loss; NORMAL: a crash of the process
        cur.execute("PRAGMA synchronous = FULL" if sync == "full" else "PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def _make_engine(
    url: sa.URL,
    *,
    busy_timeout_ms: int,
    for_migration: bool = False,
    sync: str = "full",
    pg_timeout_ms: int | None = None,
    **pool: Any,
) -> Engine:
    if url.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = dict(connect_args={"check_same_thread": False})
        if for_migration:
            kwargs["poolclass"] = NullPool
        else:
            kwargs.update(pool)
        engine = sa.create_engine(url, json_serializer=_dumps, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            if for_migration:
                dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
            _sqlite_pragmas(dbapi_connection, busy_timeout_ms, sync)

        if for_migration:

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                # Transactional DDL and one migrator at a time: take the write lock up front.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if for_migration:
        return sa.create_engine(url, poolclass=NullPool, json_serializer=_dumps)
    connect_args: dict[str, Any] = {}
    if pg_timeout_ms is not None:
        # The database gives up before the service's caller does: a lock (LOCK TABLE, a long
        # migration) or a stuck statement fails after pg_timeout_ms instead of holding the request;
        # a server that does not answer at all fails the connection attempt just as soon.
        given = url.query.get("options", "")  # the URL's own options (search_path, ...) are kept
        given = " ".join(given) if isinstance(given, tuple) else given
        timeouts = f"-c lock_timeout={int(pg_timeout_ms)} -c statement_timeout={int(pg_timeout_ms)}"
        connect_args = dict(
            options=f"{given} {timeouts}".strip(), connect_timeout=max(2, math.ceil(pg_timeout_ms / 1000))
        )
    engine = sa.create_engine(url, json_serializer=_dumps, pool_pre_ping=True, connect_args=connect_args, **pool)
    if sync == "normal":

        @event.listens_for(engine, "connect")
        def _on_pg_connect(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cur:
                cur.execute("SET synchronous_commit TO off")
            dbapi_connection.commit()

    return engine


# --------------------------------------------------------------------------------------------------
# The store


class Store:
    """API keys and audit records over one thread-safe engine (the app's key checks call it on the
    event loop only for cache hits; database work runs in the threadpool or the audit writer thread)."""

    def __init__(
        self,
        url: str,
        hmac_key: bytes,
        *,
        key_cache_ttl_s: float = 2.0,
        pool_size: int = 5,
        max_overflow: int = 10,
        sqlite_busy_timeout_ms: int = 15_000,
        sync: Literal["full", "normal"] = "full",
        timeout_s: float | None = None,
    ) -> None:
        """`timeout_s` (the service: ICANS_STORE_TIMEOUT_S) bounds every statement's wait for a lock:
        SQLite's busy timeout and PostgreSQL's lock_timeout and statement_timeout; without it (the
        admin CLI) SQLite waits `sqlite_busy_timeout_ms` and PostgreSQL as long as it takes."""
        if not isinstance(hmac_key, bytes) or len(hmac_key) < _MIN_HMAC_KEY:
            raise ValueError(f"the audit HMAC key must be at least {_MIN_HMAC_KEY} bytes")
        if key_cache_ttl_s < 0:
            raise ValueError("key_cache_ttl_s must be >= 0")
        if sync not in ("full", "normal"):
            raise ValueError("sync must be 'full' or 'normal'")
        self.url = normalise_url(url)
        self._hmac_key = hmac_key
        if timeout_s is not None:
            if timeout_s <= 0:
                raise ValueError("timeout_s must be > 0")
            sqlite_busy_timeout_ms = int(timeout_s * 1000)
        self.timeout_s = timeout_s
        self._busy_timeout_ms = sqlite_busy_timeout_ms
        self.key_cache_ttl_s = key_cache_ttl_s
        self.engine = _make_engine(
            self.url, busy_timeout_ms=sqlite_busy_timeout_ms, pool_size=pool_size, max_overflow=max_overflow,
            sync=sync, pg_timeout_ms=None if timeout_s is None else int(timeout_s * 1000),
        )
        self._lock_path = f"{self.url.database}.write-lock" if self.backend == "sqlite" else None
        self._lock_fd: int | None = None
        self._writer_pid: int | None = None
        self._lock_guard = threading.Lock()
        self._cache: dict[str, tuple[float, tuple[KeyRecord, bytes, str] | None]] = {}
        self._cache_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({self.safe_url!r})"

    @property
    def safe_url(self) -> str:
        """The URL with any password masked, for logs and error messages."""
        return self.url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        return self.url.get_backend_name()

    def close(self) -> None:
        self.engine.dispose()
        if self._lock_guard.acquire(timeout=self._busy_timeout_ms / 1000):  # never hang a shutdown
            try:
                if self._lock_fd is not None:
                    os.close(self._lock_fd)
                    self._lock_fd = None
            finally:
                self._lock_guard.release()

    # -- schema -------------------------------------------------------------------------------

    def migrate(self) -> None:
        """`alembic upgrade head` with the packaged migrations; idempotent, safe from several processes.

        Runs in one transaction under a lock (SQLite: BEGIN IMMEDIATE; PostgreSQL: an advisory
        transaction lock), so two workers starting at once cannot both create the schema.
        """
        if self._at_head():
            return
        from alembic import command
        from alembic.config import Config

        if self.backend == "sqlite":
            Path(self.url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.render_as_string(hide_password=False).replace("%", "%%"))
        engine = _make_engine(self.url, busy_timeout_ms=self._busy_timeout_ms, for_migration=True)
        try:
            with engine.begin() as conn:
                if self.backend == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        finally:
            engine.dispose()

    def _at_head(self) -> bool:
        """True when the store's recorded revision is SCHEMA_HEAD (any doubt: False, and Alembic decides)."""
        try:
            with self.engine.connect() as conn:
                rows = conn.exec_driver_sql("SELECT version_num FROM alembic_version").all()
        except sa.exc.DBAPIError:  # no such table yet (or no database): let Alembic create it
            return False
        return [r[0] for r in rows] == [SCHEMA_HEAD]

    def current_revision(self) -> str | None:
        """The applied migration id (None before the first migrate)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def ping(self) -> None:
        """Raise if the database cannot be reached (for readiness checks)."""
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    # -- API keys -----------------------------------------------------------------------------

    def create_key(self, client: str, scope: Scope) -> tuple[KeyRecord, str]:
        """A new key for `client`; the token is returned once and only its salted hash is stored.

        The secret is 256 random bits, so a single HMAC-SHA256 with a per-key salt is enough:
        slow KDFs (bcrypt, scrypt, argon2) defend low-entropy passwords against guessing, which
        a random token is not, and they would cost milliseconds on every request.
        """
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        if not isinstance(client, str) or not _CLIENT.fullmatch(client):
            raise ValueError(
                "client must be 1-200 characters: letters, digits and . _ : @ - or space, "
                "starting with a letter or digit"
            )
        key_id = secrets.token_hex(_KEY_ID_BYTES)
        secret = secrets.token_urlsafe(_SECRET_BYTES)
        salt = secrets.token_bytes(16)
        record = KeyRecord(key_id=key_id, client=client, scope=scope, created_at=datetime.now(UTC))
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    client=client,
                    scope=scope,
                    salt=salt.hex(),
                    hash=_secret_hash(salt, secret),
                    created_at=record.created_at,
                    revoked_at=None,
                )
            )
        with self._cache_lock:
            self._cache.pop(key_id, None)
        return record, f"{TOKEN_PREFIX}{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> KeyRecord:
        """Revoke now (idempotent: an already revoked key keeps its first revocation time).

        This process stops accepting it at once; other processes within `key_cache_ttl_s`.
        Raises KeyError for an unknown key id.
        """
        with self.engine.begin() as conn:
            conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=datetime.now(UTC))
            )
            row = conn.execute(sa.select(*_KEY_COLUMNS).where(api_keys.c.key_id == key_id)).first()
        with self._cache_lock:
            self._cache.pop(key_id, None)
        if row is None:
            raise KeyError(key_id)
        return _key_record(row)

    def list_keys(self) -> list[KeyRecord]:
        """Every key, oldest first, revoked ones included (never a secret or a hash)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(*_KEY_COLUMNS).order_by(api_keys.c.created_at, api_keys.c.key_id)
            ).all()
        return [_key_record(r) for r in rows]

    def verify(self, token: object) -> KeyRecord | None:
        """The key behind a bearer token, or None (malformed, unknown, wrong secret or revoked).

        Malformed input never raises; a database failure does (the caller answers 503, not 401).
        Lookups are cached for `key_cache_ttl_s`, so the hot path rarely touches the database.
        """
        parsed = parse_token(token)
        if parsed is None:
            return None
        return self._check(self._lookup(parsed[0]), parsed[1])

    def verify_cached(self, token: object) -> KeyRecord | None | object:
        """`verify` answered from the cache alone, or `CACHE_MISS` when the database must be asked
        (async callers then call `verify` off the event loop)."""
        parsed = parse_token(token)
        if parsed is None:
            return None
        entry = self._cached(parsed[0])
        return CACHE_MISS if entry is CACHE_MISS else self._check(entry, parsed[1])  # type: ignore[arg-type]

    @staticmethod
    def _check(entry: tuple[KeyRecord, bytes, str] | None, secret: str) -> KeyRecord | None:
        if entry is None:
            return None
        record, salt, expected = entry
        if not hmac.compare_digest(_secret_hash(salt, secret), expected):
            return None
        return None if record.revoked else record

    def _cached(self, key_id: str) -> tuple[KeyRecord, bytes, str] | None | object:
        if self.key_cache_ttl_s > 0:
            with self._cache_lock:
                hit = self._cache.get(key_id)
            if hit is not None and hit[0] > time.monotonic():
                return hit[1]
        return CACHE_MISS

    def _lookup(self, key_id: str) -> tuple[KeyRecord, bytes, str] | None:
        now = time.monotonic()
        hit = self._cached(key_id)
        if hit is not CACHE_MISS:
            return hit  # type: ignore[return-value]
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(*_KEY_COLUMNS, api_keys.c.salt, api_keys.c.hash).where(api_keys.c.key_id == key_id)
            ).first()
        entry = None if row is None else (_key_record(row), bytes.fromhex(row.salt), row.hash)
        if self.key_cache_ttl_s > 0:
            with self._cache_lock:
                if len(self._cache) >= _CACHE_MAX:
                    self._cache.clear()  # bounded: random unknown key ids cannot grow it forever
                self._cache[key_id] = (now + self.key_cache_ttl_s, entry)
        return entry

    # -- audit trail --------------------------------------------------------------------------

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
                self._writer_pid = conn.connection.dbapi_connection.info.backend_pid
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
            if self.backend == "postgresql" and pid not in (None, conn.connection.dbapi_connection.info.backend_pid):
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
        return (
            (times[r.time] if r.time in times else times.setdefault(r.time, _sqlite_time(r.time)))
            if sqlite else as_utc(r.time),  # a naive time is UTC, not the database session's zone
            r.request_id,
            r.client_id,
            r.endpoint,
            r.model_name,
            str(r.model_version),
            None if patient_id is None else self.hash_patient_id(patient_id),
            _dumps(inputs),
            float(r.risk),
            r.risk_group,
            _dumps(r.top_contributions),
            float(r.latency_ms),
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

    def export(
        self,
        since: datetime | None,
        path: Path,
        fmt: ExportFormat = "csv",
        *,
        chunk_size: int = 5000,
    ) -> int:
        """Write audit rows (time >= since) to a new CSV or Parquet file; returns the row count.

        Streams in chunks; JSON columns are written as JSON text. Refuses to overwrite: the file is
        written under a temporary name and linked into place only if `path` still does not exist,
        so a failed export leaves nothing behind.
        """
        if fmt not in get_args(ExportFormat):
            raise ValueError(f"format must be csv or parquet, not {fmt!r}")
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"directory {path.parent} does not exist")
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
        try:
            with closing(self.iter_audit(since, chunk_size)) as chunks:  # the cursor closes on any error
                n = _write_csv(chunks, tmp) if fmt == "csv" else _write_parquet(chunks, tmp)
            _publish(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return n


    # -- NEW (issue 6): CDS Hooks feedback and JWT replay cache ------------------------------------

    def card_audit(self, card_uuid: str, endpoint: str = CDS_CARD_ENDPOINT) -> dict[str, Any] | None:
        """The audit row of a CDS card (request_id == its uuid), or None if this service never returned it."""
        q = (
            sa.select(audit_log.c.request_id, audit_log.c.client_id, audit_log.c.time, audit_log.c.model_version,
                      audit_log.c.risk, audit_log.c.risk_group)
            .where(audit_log.c.request_id == card_uuid, audit_log.c.endpoint == endpoint)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else dict(row._mapping)

    def record_feedback_many(self, records: Iterable[FeedbackRecord]) -> int:
        """Store feedback entries in one transaction (all or none); returns how many."""
        rows = []
        for r in records:
            if r.outcome not in FEEDBACK_OUTCOMES:
                raise ValueError(f"outcome must be one of {', '.join(FEEDBACK_OUTCOMES)}")
            rows.append(
                dict(
                    received_at=r.received_at,
                    card_uuid=r.card_uuid,
                    outcome=r.outcome,
                    outcome_timestamp=r.outcome_timestamp,
                    override_reason=None if r.override_reason is None else dict(r.override_reason),
                    user_comment=r.user_comment,
                    accepted_suggestions=r.accepted_suggestions,
                    client_id=r.client_id,
                )
            )
        if rows:
            with self.engine.begin() as conn:
                conn.execute(cds_feedback.insert(), rows)
        return len(rows)

    def record_feedback(
        self,
        card_uuid: str,
        outcome: str,
        override_reason: Mapping[str, Any] | None = None,
        *,
        outcome_timestamp: datetime | None = None,
        user_comment: str | None = None,
        accepted_suggestions: list[Any] | None = None,
        client_id: str | None = None,
    ) -> None:
        """Store one feedback entry (accepted / overridden) against a card uuid."""
        self.record_feedback_many(
            [
                FeedbackRecord(
                    card_uuid=card_uuid,
                    outcome=outcome,
                    outcome_timestamp=outcome_timestamp or datetime.now(UTC),
                    override_reason=override_reason,
                    user_comment=user_comment,
                    accepted_suggestions=accepted_suggestions,
                    client_id=client_id,
                )
            ]
        )

    def feedback_for(self, card_uuid: str) -> list[dict[str, Any]]:
        """Feedback entries of one card, oldest first."""
        q = sa.select(cds_feedback).where(cds_feedback.c.card_uuid == card_uuid).order_by(cds_feedback.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def claim_jti(self, key: str, expires_at: datetime) -> bool:
        """True the first time `key` (a hashed issuer + jti) is seen before it expires; False on a replay.

        Shared by every process using this store. Expired entries are purged at most once a minute.
        """
        now = datetime.now(UTC)
        if now.timestamp() - getattr(self, "_jti_purged_at", 0.0) > 60:
            self._jti_purged_at = now.timestamp()
            with self.engine.begin() as conn:
                conn.execute(cds_jti.delete().where(cds_jti.c.expires_at < now))
        try:
            with self.engine.begin() as conn:
                conn.execute(cds_jti.insert().values(jti_hash=key, expires_at=expires_at))
            return True
        except sa.exc.IntegrityError:
            with self.engine.begin() as conn:  # an expired entry not yet purged may be reused
                result = conn.execute(
                    cds_jti.update()
                    .where(cds_jti.c.jti_hash == key, cds_jti.c.expires_at < now)
                    .values(expires_at=expires_at)
                )
            return result.rowcount == 1


_KEY_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.client,
    api_keys.c.scope,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


def _key_record(row: Any) -> KeyRecord:
    return KeyRecord(
        key_id=row.key_id,
        client=row.client,
        scope=row.scope,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    out["inputs"] = _dumps(row["inputs"])
    out["top_contributions"] = _dumps(row["top_contributions"])
    return out


def _write_csv(chunks: Iterator[list[dict[str, Any]]], path: Path) -> int:
    n = 0
    with path.open("x", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=AUDIT_COLUMNS)
        w.writeheader()
        for chunk in chunks:
            for row in chunk:
                flat = _flat(row)
                flat["time"] = row["time"].isoformat(timespec="microseconds")  # one fixed format
                w.writerow(flat)
            n += len(chunk)
    return n


def _parquet_schema():  # pyarrow is imported only when Parquet is asked for
    import pyarrow as pa

    return pa.schema(
        [
            ("id", pa.int64()),
            ("time", pa.timestamp("us", tz="UTC")),
            ("request_id", pa.string()),
            ("client_id", pa.string()),
            ("endpoint", pa.string()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("patient_hash", pa.string()),
            ("inputs", pa.string()),
            ("risk", pa.float64()),
            ("risk_group", pa.string()),
            ("top_contributions", pa.string()),
            ("latency_ms", pa.float64()),
        ]
    )


def _write_parquet(chunks: Iterator[list[dict[str, Any]]], path: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _parquet_schema()
    n = 0
    with path.open("xb") as fh, pq.ParquetWriter(fh, schema) as writer:
        for chunk in chunks:
            writer.write_table(pa.Table.from_pylist([_flat(r) for r in chunk], schema=schema))
            n += len(chunk)
    return n


def _publish(tmp: Path, path: Path) -> None:
    """Move a finished file into place without ever replacing an existing one."""
    try:
        os.link(tmp, path)  # atomic, and fails if path exists
    except FileExistsError:
        raise FileExistsError(f"{path} exists; refusing to overwrite it") from None
    except OSError:  # a filesystem without hard links
        if path.exists():
            raise FileExistsError(f"{path} exists; refusing to overwrite it") from None
        os.replace(tmp, path)
