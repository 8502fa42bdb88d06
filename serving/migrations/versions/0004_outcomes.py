"""Outcomes: what happened to a scored patient, append-only like the audit log.

Revision ID: 0004_outcomes
Revises: 0003_cds_feedback
Create Date: 2026-12-06

One row per reported outcome. `outcome_id` is the client's idempotency key (a repeated report is
the same row); a correction is a new row whose `corrects` names the outcome_id it supersedes. An
outcome points at an earlier answer by `request_id`, or at a patient by the same keyed hash the
audit log uses (`patient_hash`); the raw patient id is never stored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004_outcomes"
down_revision: str | None = "0003_cds_feedback"
branch_labels = None
depends_on = None

_PG_FUNCTION = """
CREATE FUNCTION outcomes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'outcomes is append-only: ' || TG_OP || ' refused',
        ERRCODE = 'insufficient_privilege';
END
$$
"""
_PG_TRIGGERS = (
    "CREATE TRIGGER outcomes_no_update_delete BEFORE UPDATE OR DELETE ON outcomes "
    "FOR EACH ROW EXECUTE FUNCTION outcomes_append_only()",
    "CREATE TRIGGER outcomes_no_truncate BEFORE TRUNCATE ON outcomes "
    "FOR EACH STATEMENT EXECUTE FUNCTION outcomes_append_only()",
)
_SQLITE_TRIGGERS = (
    "CREATE TRIGGER outcomes_no_update BEFORE UPDATE ON outcomes "
    "BEGIN SELECT RAISE(ABORT, 'outcomes is append-only: UPDATE refused'); END",
    "CREATE TRIGGER outcomes_no_delete BEFORE DELETE ON outcomes "
    "BEGIN SELECT RAISE(ABORT, 'outcomes is append-only: DELETE refused'); END",
)


_SCOPES_NEW = "scope IN ('score', 'outcomes', 'admin')"
_SCOPES_OLD = "scope IN ('score', 'admin')"


def _scope_check(condition: str) -> None:
    """Replace the api_keys scope check (SQLite cannot alter a constraint: the table is copied)."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_scope")
        op.execute(f"ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_scope CHECK ({condition})")
        return
    op.create_table(
        "api_keys_new",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("client", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(condition, name="ck_api_keys_scope"),
    )
    op.execute("INSERT INTO api_keys_new (key_id, client, scope, salt, hash, created_at, revoked_at) "
               "SELECT key_id, client, scope, salt, hash, created_at, revoked_at FROM api_keys")
    op.drop_index("ix_api_keys_client", table_name="api_keys")
    op.drop_table("api_keys")
    op.rename_table("api_keys_new", "api_keys")
    op.create_index("ix_api_keys_client", "api_keys", ["client"])


def upgrade() -> None:
    _scope_check(_SCOPES_NEW)
    op.create_table(
        "outcomes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("outcome_id", sa.String(64), nullable=False, unique=True),
        sa.Column("request_id", sa.String(64), nullable=True),
        sa.Column("patient_hash", sa.String(64), nullable=True),
        sa.Column("icans_max_grade", sa.SmallInteger(), nullable=True),
        sa.Column("severe_crs", sa.Boolean(), nullable=True),
        sa.Column("observed_on", sa.Date(), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("corrects", sa.String(64), nullable=True),
        sa.Column("client_id", sa.String(200), nullable=True),
        sa.CheckConstraint("icans_max_grade IS NULL OR icans_max_grade BETWEEN 0 AND 4", name="ck_outcomes_grade"),
        sa.CheckConstraint("request_id IS NOT NULL OR patient_hash IS NOT NULL", name="ck_outcomes_target"),
        sa.CheckConstraint("icans_max_grade IS NOT NULL OR severe_crs IS NOT NULL", name="ck_outcomes_value"),
    )
    op.create_index("ix_outcomes_request_id", "outcomes", ["request_id"])
    op.create_index("ix_outcomes_patient_hash", "outcomes", ["patient_hash"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_FUNCTION)
        for statement in _PG_TRIGGERS:
            op.execute(statement)
    else:
        for statement in _SQLITE_TRIGGERS:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS outcomes_no_truncate ON outcomes")
        op.execute("DROP TRIGGER IF EXISTS outcomes_no_update_delete ON outcomes")
        op.execute("DROP FUNCTION IF EXISTS outcomes_append_only()")
    op.drop_index("ix_outcomes_patient_hash", table_name="outcomes")
    op.drop_index("ix_outcomes_request_id", table_name="outcomes")
    op.drop_table("outcomes")
    _scope_check(_SCOPES_OLD)  # fails while an 'outcomes' key exists: revoke and remove it first
