"""Connectors and endpoints: which kinds exist (with their config JSON Schema), and the configured
instances, each validated by its connector's Config. Secrets never come back out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field

from api.deps import ReadSessionDep, SessionDep, get_temporal
from connectors.base import CheckResult, Connector, Point, Reading
from connectors.errors import ConnectorConfigError
from connectors.registry import connector_class, connectors
from core.errors import InvalidInput
from domain import devices
from domain import endpoints as service
from domain.models import Endpoint
from workflows.erp_poll import poll_every, sync_poll_schedule

router = APIRouter(prefix="/api", tags=["connectors"])

MASK = "**********"


class ConnectorRead(BaseModel):
    kind: str
    title: str
    description: str
    config_schema: dict[str, Any] = Field(description="JSON Schema of an endpoint's config for this kind")


class EndpointCreate(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", description="e.g. plc-line1")
    kind: str = Field(min_length=1, max_length=32, description="a kind from GET /api/connectors")
    config: dict[str, Any] = Field(description="validated by the kind's config schema")


class EndpointUpdate(BaseModel):
    config: dict[str, Any] = Field(description=f"the whole config; a secret given as {MASK!r} keeps its value")


class EndpointRead(BaseModel):
    name: str
    kind: str
    config: dict[str, Any] = Field(description=f"secrets shown as {MASK!r}")
    created_at: datetime
    updated_at: datetime


class DiscoverRead(BaseModel):
    endpoint: str
    kind: str
    points: list[Point]


class ReadingsRead(BaseModel):
    endpoint: str
    readings: list[Reading]


def _class(kind: str) -> type[Connector]:
    try:
        return connector_class(kind)
    except KeyError as exc:
        raise InvalidInput(f"kind: {exc.args[0]}", field="kind") from None


def _validated(cls: type[Connector], config: dict[str, Any]) -> Any:
    try:
        return cls.validate_config(config)
    except ConnectorConfigError as exc:
        raise InvalidInput(exc.message, field=f"config.{exc.field}" if exc.field else "config") from None


def _read(ep: Endpoint) -> EndpointRead:
    cls = _class(ep.kind)
    try:
        public = cls.public_config(cls.validate_config(ep.config))
    except ConnectorConfigError:
        # a row that no longer validates (the connector changed): show it, with every string masked
        public = {k: (MASK if isinstance(v, str) else v) for k, v in ep.config.items()}
    return EndpointRead(name=ep.name, kind=ep.kind, config=public, created_at=ep.created_at,
                        updated_at=ep.updated_at)


def _keep_masked(new: Any, old: Any) -> Any:
    """A secret sent back as the mask keeps the stored value (so a client can PUT what it GOT)."""
    if new == MASK:
        return old
    if isinstance(new, dict) and isinstance(old, dict):
        return {k: _keep_masked(v, old.get(k)) for k, v in new.items()}
    if isinstance(new, list) and isinstance(old, list):
        return [_keep_masked(v, old[i] if i < len(old) else None) for i, v in enumerate(new)]
    return new


async def _connector(session: Any, name: str) -> Connector:
    ep = await service.get_endpoint(session, name)
    return _class(ep.kind)(ep.config)


@router.get("/connectors", response_model=list[ConnectorRead], summary="Connector kinds and their config schema")
async def list_connectors() -> list[ConnectorRead]:
    return [ConnectorRead(kind=k, title=c.title or k, description=c.description, config_schema=c.config_schema())
            for k, c in sorted(connectors().items())]


@router.get("/endpoints", response_model=list[EndpointRead], summary="Configured endpoints")
async def list_endpoints(session: SessionDep, kind: str | None = None) -> list[EndpointRead]:
    return [_read(ep) for ep in await service.list_endpoints(session, kind=kind)]


async def _sync_poll(request: Request, name: str, kind: str | None, config: dict | None) -> None:
    """An ERP endpoint's poll Schedule follows its config (`poll_every_s`): made, changed or removed with it, in the
    request that changes the endpoint (Temporal unreachable: the change is refused, nothing stored). Temporal is
    asked only then: an endpoint that is not polled is created and changed without it."""
    client = await get_temporal(request)
    await sync_poll_schedule(client, endpoint=name, kind=kind, config=config,
                             task_queue=request.app.state.settings.temporal.task_queue)


@router.post("/endpoints", response_model=EndpointRead, status_code=201, summary="Create an endpoint")
async def create_endpoint(body: EndpointCreate, session: SessionDep, request: Request) -> EndpointRead:
    cls = _class(body.kind)
    cfg = _validated(cls, body.config)
    ep = await service.create_endpoint(session, name=body.name, kind=body.kind, config=cls.stored_config(cfg))
    if poll_every(ep.kind, ep.config) is not None:
        await _sync_poll(request, ep.name, ep.kind, ep.config)
    return _read(ep)


@router.get("/endpoints/{name}", response_model=EndpointRead, summary="An endpoint (secrets masked)")
async def get_endpoint(name: str, session: SessionDep) -> EndpointRead:
    return _read(await service.get_endpoint(session, name))


@router.put("/endpoints/{name}", response_model=EndpointRead, summary="Replace an endpoint's config")
async def update_endpoint(name: str, body: EndpointUpdate, session: SessionDep, request: Request) -> EndpointRead:
    ep = await service.get_endpoint(session, name)
    cls = _class(ep.kind)
    cfg = _validated(cls, _keep_masked(body.config, ep.config))
    polled_before = poll_every(ep.kind, ep.config) is not None
    ep = await service.update_endpoint(session, name=name, config=cls.stored_config(cfg))
    if polled_before or poll_every(ep.kind, ep.config) is not None:
        await _sync_poll(request, ep.name, ep.kind, ep.config)
    return _read(ep)


@router.delete("/endpoints/{name}", status_code=204, summary="Delete an endpoint")
async def delete_endpoint(name: str, session: SessionDep, request: Request) -> Response:
    ep = await service.get_endpoint(session, name)
    polled = poll_every(ep.kind, ep.config) is not None
    await service.delete_endpoint(session, name=name)
    if polled:
        await _sync_poll(request, name, None, None)
    return Response(status_code=204)


@router.post("/endpoints/{name}/check", response_model=CheckResult,
             summary="Check an endpoint against its peer: ok, or what is wrong and what to do")
async def check_endpoint(name: str, session: SessionDep) -> CheckResult:
    ep = await service.get_endpoint(session, name)
    try:
        conn = _class(ep.kind)(ep.config)
    except ConnectorConfigError as exc:
        return CheckResult(ok=False, message=exc.message, error=type(exc).__name__, field=exc.field)
    return await conn.check()


@router.get("/endpoints/{name}/discover", response_model=DiscoverRead,
            summary="The points, resources or operations the endpoint's peer offers")
async def discover_endpoint(name: str, session: SessionDep) -> DiscoverRead:
    conn = await _connector(session, name)
    async with conn:
        points = await conn.discover()
    return DiscoverRead(endpoint=name, kind=conn.kind, points=points)


@router.get("/endpoints/{name}/read", response_model=ReadingsRead,
            summary="Read named points of a device endpoint now (e.g. ?point=oven_temp&point=door_closed)")
async def read_endpoint(name: str, session: SessionDep,
                        point: Annotated[list[str], Query(min_length=1, max_length=100)]) -> ReadingsRead:
    conn = await _connector(session, name)
    async with conn:
        readings = await conn.read_many(point)
    return ReadingsRead(endpoint=name, readings=readings)


@router.get("/endpoints/{name}/rejected",
            summary="ERP documents this endpoint's polling could not use, with the field to fix (newest first)")
async def erp_rejections(name: str, session: ReadSessionDep, limit: int = Query(50, ge=1, le=500),
                         offset: int = Query(0, ge=0, le=2**31)) -> dict[str, Any]:
    await service.get_endpoint(session, name)  # 404 naming the endpoint when there is none
    total, items = await devices.erp_rejections(session, name, limit=limit, offset=offset)
    return {"endpoint": name, "total": total, "items": items}
