"""Outcomes name the audited answer they label; the patient-hash lookup is indexed.

Revision ID: 0007_outcomes_one_per_answer
Revises: 0006_audit_uncertainty
Create Date: 2026-12-07

`outcomes.audit_id` is the audit row (one scored patient) an outcome labels, resolved when the
outcome is recorded, so that "one current outcome per answer" and "a correction targets the same
answer" can be checked, and monitoring reads one label per answer. Rows stored before are kept
and resolved here the way `labelled_answers` resolved them until now (the answer of that request,
that patient's row of it; by patient alone, the patient's latest answer); a row that matches no
answer keeps a NULL. `ix_audit_log_patient_hash` makes an outcome by patient id an index lookup,
not a scan of the audit trail. The append-only triggers are lifted for the backfill only.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_outcomes_one_per_answer"
down_revision: str | None = "0006_audit_uncertainty"
branch_labels = None
depends_on = None

_BACKFILL = """
UPDATE outcomes SET audit_id = CASE
    WHEN request_id IS NOT NULL THEN (
        SELECT max(a.id) FROM audit_log a WHERE a.request_id = outcomes.request_id
        AND (outcomes.patient_hash IS NULL OR a.patient_hash = outcomes.patient_hash))
    ELSE (SELECT max(a.id) FROM audit_log a WHERE a.patient_hash = outcomes.patient_hash)
END
"""
_SQLITE_UPDATE_TRIGGER = (
    "CREATE TRIGGER outcomes_no_update BEFORE UPDATE ON outcomes "
    "BEGIN SELECT RAISE(ABORT, 'outcomes is append-only: UPDATE refused'); END"
)


def _backfill() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE outcomes DISABLE TRIGGER outcomes_no_update_delete")
        op.execute(_BACKFILL)
        op.execute("ALTER TABLE outcomes ENABLE TRIGGER outcomes_no_update_delete")
    else:
        op.execute("DROP TRIGGER outcomes_no_update")
        op.execute(_BACKFILL)
        op.execute(_SQLITE_UPDATE_TRIGGER)


def upgrade() -> None:
    op.add_column("outcomes", sa.Column("audit_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                                        nullable=True))
    _backfill()
    op.create_index("ix_outcomes_audit_id", "outcomes", ["audit_id"])
    op.create_index("ix_outcomes_corrects", "outcomes", ["corrects"])
    op.create_index("ix_audit_log_patient_hash", "audit_log", ["patient_hash"])


def downgrade() -> None:
    op.drop_index("ix_audit_log_patient_hash", table_name="audit_log")
    op.drop_index("ix_outcomes_corrects", table_name="outcomes")
    op.drop_index("ix_outcomes_audit_id", table_name="outcomes")
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("outcomes", "audit_id")
        return
    # SQLite drops a column by copying the table, which the append-only triggers would not survive
    op.execute("DROP TRIGGER outcomes_no_update")
    op.execute("DROP TRIGGER outcomes_no_delete")
    with op.batch_alter_table("outcomes") as batch:
        batch.drop_column("audit_id")
    op.execute(_SQLITE_UPDATE_TRIGGER)
    op.execute("CREATE TRIGGER outcomes_no_delete BEFORE DELETE ON outcomes "
               "BEGIN SELECT RAISE(ABORT, 'outcomes is append-only: DELETE refused'); END")
