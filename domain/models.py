"""SQLAlchemy 2 tables of the hub. One module: the aggregates reference each other heavily."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from core import secrets


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite hands back naive datetimes)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class SealedJSON(TypeDecorator):
    """A JSON document encrypted at rest with the installation's key (core/secrets.py): stored as one JSON string
    `enc:v1:<token>`; a document stored before encryption (a JSON object) still reads."""

    impl = JSON
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if value is None:
            return None
        return secrets.box().seal(json.dumps(value, sort_keys=True, default=str))

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if secrets.sealed(value):
            return json.loads(secrets.box().open(value))
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class Item(Base):
    __tablename__ = "item"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    gtin: Mapped[str | None] = mapped_column(String(14))
    uom: Mapped[str] = mapped_column(String(10), default="EA")


class ItemGtin(Base):
    """A GTIN an item held before a correction (PATCH /api/items/{code}, domain/items.py). Codes printed under it
    keep naming the item: the resolver and the trace look here when no item holds the GTIN now. A GTIN is in at
    most one row, and never both here and an item's current GTIN (the correction keeps it so)."""

    __tablename__ = "item_gtin"
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    gtin: Mapped[str] = mapped_column(String(14), unique=True)
    retired_at: Mapped[datetime] = mapped_column(default=utcnow)  # when it stopped being the item's GTIN
    replaced_by: Mapped[str | None] = mapped_column(String(14))
    retired_by: Mapped[str] = mapped_column(String(120))


class Supplier(Base):
    __tablename__ = "supplier"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(80), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))


class LotStatus:
    quarantine = "quarantine"
    released = "released"
    on_hold = "on_hold"
    rejected = "rejected"
    consumed = "consumed"
    shipped = "shipped"
    ALL = (quarantine, released, on_hold, rejected, consumed, shipped)


class Lot(Base):
    __tablename__ = "lot"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # material | output
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    supplier_id: Mapped[int | None] = mapped_column(ForeignKey("supplier.id"))
    supplier_lot: Mapped[str | None] = mapped_column(String(80))
    heat_number: Mapped[str | None] = mapped_column(String(80), index=True)
    certificate_ref: Mapped[str | None] = mapped_column(String(200))
    receipt: Mapped[str | None] = mapped_column(String(64))
    quantity: Mapped[float] = mapped_column(Float, default=0)
    quantity_remaining: Mapped[float] = mapped_column(Float, default=0)
    uom: Mapped[str] = mapped_column(String(10), default="EA")
    status: Mapped[str] = mapped_column(String(16), default=LotStatus.quarantine, index=True)
    concession: Mapped[str | None] = mapped_column(Text)  # why it was released under concession
    location: Mapped[str | None] = mapped_column(String(80))
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_order.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    item: Mapped[Item] = relationship(lazy="joined")
    supplier: Mapped[Supplier | None] = relationship(lazy="joined")


class WorkOrder(Base):
    __tablename__ = "work_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(128), unique=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"))
    quantity: Mapped[int] = mapped_column(Integer)
    uom: Mapped[str] = mapped_column(String(10), default="EA")
    line: Mapped[str | None] = mapped_column(String(80))
    due_date: Mapped[datetime | None] = mapped_column()
    routing: Mapped[list[Any]] = mapped_column(default=list)
    sales_order: Mapped[str | None] = mapped_column(String(64))
    customer: Mapped[str | None] = mapped_column(String(120))
    status: Mapped[str] = mapped_column(String(24), default="released", index=True)
    stage: Mapped[str] = mapped_column(String(32), default="material_intake")
    good_quantity: Mapped[int] = mapped_column(Integer, default=0)
    scrap_quantity: Mapped[int] = mapped_column(Integer, default=0)
    released_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column()

    item: Mapped[Item] = relationship(lazy="joined")


