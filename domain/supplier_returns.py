"""Supplier returns: what a return_to_supplier disposition sends back, from request to shipment.

requested     created with the disposition, in the same transaction (idempotent on the NCR)
erp_notified  the ERP acknowledged the purchase return (its document is kept)
shipped       a QA supervisor's signed verification of the NCR says the material went back
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import InvalidInput, NotFound
from domain.audit import audit, diff
from domain.models import Lot, Ncr, utcnow
from domain.models_supplier_return import SupplierReturn

STATUSES = ("requested", "erp_notified", "shipped")


def number_for(ncr: str) -> str:
    return f"RTS-{ncr}"


def _snapshot(r: SupplierReturn) -> dict[str, Any]:
    return {"status": r.status, "erp_document": r.erp_document, "quantity": r.quantity, "uom": r.uom,
            "supplier": r.supplier, "supplier_lot": r.supplier_lot, "reason": r.reason}


async def _of_ncr(session: AsyncSession, ncr_id: int) -> SupplierReturn | None:
    return (await session.execute(select(SupplierReturn).where(SupplierReturn.ncr_id == ncr_id))).scalar()


async def request_return(session: AsyncSession, *, ncr: Ncr, lot: Lot, quantity: float, reason: str,
                         actor: str = "system") -> SupplierReturn:
    """The supplier return of an NCR decided return_to_supplier. Idempotent on the NCR: a retried activity
    finds the one it created."""
    existing = await _of_ncr(session, ncr.id)
    if existing is not None:
        return existing
    r = SupplierReturn(number=number_for(ncr.number), ncr_id=ncr.id, lot_id=lot.id,
                       supplier=lot.supplier.code if lot.supplier else None, supplier_lot=lot.supplier_lot,
                       quantity=quantity, uom=lot.uom, reason=reason or "", status="requested")
    session.add(r)
    await session.flush()
    await audit(session, actor=actor, action="supplier_return.requested", entity="supplier_return", key=r.number,
                changes=diff(None, {**_snapshot(r), "ncr": ncr.number, "lot": lot.number}))
    return r


async def erp_acknowledged(session: AsyncSession, *, ncr: str, document: str | None) -> SupplierReturn | None:
    """The ERP acknowledged the NCR's purchase return: keep its document; `requested` becomes `erp_notified`
    (a return already shipped stays shipped). None when the NCR has no supplier return (an older NCR)."""
    r = (await session.execute(
        select(SupplierReturn).join(Ncr, Ncr.id == SupplierReturn.ncr_id).where(Ncr.number == ncr))).scalar()
    if r is None:
        return None
    before = _snapshot(r)
    if r.status == "requested":
        r.status = "erp_notified"
    if document and r.erp_document != document:
        r.erp_document = document
    after = _snapshot(r)
    if after != before:
        r.updated_at = utcnow()
        await session.flush()
        await audit(session, actor="system", action="supplier_return.erp_notified", entity="supplier_return",
                    key=r.number, changes=diff(before, after, ncr=ncr))
    return r


async def mark_shipped(session: AsyncSession, *, ncr: Ncr, actor: str, note: str = "") -> SupplierReturn | None:
    """The NCR's verification (signed by a QA supervisor) records the material was shipped back."""
    r = await _of_ncr(session, ncr.id)
    if r is None or r.status == "shipped":
        return r
    before = _snapshot(r)
    r.status = "shipped"
    r.updated_at = utcnow()
    await session.flush()
    await audit(session, actor=actor, action="supplier_return.shipped", entity="supplier_return", key=r.number,
                changes=diff(before, _snapshot(r), ncr=ncr.number, note=note))
    return r


def _query() -> Any:
    return (select(SupplierReturn, Ncr.number, Lot.number)
            .join(Ncr, Ncr.id == SupplierReturn.ncr_id).join(Lot, Lot.id == SupplierReturn.lot_id))


def _read(r: SupplierReturn, ncr: str, lot: str) -> dict[str, Any]:
    return {"number": r.number, "ncr": ncr, "lot": lot, "supplier": r.supplier, "supplier_lot": r.supplier_lot,
            "quantity": r.quantity, "uom": r.uom, "reason": r.reason, "status": r.status,
            "erp_document": r.erp_document, "created_at": r.created_at.isoformat(),
            "updated_at": r.updated_at.isoformat()}


async def list_returns(session: AsyncSession, *, supplier: str | None = None, status: str | None = None,
                       limit: int = 100) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise InvalidInput(f"status {status!r} is not one of {', '.join(STATUSES)}: filter by one of them",
                           field="status")
    q = _query().order_by(SupplierReturn.id.desc()).limit(limit)
    if supplier:
        q = q.where(SupplierReturn.supplier == supplier)
    if status:
        q = q.where(SupplierReturn.status == status)
    return [_read(r, n, lot) for r, n, lot in (await session.execute(q)).all()]


async def get_return(session: AsyncSession, number: str) -> dict[str, Any]:
    row = (await session.execute(_query().where(SupplierReturn.number == number))).first()
    if row is None:
        raise NotFound(f"supplier return {number!r} does not exist: list them at GET /api/supplier-returns",
                       field="number")
    return _read(*row)
