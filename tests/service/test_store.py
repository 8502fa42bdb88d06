"""The service store for real, on SQLite and on PostgreSQL: keys, the append-only audit trail, export.

PostgreSQL runs on 127.0.0.1:5432 (CI has it): the session creates a fresh database icans_test_<random>
and drops it afterwards; each test works in a new schema of it, and the migration tests in whole new
databases. Unreachable PostgreSQL fails the tests unless ICANS_SKIP_POSTGRES=1.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import numpy as np
import pytest
import sqlalchemy as sa

from serving.store import SCHEMA_HEAD, AuditRecord, Store, hash_patient_id, parse_token
from tests.helpers import PG_HOST
from tests.helpers import KEY, PATIENT, dump_database, fresh_pg_database, record


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_database_url(request, tmp_path):
    """A whole new database of each backend, used as production does (PostgreSQL: schema public)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    with fresh_pg_database() as url:
        yield url


# -- schema ------------------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_reaches_head(fresh_database_url):
    s, other = Store(fresh_database_url, KEY), Store(fresh_database_url, KEY)
    try:
        assert s.current_revision() is None
        s.migrate()
        assert s.current_revision() == SCHEMA_HEAD
        s.migrate()
        other.migrate()
        assert s.current_revision() == SCHEMA_HEAD
        s.append(record())
        s.migrate()
        assert s.count() == 1
        with s.engine.connect() as conn:
            tables = set(sa.inspect(conn).get_table_names())
        assert tables == {"api_keys", "audit_log", "alembic_version", "cds_feedback", "cds_jti", "monitoring_runs", "outcomes"}
    finally:
        s.close()
        other.close()


def test_concurrent_first_migrations_do_not_collide(fresh_database_url):
    """Several workers starting at once on an empty database: one migrates, the others wait."""
    stores = [Store(fresh_database_url, KEY) for _ in range(4)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(stores))

    def work(s: Store) -> None:
        try:
            start.wait()
            s.migrate()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert not errors, errors[:2]
        assert {s.current_revision() for s in stores} == {SCHEMA_HEAD}
    finally:
        for s in stores:
            s.close()


def test_sqlite_runs_in_wal_mode(tmp_path):
    s = Store(f"sqlite:///{tmp_path / 'w.db'}", KEY)
    try:
        s.migrate()
        with s.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() > 0
    finally:
        s.close()


def test_migrate_works_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Store("sqlite:///relative/dir/store.db", KEY)
    try:
        s.migrate()
        assert (tmp_path / "relative" / "dir" / "store.db").exists()
        assert s.current_revision() == SCHEMA_HEAD
    finally:
        s.close()


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Store("sqlite:///x.db", b"short")
    with pytest.raises(ValueError, match="in-memory"):
        Store("sqlite://", KEY)
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://u@h/db", KEY)
    assert "secret" not in repr(Store("postgresql://u:secret@h/db", KEY))


# -- API keys ----------------------------------------------------------------------------------------


def test_create_verify_list_revoke(store):
    rec, token = store.create_key("ehr-ward-3", "score")
    assert token.startswith(f"icr_{rec.key_id}_") and parse_token(token) == (rec.key_id, token.split("_", 2)[2])
    got = store.verify(token)
    assert got is not None and (got.key_id, got.client, got.scope) == (rec.key_id, "ehr-ward-3", "score")
    assert got.allows("score") and not got.allows("admin")

    admin_rec, admin_token = store.create_key("ops", "admin")
    admin = store.verify(admin_token)
    assert admin is not None and admin.allows("admin") and admin.allows("score")
    assert store.verify(token).key_id != admin.key_id

    listed = {r.key_id: r for r in store.list_keys()}
    assert set(listed) == {rec.key_id, admin_rec.key_id}
    assert listed[rec.key_id].created_at.tzinfo is not None and not listed[rec.key_id].revoked

    revoked = store.revoke_key(rec.key_id)
    assert revoked.revoked and not revoked.allows("score")
    assert store.verify(token) is None  # this process: at once
    assert store.verify(admin_token) is not None
    assert store.revoke_key(rec.key_id).revoked_at == revoked.revoked_at  # idempotent
    assert {r.key_id: r.revoked for r in store.list_keys()} == {rec.key_id: True, admin_rec.key_id: False}
    with pytest.raises(KeyError):
        store.revoke_key("0000000000000000")


