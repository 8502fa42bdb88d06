"""The real PostgreSQL on this machine, for the tests that use it (CI has it too)."""

from __future__ import annotations

import os

import pytest

PG_HOST = os.environ.get("ICANS_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("ICANS_TEST_PG_PORT", "5432"))


def pg_connect(dbname: str = "postgres"):
    """(autocommit connection, user): as postgres, else as root. Fails (or skips, if allowed) if unreachable."""
    import psycopg

    errors = []
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(
                host=PG_HOST, port=PG_PORT, dbname=dbname, user=user, autocommit=True, connect_timeout=5
            )
            return conn, user
        except psycopg.OperationalError as exc:
            errors.append(f"{user}: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
    if os.environ.get("ICANS_SKIP_POSTGRES") == "1":
        pytest.skip("PostgreSQL unreachable and ICANS_SKIP_POSTGRES=1")
    pytest.fail(
        f"PostgreSQL unreachable at {PG_HOST}:{PG_PORT} ({'; '.join(errors)}); "
        "start it, or set ICANS_SKIP_POSTGRES=1 to skip the tests that need it"
    )
