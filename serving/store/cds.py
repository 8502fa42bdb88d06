"""CDS Hooks records: the audit row behind a card, clinicians' feedback on cards, and the replay
cache of CDS client JWT ids (migration 0003)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from serving.store.tables import audit_log, cds_feedback, cds_jti

CDS_CARD_ENDPOINT = "/cds-services/icans-risk"
FEEDBACK_OUTCOMES: tuple[str, ...] = ("accepted", "overridden")


@dataclass(frozen=True)
class FeedbackRecord:
    """One CDS Hooks feedback entry for a card this service returned (its uuid is the audit request_id)."""

    card_uuid: str
    outcome: str  # accepted | overridden
    outcome_timestamp: datetime
    override_reason: Mapping[str, Any] | None = None  # the Coding the user chose
    user_comment: str | None = None
    accepted_suggestions: list[Any] | None = None
    client_id: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


class CdsRecords:
    """The Store's CDS Hooks methods (a mixin over StoreCore's engine)."""

    engine: Engine

    def card_audit(self, card_uuid: str, endpoint: str = CDS_CARD_ENDPOINT) -> dict[str, Any] | None:
        """The audit row of a CDS card (request_id == its uuid), or None if this service never returned it."""
        q = (
            sa.select(audit_log.c.request_id, audit_log.c.client_id, audit_log.c.time, audit_log.c.model_version,
                      audit_log.c.risk, audit_log.c.risk_group)
            .where(audit_log.c.request_id == card_uuid, audit_log.c.endpoint == endpoint)
            .limit(1)
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).first()
        return None if row is None else dict(row._mapping)

    def record_feedback_many(self, records: Iterable[FeedbackRecord]) -> int:
        """Store feedback entries in one transaction (all or none); returns how many."""
        rows = []
        for r in records:
            if r.outcome not in FEEDBACK_OUTCOMES:
                raise ValueError(f"outcome must be one of {', '.join(FEEDBACK_OUTCOMES)}")
            rows.append(
                dict(
                    received_at=r.received_at,
                    card_uuid=r.card_uuid,
                    outcome=r.outcome,
                    outcome_timestamp=r.outcome_timestamp,
                    override_reason=None if r.override_reason is None else dict(r.override_reason),
                    user_comment=r.user_comment,
                    accepted_suggestions=r.accepted_suggestions,
                    client_id=r.client_id,
                )
            )
        if rows:
            with self.engine.begin() as conn:
                conn.execute(cds_feedback.insert(), rows)
        return len(rows)

    def record_feedback(
        self,
        card_uuid: str,
        outcome: str,
        override_reason: Mapping[str, Any] | None = None,
        *,
        outcome_timestamp: datetime | None = None,
        user_comment: str | None = None,
        accepted_suggestions: list[Any] | None = None,
        client_id: str | None = None,
    ) -> None:
        """Store one feedback entry (accepted / overridden) against a card uuid."""
        self.record_feedback_many(
            [
                FeedbackRecord(
                    card_uuid=card_uuid,
                    outcome=outcome,
                    outcome_timestamp=outcome_timestamp or datetime.now(UTC),
                    override_reason=override_reason,
                    user_comment=user_comment,
                    accepted_suggestions=accepted_suggestions,
                    client_id=client_id,
                )
            ]
        )

    def feedback_for(self, card_uuid: str) -> list[dict[str, Any]]:
        """Feedback entries of one card, oldest first."""
        q = sa.select(cds_feedback).where(cds_feedback.c.card_uuid == card_uuid).order_by(cds_feedback.c.id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(q)]

    def claim_jti(self, key: str, expires_at: datetime) -> bool:
        """True the first time `key` (a hashed issuer + jti) is seen before it expires; False on a replay.

        Shared by every process using this store. Expired entries are purged at most once a minute.
        """
        now = datetime.now(UTC)
        if now.timestamp() - getattr(self, "_jti_purged_at", 0.0) > 60:
            self._jti_purged_at = now.timestamp()
            with self.engine.begin() as conn:
                conn.execute(cds_jti.delete().where(cds_jti.c.expires_at < now))
        try:
            with self.engine.begin() as conn:
                conn.execute(cds_jti.insert().values(jti_hash=key, expires_at=expires_at))
            return True
        except sa.exc.IntegrityError:
            with self.engine.begin() as conn:  # an expired entry not yet purged may be reused
                result = conn.execute(
                    cds_jti.update()
                    .where(cds_jti.c.jti_hash == key, cds_jti.c.expires_at < now)
                    .values(expires_at=expires_at)
                )
            return result.rowcount == 1
