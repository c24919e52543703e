"""Validation of captured EPCIS 2.0 documents: the JSON Schema plus the rules the schema cannot check.

Speed: the schema is compiled once with fastjsonschema (about ten times faster than jsonschema here), and
each event is checked on its own against its event type's definition. The compiled check only gives a
verdict, so it is compiled without detailed exceptions, from a copy of the schema whose anyOfs try the CBV
terms first (_quick_any_of: the same set of valid documents, fewer failed branches). Only an event that fails
is validated again with jsonschema, on the schema as published, which lists every violation instead of
stopping at the first. Both validators get the same
format checkers (date-time needs an offset, uri needs a scheme), so they agree on what is valid
(tests/test_epcis_validate.py checks that on every failure case it tests).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
from jsonschema.exceptions import ValidationError, best_match

SCHEMA_FILE = Path(__file__).with_name("schemas") / "epcis-json-schema-2.0.1.json"
EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
# prefixes the EPCIS context itself declares (extension keys may use them without their own declaration)
CONTEXT_PREFIXES = {"epcis", "cbv", "cbvmda", "gs1", "rdf", "rdfs", "owl", "xsd", "dcterms", "dc", "sh", "schema"}
EPCIS_TERMS = {
    "type", "eventID", "eventTime", "eventTimeZoneOffset", "recordTime", "errorDeclaration", "certificationInfo",
    "action", "bizStep", "disposition", "persistentDisposition", "readPoint", "bizLocation", "bizTransactionList",
    "sourceList", "destinationList", "sensorElementList", "ilmd", "parentID", "childEPCs", "childQuantityList",
    "epcList", "quantityList", "inputEPCList", "inputQuantityList", "outputEPCList", "outputQuantityList",
    "transformationID", "lotNumber",
}
_SENSOR_SHARED = ("time", "startTime", "endTime", "deviceID", "deviceMetadata", "rawData", "dataProcessingMethod",
                  "bizRules")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S*$")
_DATE_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|z|[+-]\d{2}:\d{2})$")


def is_date_time(value: object) -> bool:
    """xsd:dateTimeStamp: a date-time with an offset (EPCIS_NOTES §1.1)."""
    if not isinstance(value, str) or not _DATE_TIME.match(value):
        return not isinstance(value, str)
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return True


def is_uri(value: object) -> bool:
    return not isinstance(value, str) or bool(_URI.match(value))


@dataclass
class Violation:
    """One thing wrong with a captured document: which event, which field, what to fix."""

    event: int | None  # index in epcisBody.eventList, None for the document itself
    field: str
    message: str
    event_id: str | None = None

    def as_problem(self) -> dict[str, Any]:
        where = f"event {self.event}" if self.event is not None else "document"
        out = {"type": "epcisException:ValidationException", "title": "Invalid event" if self.event is not None
               else "Invalid document", "status": 400, "detail": f"{where}: {self.field}: {self.message}",
               "event": self.event, "field": self.field}
        if self.event_id:
            out["eventID"] = self.event_id
        return out


@cache
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text())


def _is_string_enum(branch: Any) -> bool:
    return isinstance(branch, dict) and set(branch) == {"type", "enum"} and branch["type"] == "string" \
        and isinstance(branch["enum"], list)


def _quick_any_of(node: Any, definitions: dict[str, Any]) -> Any:
    """The same schema, its `anyOf`s arranged so the usual value passes the first branch it tries.

    The compiled code tries an anyOf's branches in order and pays an exception for every branch that fails,
    and the EPCIS schema puts the URI alternative before the CBV terms (`bizStep`: any URI, or `shipping`,
    ...) and checks every key of an event against nested anyOfs. Rewritten without changing what is valid:
    a branch that is only an anyOf, or only a reference to a definition that is only an anyOf, is inlined
    into its parent (A or (B or C) = A or B or C), the branches that are only string enums are merged into
    one (x in E1 or x in E2 = x in E1 + E2), and that one goes first (anyOf does not depend on the order of
    its branches)."""
    if isinstance(node, list):
        return [_quick_any_of(x, definitions) for x in node]
    if not isinstance(node, dict):
        return node
    out = {k: _quick_any_of(v, definitions) for k, v in node.items()}
    branches = out.get("anyOf")
    if isinstance(branches, list):
        flat: list[Any] = []
        todo = list(branches)
        inlined: set[str] = set()
        while todo:
            b = todo.pop(0)
            if isinstance(b, dict) and set(b) == {"$ref"} and isinstance(b["$ref"], str) \
                    and b["$ref"].startswith("#/definitions/") and b["$ref"] not in inlined:
                target = definitions.get(b["$ref"][len("#/definitions/"):])
                if isinstance(target, dict) and set(target) == {"anyOf"} and isinstance(target["anyOf"], list):
                    inlined.add(b["$ref"])
                    todo[:0] = _quick_any_of(target["anyOf"], definitions)
                    continue
            if isinstance(b, dict) and set(b) == {"anyOf"} and isinstance(b["anyOf"], list):
                todo[:0] = b["anyOf"]
                continue
            flat.append(b)
        enums = [b for b in flat if _is_string_enum(b)]
        rest = [b for b in flat if not _is_string_enum(b)]
        if enums:
            merged = list(dict.fromkeys(v for b in enums for v in b["enum"]))
            out["anyOf"] = [{"type": "string", "enum": merged}, *rest]
        else:
            out["anyOf"] = flat
    return out


@cache
def _quick_schema() -> dict[str, Any]:
    return _quick_any_of(schema(), schema().get("definitions", {}))


_FORMATS = {"date-time": is_date_time, "uri": is_uri}
_FIRST_DEF = re.compile(r"^def (\w+)\(", re.MULTILINE)


def _compile(definition: dict[str, Any]) -> Any:
    """The compiled check of a schema, for a verdict only (a failing event goes through jsonschema for its
    messages): its exceptions carry no details (building them, with the rule's whole definition, cost more than
    the checks), and the path of a list item is not formatted for each item (`.format(**locals())`)."""
    code = fastjsonschema.compile_to_code(definition, formats=_FORMATS, detailed_exceptions=False)
    code = code.replace(".format(**locals())", "")
    scope: dict[str, Any] = {}
    exec(compile(code, "<epcis-schema>", "exec"), scope)  # noqa: S102 - generated from our schema file
    return functools.partial(scope[_FIRST_DEF.search(code).group(1)], custom_formats=_FORMATS)


@cache
def _fast() -> Any:
    return _compile(_quick_schema())


@cache
def _slow() -> jsonschema.Draft7Validator:
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("date-time")(is_date_time)
    checker.checks("uri")(is_uri)
    return jsonschema.Draft7Validator(schema(), format_checker=checker)


_EVENT_TYPES = ("ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent", "AssociationEvent")


@cache
def _fast_event(etype: str) -> Any:
    # One event against its own type's definition. The schema's EPCIS-Document-Event tries an if/then per
    # event type; for an event whose type is known only its own branch applies, so checking that branch
    # directly gives the same answer without the failed branches (which cost exceptions in the compiled code).
    ref = etype if etype in _EVENT_TYPES else "Extended-Event"
    full = _quick_schema()
    sub = {"$id": full["$id"], "$schema": full["$schema"], "definitions": full["definitions"],
           "type": "object",
           "required": ["type"], "properties": {"type": {"type": "string"}},
           "allOf": [{"$ref": f"#/definitions/{ref}"}]}
    return _compile(sub)


def fast_event_valid(event: Any) -> bool:
    """The compiled schema's verdict on one event of a document (see _fast_event)."""
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        return fast_valid(_shell({"@context": [EPCIS_CONTEXT], "type": "EPCISDocument", "schemaVersion": "2.0",
                                  "creationDate": "2000-01-01T00:00:00Z"}, [event]))
    try:
        _fast_event(event["type"])(event)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def fast_valid(doc: dict[str, Any]) -> bool:
    try:
        _fast()(doc)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def _shell(doc: dict[str, Any], events: list[Any]) -> dict[str, Any]:
    shell = {k: v for k, v in doc.items() if k != "epcisBody"}
    if doc.get("type") == "EPCISQueryDocument":
        qr = dict((doc.get("epcisBody") or {}).get("queryResults") or {})
        qr["resultsBody"] = {**(qr.get("resultsBody") or {}), "eventList": events}
        shell["epcisBody"] = {"queryResults": qr}
    else:
        shell["epcisBody"] = {**(doc.get("epcisBody") or {}), "eventList": events}
    return shell


