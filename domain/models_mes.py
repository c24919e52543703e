"""Tables of the MES area: messages from the MES that the hub could not take (malformed, for an unknown
work order, for an operation the work order is not waiting for). Kept so nothing is dropped silently."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base, utcnow


class MesRejectedMessage(Base):
    """An MES message refused with its reason. One row per distinct message (topic and body): a broker's
    redelivery of the same message counts up `times` instead of adding a row."""

    __tablename__ = "mes_rejected_message"
    __table_args__ = (UniqueConstraint("digest", name="uq_mes_rejected_message_digest"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of source, topic and body
    source: Mapped[str] = mapped_column(String(16))  # mqtt | http
    endpoint: Mapped[str | None] = mapped_column(String(64))
    topic: Mapped[str | None] = mapped_column(String(512))
    kind: Mapped[str] = mapped_column(String(32))  # operation_report | equipment_state | unknown
    work_order: Mapped[str | None] = mapped_column(String(64), index=True)
    message_id: Mapped[str | None] = mapped_column(String(128))  # report_id or event_id, when readable
    field: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"json": ...} or {"text": ...}
    times: Mapped[int] = mapped_column(Integer, default=1)
    first_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
