"""Outcomes reported after an answer: append-only, idempotent, one current outcome per answer.

ICANS is known within about 30 days of infusion, so outcomes arrive late and one at a time, from
the EHR (`POST /v1/outcomes`) or a registry export (`icans-risk outcomes import FILE`). Each names
the answer it belongs to by `request_id` (a single-patient answer) or by `patient_id` (hashed with
the audit trail's key, never stored as given), and is stored with the audit row it labels
(`audit_id`). A client reports only for answers it received itself: the same 404 for "not yours"
and "never scored", so the endpoint cannot tell anyone whether a patient was scored.

An answer has at most one current outcome: a second report without `corrects` is a conflict; a
correction names the current outcome of the same answer and supersedes it, so a chain of
corrections resolves to one. A repeated report with the same `outcome_id` is the same row (a retry
is harmless); the same id with other content is a conflict. Nothing is ever updated or deleted
(the migration's triggers refuse it).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from core.contract import SEVERE_GRADE  # the severe-grade rule, stated once (severe_icans: grade >= it)
from serving.store import UTCDateTime, audit_log

# Outcome dates before the first CAR T-cell trials or after tomorrow (time zones) are typing errors.
EARLIEST_OUTCOME = date(2010, 1, 1)

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
    sa.Column("audit_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")),  # migration 0007
)
_CONTENT = ("request_id", "patient_hash", "icans_max_grade", "severe_crs", "observed_on", "source", "corrects")


class _AnyClient:
    def __repr__(self) -> str:
        return "ANY_CLIENT"


# `owner=ANY_CLIENT`: the operator's own tools (the registry import, monitoring), which may label
# any answer; a client of the API passes its own name and sees only the answers it received.
ANY_CLIENT: Final = _AnyClient()
Owner = str | None | _AnyClient


class OutcomeConflict(ValueError):
    """The outcome_id was used before for other content, or the answer already has an outcome."""


class UnknownTarget(LookupError):
    """No answer of this client (or earlier outcome of the answer) matches; names the field, not its value."""


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


def check_observed_on(value: date, today: date | None = None) -> None:
    """Raise ValueError (naming the rule, not the value) for a date outside the plausible window."""
    today = today or datetime.now(UTC).date()
    if not EARLIEST_OUTCOME <= value <= date.fromordinal(today.toordinal() + 1):
        raise ValueError(f"must be between {EARLIEST_OUTCOME.isoformat()} and tomorrow")


def record_outcome(store: Any, rec: OutcomeRecord, *, owner: Owner = ANY_CLIENT) -> tuple[dict[str, Any], bool]:
    """Append one outcome; returns (the stored row, created). Raises UnknownTarget (no answer of
    `owner` matches, or `corrects` names no outcome of that answer) or OutcomeConflict."""
    for attempt in range(2):
        try:
            with _write(store) as conn:
                return _record_in(conn, store, rec, owner)
        except IntegrityError:  # the same outcome_id, inserted by a concurrent retry
            if attempt:
                raise
    raise RuntimeError("unreachable")


def record_outcomes(store: Any, recs: Iterable[OutcomeRecord], *, owner: Owner = ANY_CLIENT,
                    batch: int = 200) -> Iterator[tuple[int, tuple[dict[str, Any], bool] | Exception]]:
    """Record many outcomes, `batch` per transaction (an import of 20 rows is one commit, not 20).

    Yields (index, (row, created)) or (index, the UnknownTarget / OutcomeConflict / ValueError that
    refused it); a refused row does not undo the others. A batch that meets a concurrent writer
    (IntegrityError) is rolled back and done again one row at a time. Idempotent like one call."""
    recs = list(recs)
    for start in range(0, len(recs), batch):
        part = list(enumerate(recs[start:start + batch], start=start))
        try:
            results: list[tuple[int, Any]] = []
            with _write(store) as conn:
                for i, rec in part:
                    try:
                        results.append((i, _record_in(conn, store, rec, owner)))
                    except (UnknownTarget, OutcomeConflict, ValueError) as exc:
                        results.append((i, exc))
        except IntegrityError:
            results = []
            for i, rec in part:
                try:
                    results.append((i, record_outcome(store, rec, owner=owner)))
                except (UnknownTarget, OutcomeConflict, ValueError) as exc:
                    results.append((i, exc))
        yield from results


@contextmanager
def _write(store: Any) -> Iterator[sa.Connection]:
    """One write transaction that sees the outcomes of every writer before it: the SQLite writers
    take turns on the store's write lock first; PostgreSQL locks the labelled audit row (_lock_answer)."""
    turn = store._writer_turn() if getattr(store, "backend", None) == "sqlite" else _nothing()
    with turn, store.engine.begin() as conn:
        yield conn


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _record_in(conn: sa.Connection, store: Any, rec: OutcomeRecord, owner: Owner) -> tuple[dict[str, Any], bool]:
    check_observed_on(rec.observed_on)
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
    existing = conn.execute(sa.select(outcomes).where(outcomes.c.outcome_id == rec.outcome_id)).first()
    if existing is not None:
        row = dict(existing._mapping)
        if any(row[k] != values[k] for k in _CONTENT) or not _owns(conn, owner, row["audit_id"]):
            raise OutcomeConflict("outcome_id was already used for a different outcome; send a correction "
                                  "with a new outcome_id and `corrects` instead")
        return row, False
    audit_id = _answer(conn, values, owner)
    _lock_answer(conn, audit_id)
    current = _current_of(conn, audit_id)
    if values["corrects"] is None:
        if current:
            raise OutcomeConflict("this answer already has an outcome; to change it, send a correction with "
                                  "`corrects` naming the current outcome_id")
    elif values["corrects"] not in current:
        corrected = conn.execute(sa.select(outcomes.c.audit_id)
                                 .where(outcomes.c.outcome_id == values["corrects"])).first()
        if corrected is None or corrected.audit_id != audit_id:
            raise UnknownTarget("corrects: no outcome of this answer has this outcome_id")
        raise OutcomeConflict("corrects: that outcome was already corrected; correct the current outcome instead")
    conn.execute(outcomes.insert().values(received_at=datetime.now(UTC), audit_id=audit_id, **values))
    stored = conn.execute(sa.select(outcomes).where(outcomes.c.outcome_id == rec.outcome_id)).one()
    return dict(stored._mapping), True


