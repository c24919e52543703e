"""Tables of the quality area: inspection plans (versioned per item and operation) and the acceptance
sampling switching state per supplier and item, with the lot results that moved it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from domain.models import Base, Item, utcnow


class InspectionPlan(Base):
    """One version of the plan of an item at an operation (`iqc`, `final`, a routing step ...). Saving a plan
    adds a version; versions are never changed."""

    __tablename__ = "inspection_plan"
    __table_args__ = (UniqueConstraint("item_id", "operation", "version", name="uq_inspection_plan_version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    operation: Mapped[str] = mapped_column(String(80))
    version: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(String(400))
    created_by: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    item: Mapped[Item] = relationship(lazy="joined")
    characteristics: Mapped[list[PlanCharacteristic]] = relationship(
        lazy="selectin", order_by="PlanCharacteristic.position")
    sampling: Mapped[list[PlanSampling]] = relationship(lazy="selectin", order_by="PlanSampling.id")


class PlanCharacteristic(Base):
    """A characteristic of a plan version: variable (measured against limits), attribute (pass/fail with
    defect codes) or visual (judged by eye, with a photo attached)."""

    __tablename__ = "inspection_plan_characteristic"
    __table_args__ = (UniqueConstraint("plan_id", "name", name="uq_inspection_plan_characteristic"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("inspection_plan.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(12))  # variable | attribute | visual
    severity: Mapped[str] = mapped_column(String(12))  # critical | major | minor
    nominal: Mapped[float | None] = mapped_column(Float)
    lower: Mapped[float | None] = mapped_column(Float)
    upper: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(20), default="")
    gauge: Mapped[str | None] = mapped_column(String(80))
    defect_codes: Mapped[list[Any]] = mapped_column(default=list)
    photo_required: Mapped[bool] = mapped_column(Boolean, default=False)


class PlanSampling(Base):
    """The AQL and inspection level a plan version samples with, per severity of its characteristics."""

    __tablename__ = "inspection_plan_sampling"
    __table_args__ = (UniqueConstraint("plan_id", "severity", name="uq_inspection_plan_sampling"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    plan_id: Mapped[int] = mapped_column(ForeignKey("inspection_plan.id"), index=True)
    severity: Mapped[str] = mapped_column(String(12))
    aql: Mapped[str] = mapped_column(String(8))  # as ISO 2859-1 prints it: "0.065", "1.0", "10"
    level: Mapped[str] = mapped_column(String(4))  # S-1..S-4, I, II, III


class SamplingState(Base):
    """Where a supplier's lots of an item stand in the ISO 2859-1 switching scheme (domain/sampling.py).

    Keyed by the codes, not by foreign keys: a plan can be asked for before the first lot arrives."""

    __tablename__ = "sampling_state"
    __table_args__ = (UniqueConstraint("supplier", "item", name="uq_sampling_state"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    supplier: Mapped[str] = mapped_column(String(80))
    item: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16), default="normal")  # normal|tightened|reduced|discontinued
    switching_score: Mapped[int] = mapped_column(Integer, default=0)
    recent_normal: Mapped[list[Any]] = mapped_column(default=list)
    tightened_accepted_run: Mapped[int] = mapped_column(Integer, default=0)
    tightened_not_accepted: Mapped[int] = mapped_column(Integer, default=0)
    lots: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SamplingLot(Base):
    """One lot judged by a sampling plan, with the severity it was inspected under and what it switched."""

    __tablename__ = "sampling_lot"
    id: Mapped[int] = mapped_column(primary_key=True)
    lot: Mapped[str] = mapped_column(String(64), unique=True)
    state_id: Mapped[int] = mapped_column(ForeignKey("sampling_state.id"), index=True)
    severity: Mapped[str] = mapped_column(String(16))
    lot_size: Mapped[int] = mapped_column(Integer)
    level: Mapped[str] = mapped_column(String(4))
    aql: Mapped[str] = mapped_column(String(8))
    code_letter: Mapped[str] = mapped_column(String(1))
    n: Mapped[int] = mapped_column(Integer)
    ac: Mapped[int] = mapped_column(Integer)
    re: Mapped[int] = mapped_column(Integer)
    nonconforming: Mapped[int] = mapped_column(Integer)
    accepted: Mapped[bool] = mapped_column(Boolean)
    switched_to: Mapped[str | None] = mapped_column(String(16))
    recorded_by: Mapped[str] = mapped_column(String(80))
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class SpcWarning(Base):
    """A Western Electric rule violation on the X-bar chart of a variable characteristic of an item, found when
    an inspection's measurements were recorded (domain/spc_warnings.py). A warning to the quality engineer, not
    an NCR: it holds no lot. Acknowledged once, by a quality role; never deleted."""

    __tablename__ = "spc_warning"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    characteristic: Mapped[str] = mapped_column(String(80))
    rule: Mapped[int] = mapped_column(Integer)  # 1..4, domain/spc.py RULES
    side: Mapped[str] = mapped_column(String(8))  # above | below the centre line
    # the subgroups that make up the pattern, oldest first: mean, range, and the measured values in them
    subgroups: Mapped[list[Any]] = mapped_column(default=list)
    chart: Mapped[dict[str, Any]] = mapped_column(default=dict)  # centre, limits, sigma of the chart it broke
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspection.id"), index=True)  # whose results completed it
    # the violation itself (item, characteristic, rule, side, the values of its completing subgroup): raised once
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_by: Mapped[str | None] = mapped_column(String(80))
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    acknowledge_note: Mapped[str | None] = mapped_column(String(400))
