"""Monitoring runs: the latest verdict and figures of each monitoring of a served version.

Revision ID: 0005_monitoring_runs
Revises: 0004_outcomes
Create Date: 2026-12-06

`make monitor` (and the schedule in `icans-risk serve`) append one row per run; the service reads the
newest row of the version it serves for `GET /v1/model` and the `icans_monitor_*` gauges. The MLflow run
(`run_id`) holds the full report.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_monitoring_runs"
down_revision: str | None = "0004_outcomes"
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "monitoring_runs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("summary", _JSON, nullable=False),
    )
    op.create_index("ix_monitoring_runs_model", "monitoring_runs", ["model_name", "model_version"])


def downgrade() -> None:
    op.drop_index("ix_monitoring_runs_model", table_name="monitoring_runs")
    op.drop_table("monitoring_runs")
