"""The CBV 2.0 EPCIS event hash: `ni:///sha-256;{hex}?ver=CBV2.0` (EPCIS_NOTES §6).

The pre-hash string lists the event's fields in the canonical order as `key=value` with no separators;
identifiers are canonical Digital Links, CBV terms Web URIs, timestamps UTC with milliseconds, numbers
without trailing zeros, and each list is sorted. `eventID`, `recordTime`, `errorDeclaration` and
`certificationInfo` are not hashed, so an error declaration keeps the id of the event it retracts.

Checked against the reference generator's published vectors in tests/test_epcis_ids.py. Where the
reference is silent for JSON (nested extension objects with bare keys), a nested key takes the namespace
of its parent extension field.
"""

from __future__ import annotations

import hashlib
import math
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from domain.epcis_ids import canonical, cbv_urn_to_web, vocab_uri

_NOT_HASHED = {"type", "eventID", "recordTime", "errorDeclaration", "certificationInfo", "@context", "@type"}
_Q = ("epcClass", "quantity", "uom")
_META = ("time", "startTime", "endTime", "deviceID", "deviceMetadata", "rawData", "dataProcessingMethod",
         "bizRules")
_REPORT = ("type", "exception", "deviceID", "deviceMetadata", "rawData", "dataProcessingMethod", "time",
           "microorganism", "chemicalSubstance", "value", "component", "stringValue", "booleanValue",
           "hexBinaryValue", "uriValue", "minValue", "maxValue", "meanValue", "sDev", "percRank", "percValue",
           "uom", "coordinateReferenceSystem")
_TIME_KEYS = {"eventTime", "time", "startTime", "endTime", "declarationTime"}
GS1_VOC = "https://gs1.org/voc/"
_NUMERIC_START = frozenset("+-.0123456789iInN")  # what float() may accept: digits, signs, inf, nan


# a timestamp already in UTC with at most milliseconds, on a day every month has: written out as it is
_UTC_MS = re.compile(r"([1-9]\d{3})-(0[1-9]|1[0-2])-(0[1-9]|1\d|2[0-8])T([01]\d|2[0-3]):([0-5]\d):([0-5]\d)"
                     r"(?:\.(\d{1,3}))?(?:Z|z|[+-]00:00)")


def utc_millis(value: str) -> str:
    """An xsd:dateTimeStamp as UTC with exactly three fractional digits, rounded half up."""
    m = _UTC_MS.fullmatch(value)
    if m:  # the usual case, without a datetime round trip (a third of the time of a hash)
        return f"{m[1]}-{m[2]}-{m[3]}T{m[4]}:{m[5]}:{m[6]}.{(m[7] or '').ljust(3, '0')}Z"
    dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    ms, rest = divmod(dt.microsecond, 1000)
    dt = dt.replace(microsecond=0) + timedelta(milliseconds=ms + (1 if rest >= 500 else 0))
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def _number(v: float) -> str:
    f = float(v)
    if not math.isfinite(f):
        return str(v)
    return str(int(f)) if f == int(f) else str(f)


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return _number(v)
    s = str(v).strip()
    if s[:1] in _NUMERIC_START:
        try:
            return _number(float(s))
        except ValueError:
            pass
    if s.startswith("urn:epcglobal:cbv:"):
        return cbv_urn_to_web(s)
    return canonical(s)


def _kv(key: str, v: Any) -> str:
    if key in _TIME_KEYS and isinstance(v, str):
        return f"{key}={utc_millis(v)}"
    return f"{key}={_value(v)}"


def _ordered(obj: dict[str, Any], keys: tuple[str, ...]) -> str:
    return "".join(_kv(k, obj[k]) for k in keys if k in obj and obj[k] is not None and obj[k] != "")


def _expand(key: str, ctx: dict[str, str], parent_ns: str | None) -> str:
    if key.startswith(("http://", "https://", "urn:")):
        cut = max(key.rfind("/"), key.rfind("#")) + 1
        if key.startswith("urn:"):
            cut = key.rfind(":") + 1
        return "{" + key[:cut] + "}" + key[cut:]
    if ":" in key:
        prefix, local = key.split(":", 1)
        if prefix in ctx:
            return "{" + ctx[prefix] + "}" + local
        return key
    return "{" + parent_ns + "}" + key if parent_ns else key


def _ns_of(expanded: str) -> str | None:
    return expanded[1:expanded.index("}")] if expanded.startswith("{") else None


def _generic(key: str, value: Any, ctx: dict[str, str], parent_ns: str | None) -> list[str]:
    name = _expand(key, ctx, parent_ns)
    if isinstance(value, dict):
        ns = _ns_of(name)
        inner = sorted(s for k, v in value.items() if k not in ("@type",) for s in _generic(k, v, ctx, ns))
        return [name + "".join(inner)]
    if isinstance(value, list):
        return [s for item in value for s in _generic(key, item, ctx, parent_ns)]
    if value is None:
        return []
    return [f"{name}={_value(value)}"]


