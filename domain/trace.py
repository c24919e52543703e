"""Genealogy both ways: backward (where did it come from) and forward (where did it go).

Walks the lot_edge graph one level per query (set-at-a-time, never one query per node).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.codes import resolve, units_of_lot
from domain.models import (
    Inspection,
    Lot,
    LotEdge,
    Ncr,
    OperationRecord,
    Shipment,
    ShipmentLine,
    Supplier,
)
from domain.production import get_lot

MAX_DEPTH = 50


async def _walk(session: AsyncSession, start: int, *, up: bool) -> tuple[set[int], list[LotEdge]]:
    seen = {start}
    frontier = {start}
    edges: list[LotEdge] = []
    for _ in range(MAX_DEPTH):
        if not frontier:
            break
        col = LotEdge.child_lot_id if up else LotEdge.parent_lot_id
        rows = (await session.execute(select(LotEdge).where(col.in_(frontier)))).scalars().all()
        edges.extend(rows)
        nxt = {(e.parent_lot_id if up else e.child_lot_id) for e in rows} - seen
        seen |= nxt
        frontier = nxt
    return seen, edges


def _lot_node(lot: Lot) -> dict[str, Any]:
    return {
        "id": lot.number, "kind": lot.kind, "item": lot.item.code, "status": lot.status,
        "quantity": lot.quantity, "quantity_remaining": lot.quantity_remaining, "uom": lot.uom,
        "supplier": lot.supplier.code if lot.supplier else None, "supplier_lot": lot.supplier_lot,
        "heat_number": lot.heat_number, "certificate_ref": lot.certificate_ref, "receipt": lot.receipt,
        "location": lot.location, "concession": lot.concession,
    }


async def _details(session: AsyncSession, lot_ids: set[int]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {i: {"operations": [], "inspections": [], "ncrs": [], "shipments": []}
                                      for i in lot_ids}
    ops = (await session.execute(
        select(OperationRecord).where(OperationRecord.output_lot_id.in_(lot_ids)).order_by(OperationRecord.id)
    )).scalars().all()
    for op in ops:
        out[op.output_lot_id]["operations"].append({
            "seq": op.seq, "name": op.name, "rework": op.rework, "equipment": op.equipment,
            "operator": op.operator, "shift": op.shift, "started_at": op.started_at.isoformat(),
            "ended_at": op.ended_at.isoformat(), "parameters": op.parameters, "consumed": op.consumed,
            "good_quantity": op.good_quantity, "scrap_quantity": op.scrap_quantity,
        })
    inss = (await session.execute(
        select(Inspection).where(Inspection.lot_id.in_(lot_ids)).order_by(Inspection.id)
    )).scalars().all()
    for ins in inss:
        out[ins.lot_id]["inspections"].append({
            "number": ins.number, "kind": ins.kind, "status": ins.status, "inspector": ins.inspector,
            "inspected_at": ins.inspected_at.isoformat() if ins.inspected_at else None,
            "characteristics": [{"name": c.name, "nominal": c.nominal, "lower": c.lower, "upper": c.upper,
                                 "unit": c.unit, "values": c.values, "verdict": c.verdict}
                                for c in ins.characteristics],
        })
    ncrs = (await session.execute(select(Ncr).where(Ncr.lot_id.in_(lot_ids)).order_by(Ncr.id))).scalars().all()
    for n in ncrs:
        out[n.lot_id]["ncrs"].append({
            "number": n.number, "state": n.state, "disposition": n.disposition, "description": n.description,
            "decisions": [{"action": d.action, "reviewer": d.reviewer, "role": d.role, "reason": d.reason,
                           "decided_at": d.decided_at.isoformat()} for d in n.decisions],
        })
    ships = (await session.execute(
        select(ShipmentLine, Shipment).join(Shipment, Shipment.id == ShipmentLine.shipment_id)
        .where(ShipmentLine.lot_id.in_(lot_ids))
    )).all()
    for line, sh in ships:
        out[line.lot_id]["shipments"].append({
            "shipment": sh.number, "sales_order": sh.sales_order, "customer": sh.customer,
            "carrier": sh.carrier, "tracking_number": sh.tracking_number, "quantity": line.quantity,
            "shipped_at": sh.shipped_at.isoformat(),
        })
    return out


async def _graph(session: AsyncSession, start: Lot, *, up: bool, resolver: str) -> dict[str, Any]:
    ids, edges = await _walk(session, start.id, up=up)
    lots = {lot.id: lot for lot in (await session.execute(select(Lot).where(Lot.id.in_(ids)))).scalars().all()}
    details = await _details(session, ids)
    nodes = []
    for lot_id in sorted(ids, key=lambda i: (i != start.id, lots[i].number)):
        node = _lot_node(lots[lot_id]) | details[lot_id]
        node["codes"] = await units_of_lot(session, lots[lot_id], resolver, limit=10)
        nodes.append(node)
    return {
        "nodes": nodes,
        "edges": [{"from": lots[e.parent_lot_id].number, "to": lots[e.child_lot_id].number,
                   "quantity": e.quantity} for e in edges],
    }


async def backward(session: AsyncSession, code: str, *, resolver: str) -> dict[str, Any]:
    lot, unit = await resolve(session, code)
    g = await _graph(session, lot, up=True, resolver=resolver)
    materials = [n for n in g["nodes"] if n["kind"] == "material"]
    return {"query": code, "unit": unit, "lot": lot.number, **g,
            "suppliers": sorted({(n["supplier"], n["supplier_lot"], n["heat_number"] or "") for n in materials})}


async def forward(session: AsyncSession, lot_number: str, *, resolver: str) -> dict[str, Any]:
    lot = await get_lot(session, lot_number)
    g = await _graph(session, lot, up=False, resolver=resolver)
    customers = sorted({s["customer"] for n in g["nodes"] for s in n["shipments"]})
    return {"query": lot_number, "lot": lot.number, **g, "customers": customers}


async def supplier_of(session: AsyncSession, supplier_id: int) -> Supplier | None:
    return await session.get(Supplier, supplier_id)