def _owned(q: Any, owner: Owner) -> Any:
    if isinstance(owner, _AnyClient):
        return q
    return q.where(audit_log.c.client_id.is_(None) if owner is None else audit_log.c.client_id == owner)


def _owns(conn: sa.Connection, owner: Owner, audit_id: int | None) -> bool:
    if isinstance(owner, _AnyClient):
        return True
    if audit_id is None:
        return False
    return conn.execute(_owned(sa.select(audit_log.c.id).where(audit_log.c.id == audit_id), owner)).first() is not None


def _answer(conn: sa.Connection, values: dict[str, Any], owner: Owner) -> int:
    """The audit row this outcome labels, among `owner`'s answers only (404 alike for "not yours"
    and "never scored"): the request's row (that patient's, with patient_id), or the patient's latest.

    No ORDER BY id ... LIMIT in SQL: a planner may answer that by walking the primary key backwards
    and filtering (a scan of the audit trail); the few rows of one request or patient come from
    their index and the latest is picked here."""
    q = _owned(sa.select(audit_log.c.id, audit_log.c.patient_hash), owner)
    if values["request_id"] is not None:
        q = q.where(audit_log.c.request_id == values["request_id"])
        if values["patient_hash"] is not None:
            q = q.where(audit_log.c.patient_hash == values["patient_hash"])
        rows = conn.execute(q).all()
        if not rows:
            field = "request_id" if values["patient_hash"] is None else "request_id and patient_id"
            raise UnknownTarget(f"{field}: no answer to this client matches")
        if values["patient_hash"] is None and len({r.patient_hash for r in rows}) > 1:
            raise UnknownTarget("request_id: this request scored several patients; name the patient by patient_id")
        return max(int(r.id) for r in rows)
    rows = conn.execute(q.where(audit_log.c.patient_hash == values["patient_hash"])).all()
    if not rows:
        raise UnknownTarget("patient_id: no answer to this client matches")
    return max(int(r.id) for r in rows)


def _lock_answer(conn: sa.Connection, audit_id: int) -> None:
    """PostgreSQL: concurrent reports for one answer queue here (a row lock; the audit row is never
    changed), so that two of them cannot both find it without an outcome. SQLite: _write's turn."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(audit_log.c.id).where(audit_log.c.id == audit_id).with_for_update())


def _current_of(conn: sa.Connection, audit_id: int) -> set[str]:
    """The outcome_ids of this answer that no correction supersedes (one, or several stored before 0007)."""
    rows = conn.execute(sa.select(outcomes.c.outcome_id, outcomes.c.corrects)
                        .where(outcomes.c.audit_id == audit_id)).all()
    superseded = {r.corrects for r in rows if r.corrects}
    return {r.outcome_id for r in rows if r.outcome_id not in superseded}


def current_outcomes(store: Any) -> list[dict[str, Any]]:
    """The current outcome of each answer, in the order received: not superseded by a correction,
    and of several (stored before one-per-answer was enforced), the last received. Outcomes that
    label no audited answer are left out."""
    with store.engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(outcomes).order_by(outcomes.c.id))]
    superseded = {r["corrects"] for r in rows if r["corrects"]}
    latest: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["outcome_id"] not in superseded and r["audit_id"] is not None:
            latest[r["audit_id"]] = r  # ordered by id: the last one received wins
    return sorted(latest.values(), key=lambda r: r["id"])


def labelled_answers(store: Any, outcome: str = "severe_icans") -> list[dict[str, Any]]:
    """The audited answers that have a current outcome, one row per answer, each with `y` (0/1)
    for `outcome` (an answer whose current outcome does not report `outcome` is left out)."""
    labels: dict[int, tuple[int, date]] = {}
    for o in current_outcomes(store):
        if outcome == "severe_icans":
            if o["icans_max_grade"] is None:
                continue
            y = int(o["icans_max_grade"] >= SEVERE_GRADE)
        else:
            if o["severe_crs"] is None:
                continue
            y = int(bool(o["severe_crs"]))
        labels[o["audit_id"]] = (y, o["observed_on"])
    if not labels:
        return []
    labelled = []
    with store.engine.connect() as conn:
        ids = list(labels)
        for start in range(0, len(ids), 500):
            q = sa.select(audit_log).where(audit_log.c.id.in_(ids[start:start + 500]))
            for answer in conn.execute(q):
                y, observed_on = labels[answer.id]
                labelled.append({**dict(answer._mapping), "y": y, "observed_on": observed_on})
    return sorted(labelled, key=lambda a: a["id"])