class OperationRecord(Base):
    __tablename__ = "operation_record"
    id: Mapped[int] = mapped_column(primary_key=True)
    report_id: Mapped[str] = mapped_column(String(64), unique=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_order.id"), index=True)
    output_lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(80))
    rework: Mapped[bool] = mapped_column(Boolean, default=False)
    equipment: Mapped[str] = mapped_column(String(80), index=True)
    operator: Mapped[str] = mapped_column(String(80), index=True)
    shift: Mapped[str | None] = mapped_column(String(40))
    started_at: Mapped[datetime] = mapped_column()
    ended_at: Mapped[datetime] = mapped_column()
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    consumed: Mapped[list[Any]] = mapped_column(default=list)
    good_quantity: Mapped[int] = mapped_column(Integer)
    scrap_quantity: Mapped[int] = mapped_column(Integer, default=0)
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)


class LotEdge(Base):
    """Genealogy: `parent` (consumed) went into `child` (produced) in one operation."""

    __tablename__ = "lot_edge"
    __table_args__ = (UniqueConstraint("parent_lot_id", "child_lot_id", "operation_record_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    child_lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    operation_record_id: Mapped[int] = mapped_column(ForeignKey("operation_record.id"))
    quantity: Mapped[float] = mapped_column(Float)


class Inspection(Base):
    __tablename__ = "inspection"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(80), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # iqc | final
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_order.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # pending|passed|failed
    inspector: Mapped[str | None] = mapped_column(String(80))
    result_id: Mapped[str | None] = mapped_column(String(80))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    inspected_at: Mapped[datetime | None] = mapped_column()

    lot: Mapped[Lot] = relationship(lazy="joined")
    characteristics: Mapped[list[CharacteristicResult]] = relationship(
        lazy="selectin", order_by="CharacteristicResult.id"
    )


class CharacteristicResult(Base):
    __tablename__ = "characteristic_result"
    id: Mapped[int] = mapped_column(primary_key=True)
    inspection_id: Mapped[int] = mapped_column(ForeignKey("inspection.id"), index=True)
    name: Mapped[str] = mapped_column(String(80))
    nominal: Mapped[float | None] = mapped_column(Float)
    lower: Mapped[float | None] = mapped_column(Float)
    upper: Mapped[float | None] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(20), default="")
    sample_size: Mapped[int] = mapped_column(Integer, default=1)
    values: Mapped[list[Any] | None] = mapped_column()
    verdict: Mapped[str | None] = mapped_column(String(16))


class Ncr(Base):
    __tablename__ = "ncr"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(80), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(128), unique=True)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_order.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    inspection_id: Mapped[int | None] = mapped_column(ForeignKey("inspection.id"))
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)
    description: Mapped[str] = mapped_column(Text)
    disposition: Mapped[str | None] = mapped_column(String(24))
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)
    reminded_at: Mapped[datetime | None] = mapped_column()
    escalated_at: Mapped[datetime | None] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()

    lot: Mapped[Lot] = relationship(lazy="joined")
    decisions: Mapped[list[NcrDecisionRecord]] = relationship(lazy="selectin", order_by="NcrDecisionRecord.id")


class NcrDecisionRecord(Base):
    __tablename__ = "ncr_decision"
    id: Mapped[int] = mapped_column(primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(80), unique=True)
    ncr_id: Mapped[int] = mapped_column(ForeignKey("ncr.id"), index=True)
    action: Mapped[str] = mapped_column(String(24))
    reviewer: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text)
    rework_operation: Mapped[int | None] = mapped_column(Integer)
    decided_at: Mapped[datetime] = mapped_column(default=utcnow)


class CodeSequence(Base):
    """Next free serial per item: blocks are carved from it under a row lock."""

    __tablename__ = "code_sequence"
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), primary_key=True)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=1)


