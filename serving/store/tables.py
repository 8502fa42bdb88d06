"""The store's tables as SQLAlchemy sees them for queries (the schema itself is created by the
Alembic migrations in serving/migrations, which do not import this module)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (the store never writes local time)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Timezone-aware UTC in Python on both backends (SQLite has no time zones: stored as naive UTC)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


_JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
_meta = sa.MetaData()
api_keys = sa.Table(
    "api_keys",
    _meta,
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column("client", sa.String(200), nullable=False),
    sa.Column("scope", sa.String(16), nullable=False),
    sa.Column("salt", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
)
audit_log = sa.Table(
    "audit_log",
    _meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("time", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("client_id", sa.String(200)),
    sa.Column("endpoint", sa.String(200), nullable=False),
    sa.Column("model_name", sa.String(200), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("patient_hash", sa.String(64)),
    sa.Column("inputs", _JSON, nullable=False),
    sa.Column("risk", sa.Float(), nullable=False),
    sa.Column("risk_group", sa.String(32), nullable=False),
    sa.Column("top_contributions", _JSON, nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    # the answer's 95% model-development interval and P(another risk group) (migration 0006)
    sa.Column("risk_low", sa.Float()),
    sa.Column("risk_high", sa.Float()),
    sa.Column("risk_group_change_probability", sa.Float()),
)
AUDIT_COLUMNS: tuple[str, ...] = tuple(c.name for c in audit_log.columns)

# NEW (issue 6): CDS Hooks feedback and the CDS client JWT replay cache (migration 0003).
cds_feedback = sa.Table(
    "cds_feedback",
    _meta,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("card_uuid", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("outcome_timestamp", UTCDateTime(), nullable=False),
    sa.Column("override_reason", _JSON),
    sa.Column("user_comment", sa.Text()),
    sa.Column("accepted_suggestions", _JSON),
    sa.Column("client_id", sa.String(200)),
)
cds_jti = sa.Table(
    "cds_jti",
    _meta,
    sa.Column("jti_hash", sa.String(64), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
)
