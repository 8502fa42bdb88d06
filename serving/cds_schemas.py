"""The CDS Hooks 2.0 request and response models of serving/routes/cds_hooks.py (what a CDS client
sends and gets back), kept apart from the endpoints that use them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")
    access_token: str = Field(min_length=1, max_length=8192)
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None


class PatientViewContext(BaseModel):
    model_config = ConfigDict(extra="allow")
    userId: str | None = None
    patientId: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9\-.]{1,64}$")
    encounterId: str | None = None


class CdsRequest(BaseModel):
    """A CDS Hooks call. `prefetch` values are FHIR resources, searchset Bundles or null (no data)."""

    model_config = ConfigDict(extra="allow")
    hook: str
    hookInstance: str = Field(min_length=1, max_length=128)
    fhirServer: str | None = Field(default=None, max_length=2048)
    fhirAuthorization: FhirAuthorization | None = None
    context: PatientViewContext
    prefetch: dict[str, Any] | None = None


class Coding(BaseModel):
    model_config = ConfigDict(extra="allow")
    system: str | None = Field(default=None, max_length=512)
    code: str = Field(min_length=1, max_length=256)
    display: str | None = Field(default=None, max_length=512)


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")
    reason: Coding | None = None
    userComment: str | None = Field(default=None, max_length=2000)


class AcceptedSuggestion(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(min_length=1, max_length=128)


class Feedback(BaseModel):
    model_config = ConfigDict(extra="allow")
    card: str = Field(pattern=_UUID.pattern)
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(default=None, max_length=50)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: datetime  # ISO 8601; without an offset it is taken as UTC


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    feedback: list[Feedback] = Field(min_length=1, max_length=100)


class CardSource(BaseModel):
    label: str
    url: str | None = None


class Card(BaseModel):
    """A CDS Hooks 2.0 card (optional fields without a value are omitted from the JSON)."""

    model_config = ConfigDict(extra="allow")
    uuid: str = Field(description="Identifies the card in feedback; equal to the request_id of its audit record")
    summary: str = Field(max_length=139, description="Risk in words and numbers, under 140 characters")
    indicator: Literal["info", "warning", "critical"] = Field(description="low -> info, intermediate -> warning, high -> critical")
    detail: str | None = Field(default=None, description="GitHub-flavoured Markdown: top factors, data used, model version")
    source: CardSource
    overrideReasons: list[Coding] | None = None
    extension: dict[str, Any] | None = Field(
        default=None, description="'icans-risk.prediction': risk (0-1), risk_group, log_odds, model"
    )


class CdsResponse(BaseModel):
    cards: list[Card]


class CdsService(BaseModel):
    model_config = ConfigDict(extra="allow")
    hook: str
    id: str
    title: str | None = None
    description: str
    prefetch: dict[str, str] | None = None


class Discovery(BaseModel):
    services: list[CdsService]


class FeedbackStored(BaseModel):
    stored: int
    duplicates: int = Field(default=0, description="Entries not stored: the card already has feedback with that outcome")
    request_id: str | None = None


class MissingItem(BaseModel):
    feature: str
    reason: str


class PreconditionFailed(BaseModel):
    detail: str
    missing: list[MissingItem]
    request_id: str | None = None
