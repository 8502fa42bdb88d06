"""Fixtures the service tests share."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serving.app import create_app
import secrets
import sqlalchemy as sa
from serving.store import Store
from tests.helpers import pg_connect as _pg_connect
from tests.helpers import KEY, _wait_ready, fresh_pg_database


@pytest.fixture(scope="module")
def client(trained, tokens):
    settings, _ = trained
    app = create_app(settings.model_copy(update={"batch_limit": 50}))
    with TestClient(app, headers={"Authorization": f"Bearer {tokens['score']}"}) as c:
        _wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def pg_database():
    """One fresh database for the session; each test isolates itself in a schema of its own
    (CREATE DATABASE costs up to a second on a busy machine, CREATE SCHEMA nothing)."""
    with fresh_pg_database() as url:
        conn, _ = _pg_connect(sa.make_url(url).database)
        conn.execute("SET lock_timeout = '10s'")  # a leaked transaction fails the teardown, never hangs it
        try:
            yield url, conn
        finally:
            conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A URL to an empty store of each backend (PostgreSQL: a new schema, via search_path)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store' / 'icans-service.db'}"
        return
    url, conn = request.getfixturevalue("pg_database")
    schema = f"t_{secrets.token_hex(6)}"
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def open_store(store_url):
    """Open (and migrate) stores on the test database; all are closed afterwards."""
    opened: list[Store] = []

    def _open(key: bytes = KEY, **kwargs) -> Store:
        s = Store(store_url, key, **kwargs)
        s.migrate()
        opened.append(s)
        return s

    yield _open
    for s in opened:
        s.close()


@pytest.fixture
def store(open_store) -> Store:
    return open_store()
