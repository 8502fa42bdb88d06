"""The names evidence goes by: the comparators' keys (declared once, with their colours and display
names, in core.style) and the fragments that make stable MLflow metric names."""

from __future__ import annotations

import re

from core.style import EASIX, M_EASIX, MODEL, ORACLE, TREAT_ALL, TREAT_NONE

__all__ = ["EASIX", "M_EASIX", "MODEL", "ORACLE", "TREAT_ALL", "TREAT_NONE", "pct", "safe_name"]


def safe_name(text: str) -> str:
    """A metric-name fragment: lower case, runs of anything but [a-z0-9] become one '_'.
    '4-1BB' -> '4_1bb', 'CD19/CD22' -> 'cd19_cd22'."""
    return re.sub(r"[^a-z0-9]+", "_", str(text).lower()).strip("_") or "x"


def pct(t: float) -> str:
    """A threshold as a metric-name fragment: 0.05 -> '5pct'."""
    return f"{round(t * 100):d}pct"
