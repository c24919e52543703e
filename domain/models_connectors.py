"""Tables of the connectors area: material certificates and their checks, process readings (start/end
values and sampled curves), ERP poll cursors, and equipment states from the MES."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base, utcnow


class MaterialCertificate(Base):
    """A supplier's certificate for a heat (grade, chemistry, mechanical properties), as fetched."""

    __tablename__ = "material_certificate"
    __table_args__ = (UniqueConstraint("endpoint", "heat_number", name="uq_material_certificate_heat"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    heat_number: Mapped[str] = mapped_column(String(80), index=True)
    supplier: Mapped[str | None] = mapped_column(String(80))
    certificate_no: Mapped[str | None] = mapped_column(String(80))
    grade: Mapped[str | None] = mapped_column(String(40))
    values: Mapped[dict[str, Any]] = mapped_column(default=dict)  # flattened: chemistry.C, mechanical.*
    document: Mapped[dict[str, Any]] = mapped_column(default=dict)  # as the service answered
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)


class CertificateCheck(Base):
    """A received lot's certificate judged against the item's specification."""

    __tablename__ = "certificate_check"
    id: Mapped[int] = mapped_column(primary_key=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), unique=True)
    certificate_id: Mapped[int | None] = mapped_column(ForeignKey("material_certificate.id"))
    verdict: Mapped[str] = mapped_column(String(16))  # passed | failed | unavailable
    failures: Mapped[list[Any]] = mapped_column(default=list)
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)


class ProcessReading(Base):
    """One process value read from equipment during an operation (start, end, or one sample of a curve)."""

    __tablename__ = "process_reading"
    __table_args__ = (UniqueConstraint("work_order_id", "seq", "run", "parameter", "phase", "sample",
                                       name="uq_process_reading"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_order.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    run: Mapped[int] = mapped_column(Integer, default=1)  # 2, 3 ... for rework
    parameter: Mapped[str] = mapped_column(String(80))
    phase: Mapped[str] = mapped_column(String(16))  # start | end | during
    sample: Mapped[int] = mapped_column(Integer, default=0)
    endpoint: Mapped[str] = mapped_column(String(64))
    point: Mapped[str] = mapped_column(String(80))
    value: Mapped[float | None] = mapped_column(Float)
    raw: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the reading as the connector gave it
    unit: Mapped[str | None] = mapped_column(String(20))
    lower: Mapped[float | None] = mapped_column(Float)
    upper: Mapped[float | None] = mapped_column(Float)
    in_window: Mapped[bool | None] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ErpPollCursor(Base):
    """How far the hub has read an ERP's changes, per endpoint and document type."""

    __tablename__ = "erp_poll_cursor"
    __table_args__ = (UniqueConstraint("endpoint", "doctype", name="uq_erp_poll_cursor"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint: Mapped[str] = mapped_column(String(64))
    doctype: Mapped[str] = mapped_column(String(64))
    watermark: Mapped[str] = mapped_column(String(40), default="")
    polled_at: Mapped[datetime] = mapped_column(default=utcnow)


class EquipmentState(Base):
    """An equipment state reported by the MES (running, idle, down ...)."""

    __tablename__ = "equipment_state"
    __table_args__ = (UniqueConstraint("event_id", name="uq_equipment_state_event"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128))
    equipment: Mapped[str] = mapped_column(String(80), index=True)
    state: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(String(200))
    work_order: Mapped[str | None] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16))  # http | mqtt
    at: Mapped[datetime] = mapped_column(default=utcnow)
