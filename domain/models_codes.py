"""Tables of code issuance: rules, blocks, used codes, pools, containers and aggregation, scans, alerts.

Codes are never one row each unless used: a block (rule version, first sequence, count) stands for all
of its codes, and each is computed on demand. Rows appear for codes that were printed, packed, shipped
or scanned, and for sub-ranges whose state changed (voided, returned).
"""

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
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base, utcnow


class CodeRule(Base):
    """One version of the structure of an item's codes at one level (unit, case, pallet)."""

    __tablename__ = "code_rule"
    __table_args__ = (UniqueConstraint("item_id", "level", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("item.id"), index=True)
    level: Mapped[str] = mapped_column(String(8))  # unit | case | pallet
    version: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column()
    # sequence numbers are unique per namespace across every version of every rule sharing it
    namespace: Mapped[str] = mapped_column(String(120), index=True)
    secret: Mapped[str] = mapped_column(String(64))  # key of the serial permutation (random order); never shown
    created_by: Mapped[str] = mapped_column(String(80), default="system")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CodeCounter(Base):
    """Next free sequence number of a namespace: blocks are carved from it with one atomic UPDATE."""

    __tablename__ = "code_counter"
    namespace: Mapped[str] = mapped_column(String(120), primary_key=True)
    next_seq: Mapped[int] = mapped_column(BigInteger, default=0)


class SerialBlock(Base):
    """`count` codes of one rule version, sequence numbers first_seq .. first_seq+count-1."""

    __tablename__ = "serial_block"
    __table_args__ = (Index("ix_serial_block_range", "namespace", "first_seq"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(160), unique=True)  # business key: a retried issue finds its block
    namespace: Mapped[str] = mapped_column(String(120))
    rule_id: Mapped[int] = mapped_column(ForeignKey("code_rule.id"), index=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    purpose: Mapped[str] = mapped_column(String(16))  # order | pool | container | manual
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("lot.id"), index=True)
    work_order: Mapped[str | None] = mapped_column(String(64))
    production_date: Mapped[str | None] = mapped_column(String(10))  # ISO date the codes carry, if any
    expiry_date: Mapped[str | None] = mapped_column(String(10))
    line: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the block's first and last code as printed, canonical (/01/{gtin}/21/{serial}, /00/{sscc} or the house code),
    # rendered once at issuance: what a trace shows for the block without rendering (migration 0025)
    first_code: Mapped[str | None] = mapped_column(String(200))
    last_code: Mapped[str | None] = mapped_column(String(200))


class CodeRange(Base):
    """A sub-range of a block whose state changed: voided (never valid again) or returned (unused)."""

    __tablename__ = "code_range"
    id: Mapped[int] = mapped_column(primary_key=True)
    block_id: Mapped[int] = mapped_column(ForeignKey("serial_block.id"), index=True)
    first_seq: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))  # voided | returned
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CodePool(Base):
    """Codes allocated in advance to a line or printer that may lose its network (OPEN-SCS serial pool)."""

    __tablename__ = "code_pool"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(64), unique=True)
    line: Mapped[str] = mapped_column(String(80), index=True)
    printer: Mapped[str | None] = mapped_column(String(80))
    block_id: Mapped[int] = mapped_column(ForeignKey("serial_block.id"))
    state: Mapped[str] = mapped_column(String(16), default="allocated")  # allocated | revoked | reconciled
    allocated_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    reconciled_at: Mapped[datetime | None] = mapped_column()


class PoolUpload(Base):
    """One upload of used codes from a line; the upload id makes a resent upload harmless."""

    __tablename__ = "pool_upload"
    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[str] = mapped_column(String(80), unique=True)
    pool_id: Mapped[int] = mapped_column(ForeignKey("code_pool.id"), index=True)
    count: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsedCode(Base):
    """A code that was used (printed, commissioned, packed, shipped, scanned): its facts."""

    __tablename__ = "used_code"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(String(200), unique=True)  # canonical: /01/{gtin}/21/{serial}, /00/{sscc}
    block_id: Mapped[int] = mapped_column(ForeignKey("serial_block.id"), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    level: Mapped[str] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16))  # printed | commissioned | packed | shipped | destroyed
    lot_id: Mapped[int | None] = mapped_column(ForeignKey("lot.id"), index=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("code_pool.id"), index=True)
    line: Mapped[str | None] = mapped_column(String(80))
    used_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class Container(Base):
    """A case or pallet identified by an SSCC."""

    __tablename__ = "container"
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(200), unique=True)  # /00/{sscc}
    level: Mapped[str] = mapped_column(String(8))  # case | pallet
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | shipped
    shipment: Mapped[str | None] = mapped_column(String(64))
    shipped_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Containment(Base):
    """`child` was in `parent` from packed_at until unpacked_at (open while unpacked_at is NULL)."""

    __tablename__ = "containment"
    __table_args__ = (
        # a child is in at most one parent at a time, even under concurrent packers
        Index("uq_containment_open_child", "child", unique=True,
              postgresql_where=text("unpacked_at IS NULL"), sqlite_where=text("unpacked_at IS NULL")),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    parent: Mapped[str] = mapped_column(String(200), index=True)
    child: Mapped[str] = mapped_column(String(200), index=True)
    child_level: Mapped[str] = mapped_column(String(8))
    packed_at: Mapped[datetime] = mapped_column()
    unpacked_at: Mapped[datetime | None] = mapped_column()
    pack_event: Mapped[str] = mapped_column(String(200))
    unpack_event: Mapped[str | None] = mapped_column(String(200))
    actor: Mapped[str] = mapped_column(String(80))


class CodeScan(Base):
    """A scan of a code at the public resolver, with its optional coarse location."""

    __tablename__ = "code_scan"
    __table_args__ = (Index("ix_code_scan_code_time", "code", "scanned_at"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(300))
    scanned_at: Mapped[datetime] = mapped_column(default=utcnow)
    lat: Mapped[float | None] = mapped_column(Float)
    lon: Mapped[float | None] = mapped_column(Float)
    outcome: Mapped[str] = mapped_column(String(16))  # genuine | unknown | voided
    suspicious: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    reason: Mapped[str | None] = mapped_column(Text)


class CodeAlert(Base):
    """Something about a code that a person must look at: a duplicate, a code used outside its pool..."""

    __tablename__ = "code_alert"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    code: Mapped[str] = mapped_column(String(300), index=True)
    pool_id: Mapped[int | None] = mapped_column(ForeignKey("code_pool.id"))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    ncr: Mapped[str | None] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # when the NCR's review workflow was started (or found started); NULL with `ncr` set: the NCR sweeper
    # (activities/ncr_sweeper.py) starts it, so an API that dies after the upload's commit loses no NCR
    ncr_started_at: Mapped[datetime | None] = mapped_column()