def _body_shape(doc: dict[str, Any]) -> list[Violation]:
    """The containers around the events must be what the schema says before the events can be taken out of
    them (the schema itself is checked on the document's shell and on each event)."""
    body = doc.get("epcisBody")
    if not isinstance(body, dict):
        return [Violation(None, "epcisBody", "epcisBody must be an object holding the events (eventList, an array)")]
    if doc.get("type") == "EPCISQueryDocument":
        qr = body.get("queryResults")
        if qr is None:
            return []
        if not isinstance(qr, dict):
            return [Violation(None, "epcisBody.queryResults", "queryResults must be an object (queryName, "
                                                              "resultsBody)")]
        rb = qr.get("resultsBody")
        if rb is not None and not isinstance(rb, dict):
            return [Violation(None, "epcisBody.queryResults.resultsBody", "resultsBody must be an object holding "
                                                                          "eventList")]
        lst = (rb or {}).get("eventList")
        field = "epcisBody.queryResults.resultsBody.eventList"
    else:
        lst, field = body.get("eventList"), "epcisBody.eventList"
    if lst is not None and not isinstance(lst, list):
        return [Violation(None, field, "eventList must be an array of events")]
    return []


def events_of(doc: dict[str, Any]) -> list[Any]:
    body = doc.get("epcisBody") or {}
    if doc.get("type") == "EPCISQueryDocument":
        return list(((body.get("queryResults") or {}).get("resultsBody") or {}).get("eventList") or [])
    return list(body.get("eventList") or []) if isinstance(body, dict) else []


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(event)"