def test_revoke_from_another_process_takes_effect_within_the_ttl(open_store):
    service = open_store(key_cache_ttl_s=0.3)
    admin_cli = open_store()
    rec, token = admin_cli.create_key("ehr", "score")
    assert service.verify(token) is not None
    admin_cli.revoke_key(rec.key_id)
    deadline = time.monotonic() + 0.3 + 1.0
    while service.verify(token) is not None:
        assert time.monotonic() < deadline, "revocation not seen after the cache TTL"
        time.sleep(0.05)


def test_hot_path_is_cached(store):
    _, token = store.create_key("ehr", "score")
    statements = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *a, **k: statements.append(a[2]))
    for _ in range(200):
        assert store.verify(token) is not None
    assert len(statements) <= 1


def test_wrong_secret_and_unknown_key_fail(store):
    rec, token = store.create_key("ehr", "score")
    key_id, secret = parse_token(token)
    flipped = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert store.verify(f"icr_{key_id}_{flipped}") is None
    assert store.verify(f"icr_{secrets.token_hex(8)}_{secret}") is None
    other_rec, other_token = store.create_key("other", "admin")
    assert store.verify(f"icr_{key_id}_{parse_token(other_token)[1]}") is None  # secrets are not interchangeable
    assert store.verify(token) is not None


MALFORMED = [
    "",
    "icr_",
    "icr__",
    "Bearer x",
    "x" * 10_000,
    "icr_" + "é" * 60,
    "icr_ü" + "0" * 15 + "_" + "a" * 43,
    "icr_0123456789abcdef_" + "a" * 42,
    "icr_0123456789abcdef_" + "a" * 43 + "\n",
    "icr_0123456789ABCDEF_" + "a" * 43,
    "icr_0123456789abcdef_" + "a" * 42 + "\x00",
    "icr_0123456789abcdef_" + "a" * 42 + "é",
    "\x00",
    None,
    b"icr_0123456789abcdef_" + b"a" * 43,
    12345,
]


def test_malformed_tokens_return_none(store):
    rec, token = store.create_key("ehr", "score")
    secret = parse_token(token)[1]
    tokens = MALFORMED + [
        f"Bearer {token}",
        token + "=",
        " " + token,
        f"icr_{rec.key_id}_{secret[:-1]}é",
        f"ICR_{rec.key_id}_{secret}",
        f"icr_{rec.key_id}_{secret}".encode(),
    ]
    for bad in tokens:
        assert store.verify(bad) is None, repr(bad)[:40]
    assert store.verify(token) is not None


def test_only_hashes_are_stored(store):
    tokens = [store.create_key(f"client-{i}", "score")[1] for i in range(3)]
    dump = dump_database(store)
    for token in tokens:
        key_id, secret = parse_token(token)
        assert key_id in dump
        assert secret not in dump and token not in dump
        assert secret[:16] not in dump


def test_bad_client_or_scope_is_refused(store):
    with pytest.raises(ValueError, match="scope"):
        store.create_key("ehr", "root")  # type: ignore[arg-type]
    for client in ("", " lead", "x" * 201, "a\nb", "drop;table"):
        with pytest.raises(ValueError, match="client"):
            store.create_key(client, "score")
    assert store.list_keys() == []


# -- audit trail ------------------------------------------------------------------------------------


