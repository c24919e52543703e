"""Trace through containers: cases and pallets (domain/packing.py) in the genealogy answers.

Kept apart from domain/trace.py (whose walk is tuned for the benchmark's hot path): these functions read the
packing tables (container, containment, used_code) and add to what trace.backward / trace.forward answer.

- backward_container(code): a case or pallet code (SSCC, or a case-level GTIN + serial) answers for
  everything inside it: the container tree down to units (each unit with its lot), and the backward
  genealogy of every lot of those units, merged into one graph with the usual answer fields.
- containers_of_lots(lot numbers): the cases and pallets now holding units of those lots, each with the
  container it sits in and where it is now (open in stock, on hold by which recall, or shipped on which shipment
  to which customer).
- unit_packing(unit) / backward_packing(answer): the packing part of a backward trace: for a unit, the case and
  pallet it is in now (or was in when it was last packed) with the pack and unpack events; for a lot, the cases
  and pallets holding its units.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import bindparam, exists, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from domain import gs1, packing, trace
from domain.codes import canonical as code_value
from domain.epcis_ids import canonical
from domain.epcis_index import among, batches
from domain.models import Lot, Shipment
from domain.models_codes import Container, Containment, UsedCode
from domain.models_trace import Recall, RecallContainer

log = logging.getLogger(__name__)


def container_code(code: str) -> str | None:
    """The packing tables' form of a code that could be a case or pallet (`/00/{sscc}`, `/01/{gtin}/21/{serial}`),
    from a Digital Link on any domain, that path, or an EPC URN; None for anything else."""
    c = code.strip()
    if c.startswith("urn:epc:id:"):
        c = canonical(c)
    if "/" not in c:
        return None
    try:
        return code_value(gs1.parse_digital_link(c))
    except Exception:  # noqa: BLE001 - not a Digital Link at all: not a container code
        return None


async def find_container(session: AsyncSession, code: str) -> Container | None:
    value = container_code(code)
    if value is None:
        return None
    return (await session.execute(select(Container).where(Container.code == value))).scalar()


async def _customers(session: AsyncSession, shipments: set[str]) -> dict[str, Shipment]:
    if not shipments:
        return {}
    rows = (await session.execute(select(Shipment).where(Shipment.number.in_(shipments)))).scalars()
    return {s.number: s for s in rows}


async def _held_by(session: AsyncSession, boxes: Iterable[Container]) -> dict[str, list[str]]:
    """For each box a recall holds (status on_hold), the recalls holding it now (held, not released), oldest
    first; one query for all of them, none when no box is on hold."""
    codes = sorted({c.code for c in boxes if c.status == packing.ON_HOLD})
    out: dict[str, list[str]] = defaultdict(list)
    for batch in batches(session, codes):
        rows = (await session.execute(
            select(RecallContainer.code, Recall.number).join(Recall, Recall.id == RecallContainer.recall_id)
            .where(among(session, RecallContainer.code, batch), RecallContainer.action == "held",
                   RecallContainer.held_at.is_not(None), RecallContainer.released_at.is_(None))
            .order_by(Recall.id))).all()
        for code, number in rows:
            if number not in out[code]:
                out[code].append(number)
    return out


def _where(c: Container, parent: str | None, ship: Shipment | None, held_by: list[str] | None = None) -> str:
    if c.status == "shipped":
        who = ship.customer if ship is not None else "an unknown customer"
        return f"shipped to {who} ({c.shipment})"
    if c.status == packing.ON_HOLD:
        by = f"on hold by recall {', '.join(held_by)}" if held_by else "on hold"
        return f"{by}, in stock in {parent}" if parent else f"{by}, in stock"
    return f"in stock, in {parent}" if parent else "in stock (open)"


def _view(c: Container, parent: str | None, ship: Shipment | None,
          held_by: list[str] | None = None) -> dict[str, Any]:
    return {"code": c.code, "sscc": sscc(c.code), "level": c.level, "status": c.status, "parent": parent,
            "shipment": c.shipment, "customer": ship.customer if ship is not None else None,
            "sales_order": ship.sales_order if ship is not None else None,
            "shipped_at": c.shipped_at.isoformat() if c.shipped_at else None,
            "where": _where(c, parent, ship, held_by), "held_by": list(held_by or [])}


def sscc(code: str) -> str | None:
    """The SSCC of a container code (`/00/{sscc}`); None for a case coded as GTIN + serial."""
    return code[4:] if code.startswith("/00/") else None


async def _lot_numbers(session: AsyncSession, ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    ids_ = sorted(ids)
    for batch in batches(session, ids_):
        out.update((await session.execute(select(Lot.id, Lot.number).where(among(session, Lot.id, batch)))).all())
    return out


def _merge(graphs: list[dict[str, Any]]) -> dict[str, Any]:
    nodes: dict[tuple[str, str], dict[str, Any]] = {}
    flat: dict[tuple[str, str], dict[str, Any]] = {}
    edges: list[dict[str, Any]] = []
    seen_edges: set[tuple[Any, ...]] = set()
    for g in graphs:
        for n, f in zip(g["nodes"], g["flat"], strict=True):
            key = (n["node"], n["id"])
            if key not in nodes or n["level"] < nodes[key]["level"]:
                nodes[key], flat[key] = n, f
        for e in g["edges"]:
            k = (e["from"], e["to"], e["via"])
            if k not in seen_edges:
                seen_edges.add(k)
                edges.append(e)
    order = sorted(nodes, key=lambda k: (nodes[k]["level"], k[1]))
    return {"nodes": [nodes[k] for k in order], "edges": edges, "flat": [flat[k] for k in order]}


async def backward_container(session: AsyncSession, container: Container, *, query: str,
                             resolver: str) -> dict[str, Any]:
    """Everything inside a case or pallet, down the genealogy of its units' lots, with the container tree."""
    inside = await packing.contents(session, container.code)
    lot_of_unit: dict[str, int] = {}
    units = inside["units"]
    for batch in batches(session, units):
        lot_of_unit.update((await session.execute(select(UsedCode.value, UsedCode.lot_id).where(
            among(session, UsedCode.value, batch), UsedCode.lot_id.is_not(None)))).all())
    numbers = await _lot_numbers(session, set(lot_of_unit.values()))

    def annotate(node: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in node.items() if k != "children"}
        if node["level"] == "unit":
            out["lot"] = numbers.get(lot_of_unit.get(node["code"], 0))
        else:
            out["children"] = [annotate(ch) for ch in node["children"]]
        return out

    lots = sorted(set(numbers.values()))
    graphs = [await trace.backward(session, number, resolver=resolver) for number in lots]
    g = _merge(graphs) if graphs else {"nodes": [], "edges": [], "flat": []}
    parent = await packing.parent_of(session, container.code)
    ship = (await _customers(session, {container.shipment} if container.shipment else set())).get(
        container.shipment or "")
    held = await _held_by(session, [container])
    units_per_lot: dict[str, int] = defaultdict(int)
    for u in units:
        if u in lot_of_unit:
            units_per_lot[numbers[lot_of_unit[u]]] += 1
    return {
        "direction": "backward", "query": query, "unit": None, "lot": lots[0] if lots else None, **g,
        "suppliers": sorted({s for r in graphs for s in map(tuple, r["suppliers"])}),
        "certificates": sorted({c for r in graphs for c in r["certificates"]}),
        "supplier_lots_upstream": sorted({x for r in graphs for x in r["supplier_lots_upstream"]}),
        # what this answer adds for a container
        "container": {**_view(container, parent, ship, held.get(container.code)), "unit_count": inside["unit_count"],
                      "tree": annotate(inside["tree"])},
        "lots": [{"lot": n, "units": units_per_lot[n]} for n in lots],
        "units_without_lot": sorted(u for u in units if u not in lot_of_unit),
    }


