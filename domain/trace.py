"""Genealogy both ways over the lineage index (trace_node / trace_edge, see domain/epcis_index.py).

A hub lot's lineage node id is its lot id (models_trace.TraceNode), so a walk is one recursive query over
the edge index that yields lot ids directly, one index probe per edge, and the lots and their details are
read by primary key or lot id after the walk, with no mapping in between. On PostgreSQL the start (a unit
serial, a lot number, a heat, ...), the walk and the lots' details come back in one statement (the start's
query feeding the PL/pgSQL function trace_lots(), whose plans stay cached on the connection), which reads one
trace row per lot (trace_lot_doc, kept current by triggers: migrations/versions/0014_trace_doc.py) and
answers one JSON text parsed with orjson: no ORM objects on the way. Given a `reader` (the API's
core.db.FastReader), that statement runs on an autocommit connection of its own, with no transaction around
it. On SQLite the same walk runs with one query per kind of detail over the facts' own tables (correct, not
tuned), shaped as the trace rows are. Both paths feed one assembler.

- backward(code): from a unit serial (Digital Link), a batch code, or a lot number, down to every consumed
  lot, supplier, supplier lot, heat and certificate, and past the receiving dock into a supplier's own lots
  when the supplier's EPCIS events were captured.
- forward(...): from a lot, a supplier lot, a heat number, or an equipment or operator within a time window:
  every lot made from it, its units (serial blocks, counted per lot), and where each is now.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import defaultdict, deque
from datetime import UTC, datetime
from operator import itemgetter
from typing import Any
from urllib.parse import quote, unquote

import orjson
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import InvalidInput, NotFound
from domain.epcis_ids import GS1_DL, canonical, lot_of
from domain.epcis_query import FULL_KEY, key_prefixes
from domain.events import HUB_NS
from domain.models import (
    CharacteristicResult,
    Code,
    CodeBlock,
    EpcisEvent,
    Inspection,
    Item,
    Lot,
    LotStatus,
    Ncr,
    NcrDecisionRecord,
    OperationRecord,
    Shipment,
    ShipmentLine,
    Supplier,
    UTCDateTime,
)
from domain.models_codes import CodeRule, SerialBlock, UsedCode
from domain.models_identity import Signature
from domain.models_trace import EpcisEventEpc, TraceNode
from domain.signatures import is_valid

log = logging.getLogger(__name__)

SERIAL_WIDTH = 12
_DL_SERIAL = re.compile(r"/01/(\d{14})/21/([^/?#]+)")
_DL_LOT = re.compile(r"/01/(\d{14})/10/([^/?#]+)")
_URN_SGTIN = re.compile(r"^urn:epc:id:sgtin:")
FORWARD_KINDS = ("lot", "supplier_lot", "heat", "equipment", "operator")
# a lot number that canonical percent-encoding leaves as it is (epcis_ids._dl_value)
_DL_SAFE = re.compile(r"[A-Za-z0-9_.~'-]+")


# --- start points ------------------------------------------------------------------------------------


async def resolve(session: AsyncSession, code: str) -> tuple[int, str | None]:
    """(lot id, unit code or None) behind a unit serial, a batch code or a lot number."""
    code = code.strip()
    if _URN_SGTIN.match(code) or code.startswith("urn:epc:class:lgtin:"):
        code = canonical(code)
    m = _DL_SERIAL.search(code)
    if m:
        serial = unquote(m.group(2))
        if serial.isdigit():
            # the block holding the serial, among the blocks of every item with that GTIN (_ANCHORS["unit"])
            lot_id = (await session.execute(text(_anchor("unit", pg=_pg(session))),
                                            {"gtin": m.group(1), "seq": int(serial)})).scalar()
            if lot_id is not None:
                return lot_id, code
    else:
        m = _DL_LOT.search(code)
        number = unquote(m.group(2)) if m else code
        lot_id = (await session.execute(select(Lot.id).where(Lot.number == number))).scalar()
        if lot_id is not None:
            return lot_id, None
        lot_id = (await session.execute(select(Code.lot_id).where(Code.value == code))).scalar()
        if lot_id is not None:
            return lot_id, None
    # codes issued by other means (code rules, pools) are resolved by the code service
    from domain import codes

    try:
        lot, unit = await codes.resolve(session, code)
    except NotFound:
        raise NotFound(f"code {code!r} is not known: give a lot number, a batch code or a unit serial "
                       "(Digital Link URI or EPC URN)", field="code") from None
    return lot.id, unit


# Where a walk starts, as SQL that both PostgreSQL and SQLite run: node ids (a hub lot's node id is its lot
# id, so a lot with no event yet is a start too; captured supplier classes have negative ids).
_HEAT_ROLES = "('output', 'output_quantity', 'quantity', 'epc')"
_ANCHORS = {
    "lot": "SELECT :lot AS id",
    "number": "SELECT id FROM lot WHERE number = :number",
    # the block holding a serial: the newest block at or below it among the items with that GTIN (_PG_ANCHORS
    # has the same, one index probe per item)
    "unit": """SELECT b.lot_id AS id FROM (SELECT lot_id, first_seq, count FROM code_block
               WHERE item_id IN (SELECT id FROM item WHERE gtin = :gtin) AND first_seq <= :seq
               ORDER BY first_seq DESC LIMIT 1) b WHERE :seq < b.first_seq + b.count""",
    # a unit code of a serial block (domain.codes.unit_sequence worked out its namespace and sequence number): the
    # block holding it, if it is of that rule version, has a lot, and no voided or returned range holds the code
    # (those are for codes.lookup to say)
    "unit_block": """SELECT b.lot_id AS id FROM (SELECT id, lot_id, first_seq, count, rule_id FROM serial_block
               WHERE namespace = :ns AND first_seq <= :seq ORDER BY first_seq DESC LIMIT 1) b
               WHERE :seq < b.first_seq + b.count AND b.rule_id = :rule AND b.lot_id IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM code_range r WHERE r.block_id = b.id AND r.first_seq <= :seq
                               AND r.first_seq + r.count > :seq)""",
    "f_lot": "SELECT id FROM lot WHERE number = :value",
    # a heat of our received lots, or named in captured events (a supplier's ILMD or extension `...heatNumber`).
    # The captured identifiers are found by their index (uri, lot_part) and only then kept if not hub lots: the
    # fence ({fence}: OFFSET 0 on PostgreSQL) keeps `lot_id IS NULL` from driving the plan (the statistics of
    # trace_node can lag behind a capture by thousands of nodes)
    "f_heat": f"""SELECT id FROM lot WHERE heat_number = :value
               UNION SELECT t.id FROM (SELECT n.id, n.lot_id FROM trace_node n WHERE n.uri IN (
                   SELECT x.uri FROM epcis_event_field f JOIN epcis_event_epc x ON x.event_pk = f.event_pk
                   WHERE f.name = 'heat' AND f.value = :value AND x.role IN {_HEAT_ROLES}) {{fence}}) t
               WHERE t.lot_id IS NULL""",
    "f_supplier_lot": """SELECT id FROM lot WHERE supplier_lot = :value
               UNION SELECT t.id FROM (SELECT id, lot_id FROM trace_node WHERE lot_part = :value {fence}) t
               WHERE t.lot_id IS NULL""",
    "f_equipment": """SELECT DISTINCT output_lot_id AS id FROM operation_record
               WHERE equipment = :value AND started_at < :until AND ended_at >= :since""",
    "f_operator": """SELECT DISTINCT output_lot_id AS id FROM operation_record
               WHERE operator = :value AND started_at < :until AND ended_at >= :since""",
}
_WINDOW = (bindparam("since", type_=UTCDateTime()), bindparam("until", type_=UTCDateTime()))


def _check_forward(kind: str, since: datetime | None, until: datetime | None) -> None:
    if kind not in FORWARD_KINDS:
        raise InvalidInput(f"unknown trace start {kind!r}: use one of {', '.join(FORWARD_KINDS)}", field="kind")
    if kind in ("equipment", "operator"):
        if since is None or until is None:
            raise InvalidInput(f"a forward trace from {kind} needs a time window: give since and until",
                               field="since")
        if until <= since:
            raise InvalidInput("until is not after since: give a window that is at least a moment long",
                               field="until")


def _no_start(kind: str, value: str, since: datetime | None) -> NotFound:
    if kind == "lot":
        return NotFound(f"lot {value!r} does not exist: check the lot number", field="lot")
    return NotFound(f"no lot has {kind.replace('_', ' ')} {value!r}" + (" in that window" if since else "")
                    + ": check the value", field=kind)


def _forward_params(kind: str, value: str, since: datetime | None, until: datetime | None) -> dict[str, Any]:
    return {"value": value, **({"since": since, "until": until} if kind in ("equipment", "operator") else {})}


async def forward_starts(session: AsyncSession, *, kind: str, value: str, since: datetime | None = None,
                         until: datetime | None = None) -> list[int]:
    """The lineage nodes (lot ids, or captured supplier classes) a forward trace starts from."""
    _check_forward(kind, since, until)
    q = text(_anchor(f"f_{kind}", pg=_pg(session)))
    if kind in ("equipment", "operator"):
        q = q.bindparams(*_WINDOW)
    starts = sorted({r for r in (await session.execute(q, _forward_params(kind, value, since, until))).scalars()
                     if r is not None})
    if not starts:
        raise _no_start(kind, value, since)
    return starts


# --- the walk ----------------------------------------------------------------------------------------
#
# Both paths produce the same raw answer, and one assembler turns it into the trace:
#
# starts: node ids
# edges:  walk rows (node reached, node it was reached from, via): a parent backward, a child forward
# lots:   one row per lot (the trace row of migrations/versions/0014_trace_doc.py): [lot id, number, lot kind,
#         status, quantity, remaining, uom, supplier lot, heat, certificate, receipt, location, concession,
#         item id, supplier id, shipments (dicts as the answer shows them, by shipped_at) or None, serial blocks
#         ([first seq, count], by first seq) or None]
# hists:  (full traces) {lot id: [operations, inspections, NCRs] as the answer shows them}, for the lots that
#         have any
# items:  {item id: (code, gtin)}; suppliers: {supplier id: code}
# ext:    (node id, uri, node kind): identifiers known from captured events only
# events: (uri, role, event id, event type, biz step, event time, document)

# one walk row per visited edge: (node reached, node it was reached from, via); a start has no "from"
_WALK = """WITH RECURSIVE walk(id, c, via) AS (
    SELECT CAST(s.id AS BIGINT), CAST(NULL AS BIGINT), CAST(NULL AS VARCHAR(16)) FROM ({anchor}) s
  UNION
    {step}
)"""
_UP = "SELECT e.parent_id, e.child_id, e.via FROM trace_edge e JOIN walk w ON e.child_id = w.id"
_DOWN = "SELECT e.child_id, e.parent_id, e.via FROM trace_edge e JOIN walk w ON e.parent_id = w.id"


# PostgreSQL: the start's query feeds trace_lots() (migrations/versions/0014_trace_doc.py), which walks, then
# reads one trace row per visited lot (kept current by triggers where the facts are written) and answers one
# JSON text that orjson reads at once: the starts, the walk rows as three arrays, the lot rows as stored, the
# items and suppliers they name, and any captured identifiers with their events. Being a PL/pgSQL function, its
# plans stay cached on the connection across requests, so a trace is not planned again each time.
_PG_CALL = "SELECT trace_lots(ARRAY({anchor})::bigint[], {up}, {full})"


# PostgreSQL plans `item_id IN (...) ... ORDER BY first_seq DESC LIMIT 1` as a scan of all the item's blocks
# (milliseconds); per item, the newest block at or below the serial is one probe of (item_id, first_seq)
_PG_ANCHORS = {
    "unit": """SELECT b.lot_id AS id FROM (SELECT c.lot_id, c.first_seq, c.count FROM item i
               CROSS JOIN LATERAL (SELECT lot_id, first_seq, count FROM code_block
                   WHERE item_id = i.id AND first_seq <= :seq ORDER BY first_seq DESC LIMIT 1) c
               WHERE i.gtin = :gtin ORDER BY c.first_seq DESC LIMIT 1) b WHERE :seq < b.first_seq + b.count""",
}


def _anchor(anchor: str, *, pg: bool) -> str:
    sql = _PG_ANCHORS.get(anchor, _ANCHORS[anchor]) if pg else _ANCHORS[anchor]
    return sql.replace("{fence}", "OFFSET 0" if pg else "LIMIT -1 OFFSET 0")


def _statement(anchor: str, *, up: bool, pg: bool, full: bool = False) -> Any:
    if pg:
        sql = _PG_CALL.format(anchor=_anchor(anchor, pg=True), up="true" if up else "false",
                              full="true" if full else "false")
    else:
        sql = _WALK.format(anchor=_anchor(anchor, pg=False), step=_UP if up else _DOWN) + " SELECT id, c, via FROM walk"
    q = text(sql)
    return q.bindparams(*_WINDOW) if anchor in ("f_equipment", "f_operator") else q


_SQL: dict[tuple[str, bool, bool, bool], Any] = {}


def _sql(anchor: str, *, up: bool, pg: bool, full: bool) -> Any:
    key = (anchor, up, pg, full)
    q = _SQL.get(key)
    if q is None:
        q = _SQL[key] = _statement(anchor, up=up, pg=pg, full=full)
    return q


class _Columns:
    """Rows of one kind read from its columns, tuple by tuple as they are iterated (several times if need be):
    no list of row tuples is kept, so a large trace leaves less for the garbage collector to walk."""

    __slots__ = ("cols",)

    def __init__(self, cols: list[Any] | None) -> None:
        self.cols = cols if cols and cols[0] is not None else None

    def __iter__(self) -> Any:
        return zip(*self.cols, strict=True) if self.cols else iter(())

    def __bool__(self) -> bool:
        return self.cols is not None


# anchors whose parameters go to the database as they are (the time windows need UTCDateTime's binding)
_READER_ANCHORS = frozenset(("unit", "unit_block", "number", "lot", "f_lot", "f_heat", "f_supplier_lot"))


async def _fetch_pg(session: AsyncSession, anchor: str, params: dict[str, Any], *, up: bool, full: bool,
                    reader: Any = None) -> dict[str, Any]:
    stmt = _sql(anchor, up=up, pg=True, full=full)
    text_doc = None
    if reader is not None and anchor in _READER_ANCHORS:
        # one statement on an autocommit connection of its own: no session, BEGIN or ROLLBACK around it
        try:
            text_doc = (await reader.fetchone(stmt, params))[0]  # type: ignore[index]
        except Exception:  # the session below answers, and reports a real fault
            log.debug("trace reader fell back to the session", exc_info=True)
    if text_doc is None:
        text_doc = (await session.execute(stmt, params)).scalar_one()
    # the JSON text, then (full) GS and the lots' histories, kept as parts (migrations 0018_trace_hist_parts):
    # records "lot id US ops count US inspections count US NCR numbers (JSON) US ops US inspections US NCRs"
    # separated by RS. The three JSON texts stay text here: _assemble parses them, or the JSON route sends them
    # as they are.
    json_text, _, blob = text_doc.partition("\x1d")
    starts, edges, lots, _, items, suppliers, ext, events = orjson.loads(json_text)
    hists: dict[int, tuple[Any, ...]] | None = None
    if full:
        hists = {}
        for rec in blob.split("\x1e") if blob else ():
            lot_id, n_ops, n_ins, names, ops, ins, ncrs = rec.split("\x1f")
            hists[int(lot_id)] = (int(n_ops), int(n_ins), orjson.loads(names), ops, ins, ncrs)
    return {"starts": starts or [], "edges": _Columns(edges), "lots": lots, "hists": hists,
            "items": {i: (code, gtin) for i, code, gtin in items}, "suppliers": dict(suppliers),
            "ext": _Columns(ext), "events": _Columns(events)}


async def _fetch_portable(session: AsyncSession, anchor: str, params: dict[str, Any], *, up: bool,
                          full: bool) -> dict[str, Any]:
    walk = (await session.execute(_sql(anchor, up=up, pg=False, full=full), params)).all()
    out: dict[str, Any] = {"starts": list(dict.fromkeys(r[0] for r in walk if r[1] is None)),
                           "edges": [tuple(r) for r in walk if r[1] is not None], "lots": [],
                           "hists": {} if full else None, "items": {}, "suppliers": {}, "ext": [], "events": []}
    node_ids = list({r[0] for r in walk})
    lot_ids = [n for n in node_ids if n > 0]
    ext_ids = [n for n in node_ids if n < 0]
    if lot_ids:
        lots = (await session.execute(
            select(Lot.id, Lot.number, Lot.kind, Lot.status, Lot.quantity, Lot.quantity_remaining, Lot.uom,
                   Lot.supplier_lot, Lot.heat_number, Lot.certificate_ref, Lot.receipt, Lot.location, Lot.concession,
                   Lot.item_id, Lot.supplier_id).where(Lot.id.in_(lot_ids)))).all()
        item_ids = {r[13] for r in lots}
        supplier_ids = {r[14] for r in lots if r[14] is not None}
        out["items"] = {r[0]: (r[1], r[2]) for r in (await session.execute(
            select(Item.id, Item.code, Item.gtin).where(Item.id.in_(item_ids)))).all()}
        if supplier_ids:
            out["suppliers"] = {r[0]: r[1] for r in (await session.execute(
                select(Supplier.id, Supplier.code).where(Supplier.id.in_(supplier_ids)))).all()}
        ships: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for lot_id, qty, number, so, customer, carrier, tracking, at in (await session.execute(
                select(ShipmentLine.lot_id, ShipmentLine.quantity, Shipment.number, Shipment.sales_order,
                       Shipment.customer, Shipment.carrier, Shipment.tracking_number, Shipment.shipped_at)
                .join(Shipment, Shipment.id == ShipmentLine.shipment_id).where(ShipmentLine.lot_id.in_(lot_ids))
                .order_by(Shipment.shipped_at, ShipmentLine.id))).all():
            ships[lot_id].append({"shipment": number, "sales_order": so, "customer": customer, "carrier": carrier,
                                  "tracking_number": tracking, "quantity": qty, "shipped_at": _iso(at)})
        # a lot's serial blocks as the trace row lists them (migration 0025): the legacy ones as [first_seq, count],
        # then the unit-level serial_block ones as [first code, last code, count]
        blocks: dict[int, list[list[Any]]] = defaultdict(list)
        for lot_id, first_seq, count in (await session.execute(
                select(CodeBlock.lot_id, CodeBlock.first_seq, CodeBlock.count).where(CodeBlock.lot_id.in_(lot_ids))
                .order_by(CodeBlock.lot_id, CodeBlock.first_seq))).all():
            blocks[lot_id].append([first_seq, count])
        for lot_id, first_code, last_code, count in (await session.execute(
                select(SerialBlock.lot_id, SerialBlock.first_code, SerialBlock.last_code, SerialBlock.count)
                .join(CodeRule, CodeRule.id == SerialBlock.rule_id)
                .where(SerialBlock.lot_id.in_(lot_ids), CodeRule.level == "unit")
                .order_by(SerialBlock.lot_id, SerialBlock.id))).all():
            blocks[lot_id].append([first_code, last_code, count])
        for lot_id, count in (await session.execute(  # units printed from offline pools (migration 0026)
                select(UsedCode.lot_id, func.count()).where(UsedCode.lot_id.in_(lot_ids), UsedCode.pool_id.is_not(None),
                                                            UsedCode.level == "unit").group_by(UsedCode.lot_id))).all():
            blocks[lot_id].append([count])
        out["lots"] = [[*r, ships.get(r[0]), blocks.get(r[0])] for r in lots]
        if full:
            out["hists"] = await _history_portable(session, lot_ids)
    if ext_ids:
        out["ext"] = [tuple(r) for r in (await session.execute(
            select(TraceNode.id, TraceNode.uri, TraceNode.kind).where(TraceNode.id.in_(ext_ids)))).all()]
        uris = [r[1] for r in out["ext"]]
        out["events"] = [tuple(r) for r in (await session.execute(
            select(EpcisEventEpc.uri, EpcisEventEpc.role, EpcisEvent.event_id, EpcisEvent.event_type,
                   EpcisEvent.biz_step, EpcisEvent.event_time, EpcisEvent.document)
            .join(EpcisEvent, EpcisEvent.id == EpcisEventEpc.event_pk).where(EpcisEventEpc.uri.in_(uris))
            .order_by(EpcisEvent.event_time, EpcisEvent.id))).all()]
    return out


async def _history_portable(session: AsyncSession, lot_ids: list[int]) -> dict[int, list[list[Any]]]:
    """Per lot: [operations, inspections, NCRs] as the answer shows them (what trace_lot_doc.hist holds)."""
    hist: dict[int, list[list[Any]]] = defaultdict(lambda: [[], [], []])
    o = OperationRecord
    for lot_id, seq, name, rework, eq, operator, shift, started, ended, params, consumed, good, scrap in (
            await session.execute(
                select(o.output_lot_id, o.seq, o.name, o.rework, o.equipment, o.operator, o.shift, o.started_at,
                       o.ended_at, o.parameters, o.consumed, o.good_quantity, o.scrap_quantity)
                .where(o.output_lot_id.in_(lot_ids)).order_by(o.id))).all():
        hist[lot_id][0].append({
            "seq": seq, "name": name, "rework": rework, "equipment": eq, "operator": operator, "shift": shift,
            "started_at": _iso(started), "ended_at": _iso(ended), "parameters": params, "consumed": consumed,
            "good_quantity": good, "scrap_quantity": scrap})
    c = CharacteristicResult
    by_ins: dict[int, dict[str, Any]] = {}
    for iid, lot_id, number, kind, status, inspector, at, cname, nominal, lower, upper, unit, values, verdict in (
            await session.execute(
                select(Inspection.id, Inspection.lot_id, Inspection.number, Inspection.kind, Inspection.status,
                       Inspection.inspector, Inspection.inspected_at, c.name, c.nominal, c.lower, c.upper, c.unit,
                       c.values, c.verdict)
                .outerjoin(c, c.inspection_id == Inspection.id).where(Inspection.lot_id.in_(lot_ids))
                .order_by(Inspection.id, c.id))).all():
        ins = by_ins.get(iid)
        if ins is None:
            ins = by_ins[iid] = {"number": number, "kind": kind, "status": status, "inspector": inspector,
                                 "inspected_at": _iso(at), "characteristics": []}
            hist[lot_id][1].append(ins)
        if cname is not None:
            ins["characteristics"].append({"name": cname, "nominal": nominal, "lower": lower, "upper": upper,
                                           "unit": unit, "values": values, "verdict": verdict})
    d = NcrDecisionRecord
    by_ncr: dict[int, dict[str, Any]] = {}
    for nid, lot_id, number, state, disp, desc, opened, closed, action, reviewer, role, reason, decided in (
            await session.execute(
                select(Ncr.id, Ncr.lot_id, Ncr.number, Ncr.state, Ncr.disposition, Ncr.description, Ncr.opened_at,
                       Ncr.closed_at, d.action, d.reviewer, d.role, d.reason, d.decided_at)
                .outerjoin(d, d.ncr_id == Ncr.id).where(Ncr.lot_id.in_(lot_ids)).order_by(Ncr.id, d.id))).all():
        n = by_ncr.get(nid)
        if n is None:
            n = by_ncr[nid] = {"number": number, "state": state, "disposition": disp, "description": desc,
                               "opened_at": _iso(opened), "closed_at": _iso(closed), "decisions": []}
            hist[lot_id][2].append(n)
        if action is not None:
            n["decisions"].append({"action": action, "reviewer": reviewer, "role": role, "reason": reason,
                                   "decided_at": _iso(decided)})
    return hist


def _pg(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


async def _fetch(session: AsyncSession, anchor: str, params: dict[str, Any], *, up: bool, full: bool,
                 reader: Any = None) -> dict[str, Any]:
    if _pg(session):
        raw = await _fetch_pg(session, anchor, params, up=up, full=full, reader=reader)
    else:
        raw = await _fetch_portable(session, anchor, params, up=up, full=full)
    raw["declared"], raw["namespaces"] = await _declarations(session, raw["events"], _used_prefixes(raw["events"]))
    return raw


# prefixes the EPCIS JSON-LD context defines (protected: a captured document cannot rebind them)
_CONTEXT_NS = {"cbvmda": "urn:epcglobal:cbv:mda:", "gs1": "https://gs1.org/voc/"}


def _used_prefixes(events: Any) -> dict[str, set[str]]:
    """The prefixes of the keys each captured event a trace shows has in its ILMD and extension fields (what the
    answer lists as `ilmd` and `extensions`), by eventID: only the events that have any. No database."""
    out: dict[str, set[str]] = {}
    seen: set[str] = set()
    for _, _, event_id, _, _, _, d in events or ():
        if event_id in seen:  # an event naming several of the trace's identifiers is listed with each
            continue
        seen.add(event_id)
        used: set[str] = set()
        for k, v in d.items():
            if k == "ilmd" or (":" in k and not k.startswith("@")):
                if k != "ilmd" and not k.startswith(FULL_KEY):
                    used.add(k.split(":", 1)[0])
                if isinstance(v, (dict, list)):
                    key_prefixes(v, used)
        if used:
            out[event_id] = used
    return out


async def _declarations(session: AsyncSession, events: Any, used: dict[str, set[str]]) -> tuple[
        dict[str, list[dict[str, Any]]], dict[str, dict[str, str]]]:
    """The error declarations of the captured events a trace shows, by eventID, and the namespace IRIs of the
    prefixes their ILMD and extension keys use (`used`), by eventID. One query, only when the trace reached
    identifiers known from captured events; it reads the events' bindings (epcis_event.namespaces) too only when
    one of them has prefixed keys (a second query only for events captured before migration 0023, which read
    with the bindings the hub had then). A retracted event (did_not_occur) has left the lineage
    (domain/epcis_index.retract_lineage), but a node other events still name keeps it in its list: the
    declaration says it was retracted."""
    ids = list({e[2] for e in events}) if events else []
    if not ids:
        return {}, {}
    from domain.models_trace import EpcisErrorDeclaration as D

    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    cols = (D.event_id, D.declaration_time, D.reason, D.corrective_event_ids)
    if not used:
        for event_id, at, reason, corrective in (await session.execute(
                select(*cols).where(D.event_id.in_(ids)).order_by(D.declaration_time, D.id))).all():
            out[event_id].append({"declaration_time": _iso(at), "reason": reason,
                                  "corrective_event_ids": corrective or []})
        return out, {}
    # the events' bindings with their declarations, if any (every event a trace shows is in epcis_event)
    bindings: dict[str, dict[str, Any] | None] = {}
    for event_id, ns, at, reason, corrective in (await session.execute(
            select(EpcisEvent.event_id, EpcisEvent.namespaces, *cols[1:])
            .outerjoin(D, D.event_id == EpcisEvent.event_id).where(EpcisEvent.event_id.in_(ids))
            .order_by(D.declaration_time, D.id))).all():
        bindings[event_id] = ns
        if at is not None:
            out[event_id].append({"declaration_time": _iso(at), "reason": reason,
                                  "corrective_event_ids": corrective or []})
    legacy: dict[str, str] = {}
    if any(bindings.get(e) is None and p - {"hub"} - _CONTEXT_NS.keys() for e, p in used.items()):
        from domain.models_trace import EpcisNamespace

        legacy = dict((await session.execute(select(EpcisNamespace.prefix, EpcisNamespace.iri)
                                             .where(EpcisNamespace.legacy.is_(True)))).all())
    iris: dict[str, dict[str, str]] = {}
    for event_id, prefixes in used.items():
        ns = bindings.get(event_id)
        known = legacy if ns is None else ns
        mine = {}
        for p in sorted(prefixes):
            iri = _CONTEXT_NS.get(p) or known.get(p) or (HUB_NS if p == "hub" else None)
            if iri is not None:  # a prefix nobody declared (not captured so) stays without one
                mine[p] = iri
        iris[event_id] = mine
    return out, iris


# --- the answer ----------------------------------------------------------------------------------------


def _depths(starts: list[int], edges: Any) -> dict[int, int]:
    # edges as walked: (node reached, node it was reached from, via)
    nxt: dict[int, list[int]] = defaultdict(list)
    for reached, frm, _ in edges:
        nxt[frm].append(reached)
    depth = dict.fromkeys(starts, 0)
    q = deque(starts)
    while q:
        n = q.popleft()
        d = depth[n] + 1
        for m in nxt.get(n, ()):
            if m not in depth:
                depth[m] = d
                q.append(m)
    return depth


def _where(status: str, remaining: float, location: str | None, shipments: list[dict[str, Any]]) -> str:
    if status == LotStatus.shipped or (shipments and remaining <= 1e-9):
        return "shipped to " + ", ".join(sorted({f"{s['customer']} ({s['shipment']})" for s in shipments})) \
            if shipments else "shipped"
    if status == LotStatus.on_hold:
        return "on hold" + (f" at {location}" if location else "")
    if status == LotStatus.consumed:
        return "consumed"
    if status == LotStatus.rejected:
        return "rejected"
    return f"in stock ({status})" + (f" at {location}" if location else "")


def _iso(d: Any) -> str | None:
    return d if d is None or isinstance(d, str) else d.isoformat()


def _lot_uri(number: str, gtin: str | None) -> str:
    """The lot's lineage identifier (epcis_index.lot_node_uri), without a lookup for the usual lot numbers."""
    if not gtin:
        return f"urn:tracehub:lot:{number}"
    if _DL_SAFE.fullmatch(number) and gtin.isdigit() and len(gtin) in (8, 12, 13, 14):
        return f"{GS1_DL}/01/{gtin.zfill(14)}/10/{number}"
    return canonical(f"{GS1_DL}/01/{gtin}/10/{number}")


