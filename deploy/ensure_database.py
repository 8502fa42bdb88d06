"""Create the PostgreSQL databases named by SQLAlchemy URLs if they do not exist yet.

    python deploy/ensure_database.py postgresql+psycopg://postgres@127.0.0.1:5432/icans_mlflow [URL ...]

`mlflow server` and the service store create their tables themselves, but not the database.
Connects to the maintenance database `postgres` on the same server with the URL's credentials.
Prints one line per database; never prints a password.
"""

from __future__ import annotations

import sys


def ensure_database(url: str) -> bool:
    """True if the database was created, False if it already existed."""
    import psycopg
    from psycopg import sql
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("postgres"):
        raise SystemExit(f"not a PostgreSQL URL: {u.render_as_string(hide_password=True)}")
    if not u.database:
        raise SystemExit(f"no database name in {u.render_as_string(hide_password=True)}")
    params = {
        "host": u.host or "127.0.0.1",
        "port": u.port or 5432,
        "user": u.username,
        "password": u.password,
        "dbname": "postgres",
        "autocommit": True,
        "connect_timeout": 10,
    }
    with psycopg.connect(**{k: v for k, v in params.items() if v is not None}) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (u.database,)).fetchone()
        if exists:
            return False
        try:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(u.database)))
        except psycopg.errors.DuplicateDatabase:  # created by a concurrent caller meanwhile
            return False
        return True


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    from sqlalchemy.engine import make_url

    for url in argv:
        created = ensure_database(url)
        name = make_url(url).database
        print(f"database {name}: {'created' if created else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
