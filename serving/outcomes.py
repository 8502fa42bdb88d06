"""Outcomes reported after an answer: append-only, idempotent, corrected by superseding rows.

ICANS is known within about 30 days of infusion, so outcomes arrive late and one at a time, from
the EHR (`POST /v1/outcomes`) or a registry export (`icans-risk outcomes import FILE`). Each names
the answer it belongs to by `request_id` (a single-patient answer) or by `patient_id` (hashed with
the audit trail's key, never stored as given). A repeated report with the same `outcome_id` is the
same row (a retry is harmless); the same id with other content is a conflict; a correction is a new
row whose `corrects` names the outcome it supersedes. Nothing is ever updated or deleted (the
migration's triggers refuse it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from serving.store import UTCDateTime, audit_log

SEVERE_GRADE = 3  # ASTCT ICANS grade >= 3 is the model's outcome, severe_icans

outcomes = sa.Table(
    "outcomes",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("received_at", UTCDateTime(), nullable=False),
    sa.Column("outcome_id", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(64)),
    sa.Column("patient_hash", sa.String(64)),
    sa.Column("icans_max_grade", sa.SmallInteger()),
    sa.Column("severe_crs", sa.Boolean()),
    sa.Column("observed_on", sa.Date(), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("corrects", sa.String(64)),
    sa.Column("client_id", sa.String(200)),
)
_CONTENT = ("request_id", "patient_hash", "icans_max_grade", "severe_crs", "observed_on", "source", "corrects")


class OutcomeConflict(ValueError):
    """The outcome_id was used before for other content."""


class UnknownTarget(LookupError):
    """No audited answer (or earlier outcome) matches; the message names the field, not its value."""


@dataclass(frozen=True)
class OutcomeRecord:
    outcome_id: str
    observed_on: date
    source: str
    request_id: str | None = None
    patient_id: str | None = None
    icans_max_grade: int | None = None
    severe_crs: bool | None = None
    corrects: str | None = None
    client_id: str | None = None


def record_outcome(store: Any, rec: OutcomeRecord) -> tuple[dict[str, Any], bool]:
    """Append one outcome; returns (the stored row, created). Raises UnknownTarget (the request or
    patient was never answered, or `corrects` names no outcome) or OutcomeConflict."""
    values = {
        "outcome_id": rec.outcome_id,
        "request_id": rec.request_id,
        "patient_hash": store.hash_patient_id(rec.patient_id) if rec.patient_id else None,
        "icans_max_grade": rec.icans_max_grade,
        "severe_crs": rec.severe_crs,
        "observed_on": rec.observed_on,
        "source": rec.source,
        "corrects": rec.corrects,
        "client_id": rec.client_id,
    }
    for attempt in range(2):
        with store.engine.begin() as conn:
            existing = conn.execute(sa.select(outcomes).where(outcomes.c.outcome_id == rec.outcome_id)).first()
            if existing is not None:
                row = dict(existing._mapping)
                if any(row[k] != values[k] for k in _CONTENT):
                    raise OutcomeConflict("outcome_id was already used for a different outcome; send a correction "
                                          "with a new outcome_id and `corrects` instead")
                return row, False
            _check_target(conn, values)
            try:
                conn.execute(outcomes.insert().values(received_at=datetime.now(UTC), **values))
            except IntegrityError:  # the same outcome_id, inserted by a concurrent retry
                if attempt:
                    raise
                continue
            stored = conn.execute(sa.select(outcomes).where(outcomes.c.outcome_id == rec.outcome_id)).first()
            return dict(stored._mapping), True
    raise RuntimeError("unreachable")


def _check_target(conn: sa.Connection, values: dict[str, Any]) -> None:
    if values["request_id"] is not None:
        n = conn.execute(sa.select(sa.func.count()).select_from(audit_log)
                         .where(audit_log.c.request_id == values["request_id"])).scalar_one()
        if n == 0:
            raise UnknownTarget("request_id: no audited answer has this request id")
        if n > 1 and values["patient_hash"] is None:
            raise UnknownTarget("request_id: this request scored several patients; name the patient by patient_id")
    elif values["patient_hash"] is not None:
        found = conn.execute(sa.select(audit_log.c.id).where(audit_log.c.patient_hash == values["patient_hash"])
                             .limit(1)).first()
        if found is None:
            raise UnknownTarget("patient_id: no audited answer for this patient")
    if values["corrects"] is not None:
        found = conn.execute(sa.select(outcomes.c.id).where(outcomes.c.outcome_id == values["corrects"])).first()
        if found is None:
            raise UnknownTarget("corrects: no earlier outcome has this outcome_id")


def current_outcomes(store: Any) -> list[dict[str, Any]]:
    """Every outcome not superseded by a correction, in the order received."""
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(outcomes).order_by(outcomes.c.id))]
    superseded = {r["corrects"] for r in rows if r["corrects"]}
    return [r for r in rows if r["outcome_id"] not in superseded]


def labelled_answers(store: Any, outcome: str = "severe_icans") -> list[dict[str, Any]]:
    """The audited answers that have a current outcome: each with `y` (0/1) for `outcome`.

    An outcome by request_id labels that answer (with patient_id too: that patient's row of a
    batch); by patient_id alone, that patient's latest answer."""
    labelled = []
    with store.engine.connect() as conn:
        for o in current_outcomes(store):
            if outcome == "severe_icans":
                if o["icans_max_grade"] is None:
                    continue
                y = int(o["icans_max_grade"] >= SEVERE_GRADE)
            else:
                if o["severe_crs"] is None:
                    continue
                y = int(bool(o["severe_crs"]))
            q = sa.select(audit_log)
            if o["request_id"] is not None:
                q = q.where(audit_log.c.request_id == o["request_id"])
            if o["patient_hash"] is not None:
                q = q.where(audit_log.c.patient_hash == o["patient_hash"])
            q = q.order_by(audit_log.c.id.desc()).limit(1)
            answer = conn.execute(q).first()
            if answer is not None:
                labelled.append({**dict(answer._mapping), "y": y, "observed_on": o["observed_on"]})
    return labelled
