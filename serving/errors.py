"""Validation errors as the service reports them: field and rule, never a submitted value or name."""

from __future__ import annotations

import difflib
from typing import Any

from core.contract import FEATURE_NAMES, ID_COLUMN

# The names a suggestion can come from: the contract's, never anything the caller sent.
_SUGGESTABLE: tuple[str, ...] = (*FEATURE_NAMES, ID_COLUMN)
# Longer names are not compared (a flood of long keys must not cost quadratic time).
_MAX_COMPARED = 2 * max(len(n) for n in _SUGGESTABLE)


def nearest_contract_name(name: object, cutoff: float = 0.75) -> str | None:
    """The contract field an unknown name most likely meant (case, '-', ' ' and '.' ignored), or None.

    Only a contract name is ever returned, so the answer echoes nothing the caller sent."""
    if not isinstance(name, str) or not name or len(name) > _MAX_COMPARED:
        return None
    key = name.strip().lower().replace("-", "_").replace(" ", "_").replace(".", "_")
    if key in _SUGGESTABLE:
        return key
    match = difflib.get_close_matches(key, _SUGGESTABLE, n=1, cutoff=cutoff)
    return match[0] if match else None


def unknown_field_rule(name: object) -> str:
    """The rule text for an unknown field: with the nearest contract name when one is close."""
    rule = "unknown field (not in the data contract)"
    hint = nearest_contract_name(name)
    return f"{rule}; did you mean '{hint}'?" if hint else rule


def sanitize_errors(errors: Any, body: Any = None) -> list[dict[str, str]]:
    """Field and rule only: the submitted value is never echoed back, nor the name of an unknown
    field (named by its position in its object, with the nearest contract name as a suggestion);
    at most MAX_ERRORS errors are listed."""
    from serving.jsonbody import cap, unknown_field

    out = []
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        etype = e.get("type", "invalid")
        submitted = loc[-1] if loc else None
        if etype == "extra_forbidden" and loc:
            loc[-1] = unknown_field(_position(body, loc))
        field = ".".join(str(p) for p in loc) or "body"
        if etype == "json_invalid":
            rule = "the body is not valid JSON"
        elif etype == "extra_forbidden":
            rule = unknown_field_rule(submitted)
        elif etype == "missing":
            rule = "required field is missing"
        else:
            rule = e.get("msg", "invalid value")
        out.append({"field": field, "rule": rule, "type": etype})
    return cap(out)


def _position(body: Any, loc: list[Any]) -> int | None:
    """1-based position of the key loc[-1] in the object at loc[:-1] of the body (None if unknown)."""
    obj = body
    try:
        for p in loc[:-1]:
            obj = obj[p]
        return list(obj).index(loc[-1]) + 1
    except (KeyError, IndexError, TypeError, ValueError):
        return None
