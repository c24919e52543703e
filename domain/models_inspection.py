"""Tables of inspection triggers, the sampling an inspection was opened with, and photo attachments.

- `inspection_plan_trigger`: the trigger settings of one plan version (first-article, patrol every N units or
  minutes, outgoing before shipment), versioned with the plan: saving a plan adds a version of both.
- `work_order_inspection`: the triggers a work order runs with, taken once when it starts (so a plan saved
  while it runs does not change what it waits for, and the shipment gate judges it by the same settings).
- `inspection_sampling`: per inspection opened from a plan, the plan version, the trigger, and the ISO 2859-1
  sample size, acceptance and rejection numbers of each characteristic.
- `inspection_attachment`: photos of visual characteristics, stored in the database (see domain/attachments.py
  for why).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, backref, mapped_column, relationship

from domain.models import Base, utcnow
from domain.models_quality import InspectionPlan


class PlanTrigger(Base):
    __tablename__ = "inspection_plan_trigger"
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("inspection_plan.id"), unique=True)
    first_article: Mapped[bool] = mapped_column(Boolean, default=False)
    patrol_every_units: Mapped[int | None] = mapped_column(Integer)
    patrol_every_minutes: Mapped[float | None] = mapped_column(Float)
    outgoing: Mapped[bool] = mapped_column(Boolean, default=False)

    # `plan.trigger` from the plan's side (loaded with it), without changing domain/models_quality.py
    plan: Mapped[InspectionPlan] = relationship(
        backref=backref("trigger", uselist=False, lazy="selectin"), lazy="raise")


class WorkOrderInspection(Base):
    __tablename__ = "work_order_inspection"
    id: Mapped[int] = mapped_column(primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_order.id"), unique=True)
    outgoing_required: Mapped[bool] = mapped_column(Boolean, default=False)
    outgoing_plan_version: Mapped[int | None] = mapped_column(Integer)
    triggers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    taken_at: Mapped[datetime] = mapped_column(default=utcnow)


class InspectionSampling(Base):
    __tablename__ = "inspection_sampling"
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspection.id"), unique=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("inspection_plan.id"), index=True)
    plan_version: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))  # iqc | first_article | patrol | outgoing
    item: Mapped[str] = mapped_column(String(64))
    supplier: Mapped[str | None] = mapped_column(String(80))
    lot_size: Mapped[int] = mapped_column(Integer)
    severity: Mapped[str] = mapped_column(String(16))  # the ISO 2859-1 severity it was sampled under
    characteristics: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> kind, n, ac, re, photo...
    switching_recorded: Mapped[bool] = mapped_column(Boolean, default=False)


class InspectionAttachment(Base):
    __tablename__ = "inspection_attachment"
    __table_args__ = (UniqueConstraint("inspection_id", "characteristic", "sha256",
                                       name="uq_inspection_attachment"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspection.id"), index=True)
    characteristic: Mapped[str] = mapped_column(String(80))
    filename: Mapped[str | None] = mapped_column(String(200))
    content_type: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    uploaded_by: Mapped[str] = mapped_column(String(80))
    uploaded_at: Mapped[datetime] = mapped_column(default=utcnow)
