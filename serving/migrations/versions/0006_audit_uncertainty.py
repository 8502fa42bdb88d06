"""Audit rows keep the answer's model-development interval.

Revision ID: 0006_audit_uncertainty
Revises: 0005_monitoring_runs
Create Date: 2026-12-06

Every answer carries a 95% model-development interval and the probability of another risk group
(the bundle's bootstrap models); the audit row keeps what the caller was told. Nullable: rows written
before, and answers of a model without bootstrap models, have none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0006_audit_uncertainty"
down_revision: str | None = "0005_monitoring_runs"
branch_labels = None
depends_on = None

COLUMNS = ("risk_low", "risk_high", "risk_group_change_probability")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("audit_log", sa.Column(name, sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_log") as batch:  # SQLite drops columns by copying the table
        for name in reversed(COLUMNS):
            batch.drop_column(name)
