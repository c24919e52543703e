"""Who waits on an NCR's lot: the workflows to tell at once when something they wait for happened (their
polls remain the fallback).

- An NCR reworked waits in verification for the lot's next inspection: told when an inspection of the lot
  gets its verdict.
- A work order's shipment is held while an NCR is open on its lot or on a lot consumed into it: told when
  such an NCR stops holding (dismissed, closed, or carried out and only waiting for its verification).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import Lot, LotEdge, Ncr, WorkOrder

MAX_LOTS = 10_000  # the same bound as the shipment gate's walk up the genealogy (domain/inspection_triggers.py)


async def ncrs_verifying(session: AsyncSession, *, lot_id: int) -> list[str]:
    """The workflow ids of the NCRs on the lot that wait for their verification."""
    return list((await session.execute(
        select(Ncr.workflow_id).where(Ncr.lot_id == lot_id, Ncr.state == "verification", Ncr.closed_at.is_(None))
        .order_by(Ncr.id))).scalars())


async def lots_made_from(session: AsyncSession, lot_id: int) -> list[int]:
    """The lot and every lot it went into, directly or further down the genealogy."""
    seen = {lot_id}
    frontier = [lot_id]
    while frontier and len(seen) < MAX_LOTS:
        children = (await session.execute(
            select(LotEdge.child_lot_id).where(LotEdge.parent_lot_id.in_(frontier)).distinct())).scalars().all()
        frontier = [c for c in children if c not in seen]
        seen.update(frontier)
    return sorted(seen)


async def work_orders_at_gate(session: AsyncSession, *, lot: str) -> list[str]:
    """The workflow ids of the open work orders at their shipment stage whose output lot is this lot or was
    made from it: the ones an NCR on this lot may hold."""
    lot_id = (await session.execute(select(Lot.id).where(Lot.number == lot))).scalar()
    if lot_id is None:
        return []
    lots = await lots_made_from(session, lot_id)
    return list((await session.execute(
        select(WorkOrder.workflow_id).join(Lot, Lot.work_order_id == WorkOrder.id)
        .where(Lot.id.in_(lots), Lot.kind == "output", WorkOrder.stage == "shipment",
               WorkOrder.completed_at.is_(None))
        .distinct().order_by(WorkOrder.workflow_id))).scalars())
