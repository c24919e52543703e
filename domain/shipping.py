"""Shipments: only a released lot leaves, and the ERP is told."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict
from domain import holds
from domain.audit import audit, diff
from domain.events import hub_uri, lot_class_uri, record_event
from domain.inspection_triggers import check_shipment
from domain.models import Ncr, Shipment, ShipmentLine, utcnow
from domain.production import get_lot, get_work_order, set_lot_status


async def ship_lot(
    session: AsyncSession, *, work_order: str, lot: str, shipment: str, sales_order: str, customer: str,
    carrier: str | None, tracking_number: str | None, resolver: str,
) -> Shipment:
    """Ship a released lot. Idempotent on the shipment number; a lot not released is refused."""
    existing = (await session.execute(select(Shipment).where(Shipment.number == shipment))).scalar()
    if existing is not None:
        return existing
    wo = await get_work_order(session, work_order)
    # locked (PostgreSQL): a recall holding it meanwhile waits for this shipment, or this shipment sees its hold
    # (a recall's scope and holds are other transactions)
    lot_row = await get_lot(session, lot, lock=True)
    # a recall's hold ends only by a reviewer's decision on it: whatever the lot's status says, it does not ship
    if recalls := await holds.recall_holds(session, lot_row.id):
        raise Conflict(f"lot {lot!r} is held by recall {', '.join(recalls)} and cannot ship: a reviewer's release "
                       "decision on the recall lets it go", field="lot")
    await check_shipment(session, work_order=work_order, lot=lot)  # outgoing inspection, open NCRs
    if lot_row.status != "released":
        open_ncrs = (
            await session.execute(select(Ncr.number).where(Ncr.lot_id == lot_row.id, Ncr.closed_at.is_(None)))
        ).scalars().all()
        raise Conflict(
            f"lot {lot!r} is {lot_row.status} and cannot ship"
            + (f" (open NCR {', '.join(open_ncrs)})" if open_ncrs else "")
            + ": it needs a passed inspection or a disposition that allows shipping"
        )
    row = Shipment(number=shipment, work_order_id=wo.id, sales_order=sales_order, customer=customer,
                   carrier=carrier, tracking_number=tracking_number, shipped_at=utcnow())
    session.add(row)
    await session.flush()
    session.add(ShipmentLine(shipment_id=row.id, lot_id=lot_row.id, quantity=lot_row.quantity_remaining))
    qty = lot_row.quantity_remaining
    before = {"lot_status": lot_row.status, "lot_quantity_remaining": qty, "shipped_at": None}
    lot_row.quantity_remaining = 0.0
    await set_lot_status(session, lot_row, "shipped", actor="system", why=f"shipment {shipment}")
    await record_event(
        session, key=f"ship:{shipment}:{lot}", event_type="ObjectEvent", biz_step="shipping",
        disposition="in_transit",
        quantity_list=[{"epcClass": lot_class_uri(lot_row, resolver), "quantity": qty}],
        # po: the customer's purchase order (our sales order); prodorder: the work order that made the lot
        biz_transactions=[("po", hub_uri("salesorder", sales_order)), ("desadv", hub_uri("shipment", shipment)),
                          ("prodorder", hub_uri("workorder", wo.number))],
        destination_list=[{"type": "owning_party", "destination": hub_uri("customer", customer)}],
        lot=lot_row, work_order_id=wo.id,
    )
    await audit(session, actor="system", action="shipment.shipped", entity="shipment", key=shipment,
                changes=diff(before, {"lot_status": lot_row.status, "lot_quantity_remaining": lot_row.quantity_remaining,
                                      "shipped_at": row.shipped_at.isoformat()},
                             lot=lot, quantity=qty, customer=customer, sales_order=sales_order))
    await session.refresh(row, ["lines"])
    return row


async def confirm_erp(session: AsyncSession, shipment: str) -> None:
    row = (await session.execute(select(Shipment).where(Shipment.number == shipment))).scalar_one()
    if row.erp_confirmed_at is None:
        row.erp_confirmed_at = utcnow()
        await session.flush()
