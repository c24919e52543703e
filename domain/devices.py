"""Device data and certificates: what equipment and suppliers' services told the hub. Every write is
idempotent on its business key, so a retried activity or a resumed sampler never doubles a row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from domain.audit import audit, diff
from domain.models import ErpEvent, Inspection, utcnow
from domain.models_connectors import (
    CertificateCheck,
    EquipmentState,
    ErpPollCursor,
    MaterialCertificate,
    ProcessReading,
)
from domain.production import get_lot, get_work_order


async def store_certificate(session: AsyncSession, *, endpoint: str, heat_number: str, supplier: str | None,
                            certificate_no: str | None, grade: str | None, values: dict[str, Any],
                            document: dict[str, Any]) -> MaterialCertificate:
    row = (await session.execute(select(MaterialCertificate).where(
        MaterialCertificate.endpoint == endpoint, MaterialCertificate.heat_number == heat_number))).scalar()
    if row is None:
        row = MaterialCertificate(endpoint=endpoint, heat_number=heat_number)
        session.add(row)
    row.supplier, row.certificate_no, row.grade = supplier, certificate_no, grade
    row.values, row.document, row.fetched_at = values, document, utcnow()
    await session.flush()
    return row


async def record_certificate_check(session: AsyncSession, *, lot: str, certificate: MaterialCertificate | None,
                                   verdict: str, failures: list[str]) -> CertificateCheck:
    """The lot's certificate verdict; idempotent on the lot (the first verdict stands)."""
    lot_row = await get_lot(session, lot)
    existing = (await session.execute(select(CertificateCheck).where(CertificateCheck.lot_id == lot_row.id))).scalar()
    if existing is not None:
        return existing
    row = CertificateCheck(lot_id=lot_row.id, certificate_id=certificate.id if certificate else None,
                           verdict=verdict, failures=failures)
    session.add(row)
    before = {"certificate_check": None, "certificate_ref": lot_row.certificate_ref}
    if certificate is not None and not lot_row.certificate_ref:
        lot_row.certificate_ref = certificate.certificate_no
    await session.flush()
    after = {"certificate_check": verdict, "certificate_ref": lot_row.certificate_ref}
    await audit(session, actor="system", action=f"certificate.{verdict}", entity="lot", key=lot,
                changes=diff(before, after, certificate=certificate.certificate_no if certificate else None,
                             heat_number=certificate.heat_number if certificate else None, failures=failures))
    return row


async def record_reading(session: AsyncSession, *, work_order: str, seq: int, run: int, parameter: str,
                         phase: str, sample: int, endpoint: str, point: str, value: Any, unit: str | None,
                         lower: float | None, upper: float | None, in_window: bool | None,
                         at: datetime | None = None) -> ProcessReading:
    """One process reading; a second write of the same (work order, op, run, parameter, phase, sample)
    returns the first."""
    wo = await get_work_order(session, work_order)
    key = (ProcessReading.work_order_id == wo.id, ProcessReading.seq == seq, ProcessReading.run == run,
           ProcessReading.parameter == parameter, ProcessReading.phase == phase, ProcessReading.sample == sample)
    existing = (await session.execute(select(ProcessReading).where(*key))).scalar()
    if existing is not None:
        return existing
    numeric = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
    row = ProcessReading(work_order_id=wo.id, seq=seq, run=run, parameter=parameter, phase=phase, sample=sample,
                         endpoint=endpoint, point=point, value=numeric, raw={"value": value}, unit=unit,
                         lower=lower, upper=upper, in_window=in_window, at=at or utcnow())
    try:
        async with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return (await session.execute(select(ProcessReading).where(*key))).scalar_one()
    return row


async def readings(session: AsyncSession, work_order: str) -> list[ProcessReading]:
    wo = await get_work_order(session, work_order)
    q = (select(ProcessReading).where(ProcessReading.work_order_id == wo.id)
         .order_by(ProcessReading.seq, ProcessReading.run, ProcessReading.parameter, ProcessReading.phase,
                   ProcessReading.sample))
    return list((await session.execute(q)).scalars())


async def skip_inspection(session: AsyncSession, *, number: str, reason: str) -> None:
    """An inspection that will not be performed (its lot was rejected first); idempotent."""
    ins = (await session.execute(select(Inspection).where(Inspection.number == number))).scalar()
    if ins is None or ins.status != "pending":
        return
    ins.status = "skipped"
    await session.flush()
    await audit(session, actor="system", action="inspection.skipped", entity="inspection", key=number,
                changes=diff({"status": "pending"}, {"status": ins.status}, reason=reason))


