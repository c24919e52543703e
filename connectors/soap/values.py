"""SOAP answers as plain values (no zeep here: the worker imports these without loading the SOAP stack)."""

from __future__ import annotations

from typing import Any


def _plain(v: Any) -> Any:
    """zeep's OrderedDicts, Decimals and wrappers as JSON-friendly values."""
    from decimal import Decimal

    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, Decimal):
        return float(v)
    return v


_NAME_KEYS = ("symbol", "name", "element", "code", "key", "property")


def flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    """A SOAP answer as dotted keys: {'chemistry': {'Element': [{'symbol': 'C', 'percent': 0.41}]}}
    becomes {'chemistry.C': 0.41}. Array wrappers are unwrapped; a list of {name, value} pairs is keyed
    by its name; other lists by index."""
    out: dict[str, Any] = {}
    if isinstance(doc, dict):
        if len(doc) == 1 and isinstance(next(iter(doc.values())), list):
            return flatten(next(iter(doc.values())), prefix)  # <chemistry><Element/>...</chemistry>
        for k, v in doc.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            if isinstance(item, dict):
                key = next((item[k] for k in _NAME_KEYS if isinstance(item.get(k), str)), None)
                rest = {k: v for k, v in item.items() if item.get(k) is not key}
                if key is not None and len(rest) == 1:
                    out[f"{prefix}.{key}" if prefix else key] = next(iter(rest.values()))
                    continue
            out.update(flatten(item, f"{prefix}.{i}" if prefix else str(i)))
        return out
    out[prefix] = doc
    return out
