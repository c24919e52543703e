"""The MES around the work order: messages the hub refused (kept with their reason, never dropped
silently), whether an operation report was recorded already, and what a work order consumed (for the
ERP's stock entries)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import Lot, LotEdge, OperationRecord, WorkOrder, utcnow
from domain.models_mes import MesRejectedMessage


def _digest(source: str, topic: str | None, body: Any) -> str:
    raw = body if isinstance(body, str) else json.dumps(body, sort_keys=True, default=str)
    return hashlib.sha256(f"{source}\n{topic or ''}\n{raw}".encode()).hexdigest()


async def record_rejection(session: AsyncSession, *, source: str, endpoint: str | None, topic: str | None,
                           kind: str, body: Any, reason: str, field: str | None = None,
                           work_order: str | None = None, message_id: str | None = None) -> MesRejectedMessage:
    """Keep a refused MES message with its reason. The same message again (a broker redelivers what was
    not acknowledged) counts up `times` on its row instead of adding one."""
    digest = _digest(source, topic, body)
    q = select(MesRejectedMessage).where(MesRejectedMessage.digest == digest)
    row = (await session.execute(q)).scalar()
    if row is None:
        row = MesRejectedMessage(
            digest=digest, source=source, endpoint=endpoint, topic=topic, kind=kind,
            work_order=(work_order or None) and str(work_order)[:64], message_id=(message_id or None) and
            str(message_id)[:128], field=field and field[:200], reason=reason,
            payload={"text": body} if isinstance(body, str) else {"json": body}, times=1)
        try:
            async with session.begin_nested():
                session.add(row)
            return row
        except IntegrityError:
            row = (await session.execute(q)).scalar_one()
    row.times += 1
    row.last_at = utcnow()
    row.reason, row.field = reason, field and field[:200]
    await session.flush()
    return row


async def list_rejections(session: AsyncSession, *, work_order: str | None = None, endpoint: str | None = None,
                          limit: int = 50, offset: int = 0) -> tuple[int, list[MesRejectedMessage]]:
    q = select(MesRejectedMessage)
    if work_order:
        q = q.where(MesRejectedMessage.work_order == work_order)
    if endpoint:
        q = q.where(MesRejectedMessage.endpoint == endpoint)
    total = (await session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await session.execute(q.order_by(MesRejectedMessage.last_at.desc(), MesRejectedMessage.id.desc())
                                  .limit(limit).offset(offset))).scalars().all()
    return total, list(rows)


async def report_recorded(session: AsyncSession, report_id: str) -> str | None:
    """The work order an operation report with this id was recorded for, or None."""
    q = (select(WorkOrder.number).join(OperationRecord, OperationRecord.work_order_id == WorkOrder.id)
         .where(OperationRecord.report_id == report_id))
    return (await session.execute(q)).scalar()


async def consumption(session: AsyncSession, work_order: str) -> list[dict[str, Any]]:
    """What the work order's operations consumed, per input lot: the lot (the ERP's batch), its item, the
    quantity and unit. From the genealogy the operation reports wrote (domain/production.py)."""
    q = (select(LotEdge.parent_lot_id, func.sum(LotEdge.quantity))
         .join(OperationRecord, OperationRecord.id == LotEdge.operation_record_id)
         .join(WorkOrder, WorkOrder.id == OperationRecord.work_order_id)
         .where(WorkOrder.number == work_order)
         .group_by(LotEdge.parent_lot_id))
    totals = {lot_id: float(qty or 0) for lot_id, qty in (await session.execute(q)).all()}
    if not totals:
        return []
    lots = (await session.execute(select(Lot).where(Lot.id.in_(totals)).order_by(Lot.number))).scalars().all()
    return [{"lot": lot.number, "item": lot.item.code, "quantity": totals[lot.id], "uom": lot.uom}
            for lot in lots if totals[lot.id] > 0]