def _message(err: ValidationError) -> str:
    leaf = best_match([err]) if not err.context else best_match(err.context)
    msg = leaf.message
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _schema_violations(doc: dict[str, Any], events: list[Any]) -> list[Violation]:
    out: list[Violation] = []
    head = _shell(doc, [])
    if not fast_valid(head):
        for err in _slow().iter_errors(head):
            out.append(Violation(None, _path(err.absolute_path), _message(err)))
    # each event alone in a minimal valid document, so a header problem is reported once, not per event
    base = {"@context": [EPCIS_CONTEXT], "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2000-01-01T00:00:00Z"}
    for i, ev in enumerate(events):
        one = _shell(base, [ev])
        if fast_valid(one):
            continue
        for err in _slow().iter_errors(one):
            p = list(err.absolute_path)
            # the event's own path inside the shell: epcisBody.eventList[0]... or ...resultsBody.eventList[0]
            k = p.index("eventList") if "eventList" in p else -1
            sub = p[k + 2:] if k >= 0 and len(p) > k + 1 else []
            out.append(Violation(i, _path(sub), _message(err),
                                 ev.get("eventID") if isinstance(ev, dict) else None))
    return out


def _declared(key: str, prefixes: set[str]) -> bool:
    if key.startswith(("http://", "https://", "urn:")):
        return True
    return ":" in key and key.split(":", 1)[0] in prefixes


