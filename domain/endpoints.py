"""Endpoints: configured connector instances (rows, not environment variables).

The API validates `config` with the connector's Config before it reaches these functions; they store
and find rows, flush, and never commit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, NotFound
from domain.audit import audit, diff, masked
from domain.models import Endpoint


async def ensure_endpoint(session: AsyncSession, *, name: str, kind: str, config: dict[str, Any],
                          replace: bool = False) -> Endpoint:
    """Create the endpoint if it is missing (set-up seeds the default ERP this way)."""
    ep = (await session.execute(select(Endpoint).where(Endpoint.name == name))).scalar()
    before = None if ep is None else {"kind": ep.kind, "config": dict(ep.config)}
    if ep is None:
        ep = Endpoint(name=name, kind=kind, config=config)
        session.add(ep)
    elif replace:
        ep.kind = kind
        ep.config = config
    await session.flush()
    after = {"kind": ep.kind, "config": dict(ep.config)}
    if before != after:
        await audit(session, actor="setup", action="endpoint.created" if before is None else "endpoint.updated",
                    entity="endpoint", key=name, changes=masked(diff(before, after, kind=kind)))
    return ep


async def find_endpoint(session: AsyncSession, name: str) -> Endpoint | None:
    return (await session.execute(select(Endpoint).where(Endpoint.name == name))).scalar()


async def get_endpoint(session: AsyncSession, name: str) -> Endpoint:
    ep = await find_endpoint(session, name)
    if ep is None:
        raise NotFound(f"no endpoint named {name!r}: list them at GET /api/endpoints or create it "
                       "(POST /api/endpoints)", field="name")
    return ep


async def list_endpoints(session: AsyncSession, *, kind: str | None = None) -> list[Endpoint]:
    q = select(Endpoint).order_by(Endpoint.name)
    if kind:
        q = q.where(Endpoint.kind == kind)
    return list((await session.execute(q)).scalars())


async def create_endpoint(session: AsyncSession, *, name: str, kind: str, config: dict[str, Any],
                          actor: str = "api") -> Endpoint:
    if await find_endpoint(session, name) is not None:
        raise Conflict(f"an endpoint named {name!r} exists: change it with PUT /api/endpoints/{name}",
                       field="name")
    ep = Endpoint(name=name, kind=kind, config=config)
    session.add(ep)
    await session.flush()
    await audit(session, actor=actor, action="endpoint.created", entity="endpoint", key=name,
                changes=masked(diff(None, {"kind": kind, "config": config}, kind=kind)))
    return ep


async def update_endpoint(session: AsyncSession, *, name: str, config: dict[str, Any],
                          actor: str = "api") -> Endpoint:
    ep = await get_endpoint(session, name)
    changed = sorted(k for k in set(ep.config) | set(config) if ep.config.get(k) != config.get(k))
    before = dict(ep.config)
    ep.config = config
    await session.flush()
    # before and after of the fields that changed, secrets masked (a changed secret shows as changed, no value)
    await audit(session, actor=actor, action="endpoint.updated", entity="endpoint", key=name,
                changes=masked(diff(before, dict(config), fields=changed)))
    return ep


async def delete_endpoint(session: AsyncSession, *, name: str, actor: str = "api") -> None:
    ep = await get_endpoint(session, name)
    before = {"kind": ep.kind, "config": dict(ep.config)}
    await session.delete(ep)
    await session.flush()
    await audit(session, actor=actor, action="endpoint.deleted", entity="endpoint", key=name,
                changes=masked(diff(before, None, kind=before["kind"])))
