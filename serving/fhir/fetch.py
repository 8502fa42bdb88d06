"""Fetching a prefetch template the CDS client did not satisfy, from the client's FHIR server.

Only when the request carries `fhirServer` and `fhirAuthorization` and the server's base URL
starts with an entry of `ICANS_CDS_FHIR_SERVER_ALLOWLIST` (empty by default: never fetch), over
HTTPS outside development. Paging follows `next` links on the same server only, up to a limit.
Any failure leaves the key unsatisfied (and the answer is 412 if required data stay missing).
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

log = logging.getLogger("icans_risk.serving")

MAX_BYTES = 5_000_000
MAX_PAGES = 10


class FetchError(RuntimeError):
    pass


def allowed(fhir_server: str, allowlist: list[str], *, development: bool) -> bool:
    parsed = urllib.parse.urlsplit(fhir_server)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        return False
    if parsed.scheme == "http" and not development:
        return False
    base = fhir_server.rstrip("/") + "/"
    return any(base.startswith(entry.rstrip("/") + "/") for entry in allowlist)


def render(template: str, patient_id: str) -> str:
    return template.replace("{{context.patientId}}", urllib.parse.quote(patient_id, safe=""))


def _get(url: str, token: str, timeout: float) -> dict[str, Any]:
    req = urllib.request.Request(
        url, headers={"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"}, method="GET"
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # allow-listed https only
            body = resp.read(MAX_BYTES + 1)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise FetchError(f"{type(exc).__name__}") from None
    if len(body) > MAX_BYTES:
        raise FetchError("response too large")
    try:
        data = json.loads(body)
    except ValueError:
        raise FetchError("response is not JSON") from None
    if not isinstance(data, dict):
        raise FetchError("response is not a FHIR resource")
    return data


def fetch(fhir_server: str, relative: str, token: str, *, timeout: float) -> dict[str, Any] | None:
    """The resource or searchset Bundle for `relative` (None for an empty search, as prefetch would send)."""
    base = fhir_server.rstrip("/") + "/"
    data = _get(base + relative, token, timeout)
    if data.get("resourceType") == "OperationOutcome":
        raise FetchError("the FHIR server answered with an OperationOutcome")
    if data.get("resourceType") != "Bundle":
        return data
    entries = list(data.get("entry") or [])
    pages = 1
    next_url = _next(data)
    while next_url and pages < MAX_PAGES:
        if not next_url.startswith(base):
            log.warning("FHIR fetch: a next link leaves the FHIR server; not followed")
            break
        page = _get(next_url, token, timeout)
        entries += list(page.get("entry") or [])
        next_url = _next(page)
        pages += 1
    if not entries:
        return None
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def _next(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return link["url"]
    return None