def rule_violations(events: list[Any], prefixes: set[str]) -> list[Violation]:
    """The rules the schema cannot check (EPCIS_NOTES §1.2-1.4, §3). `prefixes`: those the document's @context
    declares; an event's own @context declares more for that event."""
    from domain.epcis_hash import context_prefixes

    out: list[Violation] = []
    doc_known = prefixes | CONTEXT_PREFIXES
    for i, ev in enumerate(events):
        if not isinstance(ev, dict):
            continue
        eid = ev.get("eventID")
        own = context_prefixes(ev["@context"]) if "@context" in ev else None
        known = doc_known | own.keys() if own else doc_known

        def bad(field: str, message: str, i: int = i, eid: Any = eid) -> None:
            out.append(Violation(i, field, message, eid))

        etype, action = ev.get("type"), ev.get("action")
        if etype in ("AggregationEvent", "AssociationEvent") and action in ("ADD", "DELETE") \
                and not ev.get("parentID"):
            bad("parentID", f"an {etype} with action {action} needs parentID: name the container or parent")
        if etype == "AssociationEvent" and action in ("ADD", "OBSERVE") \
                and not ev.get("childEPCs") and not ev.get("childQuantityList"):
            bad("childEPCs", f"an AssociationEvent with action {action} needs childEPCs or childQuantityList")
        for key in ev:
            if key not in EPCIS_TERMS and not key.startswith("@") and not _declared(key, known):
                bad(key, f"extension field {key!r} is not namespaced by a prefix declared in @context: "
                         "write it as prefix:name and declare the prefix (in the document's @context or the "
                         "event's own)")
        ilmd = ev.get("ilmd")
        if isinstance(ilmd, dict):
            for key in ilmd:
                if key in EPCIS_TERMS or _epcis_term(key) or not _declared(key, known):
                    bad(f"ilmd.{key}", "ILMD keys must be namespaced master-data attributes (e.g. "
                                       "cbvmda:lotNumber) with a declared prefix, not EPCIS terms or bare names")
        for j, el in enumerate(ev.get("sensorElementList") or []):
            if not isinstance(el, dict):
                continue
            meta = el.get("sensorMetadata") or {}
            for k, rep in enumerate(el.get("sensorReport") or []):
                if not isinstance(rep, dict):
                    continue
                for attr in _SENSOR_SHARED:
                    if attr in meta and attr in rep:
                        bad(f"sensorElementList[{j}].sensorReport[{k}].{attr}",
                            f"{attr} is given in both sensorMetadata and sensorReport: give it once")
        decl = ev.get("errorDeclaration")
        if isinstance(decl, dict):
            reason = str(decl.get("reason") or "")
            if reason.endswith("did_not_occur") and decl.get("correctiveEventIDs"):
                bad("errorDeclaration.correctiveEventIDs",
                    "reason did_not_occur takes no correctiveEventIDs: use incorrect_data to point at corrections")
            if not eid:
                bad("eventID", "an error declaration must repeat the eventID of the event it retracts")
    out += _sampling_violations(events)
    return out


# the EPCIS and CBV vocabularies' own namespaces (not CBV master data, cbvmda): their terms are no ILMD keys
_EPCIS_NAMESPACES = ("https://ref.gs1.org/epcis/", "https://ref.gs1.org/cbv/", "https://ns.gs1.org/cbv/",
                     "urn:epcglobal:epcis:")
_INSTANCE_LISTS = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")


def _epcis_term(key: str) -> bool:
    if key.startswith(_EPCIS_NAMESPACES) or (key.startswith("urn:epcglobal:cbv:")
                                              and not key.startswith("urn:epcglobal:cbv:mda:")):
        return True
    return ":" in key and key.split(":", 1)[0] in ("epcis", "cbv")


def _instances(ev: dict[str, Any], *, parent: bool = True) -> set[str]:
    """The serialised instances an event names (in any role, the parent too unless `parent` is False),
    canonical: classes (quantity lists) excluded."""
    from domain.epcis_ids import canonical

    out = {canonical(x) for k in _INSTANCE_LISTS for x in (ev.get(k) or []) if isinstance(x, str)}
    if parent and isinstance(ev.get("parentID"), str):
        out.add(canonical(ev["parentID"]))
    return out


