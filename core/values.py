"""Checks on values received as JSON, shared by the API and the MES bridge."""

from __future__ import annotations

import math
from typing import Any


def non_finite_at(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in a parsed JSON value, if any ("" for the value itself).

    Python's JSON parser takes NaN, Infinity and -Infinity as numbers, though JSON has none: a message holding one
    must be refused where it enters, naming the field (Temporal's JSON payloads cannot carry them, so such a value
    would be dropped on its way to the workflow)."""
    if isinstance(value, float):
        return path if not math.isfinite(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if isinstance(v, (float, dict, list)) and \
                (found := non_finite_at(v, f"{path}.{k}" if path else str(k))) is not None:
            return found
    return None
