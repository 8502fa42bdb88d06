"""Strict, sorted, compact JSON text: what every JSON column of the store and every export holds."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import orjson


def dumps(obj: Any) -> str:
    """Strict JSON, sorted and compact (every JSON column and export): NaN and Infinity are refused
    rather than stored as invalid JSON (orjson alone would write them as null)."""
    require_finite(obj)
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS, default=_json_default).decode()
    except orjson.JSONEncodeError as exc:  # the hook refused a NaN: a ValueError, as above
        if isinstance(exc.__cause__, ValueError):
            raise exc.__cause__ from None
        raise


def require_finite(obj: Any) -> None:
    """Refuse NaN and +-Infinity anywhere in a JSON document (one loop per container: hot path)."""
    if isinstance(obj, dict):
        values: Iterable[Any] = obj.values()
    elif isinstance(obj, (list, tuple)):
        values = obj
    else:
        values = (obj,)
    for v in values:
        if v.__class__ is float:
            if v - v != 0.0:  # NaN and +-inf give NaN here, every finite float 0.0
                raise ValueError("Out of range float values are not JSON compliant")
        elif isinstance(v, (dict, list, tuple)):
            require_finite(v)
        elif isinstance(v, float) and not math.isfinite(v):  # float subclasses (numpy.float64)
            raise ValueError("Out of range float values are not JSON compliant")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:  # numpy scalars (float32 too)
        value = obj.item()
    elif hasattr(obj, "tolist"):  # numpy arrays
        value = obj.tolist()
    else:
        raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
    require_finite(value)  # orjson would write a NaN returned from here as null
    return value
