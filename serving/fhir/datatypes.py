"""FHIR data types as this service reads them: ids, dates, CodeableConcepts, References.

FHIR_ID is the one declaration of what a FHIR id may be (R4: 1-64 of A-Z, a-z, 0-9, '-', '.'),
used for a CDS Hooks context.patientId and for a RiskAssessment's id.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def as_instant(value: Any, partial: str = "none") -> datetime | None:
    """FHIR date/dateTime/instant -> aware UTC datetime.

    A date is its midnight UTC. Partial dates ("2020", "2020-05") give None, or with
    partial="start" the first day of the period, with partial="middle" its middle.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    if isinstance(value, str):
        m = re.fullmatch(r"(\d{4})(?:-(\d{2}))?", value)
        if m and partial != "none":
            year = int(m.group(1))
            if m.group(2):
                month = int(m.group(2))
                return datetime(year, month, 1 if partial == "start" else 15, tzinfo=UTC)
            return datetime(year, 1, 1, tzinfo=UTC) if partial == "start" else datetime(year, 7, 2, tzinfo=UTC)
    return None


def concept_texts(concept: Any) -> list[str]:
    """The text and codings' displays of a CodeableConcept, lower-cased."""
    if concept is None:
        return []
    out = [concept.text] if getattr(concept, "text", None) else []
    out += [c.display for c in (concept.coding or []) if c.display]
    return [t.lower() for t in out]


def concept_tokens(concept: Any) -> set[tuple[str, str]]:
    if concept is None:
        return set()
    return {(c.system or "", c.code) for c in (concept.coding or []) if c.code}


def concept_label(concept: Any) -> str:
    if concept is None:
        return "?"
    if concept.text:
        return concept.text
    for c in concept.coding or []:
        if c.display:
            return c.display
    for c in concept.coding or []:
        if c.code:
            return f"{c.system or ''}|{c.code}"
    return "?"


def reference_of(resource: Any) -> str | None:
    rid = getattr(resource, "id", None)
    return f"{resource.get_resource_type()}/{rid}" if rid else None


def fmt_date(t: datetime | None) -> str:
    return t.date().isoformat() if t else "undated"


def fmt_num(x: float) -> str:
    return f"{x:.4g}"


def subject_ok(resource: Any, patient_id: str) -> bool:
    """False if the resource names another patient as its subject (never mix patients)."""
    subject = getattr(resource, "subject", None) or getattr(resource, "patient", None)
    ref = getattr(subject, "reference", None) if subject is not None else None
    if not ref:
        return True
    ref = ref.split("/_history/")[0]
    return re.search(r"(^|/)Patient/" + re.escape(patient_id) + r"$", ref) is not None


def status_code(concept: Any) -> str | None:
    for c in (concept.coding or []) if concept is not None else []:
        if c.code:
            return c.code
    return None
