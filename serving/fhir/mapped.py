"""What mapping one request's prefetch gives: the record, what is missing and why, and the sources."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class Missing:
    feature: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"feature": self.feature, "reason": self.reason}


@dataclass
class Source:
    """Where a feature's value came from, for the card and the RiskAssessment basis."""

    reference: str | None = None
    time: datetime | None = None
    original: str | None = None  # as recorded, e.g. "0.8 mg/dL"
    text: str | None = None  # what matched, e.g. "Procedure: Hemopoietic stem cell transplant"


@dataclass
class Mapped:
    record: dict[str, Any]
    missing: list[Missing]
    sources: dict[str, Source]
    notes: list[str]
    anchor: datetime
    window_start: datetime

    @property
    def complete(self) -> bool:
        return not self.missing
