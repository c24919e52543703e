"""Items, suppliers, lots, work orders and operations. Plain async functions; they flush, never commit."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.db import conflict_insert
from core.errors import Conflict, InvalidInput, NotFound
from domain.audit import PLACEHOLDER_ACTOR, audit, diff
from domain.events import hub_uri, lot_class_uri, record_event
from domain.models import (
    Item,
    ItemGtin,
    Lot,
    LotEdge,
    LotStatus,
    OperationRecord,
    Supplier,
    WorkOrder,
    utcnow,
)
from domain.models_codes import CodeRule


async def upsert_item(
    session: AsyncSession, code: str, *, name: str | None = None, gtin: str | None = None, uom: str = "EA"
) -> Item:
    item = (await session.execute(select(Item).where(Item.code == code))).scalar()
    if gtin and (item is None or not item.gtin):
        await _refuse_gtin_of_another_item(session, gtin, code)
    if item is None:
        # ON CONFLICT DO NOTHING, then read: two transactions bringing the same new item at once (two work orders'
        # first receipts) both go through, the second with the first one's row, instead of one failing on the
        # unique code and its activity being retried
        await session.execute(conflict_insert(session)(Item).values(code=code, name=name, gtin=gtin, uom=uom)
                              .on_conflict_do_nothing(index_elements=[Item.code]))
        item = (await session.execute(select(Item).where(Item.code == code))).scalar_one()
    if gtin and not item.gtin:
        item.gtin = gtin
    if name and not item.name:
        item.name = name
    return item


async def _refuse_gtin_of_another_item(session: AsyncSession, gtin: str, code: str) -> None:
    """A GTIN identifies one trade item: two items sharing one would make their serials collide in scans,
    codes and traces. (Decided in session 2: the hub refuses it rather than guessing which item is meant.)"""
    other = (await session.execute(select(Item.code).where(Item.gtin == gtin, Item.code != code))).scalar()
    if other is None:  # or the GTIN of another item's case or pallet
        other = (await session.execute(select(Item.code).join(CodeRule, CodeRule.item_id == Item.id).where(
            CodeRule.namespace == f"sgtin:{gtin}", Item.code != code).limit(1))).scalar()
    if other is None:  # or one another item held before a correction (its printed codes still name it)
        other = (await session.execute(select(Item.code).join(ItemGtin, ItemGtin.item_id == Item.id).where(
            ItemGtin.gtin == gtin, Item.code != code))).scalar()
    if other is not None:
        raise Conflict(f"gtin {gtin} already belongs to item {other!r}: a GTIN identifies one trade item; "
                       f"give item {code!r} its own GTIN", field="gtin")


async def upsert_supplier(session: AsyncSession, code: str) -> Supplier:
    sup = (await session.execute(select(Supplier).where(Supplier.code == code))).scalar()
    if sup is None:  # as upsert_item: a supplier two receipts bring at once is inserted once, neither fails
        await session.execute(conflict_insert(session)(Supplier).values(code=code, name=code)
                              .on_conflict_do_nothing(index_elements=[Supplier.code]))
        sup = (await session.execute(select(Supplier).where(Supplier.code == code))).scalar_one()
    return sup


def _lot_by_number(number: str, *, lock: bool = False) -> Any:
    """The lot; `lock`: locked and read again (PostgreSQL: FOR NO KEY UPDATE, the lock a change of the lot's status or
    quantity takes; a recall that only records the lot in its scope, a key-share lock, is not held up by it)."""
    q = select(Lot).where(Lot.number == number)
    return q.with_for_update(of=Lot, key_share=True).execution_options(populate_existing=True) if lock else q


async def get_lot(session: AsyncSession, number: str, *, lock: bool = False) -> Lot:
    lot = (await session.execute(_lot_by_number(number, lock=lock))).scalar()
    if lot is None:
        raise NotFound(f"lot {number!r} does not exist: check the lot number", field="lot")
    return lot


async def find_work_order(session: AsyncSession, number: str) -> WorkOrder | None:
    return (await session.execute(select(WorkOrder).where(WorkOrder.number == number))).scalar()


async def get_work_order(session: AsyncSession, number: str) -> WorkOrder:
    wo = await find_work_order(session, number)
    if wo is None:
        raise NotFound(f"work order {number!r} does not exist: check the number or send the ERP release first",
                       field="number")
    return wo


async def check_release(
    session: AsyncSession, *, number: str, item: str, gtin: str | None, output_lot: str,
    receipts: list[Any] = (),
) -> None:
    """What create_work_order and the intake would refuse, checked before the work order's workflow starts, so a
    refused release starts nothing and stores nothing (a corrected resend is then a release, not a duplicate).
    Conflict naming the event's field (`work_order.<field>`); read-only."""
    wo = await find_work_order(session, number)
    it = (await session.execute(select(Item).where(Item.code == item))).scalar()
    if gtin and (it is None or not it.gtin):
        try:
            await _refuse_gtin_of_another_item(session, gtin, item)
        except Conflict as exc:
            raise Conflict(f"work_order.gtin: {exc.message}", field="work_order.gtin") from None
    lot = (await session.execute(select(Lot).where(Lot.number == output_lot))).scalar()
    if lot is not None and (wo is None or lot.work_order_id != wo.id or lot.kind != "output"):
        owner = (await session.execute(select(WorkOrder.number).where(WorkOrder.id == lot.work_order_id))).scalar() \
            if lot.work_order_id is not None else None
        what = f"the output lot of work order {owner}" if owner and lot.kind == "output" else \
            f"a {lot.kind} lot" + (f" of work order {owner}" if owner else "")
        raise Conflict(f"work_order.output_lot: lot {output_lot!r} already exists as {what}: give this work order "
                       "its own output lot number (output_lot)", field="work_order.output_lot")
    for i, r in enumerate(receipts):
        for j, line in enumerate(r.lots):
            field = f"work_order.receipts[{i}].lots[{j}]"
            got = (await session.execute(select(Lot).where(Lot.number == line.lot))).scalar()
            if got is not None and got.receipt != r.receipt:
                raise Conflict(f"{field}.lot: lot {line.lot!r} was already received"
                               + (f" on receipt {got.receipt!r}" if got.receipt else f" as a {got.kind} lot")
                               + ": give this receipt line its own lot number", field=f"{field}.lot")
            mat = (await session.execute(select(Item).where(Item.code == line.item))).scalar()
            if line.gtin and (mat is None or not mat.gtin):
                try:
                    await _refuse_gtin_of_another_item(session, line.gtin, line.item)
                except Conflict as exc:
                    raise Conflict(f"{field}.gtin: {exc.message}", field=f"{field}.gtin") from None


