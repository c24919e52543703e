"""The EPCIS 2.0 XML binding: XML EPCISDocuments in, the hub's JSON-LD form out, and back for query answers.

Capture converts an XML document (namespace `urn:epcglobal:epcis:xsd:2`) into the same JSON-LD the hub
stores for a JSON capture, so validation, the CBV 2.0 event hash, the indexes and the lineage are the ones
of the JSON path: the same event captured in either syntax gets the same eventID. Namespace declarations of
extension elements become `@context` prefixes (`<acme:carrier xmlns:acme="https://ns.acme.example/x/">` is
`"acme:carrier"` with `{"acme": "https://ns.acme.example/x/"}`); a namespace declared without a prefix, or
with a prefix the EPCIS context reserves for another namespace, gets a generated one (`ns1`, `ns2`...).

Mapping rules where the standard leaves the choice to the converter (written down so that XML and JSON
captures of the same event agree):
- CBV values (bizStep, disposition, business transaction, source/destination and error reason types,
  persistentDisposition) written as URNs in XML become the bare CBV terms of the JSON binding; query answers
  write them back as URNs. Other URIs are kept as they are.
- quantity and the numeric sensorReport attributes become JSON numbers, booleanValue a boolean. Extension
  values are strings unless `xsi:type` says xsd:integer/int/long/decimal/double/float/boolean; repeated
  extension elements become a list; an extension element with attributes and text becomes an object with
  the attributes as keys and the text under `#text` (and is written back that way).
- certificationInfo is read as an unqualified event child (or in the GS1 Web vocabulary namespace), and
  written unqualified after errorDeclaration; EPCIS 1.x `extension`/`baseExtension` wrappers are unwrapped.

Parsing is safe: lxml with entity resolution, DTD loading and network access off; a document that declares
entities or points to an external DTD is refused before anything is read from it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from typing import Any

from lxml import etree

from core.errors import InvalidInput

EPCIS_NS = "urn:epcglobal:epcis:xsd:2"
QUERY_NS = "urn:epcglobal:epcis-query:xsd:2"
XSI = "http://www.w3.org/2001/XMLSchema-instance"
XSD = "http://www.w3.org/2001/XMLSchema"
EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
GS1_VOC = "https://gs1.org/voc/"
CBVMDA_XML = "urn:epcglobal:cbv:mda"
XML_TYPES = ("application/xml", "text/xml")
EVENT_TYPES = ("ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent", "AssociationEvent")

# namespaces the EPCIS JSON-LD context already names: their elements keep that prefix and need no declaration
_WELL_KNOWN = {CBVMDA_XML: "cbvmda", CBVMDA_XML + ":": "cbvmda", GS1_VOC: "gs1", "http://gs1.org/voc/": "gs1",
               "https://ref.gs1.org/cbv/": "cbv", "https://ref.gs1.org/epcis/": "epcis"}
# prefixes the EPCIS context defines: never redeclared (a JSON-LD protected term) and never reused for others
_RESERVED = {"epcis", "cbv", "cbvmda", "gs1", "rdf", "rdfs", "owl", "xsd", "dcterms", "dc", "sh", "schema", "hub"}
_OUT_NS = {"cbvmda": CBVMDA_XML, "gs1": GS1_VOC, "cbv": "https://ref.gs1.org/cbv/"}

_EPC_LISTS = ("epcList", "childEPCs", "inputEPCList", "outputEPCList")
_Q_LISTS = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")
_TEXT = ("eventTime", "recordTime", "eventTimeZoneOffset", "eventID", "action", "parentID", "transformationID")
_SENSOR_NUMBERS = {"value", "minValue", "maxValue", "meanValue", "sDev", "percRank", "percValue"}
_XSI_NUMBER = {"integer", "int", "long", "short", "decimal", "double", "float", "nonNegativeInteger",
               "positiveInteger"}
# CBV vocabularies as URN prefixes: the XML binding writes CBV values in this form, JSON as bare terms
_CBV_URN = {"bizStep": "urn:epcglobal:cbv:bizstep:", "disposition": "urn:epcglobal:cbv:disp:",
            "bizTransactionType": "urn:epcglobal:cbv:btt:", "sourceDestType": "urn:epcglobal:cbv:sdt:",
            "errorReason": "urn:epcglobal:cbv:er:"}
_NCNAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
_INT = re.compile(r"^[+-]?\d+$")

_BASE_ORDER = ("eventTime", "recordTime", "eventTimeZoneOffset", "eventID", "errorDeclaration", "certificationInfo")
_TAIL = ("readPoint", "bizLocation")
_ORDER = {  # the XSD's sequence for each event type (after the base fields)
    "ObjectEvent": ("epcList", "action", "bizStep", "disposition", *_TAIL, "bizTransactionList", "quantityList",
                    "sourceList", "destinationList", "sensorElementList", "persistentDisposition", "ilmd"),
    "AggregationEvent": ("parentID", "childEPCs", "action", "bizStep", "disposition", *_TAIL, "bizTransactionList",
                         "childQuantityList", "sourceList", "destinationList", "sensorElementList",
                         "persistentDisposition"),
    "TransactionEvent": ("bizTransactionList", "parentID", "epcList", "action", "bizStep", "disposition", *_TAIL,
                         "quantityList", "sourceList", "destinationList", "sensorElementList",
                         "persistentDisposition"),
    "TransformationEvent": ("inputEPCList", "inputQuantityList", "outputEPCList", "outputQuantityList",
                            "transformationID", "bizStep", "disposition", *_TAIL, "bizTransactionList",
                            "sourceList", "destinationList", "sensorElementList", "persistentDisposition", "ilmd"),
    "AssociationEvent": ("parentID", "childEPCs", "childQuantityList", "action", "bizStep", "disposition", *_TAIL,
                         "bizTransactionList", "sourceList", "destinationList", "sensorElementList",
                         "persistentDisposition"),
}
_REQUIRED_LISTS = {"ObjectEvent": ("epcList",), "AggregationEvent": ("childEPCs",), "TransactionEvent": ("epcList",)}
_KNOWN_FIELDS = set(_BASE_ORDER) | {f for order in _ORDER.values() for f in order} | {"type"}


class XmlValidationException(InvalidInput):
    """An XML document that is not well-formed, not safe to read, or not EPCIS 2.0 XML."""

    kind = "ValidationException"


def is_xml(content_type: str | None) -> bool:
    ctype = (content_type or "").split(";")[0].strip().lower()
    return ctype in XML_TYPES or ctype.endswith("+xml")


def wants_xml(accept: str | None) -> bool:
    """True when the Accept header prefers XML over JSON (q-values honoured, ties go to JSON)."""
    best_xml = best_json = -1.0
    for part in (accept or "").split(","):
        bits = [b.strip() for b in part.split(";")]
        media, q = bits[0].lower(), 1.0
        for b in bits[1:]:
            if b.startswith("q="):
                try:
                    q = float(b[2:])
                except ValueError:
                    q = 0.0
        if media in XML_TYPES:
            best_xml = max(best_xml, q)
        elif media in ("application/json", "application/ld+json", "*/*", "application/*"):
            best_json = max(best_json, q)
    return best_xml > 0 and best_xml > best_json


# --- XML -> JSON-LD ----------------------------------------------------------------------------------------


def _where(el: Any) -> str:
    names = []
    node = el
    while node is not None and len(names) < 4:
        names.append(etree.QName(node).localname)
        node = node.getparent()
    return f"{'/'.join(reversed(names))} (line {el.sourceline})"


def _bad(el: Any, message: str) -> XmlValidationException:
    return XmlValidationException(f"{_where(el)}: {message}", field=f"line {el.sourceline}")


def _parse(raw: bytes) -> Any:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
                             huge_tree=False, remove_comments=True, remove_pis=True)
    try:
        root = etree.fromstring(raw, parser)
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or (exc.position[0] if exc.position else "?")
        raise XmlValidationException(f"the body is not well-formed XML: line {line}: {exc.msg}; send an EPCIS 2.0 "
                                     "XML document", field=f"line {line}") from None
    docinfo = root.getroottree().docinfo
    dtd = docinfo.internalDTD
    if docinfo.system_url or docinfo.public_id or (dtd is not None and list(dtd.iterentities())):
        raise XmlValidationException("the document declares entities or an external DTD (<!DOCTYPE ...>), which "
                                     "the hub does not read: remove the DOCTYPE and send plain EPCIS XML",
                                     field="DOCTYPE")
    return root


class _Prefixes:
    """Namespace -> JSON-LD prefix for the extension elements and attributes of one document."""

    def __init__(self) -> None:
        self.of_ns: dict[str, str] = {}
        self.declared: dict[str, str] = {}

    def key(self, qname: str, hint: str | None) -> str:
        q = etree.QName(qname)
        if not q.namespace:
            return q.localname
        return f"{self.prefix(q.namespace, hint)}:{q.localname}"

    def prefix(self, ns: str, hint: str | None) -> str:
        if ns in self.of_ns:
            return self.of_ns[ns]
        if ns in _WELL_KNOWN:
            self.of_ns[ns] = _WELL_KNOWN[ns]
            return self.of_ns[ns]
        p = hint if hint and hint not in _RESERVED and hint not in self.declared else None
        n = 0
        while p is None:
            n += 1
            p = f"ns{n}" if f"ns{n}" not in self.declared else None
        self.of_ns[ns] = p
        self.declared[p] = ns
        return p


def _children(el: Any) -> list[Any]:
    out = []
    for c in el:
        if isinstance(c, etree._Entity):
            raise _bad(el, f"the entity reference &{c.name}; is not accepted: write the value itself")
        if isinstance(c.tag, str):
            out.append(c)
    return out


def _local(el: Any) -> str | None:
    """The element's name when it is an EPCIS (unqualified) element, else None."""
    q = etree.QName(el)
    return q.localname if q.namespace in (None, EPCIS_NS) else None


