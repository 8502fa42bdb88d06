"""API keys: one row per key, holding a salted HMAC of its secret, never the secret.

Revision ID: 0001_api_keys
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001_api_keys"
down_revision: str | None = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(32), primary_key=True),
        sa.Column("client", sa.String(200), nullable=False),
        sa.Column("scope", sa.String(16), nullable=False),
        sa.Column("salt", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("scope IN ('score', 'admin')", name="ck_api_keys_scope"),
    )
    op.create_index("ix_api_keys_client", "api_keys", ["client"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_client", table_name="api_keys")
    op.drop_table("api_keys")
