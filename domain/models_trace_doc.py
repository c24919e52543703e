"""The per-lot trace row (migrations/versions/0014_trace_doc.py): a lot's facts as a trace shows them.

Derived data, written on PostgreSQL by triggers in the transaction that changes the lot, its operations,
inspections and measurements, NCRs and decisions, shipments or serial blocks; no code writes it. SQLite keeps
the table empty (the portable trace reads the tables themselves)."""

from __future__ import annotations

from sqlalchemy import Integer, Text
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base


class TraceLotDoc(Base):
    __tablename__ = "trace_lot_doc"
    lot_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    item_id: Mapped[int] = mapped_column(Integer)
    supplier_id: Mapped[int | None] = mapped_column(Integer)
    doc: Mapped[str] = mapped_column(Text)  # [lot columns..., item id, supplier id, shipments, serial blocks]
    hist: Mapped[str | None] = mapped_column(Text)  # [operations, inspections, NCRs]; None when none

