"""The audit row of one scored patient, built one way for every endpoint that scores (POST /v1/risk,
its batch and explanation, the CDS Hooks card), so rows differ only where the endpoints do."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from serving.store import AuditRecord

TOP_CONTRIBUTIONS = 5  # the explanation's largest contributions kept in the audit row


def top_contributions(answer: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The answer's first TOP_CONTRIBUTIONS contributions (already ordered by size), feature and log-odds only."""
    return [
        {"feature": c["feature"], "log_odds": c["log_odds"]}
        for c in answer["explanation"]["contributions"][:TOP_CONTRIBUTIONS]
    ]


def audit_record(
    answer: Mapping[str, Any],
    inputs: Mapping[str, Any],
    *,
    request_id: str,
    client_id: str | None,
    endpoint: str,
    latency_ms: float,
    patient_id: str | None = None,
    time: datetime | None = None,
) -> AuditRecord:
    """One answer's audit record. The store hashes the patient id (given here or in `inputs`) and
    keeps it out of the stored inputs; `time` defaults to now (one request passes one time to all)."""
    unc = answer.get("uncertainty")
    return AuditRecord(
        request_id=request_id,
        client_id=client_id,
        endpoint=endpoint,
        model_name=answer["model"]["name"],
        model_version=answer["model"]["version"],
        inputs=inputs,
        patient_id=patient_id,
        risk=answer["risk"],
        risk_group=answer["risk_group"],
        top_contributions=top_contributions(answer),
        latency_ms=latency_ms,
        time=time if time is not None else datetime.now(UTC),
        risk_low=unc["interval"][0] if unc else None,
        risk_high=unc["interval"][1] if unc else None,
        risk_group_change_probability=unc["risk_group_change_probability"] if unc else None,
    )