async def containers_of_lots(session: AsyncSession, lot_numbers: list[str]) -> list[dict[str, Any]]:
    """The cases and pallets holding units of these lots now (and the pallets holding those cases), each with
    where it is now; `units` counts the units of these lots inside it, directly or in its cases."""
    if not lot_numbers:
        return []
    # the units of these lots packed now, with the box each is in: one statement (per batch)
    rows: list[tuple[str, str]] = []
    for batch in batches(session, lot_numbers):
        rows += (await session.execute(
            select(Lot.number, Containment.parent)
            .join(UsedCode, (UsedCode.lot_id == Lot.id) & (UsedCode.level == "unit"))
            .join(Containment, (Containment.child == UsedCode.value) & Containment.unpacked_at.is_(None))
            .where(among(session, Lot.number, batch)))).all()
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for lot, parent in rows:
        counts[parent][lot] += 1
    # then up the containment chain, one query per level: cases -> pallets
    parent_of: dict[str, str] = {}
    carried: dict[str, dict[str, int]] = {p: dict(v) for p, v in counts.items()}
    visited: set[str] = set(carried)
    for _ in range(packing.MAX_DEPTH - 1):
        if not carried:
            break
        children = list(carried)
        links: list[tuple[str, str]] = []
        for batch in batches(session, children):
            links += (await session.execute(select(Containment.child, Containment.parent).where(
                among(session, Containment.child, batch), Containment.unpacked_at.is_(None)))).all()
        nxt: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for child, parent in links:
            parent_of[child] = parent
            for lot, n in carried[child].items():
                counts[parent][lot] += n
                nxt[parent][lot] += n
        carried = {p: dict(v) for p, v in nxt.items() if p not in visited}  # a cycle cannot loop
        visited |= set(carried)
    if not counts:
        return []
    codes = sorted(counts)
    boxes: dict[str, Container] = {}
    for batch in batches(session, codes):
        boxes.update((c.code, c) for c in (await session.execute(select(Container).where(
            among(session, Container.code, batch)))).scalars())
    ships = await _customers(session, {c.shipment for c in boxes.values() if c.shipment})
    held = await _held_by(session, boxes.values())
    out = []
    for code in codes:
        c = boxes.get(code)
        if c is None:
            continue
        per_lot = counts[code]
        out.append({**_view(c, parent_of.get(code), ships.get(c.shipment or ""), held.get(code)),
                    "units": sum(per_lot.values()), "lots": sorted(per_lot)})
    rank = {"pallet": 0, "case": 1}
    out.sort(key=lambda x: (rank.get(x["level"], 2), x["code"]))
    return out


