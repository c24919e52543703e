"""Checks on values received as JSON, shared by the API and the MES bridge."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any


def first_at(value: Any, bad: Callable[[Any], bool], path: str = "") -> str | None:
    """The dotted path of the first value (or object key) in a parsed JSON value that `bad` flags, if any ("" for
    the value itself)."""
    if not isinstance(value, dict | list):
        return path if bad(value) else None
    items = value.items() if isinstance(value, dict) else enumerate(value)
    for k, v in items:
        here = f"{path}.{k}" if path else str(k)
        if isinstance(k, str) and bad(k):
            return here
        if (found := first_at(v, bad, here)) is not None:
            return found
    return None


def _non_finite(v: Any) -> bool:
    return isinstance(v, float) and not math.isfinite(v)


def non_finite_at(value: Any, path: str = "") -> str | None:
    """The dotted path of the first NaN or infinite number in a parsed JSON value, if any ("" for the value itself).

    Python's JSON parser takes NaN, Infinity and -Infinity as numbers, though JSON has none: a message holding one
    must be refused where it enters, naming the field (Temporal's JSON payloads cannot carry them, so such a value
    would be dropped on its way to the workflow)."""
    return first_at(value, _non_finite, path)