def _text(el: Any) -> str:
    if _children(el):
        raise _bad(el, "expected a value, found child elements")
    value = (el.text or "").strip()
    if not value:
        raise _bad(el, "is empty: give it a value or leave the element out")
    return value


def _number(el: Any, s: str) -> int | float:
    if _INT.match(s):
        return int(s)
    try:
        f = float(s)
    except ValueError:
        raise _bad(el, f"{s!r} is not a number") from None
    if not math.isfinite(f):
        raise _bad(el, f"{s!r} is not a finite number")
    return f


def _cbv(kind: str, value: str) -> str:
    urn = _CBV_URN[kind]
    return value.removeprefix(urn)


def _typed(el: Any, value: str) -> Any:
    xsi_type = el.get(f"{{{XSI}}}type")
    if not xsi_type:
        return value
    local = xsi_type.split(":", 1)[-1]
    if local == "boolean":
        if value in ("true", "1"):
            return True
        if value in ("false", "0"):
            return False
        raise _bad(el, f"{value!r} is not an xsd:boolean")
    if local in _XSI_NUMBER:
        return _number(el, value)
    return value


def _attrs(el: Any, px: _Prefixes) -> dict[str, str]:
    out = {}
    for name, value in el.attrib.items():
        if name.startswith(f"{{{XSI}}}"):
            continue
        q = etree.QName(name)
        hint = next((p for p, u in el.nsmap.items() if p and u == q.namespace), None) if q.namespace else None
        out[px.key(name, hint)] = value
    return out