async def create_work_order(
    session: AsyncSession,
    *,
    number: str,
    workflow_id: str,
    item: str,
    item_name: str | None,
    gtin: str | None,
    quantity: int,
    uom: str,
    line: str | None,
    due_date: datetime | None,
    routing: list[dict[str, Any]],
    sales_order: str | None,
    customer: str | None,
    actor: str | None = None,
) -> WorkOrder:
    """Idempotent on the work-order number. `actor`: who released it (the API token or login, the signed webhook
    or the ERP poll that brought the release); `erp` when not known (releases from before it was recorded)."""
    wo = await find_work_order(session, number)
    if wo is not None:
        return wo
    it = await upsert_item(session, item, name=item_name, gtin=gtin, uom=uom)
    wo = WorkOrder(
        number=number,
        workflow_id=workflow_id,
        item_id=it.id,
        quantity=quantity,
        uom=uom,
        line=line,
        due_date=due_date,
        routing=routing,
        sales_order=sales_order,
        customer=customer,
    )
    session.add(wo)
    await session.flush()
    await audit(
        session, actor=actor or "erp", action="work_order.released", entity="work_order", key=number,
        changes={"item": item, "quantity": quantity, "routing": routing,
                 **diff(None, {"item": item, "quantity": quantity, "routing": routing})},
    )
    return wo