def test_append_count_and_fields(store):
    before = datetime.now(UTC)
    store.append(record(1))
    store.append(record(2, patient_id=None, time=before - timedelta(days=2)))
    assert store.count() == 2
    assert store.count(since=before - timedelta(seconds=1)) == 1
    assert store.count(since=(before - timedelta(days=3)).replace(tzinfo=None)) == 2  # naive = UTC
    rows = [r for chunk in store.iter_audit() for r in chunk]
    assert [r["request_id"] for r in rows] == ["req-00001", "req-00002"]
    first, second = rows
    assert first["patient_hash"] == store.hash_patient_id(PATIENT) == hash_patient_id(PATIENT, KEY)
    assert second["patient_hash"] is None
    assert first["inputs"] == record(1).inputs and "patient_id" not in first["inputs"]
    assert first["top_contributions"] == record(1).top_contributions
    assert first["time"].tzinfo is not None and abs(first["time"] - before) < timedelta(minutes=1)
    assert (first["risk"], first["risk_group"], first["latency_ms"]) == (record(1).risk, "intermediate", 3.25)


def test_patient_id_is_keyed_and_never_stored(open_store):
    s = open_store()
    s.append(record(1))
    s.append(record(2, patient_id=None, inputs={**record(2).inputs, "patient_id": PATIENT}))
    hashes = {r["patient_hash"] for chunk in s.iter_audit() for r in chunk}
    assert hashes == {s.hash_patient_id(PATIENT)}
    assert hash_patient_id(PATIENT, b"another-key-of-32-bytes-length!!") != s.hash_patient_id(PATIENT)
    assert s.hash_patient_id(PATIENT) != s.hash_patient_id(PATIENT + "x")
    assert PATIENT not in dump_database(s)
    with pytest.raises(ValueError, match="disagree"):
        s.append(record(3, inputs={"patient_id": "someone-else"}))