def _t(iso: str | None) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


def _overlaps(row: dict[str, Any], lo: datetime, hi: datetime | None) -> bool:
    """Whether a packing row (packed_at .. unpacked_at, open if None) overlaps the time from lo to hi."""
    packed, unpacked = _t(row["packed_at"]), _t(row["unpacked_at"])
    assert packed is not None
    return (hi is None or packed < hi) and (unpacked is None or unpacked > lo)


def _unit_never_packed(value: str) -> dict[str, Any]:
    """unit_packing's answer for a unit that was never packed."""
    return {"of": "unit", "unit": value, "packed": False, "chain": [], "events": [], "shipment": None,
            "customer": None, "history": []}


async def unit_packing(session: AsyncSession, unit: str) -> dict[str, Any]:
    """The packing of one unit: the case it is in now, the pallet that case is on, and so on up (`chain`,
    innermost first), or, once it was unpacked, the chain as it was when it was last packed (`packed` False).
    Each link is the container (status and where it is now, with its shipment and customer when it shipped,
    the recalls holding it) with the packing that put the level below into it: packed_at and pack_event, and
    unpacked_at and unpack_event once it came out. `shipment` / `customer`: the box shipment the unit left on,
    when it is still packed in a shipped box. `history` is every packing of the unit (packing.history)."""
    # a unit is only ever a child; a code the packing tables' form cannot hold is looked up (packing.history)
    value = container_code(unit)
    rows = await packing.history_of(session, value) if value else await packing.history(session, unit)
    if not rows:
        return _unit_never_packed(value or unit)
    value = rows[0]["child"]
    out: dict[str, Any] = {"of": "unit", "unit": value, "packed": False, "chain": [], "events": [],
                           "shipment": None, "customer": None, "history": rows}
    link = next((r for r in reversed(rows) if r["unpacked_at"] is None), rows[-1])
    out["packed"] = link["unpacked_at"] is None
    links = [link]
    lo, hi = _t(link["packed_at"]), _t(link["unpacked_at"])
    assert lo is not None
    seen = {value}
    for _ in range(packing.MAX_DEPTH):  # up the chain: the box's own packing while the unit was inside it
        box = links[-1]["parent"]
        if box in seen:  # a cycle in bad data cannot loop
            break
        seen.add(box)
        up = [r for r in await packing.history_of(session, box, as_child=True) if _overlaps(r, lo, hi)]
        if not up:
            break
        r = up[-1]  # the newest, if the box was repacked while the unit was inside
        links.append(r)
        lo = max(lo, _t(r["packed_at"]))  # type: ignore[type-var]
        end = _t(r["unpacked_at"])
        hi = end if hi is None else (hi if end is None else min(hi, end))
    codes = [r["parent"] for r in links]
    boxes = {c.code: c for c in (await session.execute(select(Container).where(Container.code.in_(codes)))).scalars()}
    ships = await _customers(session, {c.shipment for c in boxes.values() if c.shipment})
    held = await _held_by(session, boxes.values())
    for r in links:
        c = boxes.get(r["parent"])
        if c is None:  # a containment row always has its container; nothing to say about one without
            continue
        ship = ships.get(c.shipment or "")
        out["chain"].append({**_view(c, await packing.parent_of(session, c.code), ship, held.get(c.code)),
                             "contains": r["child"], "packed_at": r["packed_at"],
                             "pack_event": r["pack_event"], "unpacked_at": r["unpacked_at"],
                             "unpack_event": r["unpack_event"]})
        out["events"] += [e for e in (r["pack_event"], r["unpack_event"]) if e and e not in out["events"]]
    if out["packed"]:
        shipped = next((b for b in out["chain"] if b["status"] == "shipped"), None)
        if shipped is not None:
            out["shipment"], out["customer"] = shipped["shipment"], shipped["customer"]
    return out