def _sensor_element(el: dict[str, Any], ctx: dict[str, str]) -> str:
    out = "sensorElement"
    meta = el.get("sensorMetadata")
    if meta:
        out += "sensorMetadata" + _ordered(meta, _META)
    reports = []
    for r in el.get("sensorReport", []):
        r2 = dict(r)
        if isinstance(r2.get("type"), str) and ":" not in r2["type"]:
            r2["type"] = GS1_VOC + r2["type"]
        elif isinstance(r2.get("type"), str) and r2["type"].startswith("gs1:"):
            r2["type"] = GS1_VOC + r2["type"][4:]
        ext = sorted(s for k, v in r.items() if k not in _REPORT for s in _generic(k, v, ctx, None))
        reports.append("sensorReport" + _ordered(r2, _REPORT) + "".join(ext))
    out += "".join(sorted(reports))
    ext = sorted(s for k, v in el.items() if k not in ("sensorMetadata", "sensorReport")
                 for s in _generic(k, v, ctx, None))
    return out + "".join(ext)


def prehash(event: dict[str, Any], context: dict[str, str] | None = None) -> str:
    """The canonical pre-hash string of one EPCIS 2.0 event in its JSON(-LD) form."""
    ctx = {"cbvmda": "urn:epcglobal:cbv:mda:", "gs1": GS1_VOC, **(context or {})}
    e = event
    parts = [f"eventType={e['type']}"]
    done = set(_NOT_HASHED)

    def take(key: str, text: str) -> None:
        done.add(key)
        if text:
            parts.append(text)

    def epcs(key: str) -> None:
        if e.get(key):
            take(key, key + "".join(sorted(f"epc={_value(x)}" for x in e[key])))
        done.add(key)

    def quantities(key: str) -> None:
        if e.get(key):
            take(key, key + "".join(sorted("quantityElement" + _ordered(q, _Q) for q in e[key])))
        done.add(key)

    for key in ("eventTime", "eventTimeZoneOffset"):
        if key in e:
            take(key, _kv(key, e[key]))
    epcs("epcList")
    if e.get("parentID"):
        take("parentID", _kv("parentID", e["parentID"]))
    epcs("inputEPCList")
    epcs("childEPCs")
    quantities("quantityList")
    quantities("childQuantityList")
    quantities("inputQuantityList")
    epcs("outputEPCList")
    quantities("outputQuantityList")
    for key in ("action", "transformationID"):
        if e.get(key):
            take(key, _kv(key, e[key]))
    for key, vocab in (("bizStep", "bizStep"), ("disposition", "disposition")):
        if e.get(key):
            take(key, f"{key}={vocab_uri(vocab, e[key])}")
    pd = e.get("persistentDisposition")
    if pd:
        inner = "".join("".join(sorted(f"{k}={vocab_uri('disposition', v)}" for v in pd.get(k, [])))
                        for k in ("set", "unset"))
        take("persistentDisposition", "persistentDisposition" + inner)
    for key in ("readPoint", "bizLocation"):
        loc = e.get(key)
        if loc:
            ext = sorted(s for k, v in loc.items() if k != "id" for s in _generic(k, v, ctx, None))
            take(key, key + (f"id={_value(loc['id'])}" if "id" in loc else "") + "".join(ext))
    for key, item, vocab in (("bizTransactionList", "bizTransaction", "bizTransactionType"),
                             ("sourceList", "source", "sourceDestType"),
                             ("destinationList", "destination", "sourceDestType")):
        if e.get(key):
            items = sorted(f"{item}={_value(x[item])}" + (f"type={vocab_uri(vocab, x['type'])}" if x.get("type")
                                                          else "") for x in e[key])
            take(key, key + "".join(items))
    if e.get("sensorElementList"):
        take("sensorElementList",
             "sensorElementList" + "".join(sorted(_sensor_element(el, ctx) for el in e["sensorElementList"])))
    rest = []
    for k, v in e.items():
        if k in done:
            continue
        if k == "ilmd" and isinstance(v, dict):
            rest.append("ilmd" + "".join(sorted(s for ik, iv in v.items() for s in _generic(ik, iv, ctx, None))))
        else:
            rest.extend(_generic(k, v, ctx, None))
    parts.extend(sorted(rest))
    return "".join(parts)


def event_hash(event: dict[str, Any], context: dict[str, str] | None = None) -> str:
    """The event's CBV 2.0 hash ID."""
    digest = hashlib.sha256(prehash(event, context).encode("utf-8")).hexdigest()
    return f"ni:///sha-256;{digest}?ver=CBV2.0"


def context_prefixes(context: Any) -> dict[str, str]:
    """Namespace prefixes declared in a JSON-LD @context (strings are remote contexts and are skipped)."""
    out: dict[str, str] = {}
    for item in context if isinstance(context, list) else [context]:
        if isinstance(item, dict):
            for k, v in item.items():
                if isinstance(v, str) and not k.startswith("@"):
                    out[k] = v
    return out
