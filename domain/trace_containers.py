"""Trace through containers: cases and pallets (domain/packing.py) in the genealogy answers.

Kept apart from domain/trace.py (whose walk is tuned for the benchmark's hot path): these functions read the
packing tables (container, containment, used_code) and add to what trace.backward / trace.forward answer.

- backward_container(code): a case or pallet code (SSCC, or a case-level GTIN + serial) answers for
  everything inside it: the container tree down to units (each unit with its lot), and the backward
  genealogy of every lot of those units, merged into one graph with the usual answer fields.
- containers_of_lots(lot numbers): the cases and pallets now holding units of those lots, each with the
  container it sits in and where it is now (open in stock, or shipped on which shipment to which customer).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain import gs1, packing, trace
from domain.codes import canonical as code_value
from domain.epcis_ids import canonical
from domain.models import Lot, Shipment
from domain.models_codes import Container, Containment, UsedCode

_CHUNK = 500


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


def _where(c: Container, parent: str | None, ship: Shipment | None) -> str:
    if c.status == "shipped":
        who = ship.customer if ship is not None else "an unknown customer"
        return f"shipped to {who} ({c.shipment})"
    return f"in stock, in {parent}" if parent else "in stock (open)"


def _view(c: Container, parent: str | None, ship: Shipment | None) -> dict[str, Any]:
    return {"code": c.code, "level": c.level, "status": c.status, "parent": parent,
            "shipment": c.shipment, "customer": ship.customer if ship is not None else None,
            "sales_order": ship.sales_order if ship is not None else None,
            "shipped_at": c.shipped_at.isoformat() if c.shipped_at else None, "where": _where(c, parent, ship)}


async def _lot_numbers(session: AsyncSession, ids: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    ids_ = sorted(ids)
    for i in range(0, len(ids_), _CHUNK):
        out.update((await session.execute(select(Lot.id, Lot.number).where(Lot.id.in_(ids_[i:i + _CHUNK])))).all())
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
    for i in range(0, len(units), _CHUNK):
        lot_of_unit.update((await session.execute(select(UsedCode.value, UsedCode.lot_id).where(
            UsedCode.value.in_(units[i:i + _CHUNK]), UsedCode.lot_id.is_not(None)))).all())
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
        "container": {**_view(container, parent, ship), "unit_count": inside["unit_count"],
                      "tree": annotate(inside["tree"])},
        "lots": [{"lot": n, "units": units_per_lot[n]} for n in lots],
        "units_without_lot": sorted(u for u in units if u not in lot_of_unit),
    }


async def containers_of_lots(session: AsyncSession, lot_numbers: list[str]) -> list[dict[str, Any]]:
    """The cases and pallets holding units of these lots now (and the pallets holding those cases), each with
    where it is now; `units` counts the units of these lots inside it, directly or in its cases."""
    if not lot_numbers:
        return []
    lot_ids: dict[int, str] = {}
    for i in range(0, len(lot_numbers), _CHUNK):
        lot_ids.update((await session.execute(select(Lot.id, Lot.number).where(
            Lot.number.in_(lot_numbers[i:i + _CHUNK])))).all())
    if not lot_ids:
        return []
    ids = sorted(lot_ids)
    unit_lot: dict[str, str] = {}
    for i in range(0, len(ids), _CHUNK):
        for value, lot_id in (await session.execute(select(UsedCode.value, UsedCode.lot_id).where(
                UsedCode.lot_id.in_(ids[i:i + _CHUNK]), UsedCode.level == "unit"))).all():
            unit_lot[value] = lot_ids[lot_id]
    # up the containment chain, one query per level: units -> cases -> pallets
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    parent_of: dict[str, str] = {}
    carried: dict[str, dict[str, int]] = {u: {lot: 1} for u, lot in unit_lot.items()}
    visited: set[str] = set()
    for _ in range(packing.MAX_DEPTH):
        if not carried:
            break
        children = list(carried)
        rows: list[tuple[str, str]] = []
        for i in range(0, len(children), _CHUNK):
            rows += (await session.execute(select(Containment.child, Containment.parent).where(
                Containment.child.in_(children[i:i + _CHUNK]), Containment.unpacked_at.is_(None)))).all()
        nxt: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for child, parent in rows:
            if child not in unit_lot:
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
    for i in range(0, len(codes), _CHUNK):
        boxes.update((c.code, c) for c in (await session.execute(select(Container).where(
            Container.code.in_(codes[i:i + _CHUNK])))).scalars())
    ships = await _customers(session, {c.shipment for c in boxes.values() if c.shipment})
    out = []
    for code in codes:
        c = boxes.get(code)
        if c is None:
            continue
        per_lot = counts[code]
        out.append({**_view(c, parent_of.get(code), ships.get(c.shipment or "")),
                    "units": sum(per_lot.values()), "lots": sorted(per_lot)})
    rank = {"pallet": 0, "case": 1}
    out.sort(key=lambda x: (rank.get(x["level"], 2), x["code"]))
    return out
