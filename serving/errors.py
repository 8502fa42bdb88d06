"""Validation errors as the service reports them: field and rule, never a submitted value or name."""

from __future__ import annotations

from typing import Any


def sanitize_errors(errors: Any, body: Any = None) -> list[dict[str, str]]:
    """Field and rule only: the submitted value is never echoed back, nor the name of an unknown
    field (named by its position in its object); at most MAX_ERRORS errors are listed."""
    from serving.jsonbody import cap, unknown_field

    out = []
    for e in errors:
        loc = [p for p in e.get("loc", ()) if p != "body"]
        etype = e.get("type", "invalid")
        if etype == "extra_forbidden" and loc:
            loc[-1] = unknown_field(_position(body, loc))
        field = ".".join(str(p) for p in loc) or "body"
        if etype == "json_invalid":
            rule = "the body is not valid JSON"
        elif etype == "extra_forbidden":
            rule = "unknown field (not in the data contract)"
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
