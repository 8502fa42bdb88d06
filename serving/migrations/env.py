"""Alembic environment of the service store.

Run by `serving.store.Store.migrate()`, which passes an open connection (already in a transaction,
under a lock) in `config.attributes["connection"]`. Without one, it connects to `sqlalchemy.url`.
The migrations are hand-written (no autogenerate): there is no target metadata.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

config = context.config


def _configure_and_run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=None,
        transactional_ddl=True,  # SQLite too: all migrations or none (Store.migrate emits BEGIN IMMEDIATE)
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure_and_run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None  # StoreCore.migrate sets it
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            _configure_and_run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
