"""EPCIS 2.0 SimpleEventQuery over the event log and its indexes, and the EPCISQueryDocument it answers with.

Parameters come as the REST query string (multi-valued ones pipe-delimited) or as a named query's JSON body
(lists allowed). Identifiers are matched in canonical form, so an EPC URN, a Digital Link on any domain and
an EPC pattern (`urn:epc:idpat:sgtin:...*`, or a GTIN-only Digital Link) all match the same events. Output
identifiers follow the GS1-EPC-Format the client asks for.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import datetime
from typing import Any

from sqlalchemy import Float, Select, String, and_, case, cast, func, literal_column, or_, select, union_all
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, HubError, InvalidInput, NotFound
from domain.epcis_capture import BUSINESS_LOCATION, READ_POINT, attr_iri, descendants
from domain.epcis_ids import canonical, dl_canonical, dl_to_urn, is_class_pattern, urn_to_dl, vocab_term
from domain.events import EPCIS_CONTEXT, HUB_NS
from domain.models import EpcisEvent, utcnow
from domain.models_codes import CodeRule
from domain.models_epcis_master import EpcisVocabularyAttribute
from domain.models_trace import (
    EpcisErrorDeclaration,
    EpcisEventEpc,
    EpcisEventField,
    EpcisNamedQuery,
    EpcisNamespace,
    Gs1CompanyPrefix,
)

DEFAULT_PER_PAGE = 30
MAX_PER_PAGE = 1000
EPC_FORMATS = ("No_Preference", "Always_GS1_Digital_Link", "Always_EPC_URN", "Never_Translates")
_MATCH_ROLES = {
    "MATCH_epc": ("epc", "child"),
    "MATCH_parentID": ("parent",),
    "MATCH_inputEPC": ("input",),
    "MATCH_outputEPC": ("output",),
    "MATCH_anyEPC": ("epc", "child", "parent", "input", "output"),
    "MATCH_epcClass": ("quantity", "child_quantity"),
    "MATCH_inputEPCClass": ("input_quantity",),
    "MATCH_outputEPCClass": ("output_quantity",),
    "MATCH_anyEPCClass": ("quantity", "child_quantity", "input_quantity", "output_quantity"),
}
_LOCATION = {"readPoint": (EpcisEvent.read_point, READ_POINT),
             "bizLocation": (EpcisEvent.biz_location, BUSINESS_LOCATION)}
_CONTROL = {"orderBy", "orderDirection", "eventCountLimit", "maxEventCount", "perPage", "nextPageToken"}


class QueryParameterException(InvalidInput):
    kind = "QueryParameterException"


class QueryTooLargeException(HubError):
    kind = "QueryTooLargeException"


class NoSuchNameException(NotFound):
    kind = "NoSuchNameException"


class NotAcceptableException(HubError):
    """The answer cannot be given in the form the client asked for (REST binding: 406)."""

    kind = "NotAcceptableException"


class ResourceAlreadyExistsException(Conflict):
    kind = "ResourceAlreadyExistsException"


def _values(v: Any) -> list[str]:
    if isinstance(v, list):
        return [str(x) for x in v]
    return [x for x in str(v).split("|") if x != ""]


def _time(name: str, v: Any) -> datetime:
    s = _values(v)[0] if _values(v) else ""
    try:
        t = datetime.fromisoformat(s.replace("z", "Z").replace(" ", "+"))
    except ValueError:
        raise QueryParameterException(f"{name}: {s!r} is not a date-time; write e.g. 2026-01-05T08:00:00Z "
                                      "(percent-encode + as %2B)", field=name) from None
    if t.tzinfo is None:
        raise QueryParameterException(f"{name}: {s!r} has no offset; add Z or +hh:mm", field=name)
    return t


parse_time = _time  # for other EPCIS modules (subscriptions' initialRecordTime)


def _int(name: str, v: Any) -> int:
    try:
        n = int(_values(v)[0])
    except (ValueError, IndexError):
        raise QueryParameterException(f"{name} must be a whole number", field=name) from None
    if n < 0:
        raise QueryParameterException(f"{name} must not be negative", field=name)
    return n


class _Namespaces:
    """The prefixes a query's parameters may use: those its GS1-Extensions header declares, then each prefix
    that captured documents bound to one IRI only. A prefix bound to two IRIs (two partners' `ex:`) is ambiguous
    unless the header declares it: extension fields are indexed by IRI + local name, so a guess would silently
    match the wrong partner's fields."""

    def __init__(self, known: dict[str, set[str]], declared: dict[str, str]) -> None:
        self.ns = {p: next(iter(iris)) for p, iris in known.items() if len(iris) == 1}
        self.ns.update(declared)
        self.ambiguous = {p: sorted(iris) for p, iris in known.items() if len(iris) > 1 and p not in declared}

    def check(self, name: str, curie: str) -> None:
        if curie.startswith(("http://", "https://", "urn:")) or ":" not in curie:
            return
        prefix = curie.split(":", 1)[0]
        if prefix in self.ambiguous:
            raise QueryParameterException(
                f"{name}: prefix {prefix!r} is ambiguous: captured documents bound it to "
                f"{' and '.join(self.ambiguous[prefix])}; declare the one you mean in the GS1-Extensions header "
                f"({prefix}=<namespace IRI>) or write the field's full IRI", field=name)

    def iri(self, name: str, curie: str) -> str:
        if curie.startswith(("http://", "https://", "urn:")):
            return curie
        if ":" not in curie:
            raise QueryParameterException(f"{name}: {curie!r} is not a namespaced field; write prefix:field",
                                          field=name)
        self.check(name, curie)
        prefix, local = curie.split(":", 1)
        if prefix not in self.ns:
            raise QueryParameterException(f"{name}: prefix {prefix!r} is not known; declare it in the "
                                          "GS1-Extensions header (prefix=namespace)", field=name)
        return self.ns[prefix] + local

    def attr(self, name: str, attr: str) -> str:
        """A master-data attribute id in full (`cbvmda:` and the known prefixes expand; anything else as given)."""
        self.check(name, attr)
        return attr_iri(attr, self.ns)


async def _namespaces(session: AsyncSession, declared: dict[str, str]) -> _Namespaces:
    known: dict[str, set[str]] = {"cbvmda": {"urn:epcglobal:cbv:mda:"}, "hub": {HUB_NS}}
    for prefix, iri in (await session.execute(select(EpcisNamespace.prefix, EpcisNamespace.iri))).all():
        known.setdefault(prefix, set()).add(iri)
    return _Namespaces(known, declared)


def _epc_filter(name: str, roles: tuple[str, ...], values: list[str]) -> Any:
    conds = []
    for v in values:
        c = canonical(v)
        if is_class_pattern(c):
            conds.append(or_(EpcisEventEpc.uri == c, EpcisEventEpc.uri.like(c + "/%")))
        else:
            conds.append(EpcisEventEpc.uri == c)
    return EpcisEvent.id.in_(select(EpcisEventEpc.event_pk).where(EpcisEventEpc.role.in_(roles), or_(*conds)))


def _field_filter(name: str, values: list[str] | None) -> Any:
    q = select(EpcisEventField.event_pk).where(EpcisEventField.name == name)
    if values is not None:
        q = q.where(EpcisEventField.value.in_(values))
    return EpcisEvent.id.in_(q)


def _quantity_filter(name: str, op: str, uom: str | None, raw: Any) -> Any:
    """Events with a quantityElement (in any quantity list) whose quantity compares so with the value; with a
    `_{uom}` suffix, only elements in that unit (EPCIS 2.0 repurposes these parameters to quantityElement)."""
    try:
        value = float(_values(raw)[0])
    except ValueError:
        raise QueryParameterException(f"{name}: {raw!r} is not a number", field=name) from None
    names = EpcisEventField.name == f"qty:{uom}" if uom else EpcisEventField.name.like("qty:%")
    # cast only the quantity rows: the database may test the conditions in any order
    qty = cast(case((names, EpcisEventField.value), else_=None), Float)
    cmp = {"EQ": qty == value, "GT": qty > value, "GE": qty >= value, "LT": qty < value, "LE": qty <= value}[op]
    return EpcisEvent.id.in_(select(EpcisEventField.event_pk).where(names, cmp))


async def build(session: AsyncSession, params: dict[str, Any], *,
                declared_ns: dict[str, str] | None = None) -> tuple[Select[Any], bool, dict[str, Any]]:
    """The event query for the parameters; returns (select, declarations only, result controls)."""
    q = select(EpcisEvent)
    decl_conds: list[Any] = []
    decl_only = False
    record: list[tuple[str, datetime]] = []
    ctl: dict[str, Any] = {}
    ns: _Namespaces | None = None
    for name, raw in params.items():
        if name in _CONTROL:
            continue
        vals = _values(raw)
        if name == "eventType":
            q = q.where(EpcisEvent.event_type.in_(vals))
        elif name in ("GE_eventTime", "LT_eventTime"):
            t = _time(name, raw)
            q = q.where(EpcisEvent.event_time >= t if name.startswith("GE_") else EpcisEvent.event_time < t)
        elif name in ("GE_recordTime", "LT_recordTime"):
            # kept apart: an error declaration has its own recordTime (when it was captured), and a window holding
            # it returns it even when the original was recorded before (see run)
            record.append((name[:2], _time(name, raw)))
        elif name == "EQ_action":
            bad = [v for v in vals if v not in ("ADD", "OBSERVE", "DELETE")]
            if bad:
                raise QueryParameterException(f"EQ_action: {bad[0]!r} is not ADD, OBSERVE or DELETE", field=name)
            q = q.where(EpcisEvent.action.in_(vals))
        elif name == "EQ_bizStep":
            q = q.where(EpcisEvent.biz_step.in_([vocab_term("bizStep", v) for v in vals]))
        elif name == "EQ_disposition":
            q = q.where(EpcisEvent.disposition.in_([vocab_term("disposition", v) for v in vals]))
        elif name in ("EQ_readPoint", "EQ_bizLocation"):
            col = EpcisEvent.read_point if name == "EQ_readPoint" else EpcisEvent.biz_location
            q = q.where(col.in_([canonical(v) for v in vals]))
        elif name in ("WD_readPoint", "WD_bizLocation"):
            # with descendants: the location and everything below it in the captured master data
            col, vtype = _LOCATION[name[3:]]
            q = q.where(col.in_(sorted(await descendants(session, vtype, vals))))
        elif m := re.fullmatch(r"HASATTR_(readPoint|bizLocation)", name):
            col, vtype = _LOCATION[m.group(1)]
            ns = ns if ns is not None else await _namespaces(session, declared_ns or {})
            q = q.where(col.in_(select(EpcisVocabularyAttribute.element_id).where(
                EpcisVocabularyAttribute.vtype == vtype, EpcisVocabularyAttribute.attr.in_(
                    [ns.attr(name, v) for v in vals]))))
        elif m := re.fullmatch(r"EQ_ATTR_(readPoint|bizLocation)_(.+)", name):
            col, vtype = _LOCATION[m.group(1)]
            ns = ns if ns is not None else await _namespaces(session, declared_ns or {})
            attr = ns.attr(name, m.group(2))
            q = q.where(col.in_(select(EpcisVocabularyAttribute.element_id).where(
                EpcisVocabularyAttribute.vtype == vtype, EpcisVocabularyAttribute.attr == attr,
                EpcisVocabularyAttribute.value.in_(vals))))
        elif re.fullmatch(r"(HASATTR|EQ_ATTR)_.*", name):
            raise QueryParameterException(f"{name}: master-data parameters are HASATTR_readPoint, HASATTR_bizLocation, "
                                          "EQ_ATTR_readPoint_{attribute} and EQ_ATTR_bizLocation_{attribute}",
                                          field=name)
        elif name in _MATCH_ROLES:
            q = q.where(_epc_filter(name, _MATCH_ROLES[name], vals))
        elif name == "EQ_eventID":
            q = q.where(EpcisEvent.event_id.in_(vals))
        elif name == "EQ_transformationID":
            q = q.where(_field_filter("tid", vals))
        elif name in ("EQ_persistentDisposition_set", "EQ_persistentDisposition_unset"):
            which = "pd_set" if name.endswith("_set") else "pd_unset"
            q = q.where(_field_filter(which, [vocab_term("disposition", v) for v in vals]))
        elif m := re.fullmatch(r"EQ_bizTransaction_(.+)", name):
            q = q.where(_field_filter(f"bt:{vocab_term('bizTransactionType', m.group(1))}", vals))
        elif m := re.fullmatch(r"EQ_(source|destination)_(.+)", name):
            prefix = "src" if m.group(1) == "source" else "dst"
            q = q.where(_field_filter(f"{prefix}:{vocab_term('sourceDestType', m.group(2))}", vals))
        elif m := re.fullmatch(r"(EQ|GT|GE|LT|LE)_quantity(?:_([A-Z0-9]{2,4}))?", name):
            q = q.where(_quantity_filter(name, m.group(1), m.group(2), raw))
        elif name == "EXISTS_errorDeclaration":
            decl_only = True
        elif name == "EQ_errorReason":
            decl_only = True
            decl_conds.append(EpcisErrorDeclaration.reason.in_([vocab_term("errorReason", v) for v in vals]))
        elif name in ("GE_errorDeclarationTime", "LT_errorDeclarationTime", "GE_errorDeclaration_Time",
                      "LT_errorDeclaration_Time"):
            decl_only = True
            t = _time(name, raw)
            col = EpcisErrorDeclaration.declaration_time
            decl_conds.append(col >= t if name.startswith("GE_") else col < t)
        elif name == "EQ_correctiveEventID":
            decl_only = True
            as_text = cast(EpcisErrorDeclaration.corrective_event_ids, String)
            decl_conds.append(or_(*[as_text.like(f'%"{v}"%') for v in vals]))
        elif m := re.fullmatch(r"(EQ|EXISTS)_(ILMD_)?(.+)", name):
            if re.fullmatch(r"(INNER_|ERROR_DECLARATION_|SENSOR\w*_|readPoint_|bizLocation_).*", m.group(3)):
                raise QueryParameterException(f"{name}: this kind of extension parameter is not supported here; "
                                              "query top-level or ILMD extension fields", field=name)
            ns = ns if ns is not None else await _namespaces(session, declared_ns or {})
            kind = "ilmd" if m.group(2) else "ext"
            field_name = f"{kind}:{ns.iri(name, m.group(3))}"
            q = q.where(_field_filter(field_name, vals if m.group(1) == "EQ" else None))
        else:
            raise QueryParameterException(
                f"{name} is not a query parameter this server knows: see the SimpleEventQuery parameters "
                "(eventType, GE_eventTime, EQ_bizStep, MATCH_epc, EQ_bizTransaction_po, ...)", field=name)
    if decl_only:
        dq = select(EpcisErrorDeclaration.event_id)
        if decl_conds:
            dq = dq.where(and_(*decl_conds))
        q = q.where(EpcisEvent.event_id.in_(dq))
    order = params.get("orderBy")
    if order is not None:
        order = _values(order)[0]
        if order not in ("eventTime", "recordTime"):
            raise QueryParameterException(f"orderBy {order!r}: order by eventTime or recordTime", field="orderBy")
    direction = _values(params.get("orderDirection", "ASC"))[0].upper()
    if direction not in ("ASC", "DESC"):
        raise QueryParameterException("orderDirection is ASC or DESC", field="orderDirection")
    col = EpcisEvent.record_time if order == "recordTime" else EpcisEvent.event_time
    q = q.order_by(col.desc() if direction == "DESC" else col.asc(),
                   EpcisEvent.id.desc() if direction == "DESC" else EpcisEvent.id.asc())
    if "eventCountLimit" in params:
        if order is None:
            raise QueryParameterException("eventCountLimit needs orderBy", field="eventCountLimit")
        if "maxEventCount" in params:
            raise QueryParameterException("give eventCountLimit or maxEventCount, not both", field="maxEventCount")
        ctl["limit"] = _int("eventCountLimit", params["eventCountLimit"])
    if "maxEventCount" in params:
        ctl["max"] = _int("maxEventCount", params["maxEventCount"])
    ctl["decl_conds"] = decl_conds
    ctl["record"] = record
    ctl["order"], ctl["direction"] = order or "eventTime", direction
    return q, decl_only, ctl


def _record_conds(col: Any, record: list[tuple[str, datetime]]) -> list[Any]:
    return [col >= t if op == "GE" else col < t for op, t in record]


def _fingerprint(params: dict[str, Any]) -> str:
    body = json.dumps({k: v for k, v in params.items() if k not in ("perPage", "nextPageToken")}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def _token(offset: int, fp: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "q": fp}).encode()).decode().rstrip("=")