def test_audit_rows_cannot_be_changed_or_deleted(store):
    store.append_many([record(1), record(2)])
    for statement in (
        "UPDATE audit_log SET risk = 0.99",
        "UPDATE audit_log SET patient_hash = NULL WHERE id = 1",
        "DELETE FROM audit_log",
        "DELETE FROM audit_log WHERE id = 2",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            with store.engine.begin() as conn:
                conn.execute(sa.text(statement))
    rows = [r for chunk in store.iter_audit() for r in chunk]
    assert [r["risk"] for r in rows] == [record(1).risk, record(2).risk]
    assert all(r["patient_hash"] for r in rows)


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # SQLite has no TRUNCATE
def test_truncate_is_refused_on_postgresql(store):
    store.append(record(1))
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        with store.engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE audit_log"))
    assert store.count() == 1


def test_append_many_is_atomic(store):
    store.append_many([record(i) for i in range(5)])
    assert store.count() == 5
    bad = [record(10), record(11), record(12, risk_group=None), record(13)]  # NOT NULL violated by the 3rd
    with pytest.raises(sa.exc.IntegrityError):
        store.append_many(bad)
    assert store.count() == 5
    with pytest.raises((ValueError, sa.exc.StatementError)):
        store.append_many([record(20), record(21, inputs={"crp": float("inf")})])  # not valid JSON
    with pytest.raises(ValueError):
        store.append_many([record(30), record(31, risk=float("nan"))])
    nested = [{"feature": "crp", "log_odds": 0.1}, {"feature": "age", "log_odds": float("-inf")}]
    with pytest.raises(ValueError):  # deep inside a document too (orjson alone would write null)
        store.append_many([record(40), record(41, top_contributions=nested)])
    with pytest.raises(ValueError):
        store.append_many([record(50, inputs={"crp": np.float64("nan")})])
    with pytest.raises(ValueError):  # not a Python float: goes through the JSON default hook
        store.append_many([record(60, inputs={"crp": np.float32("nan")})])
    with pytest.raises(ValueError):
        store.append_many([record(70, top_contributions=np.array([0.1, np.inf]))])
    assert store.count() == 5
    store.append_many([])
    assert store.count() == 5


def test_append_failure_raises(store_url):
    broken_url = (
        "sqlite:////nonexistent-dir/for/sure/x.db"
        if store_url.startswith("sqlite")
        else f"postgresql+psycopg://postgres@{PG_HOST}:1/none"
    )
    broken = Store(broken_url, KEY)
    try:
        with pytest.raises(sa.exc.OperationalError):
            broken.append(record(1))
    finally:
        broken.close()


def test_concurrent_appends_all_land(open_store):
    stores = [open_store(), open_store()]  # two engines, as two workers would have
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(t: int) -> None:
        s = stores[t % 2]
        try:
            start.wait()
            for i in range(50):
                s.append(record(t * 1000 + i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    assert not errors, errors[:3]
    assert stores[0].count() == 400
    ids = {r["request_id"] for chunk in stores[1].iter_audit(chunk_size=64) for r in chunk}
    assert len(ids) == 400


# -- export -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_round_trip(store, tmp_path, fmt):
    old = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    store.append_many([record(i, time=old) for i in range(3)])
    store.append_many([record(100 + i, patient_id=None if i == 0 else PATIENT) for i in range(7)])
    out = tmp_path / f"audit.{fmt}"
    n = store.export(None, out, fmt, chunk_size=4)  # several chunks
    assert n == 10
    df = pd.read_csv(out, dtype={"model_version": str}) if fmt == "csv" else pd.read_parquet(out)
    assert len(df) == 10 and list(df.columns)[:3] == ["id", "time", "request_id"]
    assert df["id"].is_monotonic_increasing
    times = pd.to_datetime(df["time"], utc=True)
    assert times.iloc[0] == pd.Timestamp(old)
    assert df["request_id"].tolist()[:4] == ["req-00000", "req-00001", "req-00002", "req-00100"]
    assert json.loads(df["inputs"].iloc[0]) == record(0).inputs
    assert json.loads(df["top_contributions"].iloc[0]) == record(0).top_contributions
    assert df["risk"].tolist()[0] == record(0).risk and (df["model_version"] == "7").all()
    assert df["patient_hash"].isna().sum() == 1
    assert set(df["patient_hash"].dropna()) == {store.hash_patient_id(PATIENT)}
    assert PATIENT not in out.read_bytes().decode("latin-1")

    recent = tmp_path / f"recent.{fmt}"
    assert store.export(old + timedelta(days=1), recent, fmt) == 7
    empty = tmp_path / f"empty.{fmt}"
    assert store.export(datetime.now(UTC) + timedelta(days=1), empty, fmt) == 0
    assert len(pd.read_csv(empty) if fmt == "csv" else pd.read_parquet(empty)) == 0


def test_export_refuses_to_overwrite_and_leaves_nothing_behind(store, tmp_path):
    store.append(record(1))
    out = tmp_path / "audit.csv"
    out.write_text("precious")
    for fmt in ("csv", "parquet"):
        with pytest.raises(FileExistsError, match="refusing to overwrite"):
            store.export(None, out, fmt)
    assert out.read_text() == "precious"
    with pytest.raises(FileNotFoundError):
        store.export(None, tmp_path / "missing-dir" / "a.csv", "csv")
    with pytest.raises(ValueError):
        store.export(None, tmp_path / "a.json", "json")  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "store") == ["audit.csv"]


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_audit_durability_setting_reaches_the_database(store_url, sync):
    """ICANS_AUDIT_SYNC: full waits for the disk on every commit; normal trades the last moments
    before a power loss for latency. Each backend must actually be configured that way, and the
    records written either way read back the same."""
    store = Store(store_url, KEY, sync=sync)
    store.migrate()
    with store.engine.connect() as conn:
        if store.backend == "sqlite":
            level = conn.exec_driver_sql("PRAGMA synchronous").scalar()
            assert level == {"full": 2, "normal": 1}[sync]
        else:
            level = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
            assert level == {"full": "on", "normal": "off"}[sync]
    record = AuditRecord(
        request_id="r1", client_id="c", endpoint="/v1/risk", model_name="m", model_version="3",
        inputs={"age_years": 30.5, "sex": "female", "il6_pg_ml": None}, patient_id=PATIENT, risk=0.25,
        risk_group="intermediate", top_contributions=[{"feature": "age_years", "log_odds": -0.125}], latency_ms=1.5,
    )
    store.append_many([record])
    (row,) = [r for chunk in store.iter_audit() for r in chunk]
    assert row["inputs"] == {"age_years": 30.5, "sex": "female", "il6_pg_ml": None}
    assert row["top_contributions"] == [{"feature": "age_years", "log_odds": -0.125}]
    assert row["patient_hash"] == hash_patient_id(PATIENT, KEY) and PATIENT not in str(row)
    assert row["time"].tzinfo is not None and abs((row["time"] - record.time).total_seconds()) < 1e-3
    store.close()


def test_unknown_durability_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sync"):
        Store(f"sqlite:///{tmp_path / 's.db'}", KEY, sync="sometimes")  # type: ignore[arg-type]


def test_schema_head_constant_is_alembics_head(tmp_path):
    """The start-up shortcut (no Alembic when the store is at SCHEMA_HEAD) must name the real head,
    or a new migration would never run on an existing store."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from serving.store import MIGRATIONS_DIR, SCHEMA_HEAD

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(cfg).get_heads() == [SCHEMA_HEAD]
    store = Store(f"sqlite:///{tmp_path / 's.db'}", KEY)
    assert not store._at_head()
    store.migrate()
    assert store._at_head() and store.current_revision() == SCHEMA_HEAD
    with store.engine.begin() as conn:  # an older store is upgraded, not skipped
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0002_audit_log'")
        conn.exec_driver_sql("DROP TABLE cds_jti")
        conn.exec_driver_sql("DROP TABLE cds_feedback")
        conn.exec_driver_sql("DROP TABLE outcomes")
        conn.exec_driver_sql("DROP TABLE monitoring_runs")
        conn.exec_driver_sql("DROP INDEX ix_audit_log_patient_hash")  # 0007
        for column in ("risk_low", "risk_high", "risk_group_change_probability"):  # 0006
            conn.exec_driver_sql(f"ALTER TABLE audit_log DROP COLUMN {column}")
    assert not store._at_head()
    store.migrate()
    assert store.current_revision() == SCHEMA_HEAD
    assert store.feedback_for("x") == []


def test_a_naive_time_is_stored_as_utc_whatever_the_database_zone(store_url):
    """PostgreSQL reads a naive timestamp in its session's zone; the store means UTC."""
    url = store_url
    if url.startswith("postgresql"):
        sep = "&" if "?" in url else "?"
        url = f"{url}{sep}options=-c%20timezone%3DAmerica/New_York" if "options=" not in url else url.replace(
            "options=", "options=-c%20timezone%3DAmerica/New_York%20"
        )
    store = Store(url, KEY)
    store.migrate()
    naive = datetime(2024, 1, 1, 12, 0)
    store.append_many([record(1, time=naive)])
    (row,) = [r for chunk in store.iter_audit() for r in chunk]
    assert row["time"] == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    store.close()


def test_a_writer_stuck_on_the_lock_file_gets_a_timeout_not_a_hang(tmp_path):
    """Several SQLite workers take turns on a lock file; while another holds it forever, an
    audit write waits, the request learns of it after the writer's timeout (the API answers
    503), and its record is never written (no answer was given): only later ones land."""
    import asyncio
    import fcntl

    from serving.audit import AuditWriter

    store = Store(f"sqlite:///{tmp_path / 's.db'}", KEY)
    store.migrate()
    store.append_many([record(1)])
    other = os.open(f"{tmp_path / 's.db'}.write-lock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    writer = AuditWriter(store, timeout_s=0.3)
    try:
        with pytest.raises(TimeoutError):
            asyncio.run(writer.submit([record(2)]))
        assert store.count() == 1
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    writer.write([record(3)])  # the turn is free again: this one lands, the abandoned one never
    writer.close()
    assert store.count() == 2
    store.close()


def test_audit_present_answers_after_a_lost_commit_and_the_store_keeps_working(open_store):
    """What the audit writer asks after a COMMIT whose outcome is unknown (PostgreSQL: the session
    that sent it is ended first), and the probe the breaker uses."""
    s = open_store(timeout_s=2)
    recs = [record(i) for i in range(4)]
    s.append_many(recs[:2])
    assert s.audit_present(recs[:2]) == 2
    assert s.audit_present(recs[2:3]) == 0
    s.probe_write()
    s.append_many(recs[3:])  # the pool replaces the ended session
    assert s.count() == 3


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_commit_lost_with_its_session_is_a_503_and_no_record(open_store, store_url):
    """PostgreSQL: the writer's session dies between the insert and the COMMIT (the outcome is
    unknown to the client); the audit writer asks the store, finds nothing, and the caller gets
    an error: no record, no answer."""
    import sqlalchemy as sa

    from serving.audit import AuditWriter

    s = open_store(timeout_s=2)
    killer = sa.create_engine(sa.make_url(s.url), poolclass=sa.pool.NullPool)

    class Dying:
        def __getattr__(self, name):
            return getattr(s, name)

        def append_many(self, rows, before_commit=None):
            def die():
                before_commit()
                with killer.connect() as conn:
                    conn.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": s._writer_pid})

            s.append_many(rows, before_commit=die)

    writer = AuditWriter(Dying(), probe_interval_s=0.05)
    with pytest.raises(sa.exc.DBAPIError):
        writer.write([record(1)])
    writer.close()
    killer.dispose()
    assert s.count() == 0 and writer.unresolved == 0


def test_upgrading_to_the_interval_columns_keeps_every_audit_row(store_url):
    """A store written by the previous release (0005) keeps its rows through 0006; old rows have no interval."""
    from alembic import command
    from alembic.config import Config

    from serving.store.core import MIGRATIONS_DIR
    from serving.store.engine import make_engine

    s = Store(store_url, KEY)
    try:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        if s.backend == "sqlite":
            Path(str(s.url.database)).parent.mkdir(parents=True, exist_ok=True)
        engine = make_engine(s.url, busy_timeout_ms=2000, for_migration=True)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0005_monitoring_runs")
            conn.exec_driver_sql(
                "INSERT INTO audit_log (time, request_id, client_id, endpoint, model_name, model_version, "
                "patient_hash, inputs, risk, risk_group, top_contributions, latency_ms) VALUES "
                "('2026-01-01 00:00:00+00:00', 'old-1', NULL, '/v1/risk', 'icans-risk', '1', NULL, '{}', 0.2, "
                "'low', '[]', 1.0)")
        engine.dispose()
        assert s.current_revision() == "0005_monitoring_runs"
        s.migrate()
        assert s.current_revision() == SCHEMA_HEAD
        s.append(record(request_id="new-1", risk_low=0.1, risk_high=0.3, risk_group_change_probability=0.25))
        rows = {r["request_id"]: r for chunk in s.iter_audit() for r in chunk}
        assert rows["old-1"]["risk"] == 0.2 and rows["old-1"]["risk_low"] is None
        assert (rows["new-1"]["risk_low"], rows["new-1"]["risk_high"]) == (0.1, 0.3)
        assert rows["new-1"]["risk_group_change_probability"] == 0.25
        with pytest.raises(ValueError, match="finite"):
            s.append(record(request_id="bad", risk_low=float("nan")))
    finally:
        s.close()