def _ext_value(el: Any, px: _Prefixes) -> Any:
    kids = _children(el)
    attrs = _attrs(el, px)
    if not kids:
        value = _typed(el, (el.text or "").strip())
        if attrs:
            return {**attrs, "#text": value} if value != "" else attrs
        return value
    if (el.text or "").strip() or any((k.tail or "").strip() for k in kids):
        raise _bad(el, "mixes text and child elements, which EPCIS extensions cannot carry: give the text its "
                   "own element")
    out: dict[str, Any] = dict(attrs)
    for k in kids:
        _put(out, _ext_key(k, px), _ext_value(k, px))
    return out


def _ext_key(el: Any, px: _Prefixes) -> str:
    q = etree.QName(el)
    return px.key(el.tag, el.prefix) if q.namespace else q.localname


def _put(obj: dict[str, Any], key: str, value: Any) -> None:
    if key in obj:
        prev = obj[key]
        obj[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
    else:
        obj[key] = value


def _extensions_into(obj: dict[str, Any], el: Any, px: _Prefixes) -> None:
    _put(obj, _ext_key(el, px), _ext_value(el, px))


def _fields(el: Any, into: dict[str, Any], px: _Prefixes, names: Collection[str], read: Callable[[str, Any], None],
            *, refuse: str | Callable[[Any], str] | None, extensions: bool = True,
            field_wrappers: Collection[str] = (), foreign: Callable[[Any], None] | None = None) -> None:
    """The one dispatch of the children of an EPCIS structure (event, location, sensor element...):
    - an EPCIS (unqualified) element named in `names`: `read(name, element)`;
    - with `extensions`: the children of an <extension> wrapper, and every element in another namespace (read by
      `foreign` when given), are extension fields of `into`; the children of a `field_wrappers` element (EPCIS 1.x
      wrappers) are dispatched as fields of the structure itself;
    - any other element: refused with the message `refuse` (a function of the element for one that names it), or
      an extension field too when `refuse` is None. Without `extensions`, everything not named is refused."""
    for c in _children(el):
        name = _local(c)
        if name is not None and name in names:
            read(name, c)
        elif extensions and name is not None and name in field_wrappers:
            _fields(c, into, px, names, read, refuse=refuse, field_wrappers=field_wrappers, foreign=foreign)
        elif extensions and name == "extension":
            for cc in _children(c):
                _extensions_into(into, cc, px)
        elif extensions and name is None:
            if foreign is not None:
                foreign(c)
            else:
                _extensions_into(into, c, px)
        elif extensions and refuse is None:
            _extensions_into(into, c, px)
        else:
            assert refuse is not None
            raise _bad(c, refuse if isinstance(refuse, str) else refuse(c))


def _location(el: Any, px: _Prefixes) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def read(name: str, c: Any) -> None:
        out["id"] = _text(c)
    _fields(el, out, px, ("id",), read, refuse="is not a field of readPoint/bizLocation: expected id or extension "
                                               "elements in their own namespace")
    if "id" not in out:
        raise _bad(el, "has no <id>")
    return out


def _epcs(el: Any) -> list[str]:
    out = []
    for c in _children(el):
        if _local(c) != "epc":
            raise _bad(c, "expected <epc> elements")
        out.append(_text(c))
    return out


def _quantities(el: Any) -> list[dict[str, Any]]:
    out = []
    for q in _children(el):
        if _local(q) != "quantityElement":
            raise _bad(q, "expected <quantityElement> elements")
        item: dict[str, Any] = {}

        def read(name: str, c: Any, item: dict[str, Any] = item) -> None:
            item[name] = _number(c, _text(c)) if name == "quantity" else _text(c)
        _fields(q, item, _Prefixes(), ("epcClass", "quantity", "uom"), read, extensions=False,
                refuse="is not a field of quantityElement: expected epcClass, quantity, uom")
        if "epcClass" not in item:
            raise _bad(q, "has no <epcClass>")
        out.append(item)
    return out


def _typed_list(el: Any, item: str, kind: str, *, type_required: bool) -> list[dict[str, Any]]:
    out = []
    for c in _children(el):
        if _local(c) != item:
            raise _bad(c, f"expected <{item}> elements")
        entry: dict[str, Any] = {}
        t = c.get("type")
        if t:
            entry["type"] = _cbv(kind, t)
        elif type_required:
            raise _bad(c, f"<{item}> needs a type attribute (e.g. urn:epcglobal:cbv:sdt:owning_party)")
        entry[item] = _text(c)
        out.append(entry)
    return out


def _sensor_attrs(el: Any, px: _Prefixes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _attrs(el, px).items():
        if key in _SENSOR_NUMBERS:
            out[key] = _number(el, value)
        elif key == "booleanValue":
            if value not in ("true", "false", "1", "0"):
                raise _bad(el, f"booleanValue {value!r} is not true or false")
            out[key] = value in ("true", "1")
        else:
            out[key] = value
    return out


def _sensor_elements(el: Any, px: _Prefixes) -> list[dict[str, Any]]:
    out = []
    for se in _children(el):
        name = _local(se)
        if name == "extension":
            continue
        if name != "sensorElement":
            raise _bad(se, "expected <sensorElement> elements")
        item: dict[str, Any] = {}

        def read(name: str, c: Any, item: dict[str, Any] = item) -> None:
            if name == "sensorMetadata":
                item["sensorMetadata"] = _sensor_attrs(c, px)
            else:
                item.setdefault("sensorReport", []).append(_sensor_attrs(c, px))
        _fields(se, item, px, ("sensorMetadata", "sensorReport"), read,
                refuse="is not a field of sensorElement: expected sensorMetadata, sensorReport or extension "
                       "elements in their own namespace")
        if not item.get("sensorReport"):
            raise _bad(se, "has no <sensorReport>")
        out.append(item)
    return out


def _error_declaration(el: Any, px: _Prefixes) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def read(name: str, c: Any) -> None:
        if name == "declarationTime":
            out["declarationTime"] = _text(c)
        elif name == "reason":
            out["reason"] = _cbv("errorReason", _text(c))
        else:
            ids = []
            for cc in _children(c):
                if _local(cc) != "correctiveEventID":
                    raise _bad(cc, "expected <correctiveEventID> elements")
                ids.append(_text(cc))
            out["correctiveEventIDs"] = ids
    _fields(el, out, px, ("declarationTime", "reason", "correctiveEventIDs"), read,
            refuse="is not a field of errorDeclaration: expected declarationTime, reason, correctiveEventIDs")
    return out


def _persistent(el: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for c in _children(el):
        name = _local(c)
        if name not in ("set", "unset"):
            raise _bad(c, "expected <set> or <unset> elements")
        out.setdefault(name, []).append(_cbv("disposition", _text(c)))
    return out


_EVENT_FIELDS = {*_TEXT, "bizStep", "disposition", *_EPC_LISTS, *_Q_LISTS, "readPoint", "bizLocation",
                 "bizTransactionList", "sourceList", "destinationList", "sensorElementList", "persistentDisposition",
                 "errorDeclaration", "certificationInfo", "ilmd"}


def _not_an_event_field(c: Any) -> str:
    return (f"is not an EPCIS 2.0 field of {etree.QName(c.getparent()).localname}: put extension fields in their "
            "own namespace (e.g. <acme:field xmlns:acme=\"https://ns.acme.example/\">)")


def _event_field(ev: dict[str, Any], name: str, c: Any, px: _Prefixes) -> None:
    """One EPCIS field of an event (a name of _EVENT_FIELDS)."""
    if name in _TEXT:
        ev[name] = _text(c)
    elif name in ("bizStep", "disposition"):
        ev[name] = _cbv(name, _text(c))
    elif name in _EPC_LISTS:
        ev[name] = _epcs(c)
    elif name in _Q_LISTS:
        ev[name] = _quantities(c)
    elif name in ("readPoint", "bizLocation"):
        ev[name] = _location(c, px)
    elif name == "bizTransactionList":
        ev[name] = _typed_list(c, "bizTransaction", "bizTransactionType", type_required=False)
    elif name == "sourceList":
        ev[name] = _typed_list(c, "source", "sourceDestType", type_required=True)
    elif name == "destinationList":
        ev[name] = _typed_list(c, "destination", "sourceDestType", type_required=True)
    elif name == "sensorElementList":
        ev[name] = _sensor_elements(c, px)
    elif name == "persistentDisposition":
        ev[name] = _persistent(c)
    elif name == "errorDeclaration":
        ev[name] = _error_declaration(c, px)
    elif name == "certificationInfo":
        _put(ev, "certificationInfo", _text(c))
    else:  # ilmd: every child is an extension field (in an <extension> wrapper or not)
        ilmd: dict[str, Any] = {}
        _fields(c, ilmd, px, (), lambda _n, _c: None, refuse=None)
        ev[name] = ilmd


def _event(el: Any, px: _Prefixes) -> dict[str, Any]:
    etype = etree.QName(el).localname
    ev: dict[str, Any] = {"type": etype}

    def foreign(c: Any) -> None:
        q = etree.QName(c)
        if q.namespace == GS1_VOC and q.localname == "certificationInfo":
            _put(ev, "certificationInfo", _text(c))
        else:
            _extensions_into(ev, c, px)
    # EPCIS 1.x `extension` / `baseExtension` wrappers: their content is the event's
    _fields(el, ev, px, _EVENT_FIELDS, lambda name, c: _event_field(ev, name, c, px), refuse=_not_an_event_field,
            field_wrappers=("extension", "baseExtension"), foreign=foreign)
    for key, value in _attrs(el, px).items():  # anyAttribute on the event: an extension field
        _put(ev, key, value)
    return ev


def _events(event_list: Any, px: _Prefixes) -> list[dict[str, Any]]:
    out = []
    for el in _children(event_list):
        name = _local(el)
        if name in EVENT_TYPES:
            out.append(_event(el, px))
        elif name == "extension":  # EPCIS 1.x: <extension><TransformationEvent>
            out.extend(_events(el, px))
        elif name == "QuantityEvent":
            raise _bad(el, "QuantityEvent was removed in EPCIS 2.0: send an ObjectEvent with a quantityList")
        else:
            raise _bad(el, f"is not an EPCIS event: expected one of {', '.join(EVENT_TYPES)}")
    return out


def _child(el: Any, name: str, *, ns: str | None = None, required: bool = True) -> Any:
    for c in _children(el):
        q = etree.QName(c)
        if q.localname == name and (q.namespace == ns or (ns is None and q.namespace == EPCIS_NS)):
            return c
    if required:
        raise _bad(el, f"has no <{name}>")
    return None


def _context(px: _Prefixes) -> list[Any]:
    return [EPCIS_CONTEXT, dict(px.declared)] if px.declared else [EPCIS_CONTEXT]


def parse_document(raw: bytes) -> dict[str, Any]:
    """An XML EPCISDocument (or EPCISQueryDocument) as the hub's JSON-LD EPCISDocument."""
    root = _parse(raw)
    q = etree.QName(root)
    px = _Prefixes()
    if q.namespace == EPCIS_NS and q.localname == "EPCISDocument":
        body = _child(root, "EPCISBody")
        event_list = _child(body, "EventList", required=False)
        kind = "EPCISDocument"
    elif q.namespace == QUERY_NS and q.localname == "EPCISQueryDocument":
        body = _child(root, "EPCISBody")
        results = _child(body, "QueryResults", ns=QUERY_NS)
        event_list = _child(_child(results, "resultsBody"), "EventList", required=False)
        kind = "EPCISQueryDocument"
    else:
        raise XmlValidationException(
            f"the root element is {{{q.namespace or ''}}}{q.localname} (line {root.sourceline}): capture takes "
            f"<epcis:EPCISDocument xmlns:epcis=\"{EPCIS_NS}\">", field="EPCISDocument")
    events = _events(event_list, px) if event_list is not None else []
    doc: dict[str, Any] = {"@context": _context(px), "type": kind}
    for attr in ("schemaVersion", "creationDate"):
        if root.get(attr) is not None:
            doc[attr] = root.get(attr)
    if kind == "EPCISQueryDocument":
        doc["epcisBody"] = {"queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": events}}}
    else:
        doc["epcisBody"] = {"eventList": events}
    return doc


def parse_event(raw: bytes) -> dict[str, Any]:
    """One event for `POST /epcis/events`: a bare event element, or an EPCISDocument holding exactly one."""
    root = _parse(raw)
    if _local(root) in EVENT_TYPES:
        px = _Prefixes()
        ev = _event(root, px)
        return {"@context": _context(px), **ev}
    doc = parse_document(raw)
    events = doc["epcisBody"].get("eventList") or doc["epcisBody"].get("queryResults", {}).get(
        "resultsBody", {}).get("eventList", [])
    if len(events) != 1:
        raise XmlValidationException(f"POST /epcis/events takes one event; the document has {len(events)}: send "
                                     "it to POST /epcis/capture", field="EventList")
    return {"@context": doc["@context"], **events[0]}


# --- JSON-LD -> XML ----------------------------------------------------------------------------------------


class _Out:
    """Namespaces of one answer: the @context's prefixes, plus a stand-in for a prefix nobody declared."""

    def __init__(self, prefixes: dict[str, str]) -> None:
        self.ns = {**_OUT_NS}
        for p, iri in prefixes.items():
            if _NCNAME.match(p) and p not in ("epcis", "epcisq", "xsi", "xsd", "xml") and p not in _OUT_NS:
                self.ns[p] = iri

    def qname(self, key: str, parent_ns: str | None) -> str | None:
        if key.startswith(("http://", "https://", "urn:")):
            cut = (key.rfind(":") if key.startswith("urn:") else max(key.rfind("/"), key.rfind("#"))) + 1
            ns, local = key[:cut], key[cut:]
        elif ":" in key:
            p, local = key.split(":", 1)
            if p not in self.ns:
                self.ns[p] = f"https://ns.tracehub.example/undeclared/{p}/"
            ns = self.ns[p]
        else:
            ns, local = parent_ns, key
        if not _NCNAME.match(local):
            return None
        return f"{{{ns}}}{local}" if ns else local


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return repr(v) if isinstance(v, float) else str(v)


def _xsi_type(v: Any) -> str | None:
    if isinstance(v, bool):
        return "xsd:boolean"
    if isinstance(v, int):
        return "xsd:integer"
    if isinstance(v, float):
        return "xsd:double"
    return None


def _sub(parent: Any, tag: str, text: Any = None) -> Any:
    el = etree.SubElement(parent, tag)
    if text is not None:
        el.text = _scalar(text)
    return el


def _ext(parent: Any, key: str, value: Any, out: _Out, parent_ns: str | None) -> None:
    if key in ("@type", "@id", "#text"):
        return
    tag = out.qname(key, parent_ns)
    if tag is None:
        return
    if isinstance(value, list):
        for item in value:
            _ext(parent, key, item, out, parent_ns)
        return
    el = etree.SubElement(parent, tag)
    ns = etree.QName(tag).namespace
    if isinstance(value, dict):
        if "#text" in value:  # an element with attributes and text
            el.text = _scalar(value["#text"])
            for k, v in value.items():
                if k != "#text" and not isinstance(v, (dict, list)):
                    name = out.qname(k, None) if ":" in k else (k if _NCNAME.match(k) else None)
                    if name:
                        el.set(name, _scalar(v))
            return
        for k, v in value.items():
            _ext(el, k, v, out, ns)
        return
    if value is not None:
        el.text = _scalar(value)
        t = _xsi_type(value)
        if t:
            el.set(f"{{{XSI}}}type", t)


def _cbv_urn(kind: str, value: str) -> str:
    return _CBV_URN[kind] + value if ":" not in value else value


def _attr_name(key: str, out: _Out) -> str | None:
    if ":" in key and not key.startswith(("http://", "https://", "urn:")):
        return out.qname(key, None)
    return key if _NCNAME.match(key) else None


def _set_attrs(el: Any, obj: dict[str, Any], out: _Out) -> None:
    for k, v in obj.items():
        if v is None or isinstance(v, (dict, list)):
            continue
        name = _attr_name(k, out)
        if name:
            el.set(name, _scalar(v))


def _field(ev_el: Any, key: str, value: Any, out: _Out) -> None:
    if key in _EPC_LISTS:
        lst = _sub(ev_el, key)
        for epc in value or []:
            _sub(lst, "epc", epc)
    elif key in _Q_LISTS:
        lst = _sub(ev_el, key)
        for q in value or []:
            qe = _sub(lst, "quantityElement")
            _sub(qe, "epcClass", q["epcClass"])
            if q.get("quantity") is not None:
                _sub(qe, "quantity", q["quantity"])
                if q.get("uom"):
                    _sub(qe, "uom", q["uom"])
    elif key in ("bizStep", "disposition"):
        _sub(ev_el, key, _cbv_urn(key, value))
    elif key in ("readPoint", "bizLocation"):
        loc = _sub(ev_el, key)
        _sub(loc, "id", value["id"])
        for k, v in value.items():
            if k != "id":
                _ext(loc, k, v, out, None)
    elif key in ("bizTransactionList", "sourceList", "destinationList"):
        item, kind = {"bizTransactionList": ("bizTransaction", "bizTransactionType"),
                      "sourceList": ("source", "sourceDestType"),
                      "destinationList": ("destination", "sourceDestType")}[key]
        lst = _sub(ev_el, key)
        for x in value:
            el = _sub(lst, item, x[item])
            if x.get("type"):
                el.set("type", _cbv_urn(kind, x["type"]))
    elif key == "persistentDisposition":
        pd = _sub(ev_el, key)
        for part in ("unset", "set"):
            for d in value.get(part) or []:
                _sub(pd, part, _cbv_urn("disposition", d))
    elif key == "errorDeclaration":
        ed = _sub(ev_el, key)
        if value.get("declarationTime"):
            _sub(ed, "declarationTime", value["declarationTime"])
        if value.get("reason"):
            _sub(ed, "reason", _cbv_urn("errorReason", value["reason"]))
        if value.get("correctiveEventIDs"):
            ids = _sub(ed, "correctiveEventIDs")
            for i in value["correctiveEventIDs"]:
                _sub(ids, "correctiveEventID", i)
        for k, v in value.items():
            if k not in ("declarationTime", "reason", "correctiveEventIDs"):
                _ext(ed, k, v, out, None)
    elif key == "certificationInfo":
        for v in value if isinstance(value, list) else [value]:
            _sub(ev_el, key, v)
    elif key == "sensorElementList":
        lst = _sub(ev_el, key)
        for se in value:
            se_el = _sub(lst, "sensorElement")
            if se.get("sensorMetadata"):
                _set_attrs(_sub(se_el, "sensorMetadata"), se["sensorMetadata"], out)
            for r in se.get("sensorReport") or []:
                _set_attrs(_sub(se_el, "sensorReport"), r, out)
            for k, v in se.items():
                if k not in ("sensorMetadata", "sensorReport", "type", "@type"):
                    _ext(se_el, k, v, out, None)
    elif key == "ilmd":
        il = _sub(ev_el, key)
        for k, v in (value or {}).items():
            _ext(il, k, v, out, None)
    else:
        _sub(ev_el, key, value)


def event_element(parent: Any, ev: dict[str, Any], out: _Out) -> Any:
    etype = ev.get("type")
    if etype not in _ORDER:
        raise InvalidInput(f"event type {etype!r} has no EPCIS 2.0 XML form", field="type")
    el = etree.SubElement(parent, etype)
    for key in (*_BASE_ORDER, *_ORDER[etype]):
        if key in ev and ev[key] is not None:
            _field(el, key, ev[key], out)
        elif key in _REQUIRED_LISTS.get(etype, ()):
            _sub(el, key)
    for key, value in ev.items():
        if key not in _KNOWN_FIELDS and not key.startswith("@"):
            _ext(el, key, value, out, None)
    return el


def query_document_xml(doc: dict[str, Any]) -> bytes:
    """An EPCISQueryDocument (the hub's JSON-LD form) in the EPCIS 2.0 XML query syntax."""
    prefixes: dict[str, str] = {}
    for item in doc.get("@context") or []:
        if isinstance(item, dict):
            prefixes.update({k: v for k, v in item.items() if isinstance(v, str) and not k.startswith("@")})
    out = _Out(prefixes)
    results = doc["epcisBody"]["queryResults"]
    scratch = etree.Element("scratch")
    event_els = [event_element(scratch, ev, out) for ev in results["resultsBody"]["eventList"]]
    nsmap = {"epcisq": QUERY_NS, "epcis": EPCIS_NS, "xsi": XSI, "xsd": XSD, **out.ns}
    root = etree.Element(f"{{{QUERY_NS}}}EPCISQueryDocument", nsmap=nsmap)
    root.set("schemaVersion", str(doc.get("schemaVersion", "2.0")))
    root.set("creationDate", str(doc.get("creationDate", "")))
    body = _sub(root, "EPCISBody")
    qr = _sub(body, f"{{{QUERY_NS}}}QueryResults")
    _sub(qr, "queryName", results.get("queryName", "SimpleEventQuery"))
    if results.get("subscriptionID"):
        _sub(qr, "subscriptionID", results["subscriptionID"])
    event_list = _sub(_sub(qr, "resultsBody"), "EventList")
    for el in event_els:
        event_list.append(el)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
