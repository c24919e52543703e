"""Supplier returns: the hub's own record of material an NCR sends back to its supplier (return_to_supplier)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base, utcnow


class SupplierReturn(Base):
    """One per NCR decided return_to_supplier: requested -> erp_notified (the ERP acknowledged the purchase
    return) -> shipped (a QA supervisor verified the material went back)."""

    __tablename__ = "supplier_return"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(80), unique=True)
    ncr_id: Mapped[int] = mapped_column(ForeignKey("ncr.id"), unique=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    supplier: Mapped[str | None] = mapped_column(String(80), index=True)
    supplier_lot: Mapped[str | None] = mapped_column(String(80))
    quantity: Mapped[float] = mapped_column(Float, default=0)
    uom: Mapped[str] = mapped_column(String(10), default="EA")
    reason: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="requested", index=True)
    erp_document: Mapped[str | None] = mapped_column(String(140))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