def _sampling_violations(events: list[Any]) -> list[Violation]:
    """CBV 2.0 `sampling` (EPCIS_NOTES §2, §3): a sampled serialised instance's next event SHALL end its life.

    Checked within the document: for each serialised instance named by a `sampling` event that does not itself
    end it (action DELETE), the next event naming it (by eventTime, then document order) must have action
    DELETE. A sampled instance with no later event in the document is fine: its end may come later. Events
    stored before are not consulted (the check sees one document)."""
    from domain.epcis_ids import vocab_term

    timed: list[tuple[datetime, int, dict[str, Any]]] = []
    for i, ev in enumerate(events):
        # an error declaration restates an event, it is not a new one
        if isinstance(ev, dict) and isinstance(ev.get("eventTime"), str) and is_date_time(ev["eventTime"]) \
                and not ev.get("errorDeclaration"):
            t = datetime.fromisoformat(ev["eventTime"].replace("z", "Z"))
            if t.tzinfo is not None:
                timed.append((t, i, ev))
    timed.sort(key=lambda x: (x[0], x[1]))
    out: list[Violation] = []
    for k, (_, i, ev) in enumerate(timed):
        if not isinstance(ev.get("bizStep"), str) or vocab_term("bizStep", ev["bizStep"]) != "sampling" \
                or ev.get("action") == "DELETE":
            continue
        waiting = _instances(ev, parent=False)  # the samples, not the container they were taken from
        for _, j, nxt in timed[k + 1:]:
            if not waiting:
                break
            hit = sorted(waiting & _instances(nxt))
            if not hit:
                continue
            waiting -= set(hit)
            if nxt.get("action") != "DELETE":
                what = f"{nxt.get('type')} with action {nxt.get('action')}" if nxt.get("action") \
                    else f"{nxt.get('type')} (no action)"
                out.append(Violation(
                    j, "action", f"{', '.join(hit)} was sampled (bizStep sampling, event {i}), so its next event must "
                                 f"end its life (action DELETE, e.g. bizStep destroying); this event is a {what}",
                    nxt.get("eventID") if isinstance(nxt.get("eventID"), str) else None))
    return out


def validate(doc: Any, *, max_events: int | None = None) -> list[Violation]:
    """Every violation in a captured document (empty when it is valid)."""
    if not isinstance(doc, dict):
        return [Violation(None, "(document)", "the body is not a JSON object: send an EPCISDocument")]
    if doc.get("type") not in ("EPCISDocument", "EPCISQueryDocument"):
        return [Violation(None, "type", f"type is {doc.get('type')!r}: capture takes an EPCISDocument or an "
                                        "EPCISQueryDocument")]
    shape = _body_shape(doc)
    if shape:
        return shape
    events = events_of(doc)
    if fast_valid(_shell(doc, [])) and all(fast_event_valid(ev) for ev in events):
        out: list[Violation] = []
    else:
        out = _schema_violations(doc, events)
        if not out:  # the whole failed but no part did (a cross-part constraint): report the whole
            out = [Violation(None, _path(e.absolute_path), _message(e)) for e in _slow().iter_errors(doc)]
    from domain.epcis_hash import context_prefixes

    out += rule_violations(events, set(context_prefixes(doc.get("@context"))))
    return sorted(out, key=lambda v: (-1 if v.event is None else v.event, v.field))


def validate_single_event(event: Any) -> list[Violation]:
    """A single event body (POST /events): it must carry its own @context."""
    if not isinstance(event, dict):
        return [Violation(0, "(event)", "the body is not a JSON object: send one EPCIS event")]
    ctx = event.get("@context")
    doc = {"@context": ctx if ctx is not None else [EPCIS_CONTEXT], "type": "EPCISDocument",
           "schemaVersion": "2.0", "creationDate": "2000-01-01T00:00:00Z",
           "epcisBody": {"eventList": [{k: v for k, v in event.items() if k != "@context"}]}}
    out = validate(doc)
    if ctx is None:
        out.insert(0, Violation(0, "@context", "a single event must carry its own @context"))
    return out