async def set_stage(session: AsyncSession, number: str, stage: str, *, status: str | None = None,
                    actor: str = "workflow") -> None:
    wo = await get_work_order(session, number)
    if wo.stage != stage or (status and wo.status != status):
        before = {"stage": wo.stage, "status": wo.status}
        wo.stage = stage
        if status:
            wo.status = status
        elif wo.status == "released":
            wo.status = "in_progress"
        await session.flush()
        await audit(session, actor=actor, action="work_order.stage", entity="work_order", key=number,
                    changes=diff(before, {"stage": wo.stage, "status": wo.status}))


async def receive_lot(
    session: AsyncSession,
    *,
    work_order: WorkOrder | None,
    receipt: str,
    received_at: datetime | None,
    lot: str,
    supplier: str,
    item: str,
    supplier_lot: str,
    heat_number: str | None,
    quantity: float,
    uom: str,
    certificate_ref: str | None,
    location: str | None,
    resolver: str,
    purchase_order: str | None = None,
    gtin: str | None = None,
    actor: str | None = None,
) -> Lot:
    """Record a received lot in quarantine. Idempotent on the lot number; a clash is refused.
    `purchase_order`: our purchase order the receipt line delivers, when the ERP names it; `gtin`: the item's
    GTIN as the supplier labels it (recorded on the item when it has none: a GTIN belongs to one item); `actor`:
    who sent the receipt (`erp` when not known)."""
    existing = (await session.execute(select(Lot).where(Lot.number == lot))).scalar()
    if existing is not None:
        if existing.receipt != receipt:
            raise Conflict(
                f"lot {lot!r} was already received on receipt {existing.receipt!r}: give this receipt line "
                "its own lot number"
            )
        return existing
    it = await upsert_item(session, item, uom=uom, gtin=gtin)
    sup = await upsert_supplier(session, supplier)
    row = Lot(
        number=lot, kind="material", item_id=it.id, supplier_id=sup.id, supplier_lot=supplier_lot,
        heat_number=heat_number, certificate_ref=certificate_ref, receipt=receipt, quantity=quantity,
        quantity_remaining=quantity, uom=uom, status=LotStatus.quarantine, location=location,
        work_order_id=work_order.id if work_order else None,
    )
    session.add(row)
    await session.flush()
    await session.refresh(row, ["item", "supplier"])
    await record_event(
        session, key=f"receive:{lot}", event_type="ObjectEvent", biz_step="receiving",
        disposition="in_progress", event_time=received_at,
        quantity_list=[{"epcClass": lot_class_uri(row, resolver), "quantity": quantity}],
        biz_transactions=[("recadv", hub_uri("receipt", receipt))]
        + ([("po", hub_uri("purchaseorder", purchase_order))] if purchase_order else [])
        + ([("prodorder", hub_uri("workorder", work_order.number))] if work_order else []),
        source_list=[{"type": "owning_party", "source": hub_uri("supplier", supplier)}],
        biz_location=hub_uri("location", location) if location else None,
        extensions={"supplierLot": supplier_lot, "heatNumber": heat_number, "certificate": certificate_ref},
        # the mill certificate the lot came with (EPCIS 2.0 certificationInfo: not part of the event hash)
        certification_info=hub_uri("certificate", quote(certificate_ref, safe="-._~")) if certificate_ref else None,
        lot=row, work_order_id=work_order.id if work_order else None,
    )
    await audit(
        session, actor=actor or "erp", action="lot.received", entity="lot", key=lot,
        changes=diff(None, {"status": LotStatus.quarantine, "item": item, "supplier": supplier,
                            "supplier_lot": supplier_lot, "heat_number": heat_number, "quantity": quantity,
                            "uom": uom, "receipt": receipt, "location": location},
                     status=LotStatus.quarantine, supplier=supplier, supplier_lot=supplier_lot,
                     heat_number=heat_number, quantity=quantity, receipt=receipt),
    )
    return row


async def set_lot_status(
    session: AsyncSession, lot: Lot, status: str, *, actor: str, why: str, concession: str | None = None
) -> None:
    if lot.status == status and (concession is None or lot.concession == concession):
        return
    before = lot.status
    before_concession = lot.concession
    lot.status = status
    if concession is not None:
        lot.concession = concession
    await session.flush()
    # "status": [before, after] is the older shape that readers of this entry still use
    await audit(
        session, actor=actor, action="lot.status", entity="lot", key=lot.number,
        changes={"status": [before, status], "why": why, **({"concession": concession} if concession else {}),
                 **diff({"status": before, "concession": before_concession},
                        {"status": status, "concession": lot.concession})},
    )


