"""The store's connection and schema: the engine every part of the store shares, its lifecycle
(open, ping, close) and `migrate()`, which applies the Alembic migrations in serving/migrations."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa

from serving.store.engine import make_engine, normalise_url

if TYPE_CHECKING:
    from serving.store.keys import KeyRecord

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# The newest migration's revision (a test keeps it equal to Alembic's head): a store already
# there starts without importing Alembic (~0.7 s of every worker's cold start).
SCHEMA_HEAD = "0007_outcomes_one_per_answer"
_MIN_HMAC_KEY = 16
_PG_MIGRATION_LOCK = 0x1CA5_0001  # pg_advisory_xact_lock id: one migrator at a time


class StoreCore:
    """The engine and the state every part of the store shares (key cache, SQLite write-lock file)."""

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
        self.engine = make_engine(
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
        engine = make_engine(self.url, busy_timeout_ms=self._busy_timeout_ms, for_migration=True)
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
