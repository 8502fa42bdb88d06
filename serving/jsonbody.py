"""Strict JSON bodies for the scoring routes: bounded keys, no duplicate keys, no echoed names.

The body is parsed once, here, with a hook on every JSON object (the C parser still does the
work; the hook costs about a microsecond an object):

- an object with more than MAX_FIELDS keys, or a body with more than MAX_UNKNOWN unknown keys
  (names outside the contract), is refused before anything is validated, with one error;
- a duplicate key is refused (422) naming the field if it is a contract name, else its position;
- unknown field names are never echoed: errors name them by position (`<unknown field 3>`),
  never longer than the contract's longest feature name;
- at most MAX_ERRORS errors are listed, then one line says how many more there were.

The parsed document is handed to FastAPI (`request._json`), which validates it as before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

import orjson

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from core.contract import FEATURES

KNOWN = frozenset(f.name for f in FEATURES) | {"patient_id", "patients"}
LONGEST_NAME = max(len(f.name) for f in FEATURES)
MAX_FIELDS = 2 * (len(FEATURES) + 1)  # a patient has at most len(FEATURES) + 1 keys
MAX_UNKNOWN = 20
MAX_ERRORS = 20


def unknown_field(position: int | None) -> str:
    """How an unknown field is named in errors: by its position in its object, never its text."""
    name = "<unknown field>" if position is None else f"<unknown field {position}>"
    assert len(name) <= LONGEST_NAME
    return name


class BodyRefused(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("body refused")
        self.errors = errors


class _Flood(Exception):
    pass


class _Parse:
    __slots__ = ("dups", "unknown")

    def __init__(self) -> None:
        self.dups: list[tuple[dict, list[tuple[str, int]]]] = []
        self.unknown = 0

    def hook(self, pairs: list[tuple[str, Any]]) -> dict:
        d = dict(pairs)
        n = len(pairs)
        if n > MAX_FIELDS:
            raise _Flood(f"an object has more than {MAX_FIELDS} fields (the contract has {len(FEATURES)})")
        if n != len(d):
            seen: dict[str, int] = {}
            dup: list[tuple[str, int]] = []
            for i, (k, _) in enumerate(pairs, 1):
                if k in seen and (k, seen[k]) not in dup:
                    dup.append((k, seen[k]))
                seen.setdefault(k, i)
            self.dups.append((d, dup))
        if not d.keys() <= KNOWN:
            self.unknown += len(d.keys() - KNOWN)
            if self.unknown > MAX_UNKNOWN:
                raise _Flood(f"more than {MAX_UNKNOWN} unknown fields (not in the data contract)")
        return d


_KEY_END = re.compile(rb'"[ \t\r\n]*:')


def parse(body: bytes) -> Any:
    """The JSON document, or BodyRefused; malformed JSON raises ValueError as json.loads does."""
    doc = _fast(body)
    return doc if doc is not _SLOW else _exact(body)


_SLOW = object()


def _fast(body: bytes) -> Any:
    """orjson, and proof that nothing is wrong, for the usual body (a third of the exact path's cost).

    Without a backslash in the body, every key as written ends in a quote followed by a colon, so
    the count of those is at least the number of keys written; if it equals the number of keys
    parsed, no key was given twice. Any doubt (escapes, NaN, deeper objects, unknown names, a
    count that differs) takes the exact path."""
    if b"\\" in body:
        return _SLOW
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _SLOW
    if not isinstance(doc, dict) or len(doc) > MAX_FIELDS or not doc.keys() <= KNOWN:
        return _SLOW
    keys = len(doc)
    patients = doc.get("patients")
    if isinstance(patients, list):
        for p in patients:
            if isinstance(p, dict):
                if len(p) > MAX_FIELDS or not p.keys() <= KNOWN:
                    return _SLOW
                keys += len(p)
    return doc if len(_KEY_END.findall(body)) == keys else _SLOW


def _exact(body: bytes) -> Any:
    state = _Parse()
    try:
        doc = json.loads(body, object_pairs_hook=state.hook)
    except _Flood as exc:
        raise BodyRefused([{"field": "body", "rule": str(exc), "type": "too_many_fields"}]) from None
    if state.dups:
        paths = _paths(doc)
        errors = []
        for obj, names in state.dups:
            prefix = paths.get(id(obj), "")
            for name, position in names:
                label = name if name in KNOWN else unknown_field(position)
                errors.append(
                    {"field": f"{prefix}{label}", "rule": "duplicate field (given more than once)", "type": "duplicate_field"}
                )
        raise BodyRefused(cap(errors))
    return doc


def _paths(doc: Any) -> dict[int, str]:
    """id(object) -> its path prefix, for the shapes the scoring routes accept."""
    out: dict[int, str] = {id(doc): ""}
    if isinstance(doc, dict) and isinstance(doc.get("patients"), list):
        for i, p in enumerate(doc["patients"]):
            out[id(p)] = f"patients.{i}."
    return out


def cap(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    """At most MAX_ERRORS errors, then one that says how many were left out."""
    if len(errors) <= MAX_ERRORS:
        return errors
    more = len(errors) - MAX_ERRORS
    return [*errors[:MAX_ERRORS], {"field": "body", "rule": f"{more} more errors not listed", "type": "too_many_errors"}]


def _json_content(content_type: str | None) -> bool:
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class _ParsedBodyRoute(APIRoute):
    """An APIRoute whose JSON body is parsed by `parse_body` before FastAPI validates it; the parser's
    `refusal` is answered by `refuse`, and what is not JSON is left to FastAPI as it always was."""

    refusal: type[Exception] = Exception

    @staticmethod
    def parse_body(body: bytes) -> Any:
        raise NotImplementedError

    @staticmethod
    def refuse(exc: Any, request: Request) -> Response:
        raise NotImplementedError

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def strict(request: Request) -> Response:
            body = await request.body()
            if body and _json_content(request.headers.get("content-type")):
                try:
                    request._json = self.parse_body(body)
                except self.refusal as exc:
                    return self.refuse(exc, request)
                except (ValueError, RecursionError):  # not JSON: FastAPI answers it as it always has
                    pass
            return await handler(request)

        return strict


def _body_refused(exc: BodyRefused, request: Request) -> JSONResponse:
    rid = request.scope.get("state", {}).get("request_id")
    return JSONResponse({"detail": exc.errors, "request_id": rid}, status_code=422)


class StrictJSONRoute(_ParsedBodyRoute):
    """An APIRoute whose JSON body is parsed by `parse` before FastAPI validates it."""

    refusal = BodyRefused
    parse_body = staticmethod(parse)
    refuse = staticmethod(_body_refused)


# -- CDS Hooks bodies (issue 25): not the contract's shape, so only duplicate keys are refused ------

# Key names that may be quoted back in an error: the CDS Hooks request's and feedback's own, and the
# FHIR element names a prefetch commonly holds. Any other key is named by position only.
CDS_NAMES = frozenset(
    {
        "hook", "hookInstance", "context", "prefetch", "fhirServer", "fhirAuthorization", "userId", "patientId",
        "encounterId", "access_token", "token_type", "expires_in", "scope", "subject", "feedback", "card",
        "outcome", "acceptedSuggestions", "overrideReason", "outcomeTimestamp", "reason", "userComment",
        "resourceType", "id", "meta", "status", "intent", "category", "code", "coding", "system", "display",
        "text", "value", "valueQuantity", "valueString", "valueCodeableConcept", "unit", "comparator",
        "effectiveDateTime", "issued", "authoredOn", "birthDate", "gender", "type", "entry", "resource",
        "fullUrl", "link", "url", "relation", "reference", "medicationCodeableConcept",
        "medicationReference", "dosageInstruction", "doseAndRate", "doseQuantity", "onsetDateTime",
        "performedDateTime", "clinicalStatus", "verificationStatus", "extension", "valueDecimal",
    }
)


class DuplicateKey(ValueError):
    def __init__(self, field: str) -> None:
        super().__init__("duplicate key")
        self.field = field


def _refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set[str] = set()
        for i, (k, _) in enumerate(pairs, 1):
            if k in seen:
                raise DuplicateKey(k if k in CDS_NAMES else unknown_field(i))
            seen.add(k)
    return d


def parse_no_duplicates(body: bytes) -> Any:
    """The JSON document; DuplicateKey if an object gives a key twice (last-wins would let a value
    slip past whoever read the first); ValueError/RecursionError for what is not JSON."""
    return json.loads(body, object_pairs_hook=_refuse_duplicates)


def duplicate_error(exc: DuplicateKey, request: Request) -> JSONResponse:
    rid = request.scope.get("state", {}).get("request_id")
    return JSONResponse(
        {
            "detail": [{"field": exc.field, "rule": "duplicate field (given more than once)", "type": "duplicate_field"}],
            "request_id": rid,
        },
        status_code=400,
    )


class NoDuplicateKeysRoute(_ParsedBodyRoute):
    """An APIRoute whose JSON body is refused (400) if a key is given twice; otherwise as FastAPI parses it."""

    refusal = DuplicateKey
    parse_body = staticmethod(parse_no_duplicates)
    refuse = staticmethod(duplicate_error)