async def poll_watermark(session: AsyncSession, endpoint: str, doctype: str) -> str:
    row = (await session.execute(select(ErpPollCursor).where(
        ErpPollCursor.endpoint == endpoint, ErpPollCursor.doctype == doctype))).scalar()
    return row.watermark if row else ""


async def advance_watermark(session: AsyncSession, endpoint: str, doctype: str, watermark: str) -> None:
    row = (await session.execute(select(ErpPollCursor).where(
        ErpPollCursor.endpoint == endpoint, ErpPollCursor.doctype == doctype))).scalar()
    if row is None:
        row = ErpPollCursor(endpoint=endpoint, doctype=doctype, watermark="")
        session.add(row)
    row.watermark = max(row.watermark, watermark)
    row.polled_at = utcnow()
    await session.flush()


async def erp_event_seen(session: AsyncSession, event_id: str) -> bool:
    return (await session.execute(select(ErpEvent.id).where(ErpEvent.event_id == event_id))).scalar() is not None


async def remember_erp_event(session: AsyncSession, *, event_id: str, event_type: str, key: str,
                             workflow_id: str, payload: dict[str, Any]) -> bool:
    """Put an event in the ERP inbox; False when this event id is there already."""
    if (await session.execute(select(ErpEvent.id).where(ErpEvent.event_id == event_id))).scalar() is not None:
        return False
    try:
        async with session.begin_nested():
            session.add(ErpEvent(event_id=event_id, event_type=event_type, business_key=key,
                                 workflow_id=workflow_id, payload=payload))
    except IntegrityError:
        return False
    return True


# the inbox's event types of ERP documents a poll could not use (activities/connectors.py poll_erp)
# the ERP inbox's event type of a polled document the hub could not use, by DocType
REJECTED_ERP_EVENT = {"Work Order": "work_order.rejected", "Purchase Receipt": "purchase_receipt.rejected"}
REJECTED_ERP_EVENTS = tuple(REJECTED_ERP_EVENT.values())


async def erp_rejections(session: AsyncSession, endpoint: str, *, limit: int = 50,
                         offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
    """The ERP documents polling `endpoint` rejected, newest first, each with the field to fix and whether a
    later version of the same document has since been taken (`resolved`)."""
    where = (ErpEvent.event_type.in_(REJECTED_ERP_EVENTS),
             ErpEvent.event_id.startswith(f"poll:{endpoint}:", autoescape=True))
    total = (await session.execute(select(func.count()).select_from(ErpEvent).where(*where))).scalar_one()
    rows = (await session.execute(select(ErpEvent).where(*where).order_by(ErpEvent.id.desc())
                                  .limit(limit).offset(offset))).scalars().all()
    # a later version of each rejected document that was taken (one query for the page)
    prefixes = {r.id: f"poll:{endpoint}:{(r.payload or {}).get('doctype')}:{(r.payload or {}).get('document')}:"
                for r in rows}
    later: list[tuple[int, str]] = []
    if rows:
        later = [tuple(x) for x in (await session.execute(select(ErpEvent.id, ErpEvent.event_id).where(
            ErpEvent.id > min(prefixes), ErpEvent.event_type.not_in(REJECTED_ERP_EVENTS),
            or_(*[ErpEvent.event_id.startswith(p, autoescape=True) for p in set(prefixes.values())])))).all()]
    out = []
    for r in rows:
        p = r.payload or {}
        taken = sum(1 for i, eid in later if i > r.id and eid.startswith(prefixes[r.id]))
        out.append({"event_id": r.event_id, "event_type": r.event_type, "doctype": p.get("doctype"),
                    "document": p.get("document"), "modified": p.get("modified"), "work_order": r.business_key,
                    "field": p.get("field"), "reason": p.get("reason"), "received_at": r.received_at.isoformat(),
                    "resolved": taken > 0})
    return total, out


async def record_equipment_state(session: AsyncSession, *, event_id: str, equipment: str, state: str,
                                 reason: str | None, work_order: str | None, source: str,
                                 at: datetime | None) -> bool:
    """False when this event was recorded before."""
    if (await session.execute(select(EquipmentState.id).where(EquipmentState.event_id == event_id))).scalar():
        return False
    try:
        async with session.begin_nested():
            session.add(EquipmentState(event_id=event_id, equipment=equipment, state=state, reason=reason,
                                       work_order=work_order, source=source, at=at or utcnow()))
    except IntegrityError:
        return False
    return True


async def equipment_state_seen(session: AsyncSession, event_id: str) -> bool:
    """True when an equipment state with this event id was recorded (it was delivered before)."""
    q = select(EquipmentState.id).where(EquipmentState.event_id == event_id)
    return (await session.execute(q)).scalar() is not None
