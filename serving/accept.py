"""An HTTP Accept header as (media range, q) pairs: the one parser behind every content negotiation
of the service (the FHIR answer of POST /v1/risk, the explanation picture's SVG or PNG)."""

from __future__ import annotations


def media_ranges(accept: str) -> list[tuple[str, float]]:
    """Each media range of `accept` (stripped, case kept) with its q-value, in header order: 1.0
    without a q parameter, 0.0 for a q that is not a number."""
    out = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.append((media, q))
    return out
