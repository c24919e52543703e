"""Indexes kept beside the event log, in the same transaction as the events they index.

- epcis_event_epc / epcis_event_field: the identifiers, business transactions, sources, destinations and
  extension values of each event, canonical, for the SimpleEventQuery parameters.
- trace_node / trace_edge: the lineage index. A TransformationEvent links each input to each output; an
  AggregationEvent ADD links each child to its parent; a class known from a captured (supplier) event whose
  lot (AI 10) is the supplier lot of a received hub lot links to that lot, in whichever order they arrive.
  A hub lot's node id is its lot id, any other identifier's a negative one (models_trace.TraceNode).
  Walks over it are one recursive query (domain/trace.py).

Everything works on batches of events, so a captured document of thousands of events costs a handful of
statements, and a single hub event the same code path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import ARRAY, JSON, BigInteger, any_, bindparam, func, literal, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import conflict_insert
from domain.epcis_ids import GS1_DL, canonical, lot_of, vocab_term
from domain.models import EpcisEvent, Item, Lot
from domain.models_trace import (
    TRACE_NODE_EXT_SEQ,
    EpcisErrorDeclaration,
    EpcisEventEpc,
    EpcisEventField,
    TraceEdge,
    TraceNode,
)

EPC_ROLES = {"epcList": "epc", "childEPCs": "child", "inputEPCList": "input", "outputEPCList": "output"}
QTY_ROLES = {"quantityList": "quantity", "childQuantityList": "child_quantity",
             "inputQuantityList": "input_quantity", "outputQuantityList": "output_quantity"}
CORE_KEYS = {
    "type", "eventID", "eventTime", "eventTimeZoneOffset", "recordTime", "errorDeclaration", "certificationInfo",
    "action", "bizStep", "disposition", "persistentDisposition", "readPoint", "bizLocation", "bizTransactionList",
    "sourceList", "destinationList", "sensorElementList", "ilmd", "parentID", "transformationID", "@context",
    *EPC_ROLES, *QTY_ROLES,
}
_FIELD_MAX = 500
_GTIN = re.compile(r"/01/(\d{14})/10/")
# a heat number in any namespace (`acme:heatNumber`, `.../heat_number`): indexed under one name, `heat`
_HEAT = re.compile(r"[:/#]heat_?number$", re.IGNORECASE)


def expand_key(key: str, ctx: dict[str, str]) -> str:
    """A CURIE extension key as its full IRI (`acme:lot` -> `https://ns.acme.example/epcis/lot`)."""
    if ":" in key and not key.startswith(("http://", "https://", "urn:")):
        prefix, local = key.split(":", 1)
        if prefix in ctx:
            return ctx[prefix] + local
    return key


def _scalar(v: Any) -> str | None:
    if v is None or isinstance(v, (dict, list)):
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)[:_FIELD_MAX]


def lot_node_uri(lot: Lot) -> str:
    """The lineage key of a hub lot: its class identifier, canonical (independent of the resolver domain)."""
    if lot.item.gtin:
        return canonical(f"{GS1_DL}/01/{lot.item.gtin}/10/{lot.number}")
    return f"urn:tracehub:lot:{lot.number}"


def _hub_lot_number(uri: str) -> str | None:
    if uri.startswith("urn:tracehub:lot:"):
        return uri[len("urn:tracehub:lot:"):]
    return lot_of(uri)


@dataclass
class Indexed:
    """What one event contributes to the indexes."""

    epcs: list[tuple[str, str]] = field(default_factory=list)  # (role, canonical uri)
    fields: list[tuple[str, str | None]] = field(default_factory=list)  # (name, value)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # (parent uri, child uri, via)
    classes: set[str] = field(default_factory=set)  # uris that are classes (lots), the rest instances


def analyse(doc: dict[str, Any], ctx: dict[str, str]) -> Indexed:
    """The index rows of one event (pure: no database)."""
    out = Indexed()
    for key, role in EPC_ROLES.items():
        for epc in doc.get(key) or []:
            out.epcs.append((role, canonical(epc)))
    if doc.get("parentID"):
        out.epcs.append(("parent", canonical(doc["parentID"])))
    for key, role in QTY_ROLES.items():
        for q in doc.get(key) or []:
            c = canonical(q["epcClass"])
            out.epcs.append((role, c))
            out.classes.add(c)
            if q.get("quantity") is not None:  # for EQ/GT/GE/LT/LE_quantity[_{uom}]
                out.fields.append((f"qty:{q.get('uom') or ''}", repr(float(q["quantity"]))))
    for bt in doc.get("bizTransactionList") or []:
        t = vocab_term("bizTransactionType", bt["type"]) if bt.get("type") else ""
        out.fields.append((f"bt:{t}", bt["bizTransaction"][:_FIELD_MAX]))
    for key, prefix, item in (("sourceList", "src", "source"), ("destinationList", "dst", "destination")):
        for s in doc.get(key) or []:
            out.fields.append((f"{prefix}:{vocab_term('sourceDestType', s['type'])}", s[item][:_FIELD_MAX]))
    pd = doc.get("persistentDisposition") or {}
    for which in ("set", "unset"):
        for d in pd.get(which, []):
            out.fields.append((f"pd_{which}", vocab_term("disposition", d)))
    if doc.get("transformationID"):
        out.fields.append(("tid", doc["transformationID"][:_FIELD_MAX]))
    for k, v in doc.items():
        if k not in CORE_KEYS:
            out.fields.append((f"ext:{expand_key(k, ctx)}", _scalar(v)))
            if _HEAT.search(k) and _scalar(v):
                out.fields.append(("heat", _scalar(v)))
    for k, v in (doc.get("ilmd") or {}).items():
        out.fields.append((f"ilmd:{expand_key(k, ctx)}", _scalar(v)))
        if _HEAT.search(k) and _scalar(v):
            out.fields.append(("heat", _scalar(v)))
    # lineage
    etype = doc.get("type")
    if etype == "TransformationEvent":
        ins = [canonical(x) for x in doc.get("inputEPCList") or []] + \
              [canonical(q["epcClass"]) for q in doc.get("inputQuantityList") or []]
        outs = [canonical(x) for x in doc.get("outputEPCList") or []] + \
               [canonical(q["epcClass"]) for q in doc.get("outputQuantityList") or []]
        out.edges += [(i, o, "transformation") for i in ins for o in outs if i != o]
    elif etype == "AggregationEvent" and doc.get("action") == "ADD" and doc.get("parentID"):
        parent = canonical(doc["parentID"])
        kids = [canonical(x) for x in doc.get("childEPCs") or []] + \
               [canonical(q["epcClass"]) for q in doc.get("childQuantityList") or []]
        out.edges += [(k, parent, "packing") for k in kids if k != parent]
    return out


def _pg(session: AsyncSession) -> bool:
    return session.bind.dialect.name == "postgresql"


def batches(session: AsyncSession, values: list[Any], size: int = 500) -> list[list[Any]]:
    """`values` in the batches one statement takes with `among`: all at once on PostgreSQL (one array
    parameter), `size` at a time elsewhere (SQLite's limit on bound parameters)."""
    if not values:
        return []
    if _pg(session):
        return [values]
    return [values[i:i + size] for i in range(0, len(values), size)]


def among(session: AsyncSession, col: Any, values: list[Any]) -> Any:
    """`col IN (values)`; on PostgreSQL as `= ANY(array)`, one parameter however many values (a captured
    document looks up hundreds of identifiers at once)."""
    if _pg(session):
        return col == any_(bindparam(None, values, type_=ARRAY(col.type)))
    return col.in_(values)


async def _external_ids(session: AsyncSession, n: int) -> list[int]:
    """`n` fresh ids for nodes that are not hub lots: negative, so they never meet a lot id."""
    if n <= 0:
        return []
    if _pg(session):
        return list((await session.execute(
            text(f"SELECT -nextval('{TRACE_NODE_EXT_SEQ.name}') FROM generate_series(1, :n)"), {"n": n})).scalars())
    # SQLite: writers are serialised (BEGIN IMMEDIATE), so counting down from the smallest id is safe
    low = min(0, (await session.execute(select(func.min(TraceNode.id)))).scalar() or 0)
    return [low - k for k in range(1, n + 1)]


async def _rekey(session: AsyncSession, old: int, lot_id: int) -> None:
    """An external node found to be a hub lot becomes the lot's node: its id and its edges move to the lot id."""
    e = TraceEdge.__table__
    upsert = conflict_insert(session)
    for mine, other in ((e.c.parent_id, e.c.child_id), (e.c.child_id, e.c.parent_id)):
        moved = select(literal(lot_id, BigInteger).label(mine.name), other, e.c.event_pk, e.c.via) \
            .where(mine == old, other != lot_id)
        await session.execute(upsert(e).from_select([mine.name, other.name, "event_pk", "via"], moved)
                              .on_conflict_do_nothing())
        await session.execute(e.delete().where(mine == old))
    await session.execute(update(TraceNode).where(TraceNode.id == old)
                          .values(id=lot_id, lot_id=lot_id, kind="lot", lot_part=None))


async def ensure_nodes(session: AsyncSession, uris: Iterable[str], *, classes: set[str],
                       lots: dict[str, int] | None = None) -> dict[str, int]:
    """Node ids for the uris, creating missing nodes; hub lots are recognised and linked to their lot.

    A hub lot's node id is its lot id; any other identifier gets a negative id (see TraceNode)."""
    wanted = set(uris)
    if not wanted:
        return {}
    lots = dict(lots or {})
    found: dict[str, int] = {}
    missing_lot: list[str] = []
    wl = list(wanted)
    for batch in batches(session, wl):
        for nid, uri, lot_id in (await session.execute(
                select(TraceNode.id, TraceNode.uri, TraceNode.lot_id)
                .where(among(session, TraceNode.uri, batch)))).all():
            found[uri] = nid
            if lot_id is None and uri in lots:
                missing_lot.append(uri)
    if missing_lot:
        taken = set((await session.execute(
            select(TraceNode.id).where(TraceNode.id.in_([lots[u] for u in missing_lot])))).scalars())
        for uri in missing_lot:
            if lots[uri] not in taken:
                await _rekey(session, found[uri], lots[uri])
                found[uri] = lots[uri]
                taken.add(lots[uri])
    new = [u for u in wanted if u not in found]
    if not new:
        return found
    # a class the hub knows as its own lot gets the lot's id (only hub URNs and GTINs of hub items can be)
    candidates = {u: n for u in new if u not in lots and (n := _hub_lot_number(u))}
    gtins = {m.group(1) for u in candidates if (m := _GTIN.search(u))}
    ours = set((await session.execute(select(Item.gtin).where(Item.gtin.in_(gtins)))).scalars()) if gtins else set()
    candidates = {u: n for u, n in candidates.items()
                  if u.startswith("urn:tracehub:lot:") or ((m := _GTIN.search(u)) and m.group(1) in ours)}
    if candidates:
        rows = (await session.execute(
            select(Lot.id, Lot.number, Item.gtin).join(Item, Item.id == Lot.item_id)
            .where(Lot.number.in_(set(candidates.values()))))).all()
        by_number = {r.number: r for r in rows}
        for u, n in candidates.items():
            r = by_number.get(n)
            if r is not None and (u.startswith("urn:tracehub:lot:") or (r.gtin and f"/01/{r.gtin}/" in u)):
                lots[u] = r.id
    # a lot has one node: a second identifier of a lot that has its node already stays an external node
    taken = set((await session.execute(
        select(TraceNode.id).where(TraceNode.id.in_(list({lots[u] for u in new if u in lots}))))).scalars()) \
        if any(u in lots for u in new) else set()
    rows_in = []
    external = []
    for u in sorted(new):
        lot_id = lots.get(u)
        if lot_id is not None and lot_id not in taken:
            taken.add(lot_id)
            rows_in.append({"id": lot_id, "uri": u, "kind": "lot", "lot_id": lot_id, "lot_part": None})
        else:
            external.append(u)
    for u, nid in zip(external, await _external_ids(session, len(external)), strict=True):
        rows_in.append({"id": nid, "uri": u, "kind": "class" if u in classes or lot_of(u) else "instance",
                        "lot_id": None, "lot_part": lot_of(u) or None})
    await bulk_insert(session, TraceNode.__table__, rows_in)
    for r in rows_in:
        found[r["uri"]] = r["id"]
    # classes from a supplier whose lot is the supplier lot of a received hub lot: the receipt links them
    classes = [(r["id"], r["uri"], r["lot_part"]) for r in rows_in if r["lot_part"]]
    if classes:
        received = await _received_with(session, list({c[2] for c in classes}))
        await add_edges(session, [(nid, lot_id, "receipt", None) for nid, uri, part in classes
                                  for lot_id in _receipt_match(uri, received.get(part, []))])
    return found


async def _received_with(session: AsyncSession, supplier_lots: list[str]) -> dict[str, list[tuple[int, int | None,
                                                                                                  str | None]]]:
    """The received lots with these supplier lots: {supplier lot: [(lot id, supplier id, item GTIN)]}."""
    out: dict[str, list[tuple[int, int | None, str | None]]] = {}
    for lot_id, supplier_lot, supplier_id, gtin in (await session.execute(
            select(Lot.id, Lot.supplier_lot, Lot.supplier_id, Item.gtin).join(Item, Item.id == Lot.item_id)
            .where(Lot.kind == "material", among(session, Lot.supplier_lot, supplier_lots)))).all():
        out.setdefault(supplier_lot, []).append((lot_id, supplier_id, gtin))
    return out


def _receipt_match(uri: str, received: list[tuple[int, int | None, str | None]]) -> list[int]:
    """Which of the received lots with a captured class's lot number are that class: a supplier's lot number is
    only unique with its trade item (GTIN) or its supplier. The lots whose item has the class's GTIN; else those
    whose item has no GTIN, if they all come from one supplier; else none (a number several suppliers use, and
    nothing says whose this is: linking any would show another supplier's lots in a trace)."""
    m = _GTIN.search(uri)
    gtin = m.group(1) if m else None
    exact = [lot_id for lot_id, _, g in received if g and gtin and g.zfill(14) == gtin]
    if exact:
        return exact
    unknown = [(lot_id, supplier_id) for lot_id, supplier_id, g in received if not g]
    return [lot_id for lot_id, _ in unknown] if len({s for _, s in unknown}) == 1 else []


async def link_received_lot(session: AsyncSession, lot: Lot, node_id: int) -> None:
    """A received lot joins any supplier class captured earlier whose lot is its supplier lot and that is this
    lot's material (_receipt_match: its GTIN, or the one supplier using that lot number)."""
    if lot.kind != "material" or not lot.supplier_lot:
        return
    sources = (await session.execute(
        select(TraceNode.id, TraceNode.uri).where(TraceNode.lot_part == lot.supplier_lot,
                                                  TraceNode.lot_id.is_(None)))).all()
    if not sources:
        return
    received = (await _received_with(session, [lot.supplier_lot])).get(lot.supplier_lot, [])
    await add_edges(session, [(nid, node_id, "receipt", None) for nid, uri in sources
                              if lot.id in _receipt_match(uri, received)])


async def add_edges(session: AsyncSession, edges: list[tuple[int, int, str, int | None]]) -> None:
    """Insert lineage edges that are not there yet (parent id, child id, via, event pk)."""
    uniq = {(p, c): (v, e) for p, c, v, e in edges if p != c}
    if not uniq:
        return
    upsert = conflict_insert(session)
    rows = [{"parent_id": p, "child_id": c, "via": v, "event_pk": e} for (p, c), (v, e) in uniq.items()]
    await session.execute(upsert(TraceEdge.__table__).on_conflict_do_nothing(), rows)


async def bulk_insert(session: AsyncSession, table: Any, rows: list[dict[str, Any]], *,
                      encoded: tuple[str, ...] = ()) -> None:
    """Insert many rows in the session's transaction: COPY on PostgreSQL, executemany elsewhere.

    `encoded`: JSON columns whose values are their JSON text already (PostgreSQL)."""
    if not rows:
        return
    if session.bind.dialect.name != "postgresql":
        await session.execute(table.insert(), rows)
        return
    cols = list(rows[0])
    json_cols = [c for c in cols if isinstance(table.c[c].type, JSON) and c not in encoded]
    if json_cols:  # JSON columns go in as their text
        rows = [{**r, **{c: orjson.dumps(r[c]).decode() for c in json_cols if r[c] is not None}} for r in rows]
    values = itemgetter(*cols) if len(cols) > 1 else (lambda r: (r[cols[0]],))
    raw = (await (await session.connection()).get_raw_connection()).driver_connection
    async with raw.cursor() as cur, cur.copy(  # type: ignore[union-attr]
            f"COPY {table.name} ({', '.join(cols)}) FROM STDIN") as cp:
        write = cp.write_row
        for r in rows:
            await write(values(r))


@dataclass
class IndexRows:
    """What a batch of stored events adds to the indexes (index_rows), before it is written (write_index)."""

    epcs: list[dict[str, Any]] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    edges: list[tuple[str, str, str, int]] = field(default_factory=list)  # (parent uri, child uri, via, event pk)
    classes: set[str] = field(default_factory=set)


def index_rows(batch: list[tuple[int, dict[str, Any], dict[str, str]]]) -> IndexRows:
    """The index rows of a batch of events: (event pk, document, prefixes). Pure: no database."""
    out = IndexRows()
    epc_rows, field_rows, edges = out.epcs, out.fields, out.edges
    for pk, doc, ctx in batch:
        ix = analyse(doc, ctx)
        epc_rows += [{"event_pk": pk, "role": r, "uri": u[:300]} for r, u in ix.epcs]
        field_rows += [{"event_pk": pk, "name": n[:300], "value": v} for n, v in ix.fields]
        edges += [(p, c, via, pk) for p, c, via in ix.edges]
        out.classes |= ix.classes
    return out


async def write_index(session: AsyncSession, ix: IndexRows, *, lots: dict[str, int] | None = None) -> None:
    """Write the query indexes and the lineage of index_rows()."""
    await bulk_insert(session, EpcisEventEpc.__table__, ix.epcs)
    await bulk_insert(session, EpcisEventField.__table__, ix.fields)
    # lots named by any event become nodes too: a supplier's shipment of its lot meets our receipt of it
    node_uris = {u for p, c, _, _ in ix.edges for u in (p, c)} | set(lots or {}) | \
        {c for c in ix.classes if lot_of(c)}
    if node_uris:
        ids = await ensure_nodes(session, node_uris, classes=ix.classes, lots=lots)
        await add_edges(session, [(ids[p], ids[c], via, pk) for p, c, via, pk in ix.edges])


async def index_events(session: AsyncSession, batch: list[tuple[int, dict[str, Any], dict[str, str]]], *,
                       lots: dict[str, int] | None = None) -> None:
    """Write the query indexes and the lineage of a batch of stored events: (event pk, document, prefixes)."""
    await write_index(session, index_rows(batch), lots=lots)


# --- corrections ---------------------------------------------------------------------------------------------

DID_NOT_OCCUR = "did_not_occur"  # errorReason as stored (vocab_term: the CBV Web URI form becomes this)
INCORRECT_DATA = "incorrect_data"
_FROM_ROLES = {"transformation": ("input", "input_quantity"), "packing": ("child", "child_quantity")}
_TO_ROLES = {"transformation": ("output", "output_quantity"), "packing": ("parent",)}
_SUPPORT_PROBE = 100  # events looked at when asking whether a live event still makes a link or names a node


async def withdrawn(session: AsyncSession, event_ids: Iterable[str]) -> set[str]:
    """Those of the events that are out of the genealogy: declared `did_not_occur`, or declared
    `incorrect_data` with a corrective event (correctiveEventIDs) that is stored here."""
    ids = list(set(event_ids))
    if not ids or not await _any_retracting(session):
        return set()
    return await _withdrawn(session, ids)


async def _any_retracting(session: AsyncSession) -> bool:
    """Whether any declaration can take an event out of the genealogy: usually none at all, and one cheap look
    then saves probing for every captured event."""
    D = EpcisErrorDeclaration
    return (await session.execute(select(D.id).where(D.reason.in_((DID_NOT_OCCUR, INCORRECT_DATA))).limit(1))
            ).first() is not None


async def retracted_by_new_events(session: AsyncSession, event_ids: list[str]) -> set[str]:
    """What newly stored events take out of the genealogy: themselves, if declared `did_not_occur` (or
    `incorrect_data` with a corrective event here) before they arrived, and the events they correct."""
    if not event_ids or not await _any_retracting(session):
        return set()
    return await _withdrawn(session, list(set(event_ids))) | await _corrected_by(session, event_ids)


async def _withdrawn(session: AsyncSession, ids: list[str]) -> set[str]:
    D = EpcisErrorDeclaration
    out: set[str] = set()
    corrected: dict[str, list[str]] = {}
    for batch in batches(session, ids):
        for eid, reason, corrective in (await session.execute(select(D.event_id, D.reason, D.corrective_event_ids)
                                        .where(among(session, D.event_id, batch),
                                               D.reason.in_((DID_NOT_OCCUR, INCORRECT_DATA))))).all():
            if reason == DID_NOT_OCCUR:
                out.add(eid)
            elif corrective:
                corrected.setdefault(eid, []).extend(str(c) for c in corrective)
    wanted = sorted({c for cs in corrected.values() for c in cs})
    if wanted:
        stored = set((await session.execute(select(EpcisEvent.event_id).where(
            among(session, EpcisEvent.event_id, wanted)))).scalars())
        out |= {eid for eid, cs in corrected.items() if stored.intersection(cs)}
    return out


async def _withdrawn_pks(session: AsyncSession, pks: set[int]) -> set[int]:
    if not pks:
        return set()
    by_id = dict((await session.execute(select(EpcisEvent.event_id, EpcisEvent.id)
                                        .where(EpcisEvent.id.in_(sorted(pks))))).all())
    return {by_id[e] for e in await withdrawn(session, by_id)}


async def _corrected_by(session: AsyncSession, event_ids: list[str]) -> set[str]:
    """The events an `incorrect_data` declaration corrects with one of these (just stored) events."""
    new = set(event_ids)
    if not new:
        return set()
    D = EpcisErrorDeclaration
    rows = (await session.execute(select(D.event_id, D.corrective_event_ids)
                                  .where(D.reason == INCORRECT_DATA))).all()
    return {eid for eid, corrective in rows if corrective and new.intersection(str(c) for c in corrective)}


async def retract_lineage(session: AsyncSession, event_ids: Iterable[str]) -> int:
    """Take events out of the genealogy, in the caller's transaction: those declared `did_not_occur`, and those
    declared `incorrect_data` once a corrective event is here (withdrawn()). Returns how many edges went.

    The edges each event made are removed, unless another event still in the genealogy makes the same link:
    then the edge stays, as that event's. A node no event in the genealogy names any more (a supplier's lot only
    the retracted event knew) goes too, with the receipt link it had to a received lot; hub lots keep their
    nodes. The event's heat numbers no longer start a forward trace. The event and its declarations stay
    queryable, as EPCIS wants."""
    ids = list(set(event_ids))
    if not ids:
        return 0
    docs = dict((await session.execute(select(EpcisEvent.id, EpcisEvent.document)
                                        .where(EpcisEvent.event_id.in_(ids)))).all())
    if not docs:
        return 0  # not here (yet): its capture consults the declarations (epcis_capture.store_events)
    pks = set(docs)
    # the `heat` rows are the trace's (forward from a heat), not a query parameter's
    await session.execute(EpcisEventField.__table__.delete().where(
        EpcisEventField.event_pk.in_(sorted(pks)), EpcisEventField.name == "heat"))
    # the links the events made, found from their documents (trace_edge is keyed on the link, not the event)
    links = {(p, c) for doc in docs.values() for p, c, _ in analyse(doc, {}).edges}
    uris = sorted({u for link in links for u in link})
    if not uris:
        return 0
    nodes = {r.uri: r for r in (await session.execute(
        select(TraceNode.id, TraceNode.uri, TraceNode.lot_id).where(TraceNode.uri.in_(uris)))).all()}
    e = TraceEdge.__table__
    pairs = {(nodes[p].id, nodes[c].id) for p, c in links if p in nodes and c in nodes}
    if not pairs:
        return 0
    gone = [r for r in (await session.execute(
        select(e.c.parent_id, e.c.child_id, e.c.via).where(
            e.c.parent_id.in_(sorted({p for p, _ in pairs})), e.c.child_id.in_(sorted({c for _, c in pairs})),
            e.c.event_pk.in_(sorted(pks))))).all() if (r.parent_id, r.child_id) in pairs]
    for p, c, _ in gone:
        await session.execute(e.delete().where(e.c.parent_id == p, e.c.child_id == c))
    by_id = {n.id: n for n in nodes.values()}
    # a link another event in the genealogy makes too stays, as that event's
    kept = []
    for p, c, via in gone:
        if via not in _FROM_ROLES:
            continue
        a, b = EpcisEventEpc.__table__.alias("a"), EpcisEventEpc.__table__.alias("b")
        others = set((await session.execute(
            select(a.c.event_pk).join(b, b.c.event_pk == a.c.event_pk)
            .where(a.c.uri == by_id[p].uri, a.c.role.in_(_FROM_ROLES[via]), b.c.uri == by_id[c].uri,
                   b.c.role.in_(_TO_ROLES[via]), a.c.event_pk.not_in(sorted(pks)))
            .limit(_SUPPORT_PROBE))).scalars())
        live = sorted(others - await _withdrawn_pks(session, others))
        if live:
            kept.append((p, c, via, live[0]))
    await add_edges(session, kept)
    # nodes no event in the genealogy names any more (hub lots stay: their node is the lot's)
    orphans = []
    for node in {by_id[n] for p, c, _ in gone for n in (p, c)}:
        if node.lot_id is not None:
            continue
        naming = set((await session.execute(select(EpcisEventEpc.event_pk).where(
            EpcisEventEpc.uri == node.uri, EpcisEventEpc.event_pk.not_in(sorted(pks))).limit(_SUPPORT_PROBE))).scalars())
        if not naming - await _withdrawn_pks(session, naming):
            orphans.append(node.id)
    if orphans:
        await session.execute(e.delete().where(e.c.parent_id.in_(orphans)))
        await session.execute(e.delete().where(e.c.child_id.in_(orphans)))
        await session.execute(TraceNode.__table__.delete().where(TraceNode.id.in_(orphans)))
    return len(gone) - len(kept)
