"""`keys` and `audit` commands through click, against real SQLite and PostgreSQL stores."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from cli.admin import make_groups
from serving.store import Store, parse_token
from tests.helpers import KEY, record

TOKEN = re.compile(r"icr_[0-9a-f]{16}_[A-Za-z0-9_-]{43}")


@pytest.fixture
def run(store_url):  # noqa: F811 - the imported fixture
    """Invoke `icans-risk <args>` with the admin groups wired to the test store."""
    keys, audit, _ = make_groups(lambda: Store(store_url, KEY))
    root = click.Group("icans-risk", commands=[keys, audit])
    runner = CliRunner()

    def _run(*args: str, ok: bool = True):
        result = runner.invoke(root, list(args), catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return _run


@pytest.fixture
def store(store_url):  # noqa: F811
    s = Store(store_url, KEY, key_cache_ttl_s=0)
    s.migrate()
    yield s
    s.close()


def test_keys_create_prints_the_token_alone_on_the_last_line(run, store):
    result = run("keys", "create", "--client", "ehr-ward-3", "--scope", "score")
    lines = result.stdout.splitlines()
    assert len(lines) >= 2 and TOKEN.fullmatch(lines[-1]), result.stdout
    assert result.stdout.endswith(lines[-1] + "\n")
    token = lines[-1]
    assert token not in "\n".join(lines[:-1])
    rec = store.verify(token)
    assert rec is not None and (rec.client, rec.scope) == ("ehr-ward-3", "score")
    assert rec.key_id in lines[0]

    admin_token = run("keys", "create", "--client", "ops", "--scope", "admin").stdout.splitlines()[-1]
    assert store.verify(admin_token).allows("admin")
    default_token = run("keys", "create", "--client", "lab").stdout.splitlines()[-1]
    assert store.verify(default_token).scope == "score"


def test_keys_list_and_revoke(run, store):
    tokens = {c: run("keys", "create", "--client", c).stdout.splitlines()[-1] for c in ("ehr-a", "ehr-b")}
    key_a = parse_token(tokens["ehr-a"])[0]
    out = run("keys", "list").stdout
    assert "ehr-a" in out and "ehr-b" in out and "score" in out and key_a in out
    for token in tokens.values():
        assert parse_token(token)[1] not in out

    revoked = run("keys", "revoke", key_a).stdout
    assert key_a in revoked and "ehr-a" in revoked
    assert store.verify(tokens["ehr-a"]) is None
    assert store.verify(tokens["ehr-b"]) is not None

    listed = [json.loads(line) for line in run("keys", "list", "--json").stdout.splitlines()]
    assert {r["client"]: r["revoked_at"] is not None for r in listed} == {"ehr-a": True, "ehr-b": False}
    assert all(set(r) == {"key_id", "client", "scope", "created_at", "revoked_at"} for r in listed)
    table = run("keys", "list").stdout.splitlines()
    row_a = next(line for line in table if key_a in line)
    assert re.search(r"\d{4}-\d{2}-\d{2}T", row_a.split("score", 1)[1])  # a revocation time
    for token in tokens.values():
        assert parse_token(token)[1] not in "\n".join(table)


def test_keys_errors_are_clear(run):
    unknown = run("keys", "revoke", "0123456789abcdef", ok=False)
    assert unknown.exit_code == 1 and "no key with id" in unknown.output and "Traceback" not in unknown.output
    bad_scope = run("keys", "create", "--client", "x", "--scope", "root", ok=False)
    assert bad_scope.exit_code == 2 and "root" in bad_scope.output
    bad_client = run("keys", "create", "--client", "a\nb", ok=False)
    assert bad_client.exit_code == 1 and "client must be" in bad_client.output
    assert "no keys" in run("keys", "list").stdout


def test_audit_export_and_count(run, store, tmp_path):
    store.append_many([record(i, time=datetime(2026, 1, 1, 8, tzinfo=UTC)) for i in range(3)])
    store.append_many([record(10 + i) for i in range(4)])
    assert run("audit", "count").stdout.strip() == "7"
    assert run("audit", "count", "--since", "2026-01-01T09:00:00+01:00").stdout.strip() == "7"  # 08:00Z
    assert run("audit", "count", "--since", "2026-01-01T08:00:01Z").stdout.strip() == "4"

    out = tmp_path / "audit.csv"
    result = run("audit", "export", "--out", str(out))
    assert "exported 7" in result.stdout
    assert len(pd.read_csv(out)) == 7

    recent = tmp_path / "recent.parquet"
    run("audit", "export", "--since", "2026-01-02", "--out", str(recent))
    df = pd.read_parquet(recent)  # the format follows the suffix
    assert df["request_id"].tolist() == [f"req-{10 + i:05d}" for i in range(4)]

    forced = tmp_path / "forced.dat"
    run("audit", "export", "--out", str(forced), "--format", "parquet")
    assert len(pd.read_parquet(forced)) == 7


def test_audit_export_refuses_to_overwrite(run, store, tmp_path):
    store.append(record(1))
    out = tmp_path / "audit.csv"
    out.write_text("previous export")
    for fmt in ("csv", "parquet"):
        result = run("audit", "export", "--out", str(out), "--format", fmt, ok=False)
        assert result.exit_code == 1 and "refusing to overwrite" in result.output
    assert out.read_text() == "previous export"
    bad_since = run("audit", "export", "--since", "yesterday", "--out", str(tmp_path / "x.csv"), ok=False)
    assert bad_since.exit_code == 2 and "ISO date" in bad_since.output
    missing_dir = run("audit", "export", "--out", str(tmp_path / "nope" / "x.csv"), ok=False)
    assert missing_dir.exit_code == 1 and "does not exist" in missing_dir.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["audit.csv"]


def test_scopes_match_the_store_and_import_is_light():
    import subprocess
    import sys

    from cli import admin as cli_admin
    from serving import store

    assert cli_admin.SCOPES == store.SCOPES
    code = "import sys, cli.admin; assert 'sqlalchemy' not in sys.modules, 'heavy import at startup'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unreachable_store_is_a_clear_error_without_the_password():
    keys, _, _ = make_groups(lambda: Store("postgresql://admin:hunter2-secret@127.0.0.1:1/audit", KEY))
    result = CliRunner().invoke(keys, ["list"], catch_exceptions=False)
    assert result.exit_code == 1
    assert "cannot open the store" in result.output and "127.0.0.1:1" in result.output
    assert "hunter2" not in result.output and "Traceback" not in result.output