async def ensure_output_lot(session: AsyncSession, wo: WorkOrder, lot_number: str) -> Lot:
    lot = (await session.execute(select(Lot).where(Lot.number == lot_number))).scalar()
    if lot is None:
        lot = Lot(
            number=lot_number, kind="output", item_id=wo.item_id, quantity=0, quantity_remaining=0,
            uom=wo.uom, status=LotStatus.quarantine, work_order_id=wo.id, location=wo.line,
        )
        session.add(lot)
        await session.flush()
        await session.refresh(lot, ["item", "supplier"])
        await audit(session, actor="workflow", action="lot.created", entity="lot", key=lot_number,
                    changes=diff(None, {"kind": "output", "item": lot.item.code, "status": lot.status,
                                        "quantity": 0, "work_order": wo.number, "location": wo.line}))
    elif lot.work_order_id != wo.id:
        raise Conflict(f"output lot {lot_number!r} belongs to another work order: choose another lot number")
    return lot


async def check_consumable(session: AsyncSession, consumed: list[tuple[str, float]]) -> list[Lot]:
    """Refuse consumption of a lot that is not released, has too little left, or is in an open recall's scope
    (from the moment the recall records it, before its hold is set); names the lot. Each lot is locked
    (_lot_by_number), so a recall's hold waits for the consumption or is seen by it."""
    from domain import holds

    lots = []
    for number, qty in consumed:
        lot = (await session.execute(_lot_by_number(number, lock=True))).scalar()
        if lot is None:
            raise InvalidInput(f"consumed lot {number!r} does not exist: check the lot number", field="consumed")
        if recalls := await holds.recall_holds(session, lot.id):
            raise Conflict(f"lot {number!r} is recalled ({', '.join(recalls)}) and may not be consumed until a "
                           "reviewer releases it", field="consumed")
        if lot.status != LotStatus.released:
            raise Conflict(
                f"lot {number!r} is {lot.status}, not released: only released lots may be consumed",
                field="consumed",
            )
        if qty > lot.quantity_remaining + 1e-9:
            raise Conflict(
                f"lot {number!r} has {lot.quantity_remaining:g} {lot.uom} left; the report consumes {qty:g}",
                field="consumed",
            )
        lots.append(lot)
    return lots