class CodeBlock(Base):
    """A block of unit serials: one row for `count` codes; any code is computed on demand."""

    __tablename__ = "code_block"
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(128), unique=True)  # business key: idempotent issuance
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Code(Base):
    """A code that exists as a record: batch codes (one per lot)."""

    __tablename__ = "code"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # batch
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Shipment(Base):
    __tablename__ = "shipment"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_order.id"), index=True)
    sales_order: Mapped[str] = mapped_column(String(64))
    customer: Mapped[str] = mapped_column(String(120), index=True)
    carrier: Mapped[str | None] = mapped_column(String(80))
    tracking_number: Mapped[str | None] = mapped_column(String(80))
    shipped_at: Mapped[datetime] = mapped_column(default=utcnow)
    erp_confirmed_at: Mapped[datetime | None] = mapped_column()
    lines: Mapped[list[ShipmentLine]] = relationship(lazy="selectin")


class ShipmentLine(Base):
    __tablename__ = "shipment_line"
    __table_args__ = (UniqueConstraint("shipment_id", "lot_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    shipment_id: Mapped[int] = mapped_column(ForeignKey("shipment.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    quantity: Mapped[float] = mapped_column(Float)


class EpcisEvent(Base):
    """Append-only event log shaped like EPCIS 2.0 events (what, when, where, why)."""

    __tablename__ = "epcis_event"
    __table_args__ = (Index("ix_epcis_event_time", "event_time"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    event_type: Mapped[str] = mapped_column(String(32))
    event_time: Mapped[datetime] = mapped_column()
    record_time: Mapped[datetime] = mapped_column(default=utcnow)
    action: Mapped[str | None] = mapped_column(String(8))
    biz_step: Mapped[str | None] = mapped_column(String(40), index=True)
    disposition: Mapped[str | None] = mapped_column(String(40))
    read_point: Mapped[str | None] = mapped_column(String(200))
    biz_location: Mapped[str | None] = mapped_column(String(200))
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("lot.id"), index=True)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_order.id"), index=True)
    document: Mapped[dict[str, Any]] = mapped_column()
    # the prefixes of the captured document's @context ({"acme": "https://..."}, with those of the event's own
    # @context over them, when it has one): the event's extension keys are
    # stored as written (`acme:temp`), and a prefix means what its own document said, not what another partner's
    # did. NULL: recorded before migration 0023 (or by the hub itself): the bindings epcis_namespace marks legacy
    namespaces: Mapped[dict[str, Any] | None] = mapped_column()


class AuditLog(Base):
    """Who changed what, when: append-only."""

    __tablename__ = "audit_log"
    __table_args__ = (UniqueConstraint("seq", name="uq_audit_log_seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)  # position in the hash chain, gap-free
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(80))
    action: Mapped[str] = mapped_column(String(64))
    entity: Mapped[str] = mapped_column(String(32))
    entity_key: Mapped[str] = mapped_column(String(128), index=True)
    changes: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ErpEvent(Base):
    """Inbox of ERP events: the unique keys make duplicate deliveries harmless."""

    __tablename__ = "erp_event"
    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    event_type: Mapped[str] = mapped_column(String(48))
    business_key: Mapped[str] = mapped_column(String(128), index=True)
    workflow_id: Mapped[str] = mapped_column(String(128))
    payload: Mapped[dict[str, Any]] = mapped_column()
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Endpoint(Base):
    """A configured connector instance; `config` is validated by the connector's Config."""

    __tablename__ = "endpoint"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(SealedJSON, default=dict)  # holds passwords and API keys
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


# Tables of other areas live in their own modules; importing them here puts them on Base.metadata.
# (one import line per area module, at the end of this file)
from domain import (
    models_codes,  # noqa: F401
    models_connectors,  # noqa: F401
    models_epcis_master,  # noqa: F401
    models_identity,  # noqa: F401
    models_inspection,  # noqa: F401
    models_mes,  # noqa: F401
    models_ncr,  # noqa: F401
    models_quality,  # noqa: F401
    models_supplier_return,  # noqa: F401
    models_trace,  # noqa: F401
    models_trace_doc,  # noqa: F401
)
