"""One SQLAlchemy engine per store: the URL's backend (SQLite file or PostgreSQL through psycopg 3),
SQLite's pragmas (WAL, busy timeout, synchronous), PostgreSQL's lock and statement timeouts."""

from __future__ import annotations

import math
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from serving.store.strict_json import dumps


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


def sqlite_pragmas(dbapi_connection: Any, busy_timeout_ms: int, sync: str = "full") -> None:
    cur = dbapi_connection.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        # FULL: an audit row that was acknowledged survives power loss; NORMAL: a crash of the process
        cur.execute("PRAGMA synchronous = FULL" if sync == "full" else "PRAGMA synchronous = NORMAL")
    finally:
        cur.close()


def make_engine(
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
        engine = sa.create_engine(url, json_serializer=dumps, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            if for_migration:
                dbapi_connection.isolation_level = None  # we emit BEGIN ourselves (below)
            sqlite_pragmas(dbapi_connection, busy_timeout_ms, sync)

        if for_migration:

            @event.listens_for(engine, "begin")
            def _on_begin(conn: Connection) -> None:
                # Transactional DDL and one migrator at a time: take the write lock up front.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if for_migration:
        return sa.create_engine(url, poolclass=NullPool, json_serializer=dumps)
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
    engine = sa.create_engine(url, json_serializer=dumps, pool_pre_ping=True, connect_args=connect_args, **pool)
    if sync == "normal":

        @event.listens_for(engine, "connect")
        def _on_pg_connect(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cur:
                cur.execute("SET synchronous_commit TO off")
            dbapi_connection.commit()

    return engine