_EXT_WHERE = "outside the plant (captured EPCIS events)"
_BY_LEVEL = itemgetter(0, 1)  # nodes by (level, label)


def _ext_events(raw: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The captured events of each identifier known from captured events only, as its node shows them, each with
    its error declarations (`error_declarations`: empty unless the event was declared erroneous) and the
    namespace IRI of each prefix its `ilmd` and `extensions` keys use (`namespaces`: {prefix: IRI}, as the
    event's own document bound it; two partners' `ex:` differ there)."""
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    declared = raw.get("declared") or {}
    namespaces = raw.get("namespaces") or {}
    for uri, role, event_id, etype, step, at, d in raw["events"]:
        out[uri].append({
            "event_id": event_id, "type": etype, "biz_step": step, "role": role, "event_time": _iso(at),
            "source": d.get("sourceList"), "destination": d.get("destinationList"),
            "biz_transactions": d.get("bizTransactionList"), "ilmd": d.get("ilmd"),
            "certification": d.get("certificationInfo"),
            "extensions": {k: v for k, v in d.items() if ":" in k and not k.startswith("@")},
            "namespaces": namespaces.get(event_id, {}),
            "error_declarations": declared.get(event_id, [])})
    return out


def _ext_rows(uri: str, kind: str, level: int, events: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The node and flat row of an identifier known from captured events only."""
    return {
        "node": "external", "id": uri, "uri": uri, "kind": kind, "lot": lot_of(uri), "status": None,
        "events": events, "where": _EXT_WHERE, "level": level}, {
        "level": level, "node": "external", "id": uri, "kind": kind, "item": None, "status": None,
        "where": _EXT_WHERE, "quantity": None, "uom": None, "units": 0, "supplier": None, "supplier_lot": None,
        "heat_number": None, "certificate_ref": None, "concession": None, "customers": "", "shipments": "",
        "operations": 0,
        "inspections": 0, "ncrs": ""}


def _lot_uris() -> Any:
    """uri(number, gtin): a lot's lineage identifier (epcis_index.lot_node_uri), each GTIN's Digital Link prefix
    worked out once per trace."""
    uri_of_gtin: dict[str | None, str | None] = {}  # the Digital Link prefix of a GTIN, None: canonical() needed

    def uri(number: str, gtin: str | None) -> str:
        if gtin is None:
            return f"urn:tracehub:lot:{number}"
        prefix = uri_of_gtin.get(gtin, "")
        if prefix == "":
            prefix = uri_of_gtin[gtin] = f"{GS1_DL}/01/{gtin.zfill(14)}/10/" \
                if gtin.isdigit() and len(gtin) in (8, 12, 13, 14) else None
        return prefix + number if prefix is not None and _DL_SAFE.fullmatch(number) else _lot_uri(number, gtin)
    return uri


_URI_SAFE = re.compile(r"[A-Za-z0-9._~-]*").fullmatch


def _serial_block(resolver: str, first: str | None, last: str | None, count: int) -> dict[str, Any]:
    """A serial block of a lot in a trace: its first and last serial and their Digital Link URIs (GS1 codes,
    canonical /01/{gtin}/21/{serial}), or its first and last house code. A rule's serials need not be in order
    (random order): the block is `count` codes, of which these are the first and last issued."""
    if first is None or last is None:  # not rendered (a block its rule could not render at migration 0025)
        return {"first": None, "last": None, "count": count}
    if first.startswith("/01/") and first[18:22] == "/21/" and last[18:22] == "/21/":
        a, b = first[22:], last[22:]  # /01/ + 14 digits + /21/: the serial (it may hold a "/")
        # a serial of digits and letters (nearly every one) goes into the URI as it is
        ua = resolver + first if _URI_SAFE(a) else f"{resolver}{first[:22]}{quote(a, safe='')}"
        ub = resolver + last if _URI_SAFE(b) else f"{resolver}{last[:22]}{quote(b, safe='')}"
        return {"first": a, "last": b, "count": count, "first_uri": ua, "last_uri": ub}
    return {"first": first, "last": last, "count": count}


def _assemble(raw: dict[str, Any], *, up: bool, resolver: str, full: bool, as_sent: bool = False) -> dict[str, Any]:
    """nodes (one per lot or captured identifier, by level), edges, and the flat list (one row per node).

    A lot's operations, inspections and NCRs come as lists (the portable path) or as the JSON texts its trace
    row keeps (PostgreSQL): those are parsed, or with `as_sent` (the JSON route, which serialises the answer at
    once) wrapped as orjson fragments that go into the answer's bytes as they are."""
    depth = _depths(raw["starts"], raw["edges"])
    items, suppliers = raw["items"], raw["suppliers"]
    ext_events = _ext_events(raw)
    label: dict[int, str] = {}
    keyed: list[tuple[int, str, dict[str, Any], dict[str, Any]]] = []
    lot_uri = _lot_uris()
    consumed, shipped = LotStatus.consumed, LotStatus.shipped
    prefixes: dict[str, str] = {}

    def unit_prefix(gtin: str) -> str:  # a GTIN's unit Digital Link prefix, worked out once per trace
        p = prefixes.get(gtin)
        if p is None:
            p = prefixes[gtin] = f"{resolver}/01/{gtin}/21/"
        return p
    # forward: each lot as the answer's summary reads it (_forward_answer), in the nodes' order
    summarise = not up
    hists = raw["hists"] if full else None
    fragment, loads = orjson.Fragment, orjson.loads
    for (lot_id, number, kind, status, qty, remaining, uom, slot, heat, cert, receipt, loc, concession, item_id,
            supplier_id, shipments, blocks) in raw["lots"]:
        label[lot_id] = number
        level = depth.get(lot_id, 0)
        item, gtin = items[item_id]
        supplier = suppliers.get(supplier_id) if supplier_id is not None else None
        if shipments is None:
            shipments = []
            customers = names = ""
            where = "consumed" if status == consumed else _where(status, remaining, loc, shipments)
        elif len(shipments) == 1:  # the usual case, without sets and sorts
            s0 = shipments[0]
            customers, names = s0["customer"], s0["shipment"]
            where = f"shipped to {customers} ({names})" if status == shipped or remaining <= 1e-9 \
                else _where(status, remaining, loc, shipments)
        else:
            customers = ", ".join(sorted({s["customer"] for s in shipments}))
            names = ", ".join([s["shipment"] for s in shipments])
            where = _where(status, remaining, loc, shipments)
        # units: counted per lot, one entry per serial block (never one per unit)
        if blocks is None:
            n_units = 0
            u: dict[str, Any] = {"count": 0, "blocks": []}
        else:
            n_units = 0
            ublocks = []
            upfx = unit_prefix(gtin) if gtin else None
            for blk in blocks:
                if len(blk) == 1:  # the units printed from offline pools and uploaded with this lot (0026)
                    n_units += blk[0]
                    ublocks.append({"count": blk[0], "from_pools": True})
                    continue
                if len(blk) == 3:  # a serial block of the lot's code rule: its first and last code as printed
                    f, la, count = blk
                    n_units += count
                    # the usual GS1 serial of digits and letters inline; anything else through _serial_block
                    if f is not None and la is not None and f[18:22] == "/21/" and la[18:22] == "/21/" \
                            and f.startswith("/01/") and (a := f[22:]).isalnum() and a.isascii() \
                            and (b := la[22:]).isalnum() and b.isascii():
                        ublocks.append({"first": a, "last": b, "count": count, "first_uri": resolver + f,
                                        "last_uri": resolver + la})
                    else:
                        ublocks.append(_serial_block(resolver, f, la, count))
                    continue
                first_seq, count = blk
                # legacy serials (code_block) are SERIAL_WIDTH (12) digits wide
                first, last = f"{first_seq:012d}", f"{first_seq + count - 1:012d}"
                n_units += count
                ublocks.append({"first": first, "last": last, "count": count, "first_uri": upfx + first,
                                "last_uri": upfx + last} if upfx else {"first": first, "last": last, "count": count})
            u = {"count": n_units, "blocks": ublocks}
        node = {"node": "lot", "id": number, "uri": lot_uri(number, gtin), "kind": kind, "item": item, "gtin": gtin,
                "status": status, "quantity": qty, "quantity_remaining": remaining, "uom": uom, "supplier": supplier,
                "supplier_lot": slot, "heat_number": heat, "certificate_ref": cert, "receipt": receipt,
                "location": loc, "concession": concession, "shipments": shipments, "units": u, "where": where}
        if hists is not None:
            h = hists.get(lot_id)
            if h is None:
                node["operations"], node["inspections"], node["ncrs"] = [], [], []
                n_ops = n_ins = 0
                ncr_names = ""
            elif len(h) == 6:  # the trace row's parts: counts, NCR numbers, three JSON texts
                n_ops, n_ins, ncr_names, ops, ins, ncrs = h
                if as_sent:
                    # a lot's NCRs, when it has any, are read: _sign_decisions adds their decisions' signatures
                    node["operations"], node["inspections"], node["ncrs"] = fragment(ops), fragment(ins), \
                        loads(ncrs) if ncr_names else fragment(ncrs)
                else:
                    node["operations"], node["inspections"], node["ncrs"] = loads(ops), loads(ins), loads(ncrs)
            else:
                ops, ins, ncrs = h
                node["operations"] = ops
                node["inspections"] = ins
                node["ncrs"] = ncrs
                n_ops, n_ins = len(ops), len(ins)
                ncr_names = ", ".join([x["number"] for x in ncrs]) if ncrs else ""
        else:
            n_ops = n_ins = 0
            ncr_names = ""
        node["level"] = level
        keyed.append((level, number, node, (number, item, uom, status, remaining, n_units, shipments) if summarise
                      else None, {
            "level": level, "node": "lot", "id": number, "kind": kind, "item": item, "status": status, "where": where,
            "quantity": qty, "uom": uom, "units": u["count"], "supplier": supplier, "supplier_lot": slot,
            "heat_number": heat, "certificate_ref": cert, "concession": concession, "customers": customers,
            "shipments": names, "operations": n_ops, "inspections": n_ins, "ncrs": ncr_names}))
    for nid, uri, kind in raw["ext"]:
        label[nid] = uri
        level = depth.get(nid, 0)
        node, row = _ext_rows(uri, kind, level, ext_events.get(uri, []))
        keyed.append((level, uri, node, None, row))
    keyed.sort(key=_BY_LEVEL)
    # walk rows are (reached, from): backward reaches parents, forward children
    if up:
        edges = [{"from": label[r], "to": label[f], "via": via} for r, f, via in raw["edges"]]
    else:
        edges = [{"from": label[f], "to": label[r], "via": via} for r, f, via in raw["edges"]]
    g = {"nodes": [k[2] for k in keyed], "edges": edges, "flat": [k[4] for k in keyed]}
    if summarise:
        g["lots"] = [k[3] for k in keyed if k[3] is not None]
    return g


async def _backward_graph(session: AsyncSession, code: str, *, resolver: str, reader: Any = None,
                          as_sent: bool = False) -> tuple[dict[str, Any], str | None]:
    # the common starts resolve inside the walk's statement: a hub unit serial, or a lot number
    c = code.strip()
    c = canonical(c) if c.startswith("urn:epc:") else c
    m = _DL_SERIAL.search(c)
    raw: dict[str, Any] | None = None
    unit: str | None = None
    if m:  # a unit code the hub issued from a serial block: its block found inside the walk's statement
        from domain import codes  # (much of the code service: only when needed)

        hit = await codes.unit_sequence(session, m.group(1), unquote(m.group(2)))
        if hit is not None:
            raw = await _fetch(session, "unit_block", {"ns": hit[0], "seq": hit[1], "rule": hit[2]}, up=True,
                               full=True, reader=reader)
            unit = c if raw["lots"] else None
    if (raw is None or not raw["lots"]) and m and unquote(m.group(2)).isdigit():  # a legacy serial (code_block)
        raw = await _fetch(session, "unit", {"gtin": m.group(1), "seq": int(unquote(m.group(2)))}, up=True, full=True,
                           reader=reader)
        unit = c
    elif not m:
        lm = _DL_LOT.search(c)
        raw = await _fetch(session, "number", {"number": unquote(lm.group(2)) if lm else c}, up=True, full=True,
                           reader=reader)
    if raw is None or not raw["lots"]:
        lot_id, unit = await resolve(session, code)
        raw = await _fetch(session, "lot", {"lot": lot_id}, up=True, full=True, reader=reader)
    g = _assemble(raw, up=True, resolver=resolver, full=True, as_sent=as_sent)
    await _sign_decisions(session, g["nodes"])
    return g, unit


async def _sign_decisions(session: AsyncSession, nodes: list[dict[str, Any]]) -> None:
    """Each NCR decision in the answer with its electronic signatures: signer, role, meaning, signed_at, and
    `valid`, worked out now as GET /api/ncrs/{n} does (domain.signatures.is_valid over the decision as it is
    stored now), so a record changed after signing shows its signature invalid. One query for every decision of
    the NCRs in the answer; the trace rows keep no signatures (a signature's validity is about the record now)."""
    ncrs = [x for n in nodes if n["node"] == "lot" and isinstance(n.get("ncrs"), list) for x in n["ncrs"]]
    if not ncrs:
        return
    # domain.quality imports much of the domain: only when needed
    from domain.models_ncr import NcrReview
    from domain.quality import decision_content_now, ncr_signed_fields

    d, s = NcrDecisionRecord, Signature
    rows = (await session.execute(
        select(Ncr.number.label("ncr"), d.decision_id, d.action, d.reviewer, d.role, d.reason, d.rework_operation,
               d.decided_at, s.id.label("sig_id"), s.signer, s.signer_name, s.role.label("sig_role"), s.meaning,
               s.signed_at, s.content_hash, s.content, Lot.number.label("lot"), NcrReview.severity,
               NcrReview.defect_codes, NcrReview.quantity_affected, NcrReview.id.label("review_id"))
        .join(d, d.ncr_id == Ncr.id)
        .join(Lot, Lot.id == Ncr.lot_id)
        .outerjoin(NcrReview, NcrReview.ncr_id == Ncr.id)
        .outerjoin(s, (s.entity == "ncr_decision") & (s.entity_key == d.decision_id))
        .where(Ncr.number.in_({x["number"] for x in ncrs})).order_by(Ncr.id, d.id, s.id))).all()
    # per NCR, its decisions in the order the trace lists them (by id), each with its signatures
    recorded: dict[str, dict[str, tuple[datetime, list[dict[str, Any]]]]] = defaultdict(dict)
    for r in rows:
        dec = recorded[r.ncr].get(r.decision_id)
        if dec is None:
            dec = recorded[r.ncr][r.decision_id] = (r.decided_at, [])
        if r.sig_id is not None:
            dec[1].append({"signer": r.signer, "signer_name": r.signer_name, "role": r.sig_role,
                           "meaning": r.meaning, "signed_at": _iso(r.signed_at),
                           # checked against the decision and its NCR now, in the form it was signed in
                           "valid": is_valid(r, decision_content_now(
                               r.ncr, r, r.content, ncr_signed_fields(r.lot, r if r.review_id is not None else None)))})
    for x in ncrs:
        decisions, known = x["decisions"], list(recorded.get(x["number"], {}).values())
        if len(known) != len(decisions):
            # the trace row and the decisions were read at different moments: match them by decision time
            at = {_utc(t): sigs for t, sigs in known}
            for dec in decisions:
                dec["signatures"] = at.get(_utc(dec["decided_at"]), [])
            continue
        for dec, (_, sigs) in zip(decisions, known, strict=True):
            dec["signatures"] = sigs


def _utc(t: Any) -> datetime | None:
    t = datetime.fromisoformat(t) if isinstance(t, str) else t
    return None if t is None else t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


async def backward(session: AsyncSession, code: str, *, resolver: str, reader: Any = None,
                   as_sent: bool = False) -> dict[str, Any]:
    """Where did it come from: the whole history of a unit, batch code or lot.

    `reader` (a core.db.FastReader, PostgreSQL): the trace's one statement runs on one of its autocommit
    connections instead of the session's transaction (the API routes pass the app's `trace_reader`).
    `as_sent`: each lot's operations, inspections and NCRs may be orjson fragments, for an answer serialised
    with orjson at once (backward_json); otherwise lists."""
    g, unit = await _backward_graph(session, code, resolver=resolver, reader=reader, as_sent=as_sent)
    materials = [n for n in g["nodes"] if n.get("kind") == "material"]
    external = [n for n in g["nodes"] if n["node"] == "external"]
    return {
        "direction": "backward", "query": code, "unit": unit, "lot": g["nodes"][0]["id"], **g,
        "suppliers": sorted({(n["supplier"], n["supplier_lot"], n["heat_number"] or "") for n in materials}),
        "certificates": sorted({n["certificate_ref"] for n in materials if n["certificate_ref"]}),
        "supplier_lots_upstream": [n["id"] for n in external],
    }


async def forward(session: AsyncSession, lot_number: str | None = None, *, resolver: str, kind: str = "lot",
                  value: str | None = None, since: datetime | None = None,
                  until: datetime | None = None, reader: Any = None) -> dict[str, Any]:
    """Where did it go: every lot made from the start, its units, and where each is now (`reader`: as for
    backward)."""
    value = value if value is not None else lot_number
    if not value:
        raise InvalidInput("give what to trace forward from", field="value")
    _check_forward(kind, since, until)
    raw = await _fetch(session, f"f_{kind}", _forward_params(kind, value, since, until), up=False, full=False,
                       reader=reader)
    if not raw["starts"]:
        raise _no_start(kind, value, since)
    g = _assemble(raw, up=False, resolver=resolver, full=False)
    return _forward_answer(kind, value, since, until, g, g.pop("lots"))


def _forward_answer(kind: str, value: str, since: datetime | None, until: datetime | None, g: dict[str, Any],
                    lots: Any) -> dict[str, Any]:
    """The forward answer around its graph `g`: customers, shipments by customer and the summary, from the lots
    in the nodes' order as (number, item, uom, status, remaining, units, shipments)."""
    customers: dict[str, dict[str, Any]] = {}
    n_lots = units = 0
    in_stock, on_hold, shipped = [], [], []
    stock, held = (LotStatus.released, LotStatus.quarantine), LotStatus.on_hold
    for number, item, uom, status, remaining, n_units, shipments in lots:
        n_lots += 1
        units += n_units
        if status in stock and remaining > 1e-9:
            in_stock.append(number)
        elif status == held:
            on_hold.append(number)
        if not shipments:
            continue
        shipped.append(number)
        for s in shipments:
            c = customers.get(s["customer"])
            if c is None:
                c = customers[s["customer"]] = {"customer": s["customer"], "quantity": 0.0, "shipments": {}}
            c["quantity"] += s["quantity"]
            sh = c["shipments"].get(s["shipment"])
            if sh is None:
                sh = c["shipments"][s["shipment"]] = {"shipment": s["shipment"], "sales_order": s["sales_order"],
                                                      "shipped_at": s["shipped_at"], "lots": []}
            sh["lots"].append({"lot": number, "item": item, "quantity": s["quantity"], "uom": uom})
    summary = {"lots": n_lots, "units": units, "in_stock": in_stock, "on_hold": on_hold, "shipped": shipped}
    return {
        "direction": "forward", "query": {"kind": kind, "value": value, "since": _iso(since), "until": _iso(until)},
        "lot": value if kind == "lot" else None, **g,
        "customers": sorted(customers), "by_customer": [
            {**c, "shipments": list(c["shipments"].values())} for _, c in sorted(customers.items())],
        "summary": summary,
    }


# --- the answer as JSON text (the JSON routes) -----------------------------------------------------------
#
# The routes send these bytes as they are (no second serialisation through the response class). Building the
# whole answer in PostgreSQL instead (a trace_json() that concatenated per-lot JSON parts kept by the trace row's
# triggers) was measured slower than assembling in Python and serialising with orjson (backward ~3.0 against
# ~2.6 ms, forward from a heat ~28 against ~13 ms, warm, 1 M lots): see README "Trace benchmark".


def to_json(result: dict[str, Any]) -> bytes:
    """A trace's answer as JSON (UTF-8), as the JSON routes send it (orjson: about 10x faster than the standard
    library's json on a forward trace of 1,000 lots; the values are the same)."""
    return orjson.dumps(result)


async def backward_json(session: AsyncSession, code: str, *, resolver: str, reader: Any = None) -> bytes:
    """backward()'s answer as JSON (GET /api/trace/backward sends it with the unit's packing added:
    trace_containers.backward_answer)."""
    return to_json(await backward(session, code, resolver=resolver, reader=reader, as_sent=True))


async def forward_json(session: AsyncSession, *, resolver: str, kind: str = "lot", value: str | None = None,
                       since: datetime | None = None, until: datetime | None = None, reader: Any = None) -> bytes:
    """forward()'s answer as JSON (GET /api/trace/forward sends it with the cases and pallets added:
    trace_containers.forward_answer)."""
    return to_json(await forward(session, resolver=resolver, kind=kind, value=value, since=since, until=until,
                                 reader=reader))


async def lot_count(session: AsyncSession) -> int:
    return int((await session.execute(select(func.count()).select_from(Lot))).scalar_one())


# --- renderings ------------------------------------------------------------------------------------------

FLAT_COLUMNS = ["level", "node", "id", "kind", "item", "status", "where", "quantity", "uom", "units", "supplier",
                "supplier_lot", "heat_number", "certificate_ref", "concession", "customers", "shipments", "operations",
                "inspections", "ncrs"]


# after FLAT_COLUMNS (unchanged, in their order), the columns of the container rows (node "container"); empty
# on the genealogy's rows
CONTAINER_COLUMNS = ["parent", "contains", "lots", "held_by", "packed_at", "pack_event", "unpacked_at",
                     "unpack_event"]


def containers(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The cases and pallets an answer names, outermost last for a unit's chain: a backward trace's `packing`
    (the unit's chain, or the boxes holding the lot's units), a forward trace's `containers` (the route adds
    them), and a backward trace from a case or pallet's `container` with the boxes inside it."""
    p = result.get("packing") or {}
    out = list(p.get("chain") or p.get("containers") or [])
    out += result.get("containers") or []
    box = result.get("container")
    if box:
        out.append({**{k: v for k, v in box.items() if k != "tree"}, "units": box.get("unit_count")})
        stack = [(box["code"], ch) for ch in (box.get("tree") or {}).get("children", [])]
        while stack:  # the cases on the pallet, as the container tree has them (no units)
            parent, node = stack.pop(0)
            if node.get("level") == "unit":
                continue
            out.append({"code": node["code"], "level": node["level"], "parent": parent,
                        "packed_at": node.get("packed_at")})
            stack += [(node["code"], ch) for ch in node.get("children", [])]
    return out


def _container_row(b: dict[str, Any]) -> dict[str, Any]:
    return {"level": "", "node": "container", "id": b["code"], "kind": b["level"], "status": b.get("status"),
            "where": b.get("where"), "units": b.get("units"), "customers": b.get("customer"),
            "shipments": b.get("shipment"), "parent": b.get("parent"), "contains": b.get("contains"),
            "lots": " ".join(b.get("lots") or ()), "held_by": " ".join(b.get("held_by") or ()),
            "packed_at": b.get("packed_at"), "pack_event": b.get("pack_event"), "unpacked_at": b.get("unpacked_at"),
            "unpack_event": b.get("unpack_event")}


def to_csv(result: dict[str, Any]) -> str:
    """The flat list, one row per lot or captured identifier, then one row per case or pallet (node
    "container") the answer names, with the container columns after the genealogy's."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FLAT_COLUMNS + CONTAINER_COLUMNS, extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    for row in result["flat"]:
        w.writerow(row)
    for b in containers(result):
        w.writerow(_container_row(b))
    return buf.getvalue()


def _pdf_text(s: Any) -> str:
    # the core PDF fonts are Latin-1: replace what they cannot show rather than fail the report
    return str("" if s is None else s).encode("latin-1", "replace").decode("latin-1")


def _pdf_signature(sig: dict[str, Any]) -> str:
    state = "valid" if sig["valid"] else "INVALID: the record changed after it was signed"
    return f" [signed {sig['meaning']} by {sig['signer']} at {sig['signed_at']}, {state}]"


def to_pdf(result: dict[str, Any], *, title: str | None = None, compress: bool = True) -> bytes:
    """A trace report a quality engineer can send: summary, genealogy table, and per-lot history."""
    from fpdf import FPDF

    pdf = FPDF(orientation="L", format="A4")
    pdf.set_compression(compress)
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    direction = result["direction"]
    q = result["query"]
    head = title or (f"Backward trace of {q}" if direction == "backward"
                     else f"Forward trace from {q['kind'].replace('_', ' ')} {q['value']}")
    pdf.cell(0, 9, _pdf_text(head), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    from domain.models import utcnow

    pdf.cell(0, 5, _pdf_text(f"TraceHub trace report, generated {utcnow().strftime('%Y-%m-%d %H:%M UTC')}"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, "Summary", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 9)
    lines = []
    if direction == "backward":
        lines.append(f"Lot {result['lot']}" + (f", unit {result['unit']}" if result.get("unit") else ""))
        for sup, slot, heat in result["suppliers"]:
            lines.append(f"Supplier {sup}, supplier lot {slot}" + (f", heat {heat}" if heat else ""))
        if result["certificates"]:
            lines.append("Certificates: " + ", ".join(result["certificates"]))
    else:
        s = result["summary"]
        lines.append(f"{s['lots']} lots, {s['units']} units reached; in stock: {len(s['in_stock'])}, "
                     f"on hold: {len(s['on_hold'])}, shipped: {len(s['shipped'])}")
        for c in result["by_customer"]:
            lines.append(f"Customer {c['customer']}: {c['quantity']:g} shipped on "
                         + ", ".join(sh["shipment"] for sh in c["shipments"]))
    for row in result["flat"]:
        if row.get("concession"):
            lines.append(f"Lot {row['id']} ({row['item']}) released under concession: {row['concession']}")
    for line in lines:
        pdf.multi_cell(0, 5, _pdf_text(line), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, "Genealogy", new_x="LMARGIN", new_y="NEXT")
    cols = [("level", 12), ("id", 48), ("item", 32), ("status", 20), ("where", 62), ("quantity", 18),
            ("supplier", 28), ("heat_number", 24), ("certificate_ref", 30)]
    pdf.set_font("Helvetica", "B", 8)
    for name, w in cols:
        pdf.cell(w, 6, name.replace("_", " "), border=1)
    pdf.ln()
    pdf.set_font("Helvetica", "", 7)
    for row in result["flat"]:
        for name, w in cols:
            text = _pdf_text(row.get(name))
            while text and pdf.get_string_width(text) > w - 1.5:
                text = text[:-1]
            pdf.cell(w, 5, text, border=1)
        pdf.ln()
    _pdf_packing(pdf, result)
    if direction == "backward":
        for n in result["nodes"]:
            if n["node"] != "lot" or not (n.get("operations") or n.get("inspections") or n.get("ncrs")
                                          or n.get("concession")):
                continue
            pdf.ln(2)
            pdf.set_font("Helvetica", "B", 10)
            pdf.cell(0, 6, _pdf_text(f"Lot {n['id']} ({n['item']})"), new_x="LMARGIN", new_y="NEXT")
            pdf.set_font("Helvetica", "", 8)
            if n.get("concession"):
                pdf.multi_cell(0, 4, _pdf_text(f"Released under concession: {n['concession']}"),
                               new_x="LMARGIN", new_y="NEXT")
            for op in n["operations"]:
                params = ", ".join(f"{k}={v}" for k, v in (op["parameters"] or {}).items())
                pdf.multi_cell(0, 4, _pdf_text(
                    f"Operation {op['seq']} {op['name']}{' (rework)' if op['rework'] else ''}: equipment "
                    f"{op['equipment']}, operator {op['operator']}, {op['started_at']} - {op['ended_at']}; {params}"),
                    new_x="LMARGIN", new_y="NEXT")
            for ins in n["inspections"]:
                chars = "; ".join(f"{c['name']} {c['values']} {c['unit']} [{c['lower']}, {c['upper']}] {c['verdict']}"
                                  for c in ins["characteristics"])
                pdf.multi_cell(0, 4, _pdf_text(f"Inspection {ins['number']} ({ins['kind']}) {ins['status']} by "
                                               f"{ins['inspector']}: {chars}"), new_x="LMARGIN", new_y="NEXT")
            for ncr in n["ncrs"]:
                decs = "; ".join(f"{d['action']} by {d['reviewer']} ({d['role']}): {d['reason']}"
                                 + "".join(_pdf_signature(sig) for sig in d.get("signatures") or ())
                                 for d in ncr["decisions"])
                pdf.multi_cell(0, 4, _pdf_text(f"{ncr['number']} {ncr['state']}: {ncr['description']}. {decs}"),
                               new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def describe_container(b: dict[str, Any]) -> str:
    """One case or pallet of a report: its code (and SSCC), what it holds, where it is, its packing."""
    bits = [f"{b['level'].capitalize()} {b['code']}" + (f" (SSCC {b['sscc']})" if b.get("sscc") else "")]
    if b.get("contains"):
        bits.append(f"holds {b['contains']}")
    elif b.get("units") is not None:
        bits.append(f"{b['units']} unit(s)" + (f" of lot(s) {', '.join(b['lots'])}" if b.get("lots") else ""))
    if b.get("where"):
        bits.append(b["where"] + (f", sales order {b['sales_order']}" if b.get("sales_order") else "")
                    + (f", shipped {b['shipped_at']}" if b.get("shipped_at") else ""))
    elif b.get("parent"):
        bits.append(f"in {b['parent']}")
    if b.get("packed_at"):
        bits.append(f"packed {b['packed_at']}" + (f" (event {b['pack_event']})" if b.get("pack_event") else ""))
    if b.get("unpacked_at"):
        bits.append(f"unpacked {b['unpacked_at']}"
                    + (f" (event {b['unpack_event']})" if b.get("unpack_event") else ""))
    return "; ".join(bits)


def _pdf_packing(pdf: Any, result: dict[str, Any]) -> None:
    """The report's "Packing" section: a unit's case and pallet with their pack events, or the cases and pallets
    holding the traced lots' units, each with where it is now (on hold, shipped to which customer)."""
    boxes = containers(result)
    p = result.get("packing") or {}
    if not boxes and not p:
        return
    pdf.ln(2)
    pdf.set_font("Helvetica", "B", 11)
    pdf.cell(0, 6, "Packing", new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 8)
    if p.get("of") == "unit":
        if not p["chain"]:
            head = f"Unit {p['unit']} has never been packed."
        elif p["packed"]:
            head = f"Unit {p['unit']} is packed now" + (
                f"; it shipped to {p['customer']} on {p['shipment']}." if p.get("shipment") else ".")
        else:
            head = f"Unit {p['unit']} is not packed now; when it was last packed:"
    elif p.get("of") == "lot":
        head = (f"Cases and pallets holding units of lot {p['lot']} now:" if boxes
                else f"No case or pallet holds units of lot {p['lot']} now.")
    elif result.get("container"):
        c = result["container"]
        head = f"{c['level'].capitalize()} {c['code']} and the cases in it ({c.get('unit_count', 0)} unit(s)):"
    else:
        head = "Cases and pallets holding units of the lots above now:"
    pdf.multi_cell(0, 4, _pdf_text(head), new_x="LMARGIN", new_y="NEXT")
    for b in boxes:
        pdf.multi_cell(0, 4, _pdf_text(describe_container(b)), new_x="LMARGIN", new_y="NEXT")