async def backward_packing(session: AsyncSession, answer: dict[str, Any]) -> dict[str, Any]:
    """The packing part of a backward trace's answer (trace.backward): from a unit, unit_packing; from a lot
    or batch code, the cases and pallets holding the lot's units now (containers_of_lots)."""
    if answer.get("unit"):
        return await unit_packing(session, answer["unit"])
    lot = answer["lot"]
    return {"of": "lot", "lot": lot, "containers": await containers_of_lots(session, [lot])}


# --- the answers the trace routes send (api/routes/trace.py), and bench/trace.py times ------------------------


# one read for a backward trace's start that could be a case or pallet: is it one, and has it (a unit) ever been
# packed. Run on the app's trace reader (core.db.FastReader: an autocommit connection, no transaction), so a trace
# from a unit that was never packed opens no session at all
_PROBE = select(exists().where(Container.code == bindparam("v")),
                exists().where(or_(Containment.child == bindparam("v"), Containment.parent == bindparam("v"))))


async def _probe(session: AsyncSession, value: str, reader: Any) -> tuple[bool, bool]:
    """(a case or pallet has this code, this code is in the packing tables)."""
    if reader is not None and getattr(reader, "available", False):
        try:
            row = await reader.fetchone(_PROBE, {"v": value})
            if row is not None:
                return bool(row[0]), bool(row[1])
        except Exception:  # the session below answers, and reports a real fault
            log.debug("packing probe fell back to the session", exc_info=True)
    row = (await session.execute(_PROBE, {"v": value})).one()
    return bool(row[0]), bool(row[1])


# whether any unit of these lots is in a case or pallet now (PostgreSQL: the lot numbers as one JSON text
# parameter: psycopg adapts a list of 1,000 strings element by element, about 0.3 ms more than orjson's one text)
_ANY_PACKED = text("""SELECT EXISTS (SELECT 1 FROM lot l
    JOIN used_code u ON u.lot_id = l.id AND u.level = 'unit'
    JOIN containment c ON c.child = u.value AND c.unpacked_at IS NULL
    WHERE l.number IN (SELECT json_array_elements_text(CAST(:numbers AS json))))""")


async def _any_packed(numbers: list[str], reader: Any) -> bool:
    """False only when the trace reader (PostgreSQL) says no unit of these lots is packed now: the forward answer
    then needs no session for its cases and pallets. True otherwise (containers_of_lots finds them)."""
    if not numbers:
        return False
    if reader is None or getattr(reader, "backend", None) != "postgresql" or not getattr(reader, "available", False):
        return True
    try:
        row = await reader.fetchone(_ANY_PACKED, {"numbers": orjson.dumps(numbers).decode()})
    except Exception:  # the session answers, and reports a real fault
        log.debug("packing probe fell back to the session", exc_info=True)
        return True
    return row is None or bool(row[0])


async def backward_answer(session: AsyncSession, code: str, *, resolver: str, reader: Any = None,
                          as_sent: bool = False) -> dict[str, Any]:
    """GET /api/trace/backward's answer: from a case or pallet, everything inside it (backward_container); from
    a unit, batch code or lot, trace.backward with its `packing` (backward_packing). `reader` and `as_sent` as
    for trace.backward (`as_sent`: the answer is serialised with orjson at once, trace.to_json)."""
    value = container_code(code)
    is_box, packed = await _probe(session, value, reader) if value else (False, True)
    if is_box:
        box = await find_container(session, code)
        if box is not None:
            return await backward_container(session, box, query=code, resolver=resolver)
    result = await trace.backward(session, code, resolver=resolver, reader=reader, as_sent=as_sent)
    unit = result.get("unit")
    if not packed and unit and container_code(unit) == value:
        result["packing"] = _unit_never_packed(value)  # type: ignore[arg-type]
    else:
        result["packing"] = await backward_packing(session, result)
    return result


async def forward_answer(session: AsyncSession, *, resolver: str, kind: str, value: str,
                         since: datetime | None = None, until: datetime | None = None,
                         reader: Any = None) -> dict[str, Any]:
    """GET /api/trace/forward's answer: trace.forward with the cases and pallets holding units of the lots it
    reached, and where each is now (`containers`, counted in the summary)."""
    result = await trace.forward(session, resolver=resolver, kind=kind, value=value, since=since, until=until,
                                 reader=reader)
    numbers = [n["id"] for n in result["nodes"] if n["node"] == "lot"]
    boxes = await containers_of_lots(session, numbers) if await _any_packed(numbers, reader) else []
    result["containers"] = boxes
    result["summary"]["containers"] = len(boxes)
    result["summary"]["containers_shipped"] = sum(1 for b in boxes if b["status"] == "shipped")
    return result
