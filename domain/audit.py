"""The audit log: who changed what, when. Append-only."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import AuditLog


async def audit(
    session: AsyncSession, *, actor: str, action: str, entity: str, key: str, changes: dict[str, Any]
) -> None:
    session.add(AuditLog(actor=actor, action=action, entity=entity, entity_key=key, changes=changes))
    await session.flush()