def _untoken(token: str, fp: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if data["q"] != fp:
            raise ValueError
        return int(data["o"])
    except (ValueError, KeyError, TypeError):
        raise QueryParameterException("nextPageToken does not belong to this query: repeat the query without it",
                                      field="nextPageToken") from None


async def run(session: AsyncSession, params: dict[str, Any], *, declared_ns: dict[str, str] | None = None,
              epc_format: str = "Always_GS1_Digital_Link",
              own_prefixes: list[str] | tuple[str, ...] = ()) -> tuple[dict[str, Any], str | None]:
    """Run a query; returns (EPCISQueryDocument, next page token or None).

    The answer is a list of entries: the matching events, and the error declarations of matching events, each
    declaration right after its original in eventTime order. GE_/LT_recordTime apply to each entry's own
    recordTime: a declaration is when it was captured, so a client polling by recordTime (and a subscription)
    gets a correction captured after it had the original, and gets each entry once. `own_prefixes`: the plant's
    GS1 company prefixes (settings), for Always_EPC_URN."""
    q, decl_only, ctl = await build(session, params, declared_ns=declared_ns)
    per_page = _int("perPage", params["perPage"]) if "perPage" in params else DEFAULT_PER_PAGE
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    fp = _fingerprint(params)
    offset = _untoken(_values(params["nextPageToken"])[0], fp) if params.get("nextPageToken") else 0
    entries = await _entries(session, q, decl_only, ctl)
    if "max" in ctl:
        total = (await session.execute(select(func.count()).select_from(entries.order_by(None).subquery()))
                 ).scalar_one()
        if total > ctl["max"]:
            raise QueryTooLargeException(f"the query matches {total} events, more than maxEventCount "
                                         f"{ctl['max']}: narrow it or page with perPage")
    limit = per_page
    if "limit" in ctl:
        limit = max(0, min(per_page, ctl["limit"] - offset))
    page = (await session.execute(entries.offset(offset).limit(limit + 1))).all() if limit else []
    more = len(page) > limit and ("limit" not in ctl or offset + limit < ctl["limit"])
    page = page[:limit]
    ev_pks = [r.pk for r in page if r.kind == 0]
    d_pks = [r.pk for r in page if r.kind == 1]
    originals = {r.id: r for r in (await session.execute(select(EpcisEvent).where(EpcisEvent.id.in_(ev_pks))))
                 .scalars()} if ev_pks else {}
    declarations = {d.id: d for d in (await session.execute(
        select(EpcisErrorDeclaration).where(EpcisErrorDeclaration.id.in_(d_pks)))).scalars()} if d_pks else {}
    fmt = await _formatter(session, epc_format, own_prefixes)
    events: list[dict[str, Any]] = []
    bindings: list[dict[str, Any] | None] = []
    for r in page:
        row = originals[r.pk] if r.kind == 0 else declarations[r.pk]
        events.append(fmt({**row.document, "recordTime": _z(row.record_time)}))
        bindings.append(row.namespaces)
    doc = await _with_contexts(session, query_document("SimpleEventQuery", events), bindings)
    return doc, (_token(offset + limit, fp) if more else None)


async def _entries(session: AsyncSession, q: Select[Any], decl_only: bool, ctl: dict[str, Any]) -> Select[Any]:
    """The ordered entries of a query: rows (kind 0 = event, 1 = error declaration; pk of its table)."""
    crit = q.whereclause
    where = [crit] if crit is not None else []
    record = ctl["record"]
    desc = ctl["direction"] == "DESC"
    D = EpcisErrorDeclaration
    # a declaration within the record-time window (any, when there is none): without one, the plain event query
    # (its order is the entries' order, and it walks the event_time / record_time index)
    any_decl = (await session.execute(select(D.id).where(*_record_conds(D.record_time, record)).limit(1))).first()
    if any_decl is None and not decl_only:
        col = EpcisEvent.record_time if ctl["order"] == "recordTime" else EpcisEvent.event_time
        return select(literal_column("0").label("kind"), EpcisEvent.id.label("pk")).where(
            *where, *_record_conds(EpcisEvent.record_time, record)).order_by(
            col.desc() if desc else col.asc(), EpcisEvent.id.desc() if desc else EpcisEvent.id.asc())
    decls = select(literal_column("1").label("kind"), D.id.label("pk"), EpcisEvent.id.label("ev"),
                   EpcisEvent.event_time.label("et"), D.record_time.label("rt")) \
        .select_from(EpcisEvent).join(D, D.event_id == EpcisEvent.event_id) \
        .where(*where, *ctl["decl_conds"], *_record_conds(D.record_time, record))
    if decl_only:
        u = decls.subquery()
    else:
        events = select(literal_column("0").label("kind"), EpcisEvent.id.label("pk"), EpcisEvent.id.label("ev"),
                        EpcisEvent.event_time.label("et"), EpcisEvent.record_time.label("rt")) \
            .where(*where, *_record_conds(EpcisEvent.record_time, record))
        u = union_all(events, decls).subquery()
    col = u.c.rt if ctl["order"] == "recordTime" else u.c.et
    # ties: by event, the original before its declarations, declarations in the order they were captured
    return select(u.c.kind, u.c.pk).order_by(col.desc() if desc else col.asc(),
                                              u.c.ev.desc() if desc else u.c.ev.asc(), u.c.kind.asc(), u.c.pk.asc())


def _z(d: datetime) -> str:
    return d.isoformat(timespec="milliseconds").replace("+00:00", "Z")


z = _z  # an aware time as EPCIS writes it (UTC, milliseconds, Z)


def query_document(name: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    prefixes: dict[str, str] = {"hub": HUB_NS}
    return {
        "@context": [EPCIS_CONTEXT, prefixes],
        "type": "EPCISQueryDocument", "schemaVersion": "2.0", "creationDate": _z(utcnow()),
        "epcisBody": {"queryResults": {"queryName": name, "resultsBody": {"eventList": events}}},
    }


# prefixes the EPCIS JSON-LD context itself defines: an answer never redeclares them (protected terms)
_CONTEXT_PREFIXES = frozenset({"cbvmda", "gs1", "epcis", "cbv"})
FULL_KEY = ("http://", "https://", "urn:", "@")


def key_prefixes(obj: Any, out: set[str]) -> None:
    """The prefixes of the compact keys in an event, at any depth (extension fields, ILMD, their members,
    sensor and location extensions)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if ":" in k and not k.startswith(FULL_KEY):
                out.add(k.split(":", 1)[0])
            if isinstance(v, (dict, list)):
                key_prefixes(v, out)
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, (dict, list)):
                key_prefixes(v, out)


def _renamed(obj: Any, rename: dict[str, str]) -> Any:
    """The event with the keys of the renamed prefixes rewritten (`ex:temp` -> `ex-1:temp`), at any depth."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if ":" in k and not k.startswith(FULL_KEY):
                prefix, local = k.split(":", 1)
                if prefix in rename:
                    k = f"{rename[prefix]}:{local}"
            out[k] = _renamed(v, rename) if isinstance(v, (dict, list)) else v
        return out
    if isinstance(obj, list):
        return [_renamed(v, rename) if isinstance(v, (dict, list)) else v for v in obj]
    return obj


async def _with_contexts(session: AsyncSession, doc: dict[str, Any],
                         bindings: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Declare in the answer's @context each extension prefix its events use, with the IRI the event's own
    document bound it to (`bindings[i]`: epcis_event.namespaces; None for an event recorded before migration
    0023, which reads with the bindings the hub had then, and for the hub's own events).

    The usual answer keeps every prefix as captured. When two events in one answer use one prefix for different
    IRIs (two partners' `ex:`, or an event's own @context overriding its document's), the first in the answer
    keeps it and the other IRI gets a free prefix of its own (`ex-1`, `ex-2`...), with that event's keys renamed,
    so the answer stays correct JSON-LD that validates against the schema: every key expands to the IRI its
    partner meant."""
    events = doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    used: list[set[str]] = []
    for ev in events:
        u: set[str] = set()
        key_prefixes(ev, u)
        used.append(u - _CONTEXT_PREFIXES)
    taken = set().union(*used) if used else set()
    legacy: dict[str, str] = {}
    if any(b is None and u - {"hub"} for b, u in zip(bindings, used, strict=True)):
        legacy = dict((await session.execute(select(EpcisNamespace.prefix, EpcisNamespace.iri)
                                             .where(EpcisNamespace.legacy.is_(True)))).all())
    ctx: dict[str, str] = doc["@context"][1]
    name_of: dict[tuple[str, str], str] = {}
    for i, (ev, ns, prefixes) in enumerate(zip(events, bindings, used, strict=True)):
        rename: dict[str, str] = {}
        for prefix in sorted(prefixes):
            if ns is None:
                iri = HUB_NS if prefix == "hub" else legacy.get(prefix)
            else:
                iri = ns.get(prefix) or (HUB_NS if prefix == "hub" else None)
            if iri is None:
                continue  # a prefix nobody declared: left as stored, as before
            name = name_of.get((prefix, iri))
            if name is None:
                name = prefix
                if ctx.get(prefix, iri) != iri:
                    n = 1
                    # `-`, not `_`: a key is a URI (the schema's vocab-uri), and a scheme has no `_`
                    while f"{prefix}-{n}" in ctx or f"{prefix}-{n}" in taken:
                        n += 1
                    name = f"{prefix}-{n}"
                ctx[name] = iri
                name_of[(prefix, iri)] = name
            if name != prefix:
                rename[prefix] = name
        if rename:
            events[i] = _renamed(ev, rename)
    return doc


async def company_prefixes(session: AsyncSession, own: list[str] | tuple[str, ...] = ()) -> set[str]:
    """The GS1 company prefixes the hub knows: learned from captured EPC URNs, the plant's own (settings) and those
    of its code rules (the SSCC element's `company_prefix`: the plant's prefix, which its GTINs start with too)."""
    gcps = set((await session.execute(select(Gs1CompanyPrefix.prefix))).scalars())
    gcps |= {p for p in own if p}
    specs = (await session.execute(select(CodeRule.spec).where(
        cast(CodeRule.spec, String).like("%company_prefix%")))).scalars()
    for spec in specs:
        for el in (spec or {}).get("elements") or []:
            p = el.get("company_prefix") if isinstance(el, dict) else None
            if isinstance(p, str) and p.isdigit() and 6 <= len(p) <= 12:
                gcps.add(p)
    return gcps


async def _formatter(session: AsyncSession, epc_format: str, own_prefixes: list[str] | tuple[str, ...] = ()) -> Any:
    if epc_format in ("Never_Translates", "No_Preference"):
        return lambda ev: ev
    if epc_format == "Always_EPC_URN":
        gcps = list(await company_prefixes(session, own_prefixes))

        def to_urn(x: Any) -> Any:
            if not isinstance(x, str):
                return x
            canon = dl_canonical(x)
            if canon is None:
                return x  # an EPC URN already, or not a GS1 identifier at all (a hub URN): nothing to translate
            digits = canon.split("/")[4]
            key = digits[1:] if canon.split("/")[3] in ("01", "00") else digits
            best = max((g for g in gcps if key.startswith(g)), key=len, default=None)
            urn = dl_to_urn(x, len(best)) if best else None
            if urn is None:
                # "Always_EPC_URN: URIs are returned as URN" (REST binding, GS1-EPC-Format); the binding's
                # answer to a response that cannot be given as requested is 406, not a silent mix of forms
                raise NotAcceptableException(
                    f"GS1-EPC-Format Always_EPC_URN: {x} cannot be written as an EPC URN "
                    + ("because its GS1 company prefix is not known to the hub (its length is needed): list the "
                       "plant's prefixes in HUB_GS1__COMPANY_PREFIXES, or capture an event naming it as an EPC URN "
                       "to teach it" if best is None else
                       "because the EPC URN schemes have no form for it")
                    + ", or ask for Always_GS1_Digital_Link, No_Preference or Never_Translates",
                    field="GS1-EPC-Format")
            return urn

        return lambda ev: _map_ids(ev, to_urn)
    return lambda ev: _map_ids(ev, lambda x: (urn_to_dl(x) or x) if isinstance(x, str) else x)


def _map_ids(ev: dict[str, Any], f: Any) -> dict[str, Any]:
    ev = dict(ev)
    for k in ("epcList", "childEPCs", "inputEPCList", "outputEPCList"):
        if ev.get(k):
            ev[k] = [f(x) for x in ev[k]]
    for k in ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList"):
        if ev.get(k):
            ev[k] = [{**q, "epcClass": f(q["epcClass"])} for q in ev[k]]
    if ev.get("parentID"):
        ev["parentID"] = f(ev["parentID"])
    for k in ("readPoint", "bizLocation"):
        if isinstance(ev.get(k), dict) and "id" in ev[k]:
            ev[k] = {**ev[k], "id": f(ev[k]["id"])}
    for k, item in (("sourceList", "source"), ("destinationList", "destination")):
        if ev.get(k):
            ev[k] = [{**s, item: f(s[item])} for s in ev[k]]
    return ev


async def get_event(session: AsyncSession, event_id: str, *, epc_format: str,
                    own_prefixes: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """One event and its error declarations, as an EPCISQueryDocument."""
    row = (await session.execute(select(EpcisEvent).where(EpcisEvent.event_id == event_id))).scalar()
    decls = (await session.execute(select(EpcisErrorDeclaration).where(EpcisErrorDeclaration.event_id == event_id)
                                   .order_by(EpcisErrorDeclaration.declaration_time))).scalars().all()
    if row is None and not decls:
        raise NotFound(f"no event has eventID {event_id!r}", field="eventID")
    fmt = await _formatter(session, epc_format, own_prefixes)
    rows = ([row] if row else []) + list(decls)
    events = [fmt({**r.document, "recordTime": _z(r.record_time)}) for r in rows]
    return await _with_contexts(session, query_document("SimpleEventQuery", events), [r.namespaces for r in rows])


# --- named queries -------------------------------------------------------------------------------------


_EXT_PARAM = re.compile(r"(?:EQ_ATTR_(?:readPoint|bizLocation)_|(?:EQ|EXISTS)_(?:ILMD_)?)([A-Za-z_][\w.-]*):(?!//).+")


def _param_prefixes(params: dict[str, Any]) -> set[str]:
    """The namespace prefixes a query's extension and master-data parameters use."""
    out = set()
    for name, raw in params.items():
        if m := _EXT_PARAM.fullmatch(name):
            out.add(m.group(1))
        elif re.fullmatch(r"HASATTR_(readPoint|bizLocation)", name):
            out |= {v.split(":", 1)[0] for v in _values(raw) if ":" in v and not v.startswith(FULL_KEY)}
    return out - {"urn", "http", "https"}


async def create_named(session: AsyncSession, name: str, query: dict[str, Any], *,
                       declared_ns: dict[str, str] | None = None) -> EpcisNamedQuery:
    """A named query; its extension prefixes are bound now (the request's GS1-Extensions header, else the one
    binding the hub knows), like its other parameters: running it later means the same."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,120}", name or ""):
        raise QueryParameterException("name: use 1-120 letters, digits, . _ or -", field="name")
    if await session.get(EpcisNamedQuery, name) is not None:
        raise ResourceAlreadyExistsException(f"a query named {name!r} exists: choose another name or delete it first",
                                             field="name")
    await build(session, query, declared_ns=declared_ns)  # refuse a query that would not run
    used = _param_prefixes(query)
    ns = (await _namespaces(session, declared_ns or {})).ns if used else {}
    row = EpcisNamedQuery(name=name, query=query, namespaces={p: ns[p] for p in sorted(used) if p in ns} or None)
    session.add(row)
    await session.flush()
    return row


async def get_named(session: AsyncSession, name: str) -> EpcisNamedQuery:
    row = await session.get(EpcisNamedQuery, name)
    if row is None:
        raise NoSuchNameException(f"no query is named {name!r}: list them at GET /epcis/queries", field="name")
    return row


async def delete_named(session: AsyncSession, name: str) -> None:
    await session.delete(await get_named(session, name))
    await session.flush()


async def list_named(session: AsyncSession) -> list[EpcisNamedQuery]:
    return list((await session.execute(select(EpcisNamedQuery).order_by(EpcisNamedQuery.name))).scalars())
