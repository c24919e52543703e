"""Endpoints: configured connector instances (rows, not environment variables)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from domain.models import Endpoint


async def ensure_endpoint(session: AsyncSession, *, name: str, kind: str, config: dict[str, Any],
                          replace: bool = False) -> Endpoint:
    """Create the endpoint if it is missing (set-up seeds the default ERP this way)."""
    ep = (await session.execute(select(Endpoint).where(Endpoint.name == name))).scalar()
    if ep is None:
        ep = Endpoint(name=name, kind=kind, config=config)
        session.add(ep)
    elif replace:
        ep.kind = kind
        ep.config = config
    await session.flush()
    return ep
