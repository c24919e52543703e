"""Tables of trace, EPCIS capture/query and recall: the lineage index, event indexes, capture jobs, recalls."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    PrimaryKeyConstraint,
    Sequence,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base, CodeBlock, EpcisEvent, Lot, utcnow

# 64-bit keys on PostgreSQL; SQLite only auto-increments an INTEGER PRIMARY KEY
BigId = BigInteger().with_variant(Integer, "sqlite")


class TraceNode(Base):
    """A thing in the genealogy: a hub lot, or an identifier known from a captured EPCIS event.

    A hub lot's node id IS its lot id, so a walk over trace_edge yields lot ids and reads the lots with no
    lookup in between (and a lot with no event yet is a node already). Any other identifier gets a negative id
    (TRACE_NODE_EXT_SEQ on PostgreSQL, below the smallest on SQLite), so the two never meet."""

    __tablename__ = "trace_node"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    uri: Mapped[str] = mapped_column(String(300), unique=True)  # canonical identifier (epcis_ids.canonical)
    kind: Mapped[str] = mapped_column(String(16))  # lot | class | instance
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("lot.id"), unique=True)  # = id for a hub lot
    lot_part: Mapped[str | None] = mapped_column(String(80), index=True)  # AI 10 of an LGTIN, to meet supplier lots


# ids of nodes that are not hub lots: -nextval (PostgreSQL)
TRACE_NODE_EXT_SEQ = Sequence("trace_node_ext_seq", metadata=Base.metadata)


class TraceEdge(Base):
    """Lineage: `parent` went into (or was received as) `child`. Written in the transaction of its event.

    Both walks read only indexes, one probe per edge: backward (child -> parents) the covering index
    (child_id, parent_id, via), forward (parent -> children) the primary key, which carries `via` too on
    PostgreSQL. A derived index written with its events, so no foreign keys: a node id is a lot id or a negative
    external id (an external node that turns out to be a hub lot is re-keyed to the lot id, see
    epcis_index.ensure_nodes), and the event is the one being stored."""

    __tablename__ = "trace_edge"
    __table_args__ = (PrimaryKeyConstraint("parent_id", "child_id", postgresql_include=["via"]),
                      Index("ix_trace_edge_child_parent_via", "child_id", "parent_id", "via"))
    parent_id: Mapped[int] = mapped_column(BigId)
    child_id: Mapped[int] = mapped_column(BigId)
    event_pk: Mapped[int | None] = mapped_column(Integer)  # epcis_event.id of the event that made the edge
    via: Mapped[str] = mapped_column(String(16), default="transformation")  # transformation | receipt | packing


class EpcisEventKey(Base):
    """The business key a hub event was recorded under: a retried activity finds its event again."""

    __tablename__ = "epcis_event_key"
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    event_pk: Mapped[int] = mapped_column(ForeignKey("epcis_event.id"), index=True)


class EpcisEventEpc(Base):
    """Every identifier an event names, canonical, with its role (for MATCH_ queries and lineage).

    Like epcis_event_field, a derived index of the event log written with its events (epcis_index.py): no
    foreign key to epcis_event, so capture does not pay a lookup for every identifier and field it indexes."""

    __tablename__ = "epcis_event_epc"
    __table_args__ = (Index("ix_epcis_event_epc_uri", "uri", "role"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_pk: Mapped[int] = mapped_column(Integer, index=True)  # epcis_event.id
    # epc | parent | child | input | output | quantity | child_quantity | input_quantity | output_quantity
    role: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(String(300))


class EpcisEventField(Base):
    """Searchable values of an event: business transactions, sources, destinations, extension fields."""

    __tablename__ = "epcis_event_field"
    __table_args__ = (Index("ix_epcis_event_field_name_value", "name", "value"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_pk: Mapped[int] = mapped_column(Integer, index=True)  # epcis_event.id
    # bt:{type} | src:{type} | dst:{type} | ext:{iri} | ilmd:{iri} | pd_set | pd_unset | tid | heat
    name: Mapped[str] = mapped_column(String(300))
    value: Mapped[str | None] = mapped_column(String(500))


class EpcisErrorDeclaration(Base):
    """A captured error declaration: same eventID as the event it retracts, so kept beside it, not over it."""

    __tablename__ = "epcis_error_declaration"
    __table_args__ = (UniqueConstraint("event_id", "declaration_time"),)
    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), index=True)
    declaration_time: Mapped[datetime] = mapped_column()
    reason: Mapped[str | None] = mapped_column(String(200))
    corrective_event_ids: Mapped[list[Any]] = mapped_column(default=list)
    record_time: Mapped[datetime] = mapped_column(default=utcnow)
    document: Mapped[dict[str, Any]] = mapped_column()
    namespaces: Mapped[dict[str, Any] | None] = mapped_column()  # as EpcisEvent.namespaces


class EpcisCaptureJob(Base):
    __tablename__ = "epcis_capture_job"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()
    running: Mapped[bool] = mapped_column(Boolean, default=True)
    success: Mapped[bool | None] = mapped_column(Boolean)
    error_behaviour: Mapped[str] = mapped_column(String(16), default="rollback")
    event_count: Mapped[int] = mapped_column(Integer, default=0)
    stored_count: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[list[Any]] = mapped_column(default=list)


class EpcisNamedQuery(Base):
    __tablename__ = "epcis_named_query"
    name: Mapped[str] = mapped_column(String(120), primary_key=True)
    query: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the IRIs its extension parameters' prefixes meant when it was created (GS1-Extensions header, else the one
    # known binding), so a partner binding the prefix to another IRI later does not change what it matches;
    # NULL: created before migration 0023 (read at run time)
    namespaces: Mapped[dict[str, Any] | None] = mapped_column()


class EpcisSubscription(Base):
    """A standing query: its named query's new events go to `dest` on a schedule or as they arrive (stream).
    Delivered by a Temporal Schedule (workflows/epcis_subscription.py); `min_record_time` is the watermark."""

    __tablename__ = "epcis_subscription"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    query_name: Mapped[str] = mapped_column(String(120), index=True)
    dest: Mapped[str] = mapped_column(String(2000))
    signature_token: Mapped[str | None] = mapped_column(String(500))
    report_if_empty: Mapped[bool] = mapped_column(default=False)
    stream: Mapped[bool] = mapped_column(default=False)
    schedule: Mapped[dict[str, Any] | None] = mapped_column()
    epc_format: Mapped[str] = mapped_column(String(40), default="Always_GS1_Digital_Link")
    initial_record_time: Mapped[datetime] = mapped_column()
    min_record_time: Mapped[datetime] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_notified_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(String(2000))
    deleted_at: Mapped[datetime | None] = mapped_column()


class EpcisNamespace(Base):
    """Every binding of an extension prefix seen in captured @contexts: one row per (prefix, IRI), so two
    partners that use one prefix for different namespaces are both here. Reads `EQ_prefix:field` queries whose
    prefix the GS1-Extensions header does not declare (a prefix with one IRI; two make it ambiguous).

    `legacy`: the binding the hub knew before migration 0023, when the first IRI captured for a prefix was the
    only one kept; events stored before then (namespaces NULL) are read with these."""

    __tablename__ = "epcis_namespace"
    prefix: Mapped[str] = mapped_column(String(64), primary_key=True)
    iri: Mapped[str] = mapped_column(String(300), primary_key=True)
    legacy: Mapped[bool] = mapped_column(Boolean, default=False)


class Gs1CompanyPrefix(Base):
    """GS1 company prefixes learned from captured EPC URNs: needed to write a Digital Link back as a URN."""

    __tablename__ = "gs1_company_prefix"
    prefix: Mapped[str] = mapped_column(String(12), primary_key=True)


class Recall(Base):
    __tablename__ = "recall"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(128), unique=True)
    suspect_kind: Mapped[str] = mapped_column(String(16))  # lot | supplier_lot | heat | equipment | operator
    suspect: Mapped[str] = mapped_column(String(120))
    window_from: Mapped[datetime | None] = mapped_column()
    window_to: Mapped[datetime | None] = mapped_column()
    reason: Mapped[str] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(80))
    status: Mapped[str] = mapped_column(String(24), default="open", index=True)
    report: Mapped[dict[str, Any] | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column()


class RecallLot(Base):
    """A lot in a recall's scope: held (in stock), shipped or otherwise gone, and the reviewer's decision."""

    __tablename__ = "recall_lot"
    __table_args__ = (UniqueConstraint("recall_id", "lot_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recall.id"), index=True)
    lot_id: Mapped[int] = mapped_column(ForeignKey("lot.id"), index=True)
    action: Mapped[str] = mapped_column(String(16))  # held | shipped | none
    status_before: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[float] = mapped_column(Float, default=0)
    held_at: Mapped[datetime | None] = mapped_column()
    erp_blocked_at: Mapped[datetime | None] = mapped_column()
    decision: Mapped[str | None] = mapped_column(String(16))  # release | reject
    decided_by: Mapped[str | None] = mapped_column(String(80))
    decided_role: Mapped[str | None] = mapped_column(String(32))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    decided_at: Mapped[datetime | None] = mapped_column()


class RecallNotice(Base):
    """One customer to notify in a recall, with what they received and their acknowledgement."""

    __tablename__ = "recall_notice"
    __table_args__ = (UniqueConstraint("recall_id", "customer"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recall.id"), index=True)
    customer: Mapped[str] = mapped_column(String(120))
    shipments: Mapped[list[Any]] = mapped_column(default=list)
    quantity: Mapped[float] = mapped_column(Float, default=0)
    acknowledged_at: Mapped[datetime | None] = mapped_column()
    acknowledged_by: Mapped[str | None] = mapped_column(String(80))
    note: Mapped[str | None] = mapped_column(Text)


class RecallContainer(Base):
    """A case or pallet holding units of a recall's lots: held where it is (in stock), or shipped, and when its
    hold ended (every recalled lot inside it released by a reviewer)."""

    __tablename__ = "recall_container"
    __table_args__ = (UniqueConstraint("recall_id", "code"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    recall_id: Mapped[int] = mapped_column(ForeignKey("recall.id"), index=True)
    code: Mapped[str] = mapped_column(String(200))
    level: Mapped[str] = mapped_column(String(8))  # case | pallet
    action: Mapped[str] = mapped_column(String(16))  # held | shipped
    status_before: Mapped[str] = mapped_column(String(16))
    lots: Mapped[list[Any]] = mapped_column(default=list)  # the recall's lots with units inside
    units: Mapped[int] = mapped_column(Integer, default=0)
    held_at: Mapped[datetime | None] = mapped_column()
    released_at: Mapped[datetime | None] = mapped_column()


# query indexes on the event log itself (the table is defined in domain/models.py)
Index("ix_epcis_event_record_time", EpcisEvent.record_time)
Index("ix_epcis_event_type_time", EpcisEvent.event_type, EpcisEvent.event_time)
# supplier lots are looked up when a supplier's EPCIS event names one, and by forward traces
Index("ix_lot_supplier_lot", Lot.supplier_lot)
# a unit serial finds its block with one index probe (the newest block starting at or below the serial)
Index("ix_code_block_item_first_seq", CodeBlock.item_id, CodeBlock.first_seq)