async def record_operation(
    session: AsyncSession,
    *,
    work_order: str,
    output_lot: str,
    operation_name: str,
    rework: bool,
    report: Any,
    resolver: str,
) -> OperationRecord:
    """Record an operation report: consumption, genealogy edges and the operation. Idempotent on report_id."""
    existing = (
        await session.execute(select(OperationRecord).where(OperationRecord.report_id == report.report_id))
    ).scalar()
    if existing is not None:
        return existing
    wo = await get_work_order(session, work_order)
    out = await ensure_output_lot(session, wo, output_lot)
    consumed = [(c.lot, c.quantity) for c in report.consumed]
    inputs = await check_consumable(session, consumed)
    # the audit actor is who sent the report (the login, or the MES bridge); the operator it names is data.
    # Reports signalled before the hub carried the sender name the placeholder actor, never the body's operator
    reporter = getattr(report, "reported_by", None) or PLACEHOLDER_ACTOR
    op = OperationRecord(
        report_id=report.report_id, work_order_id=wo.id, output_lot_id=out.id, seq=report.seq,
        name=operation_name, rework=rework, equipment=report.equipment, operator=report.operator,
        shift=report.shift, started_at=report.started_at, ended_at=report.ended_at,
        parameters=dict(report.parameters), consumed=[{"lot": n, "quantity": q} for n, q in consumed],
        good_quantity=report.good_quantity, scrap_quantity=report.scrap_quantity,
    )
    session.add(op)
    await session.flush()
    in_q = []
    lots_before = {lot.number: {"quantity_remaining": lot.quantity_remaining} for lot in inputs}
    lots_before[out.number] = {"quantity": out.quantity, "quantity_remaining": out.quantity_remaining}
    for lot, (_, qty) in zip(inputs, consumed, strict=True):
        lot.quantity_remaining = max(0.0, lot.quantity_remaining - qty)
        if lot.quantity_remaining <= 1e-9:
            await set_lot_status(session, lot, LotStatus.consumed, actor=reporter,
                                 why=f"fully consumed by {work_order} op {report.seq}")
        session.add(LotEdge(parent_lot_id=lot.id, child_lot_id=out.id, operation_record_id=op.id, quantity=qty))
        in_q.append({"epcClass": lot_class_uri(lot, resolver), "quantity": qty})
    # the lot's quantity is what the latest pass through the routing yielded
    out.quantity = float(report.good_quantity)
    out.quantity_remaining = float(report.good_quantity)
    await session.flush()
    await record_event(
        session, key=f"operation:{report.report_id}", event_type="TransformationEvent",
        biz_step="commissioning" if report.seq == min(o["seq"] for o in wo.routing) and not rework
        else "creating_class_instance",
        disposition="in_progress", event_time=report.ended_at,
        input_quantity_list=in_q or None,
        output_quantity_list=[{"epcClass": lot_class_uri(out, resolver), "quantity": report.good_quantity}],
        # one transformation per output lot: every operation on it (and its rework) is a step of it
        transformation_id=hub_uri("transformation", out.number),
        biz_transactions=[("prodorder", hub_uri("workorder", work_order))],
        read_point=hub_uri("equipment", report.equipment),
        extensions={"operation": {"seq": report.seq, "name": operation_name, "rework": rework,
                                  "operator": report.operator, "shift": report.shift,
                                  "startedAt": report.started_at.isoformat(),
                                  "parameters": dict(report.parameters),
                                  "goodQuantity": report.good_quantity,
                                  "scrapQuantity": report.scrap_quantity}},
        lot=out, work_order_id=wo.id,
    )
    await audit(
        session, actor=reporter, action="operation.recorded", entity="work_order", key=work_order,
        changes={"report_id": report.report_id, "seq": report.seq, "equipment": report.equipment,
                 "operator": report.operator,
                 "consumed": op.consumed, "good": report.good_quantity, "scrap": report.scrap_quantity,
                 # the lots' quantities this operation changed
                 **diff({"lots": lots_before},
                        {"lots": {**{lot.number: {"quantity_remaining": lot.quantity_remaining} for lot in inputs},
                                  out.number: {"quantity": out.quantity,
                                               "quantity_remaining": out.quantity_remaining}}})},
    )
    return op


async def complete_work_order(
    session: AsyncSession, number: str, *, status: str, good_quantity: int, scrap_quantity: int,
    erp: dict[str, str] | None = None,
) -> WorkOrder:
    """`erp`: what the ERP was told, or why not, by document (kept in the completion's audit entry)."""
    wo = await get_work_order(session, number)
    if wo.completed_at is None:
        before = {"status": wo.status, "stage": wo.stage, "good": wo.good_quantity, "scrap": wo.scrap_quantity}
        wo.status = status
        wo.stage = "done"
        wo.good_quantity = good_quantity
        wo.scrap_quantity = scrap_quantity
        wo.completed_at = utcnow()
        await session.flush()
        await audit(session, actor="workflow", action="work_order.completed", entity="work_order", key=number,
                    changes={"status": status, "good": good_quantity, "scrap": scrap_quantity,
                             **({"erp": dict(erp)} if erp else {}),
                             **diff(before, {"status": status, "stage": "done", "good": good_quantity,
                                             "scrap": scrap_quantity})})
    return wo


async def record_retry(session: AsyncSession, number: str, *, actor: str, retried: list[str],
                       reason: str | None) -> None:
    """Audit an admin's retry of what a work order waited on after a refusal."""
    await audit(session, actor=actor, action="work_order.retry", entity="work_order", key=number,
                changes={"retried": list(retried), **({"reason": reason} if reason else {})})
