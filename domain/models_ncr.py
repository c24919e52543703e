"""Tables of the nonconformance review: the defect code catalogue, what an NCR says beyond its opening
(severity, defect codes, quantity, root cause, due time, escalation, verification), containment actions,
and corrective and preventive actions (CAPA) with their own actions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from domain.models import Base, utcnow


class DefectCode(Base):
    """The catalogue of defect codes an NCR is classified with."""

    __tablename__ = "ncr_defect_code"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(32), unique=True)
    description: Mapped[str] = mapped_column(String(200))
    default_severity: Mapped[str] = mapped_column(String(12))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_by: Mapped[str] = mapped_column(String(80), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class NcrReview(Base):
    """One per NCR (1:1 with `ncr`): the review's content and clocks."""

    __tablename__ = "ncr_review"
    id: Mapped[int] = mapped_column(primary_key=True)
    ncr_id: Mapped[int] = mapped_column(ForeignKey("ncr.id"), unique=True)
    severity: Mapped[str] = mapped_column(String(12), default="major", index=True)
    defect_codes: Mapped[list[Any]] = mapped_column(default=list)
    quantity_affected: Mapped[float | None] = mapped_column(Float)
    root_cause_category: Mapped[str | None] = mapped_column(String(16))
    root_cause: Mapped[str | None] = mapped_column(Text)
    capa_id: Mapped[int | None] = mapped_column(ForeignKey("capa.id"), index=True)
    timing: Mapped[dict[str, Any]] = mapped_column(default=dict)  # severity -> durations (seconds) of this NCR
    due_at: Mapped[datetime | None] = mapped_column(index=True)
    escalated_to: Mapped[str | None] = mapped_column(String(32))
    escalated_users: Mapped[list[Any]] = mapped_column(default=list)
    baseline_inspection_id: Mapped[int | None] = mapped_column(Integer)
    verification: Mapped[str | None] = mapped_column(String(16))  # verified | not_effective
    verified_by: Mapped[str | None] = mapped_column(String(120))
    verified_at: Mapped[datetime | None] = mapped_column()
    verification_note: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    capa: Mapped[Capa | None] = relationship(lazy="joined")


class NcrContainment(Base):
    """A containment action of an NCR: what is done now to protect the customer (sort, hold, quarantine)."""

    __tablename__ = "ncr_containment"
    __table_args__ = (UniqueConstraint("ncr_id", "seq", name="uq_ncr_containment_seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    ncr_id: Mapped[int] = mapped_column(ForeignKey("ncr.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(80))
    due_at: Mapped[datetime | None] = mapped_column()
    done_at: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Capa(Base):
    """A corrective and preventive action record: open -> in_progress -> effectiveness_check -> closed."""

    __tablename__ = "capa"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(32), unique=True)
    title: Mapped[str] = mapped_column(String(200))
    problem: Mapped[str] = mapped_column(Text)
    root_cause_category: Mapped[str | None] = mapped_column(String(16))
    root_cause: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(24), default="open", index=True)
    effectiveness_criteria: Mapped[str | None] = mapped_column(Text)
    effectiveness_result: Mapped[str | None] = mapped_column(Text)
    effective: Mapped[bool | None] = mapped_column(Boolean)
    checked_by: Mapped[str | None] = mapped_column(String(80))
    checked_at: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()

    actions: Mapped[list[CapaAction]] = relationship(lazy="selectin", order_by="CapaAction.seq")


class CapaAction(Base):
    __tablename__ = "capa_action"
    __table_args__ = (UniqueConstraint("capa_id", "seq", name="uq_capa_action_seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    capa_id: Mapped[int] = mapped_column(ForeignKey("capa.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(12))  # corrective | preventive
    description: Mapped[str] = mapped_column(Text)
    owner: Mapped[str] = mapped_column(String(80))
    due_at: Mapped[datetime] = mapped_column(index=True)
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | in_progress | done | cancelled
    done_at: Mapped[datetime | None] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
