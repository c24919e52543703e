"""Codes: rules, blocks, export, QR images, label sheets, ZPL, packing, pools and alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import AliasChoices, BaseModel, Field

from activities.models import Timing
from activities.ncr_sweeper import start_duplicate_ncrs
from api.deps import SessionDep, SettingsDep, get_temporal
from api.security import PrincipalDep
from domain import code_pools, codes, labels, packing, qr

router = APIRouter(prefix="/api/codes", tags=["codes"])

Level = Literal["unit", "case", "pallet"]
MAX_LABELS = 2000  # one PDF or ZPL request
# block ids are 32-bit integers in the database: a larger number is refused as input (422) instead of
# reaching the driver (an out-of-range error, a 500)
BlockId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the block id (POST /api/codes/blocks answers it)")]


class RuleCreate(BaseModel):
    item: str = Field(description="item code")
    level: Level
    spec: dict[str, Any] = Field(description="`elements` (GS1) or `segments` (house code); see the README")


class BlockCreate(BaseModel):
    key: str = Field(min_length=1, max_length=160, description="business key: the same key gets the same block")
    item: str
    level: Level = "unit"
    count: int = Field(ge=1, le=2**62)
    lot: str | None = None
    line: str | None = None
    production_date: date | None = None
    expiry_date: date | None = None


# Who did it at the station (the packer, the shipper, the planner) is data: the audit entry's actor is always the
# login or system token that sent the request (a terminal or the MES posts for its operators). `actor` is the
# field's former name, still accepted.
def _operator() -> Any:
    return Field(default=None, min_length=1, max_length=80, validation_alias=AliasChoices("operator", "actor"),
                 description="who did it at the station (operator id), recorded as data in the audit entry; "
                             "the entry's actor is your login")


class PackRequest(BaseModel):
    parent: str = Field(description="case or pallet code (Digital Link URI or /00/{sscc})")
    children: list[str] = Field(min_length=1)
    operator: str | None = _operator()
    at: datetime | None = None
    read_point: str | None = None


class UnpackRequest(BaseModel):
    parent: str
    children: list[str] | None = Field(default=None, description="omit to unpack everything")
    operator: str | None = _operator()
    at: datetime | None = None


class ShipRequest(BaseModel):
    shipment: str
    operator: str | None = _operator()


class PoolCreate(BaseModel):
    number: str = Field(min_length=1, max_length=64)
    item: str
    level: Level = "unit"
    count: int = Field(ge=1, le=10_000_000)
    line: str
    printer: str | None = None


class UsedCodeIn(BaseModel):
    code: str
    used_at: datetime
    lot: str | None = None


class PoolUploadIn(BaseModel):
    upload_id: str = Field(min_length=1, max_length=80)
    used: list[UsedCodeIn]


class ReconcileIn(BaseModel):
    action: Literal["return", "void"]
    operator: str | None = _operator()


@router.post("/rules", status_code=201, summary="Save a new version of an item's code rule at a level")
async def create_rule(body: RuleCreate, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    rule = await codes.save_rule(session, item=body.item, level=body.level, spec=body.spec,
                                 actor=principal.subject)
    return codes.rule_view(rule, await codes.get_item(session, body.item))


@router.get("/rules/{item}/{level}", summary="Every version of an item's rule at a level")
async def list_rules(item: str, level: Level, session: SessionDep) -> list[dict[str, Any]]:
    it = await codes.get_item(session, item)
    return [codes.rule_view(r, it) for r in await codes.rules_of(session, item, level)]


@router.post("/blocks", status_code=201, summary="Issue a block of codes (one row, whatever the count)")
async def create_block(body: BlockCreate, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    it = await codes.get_item(session, body.item)
    rule = await codes.current_rule(session, it, body.level)
    lot = None
    if body.lot:
        from domain.production import get_lot
        lot = await get_lot(session, body.lot)
    block = await codes.issue_block(session, rule=rule, count=body.count, key=body.key, purpose="manual", lot=lot,
                                    line=body.line, production_date=body.production_date,
                                    expiry_date=body.expiry_date, gtin=it.gtin)
    return codes.block_summary(await codes.block_view(session, block), settings.resolver_base_url)


@router.get("/blocks/{block_id}", summary="A block: its rule version, range, first and last code")
async def get_block(block_id: BlockId, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    return codes.block_summary(await codes.block_view(session, block_id), settings.resolver_base_url)


@router.get("/blocks/{block_id}/codes/{index}", summary="One code of a block, computed on demand")
async def get_code(block_id: BlockId, index: int, session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    r = (await codes.block_view(session, block_id)).code(index, settings.resolver_base_url)
    return {"code": r.value, "element_string": r.element_string, "digital_link": r.digital_link or None}


@router.get("/blocks/{block_id}/export", summary="Stream a block's codes as CSV or NDJSON")
async def export_block(
    block_id: BlockId, request: Request, session: SessionDep, settings: SettingsDep,
    format: Literal["csv", "ndjson"] = "csv",
    first: Annotated[int, Query(ge=0)] = 0, count: Annotated[int | None, Query(ge=1)] = None,
) -> StreamingResponse:
    view = await codes.block_view(session, block_id)
    if first >= view.block.count:
        from core.errors import InvalidInput
        raise InvalidInput(f"first {first} is past the block's {view.block.count} codes", field="first")
    count = min(count or view.block.count - first, view.block.count - first)

    async def body() -> AsyncIterator[bytes]:
        for chunk in labels.export_chunks(view, fmt=format, domain=settings.resolver_base_url, first=first,
                                          count=count, chunk=200_000):
            yield chunk
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(body(), media_type=media, headers={
        "content-disposition": f'attachment; filename="block-{block_id}.{format}"', "x-code-count": str(count)})


async def _rendered(session: Any, block_id: int, first: int, count: int, domain: str) -> tuple[Any, list[Any]]:
    view = await codes.block_view(session, block_id)
    if first >= view.block.count:
        from core.errors import InvalidInput
        raise InvalidInput(f"first {first} is past the block's {view.block.count} codes", field="first")
    count = min(count, view.block.count - first, MAX_LABELS)
    return view, view.render(first, count, domain)


@router.get("/blocks/{block_id}/codes/{index}/qr.{fmt}", summary="The QR of one code (PNG or SVG)")
async def code_qr(block_id: BlockId, index: int, fmt: Literal["png", "svg"], session: SessionDep,
                  settings: SettingsDep, scale: Annotated[int, Query(ge=1, le=40)] = 8) -> Response:
    r = (await codes.block_view(session, block_id)).code(index, settings.resolver_base_url)
    text = r.digital_link or r.value
    if fmt == "png":
        return Response(qr.qr_png(text, scale=scale), media_type="image/png")
    return Response(qr.qr_svg(text, scale=scale), media_type="image/svg+xml")


@router.get("/blocks/{block_id}/labels.pdf", summary="A printable PDF sheet of labels (QR + text)")
async def labels_pdf(block_id: BlockId, session: SessionDep, settings: SettingsDep,
                     first: Annotated[int, Query(ge=0)] = 0,
                     count: Annotated[int, Query(ge=1, le=MAX_LABELS)] = 21) -> Response:
    view, rendered = await _rendered(session, block_id, first, count, settings.resolver_base_url)
    pdf = labels.pdf_sheet(rendered, product=view.item.name or view.item.code)
    return Response(pdf, media_type="application/pdf",
                    headers={"content-disposition": f'inline; filename="labels-{block_id}.pdf"'})


@router.get("/blocks/{block_id}/labels.zpl", summary="ZPL II labels for Zebra printers")
async def labels_zpl(block_id: BlockId, session: SessionDep, settings: SettingsDep,
                     first: Annotated[int, Query(ge=0)] = 0,
                     count: Annotated[int, Query(ge=1, le=MAX_LABELS)] = 21) -> Response:
    view, rendered = await _rendered(session, block_id, first, count, settings.resolver_base_url)
    product = view.item.name or view.item.code
    return Response("".join(labels.zpl_label(r, product=product) for r in rendered), media_type="text/plain")


@router.get("/lookup", summary="What the hub knows of a code (internal view)")
async def lookup_code(code: str, session: SessionDep) -> dict[str, Any]:
    info = await codes.lookup(session, code)
    out: dict[str, Any] = {"code": info.value, "status": info.status, "reason": info.reason}
    if info.view is not None:
        out |= {"block": info.view.block.id, "rule_version": info.view.rule.version, "index": info.index,
                "level": info.view.rule.level, "lot": info.lot.number if info.lot else None,
                "state": info.used.state if info.used else "issued"}
        out["parent"] = await packing.parent_of(session, info.value)
    if info.candidates:  # ambiguous: every block that holds the code, none chosen
        out["candidates"] = [{"item": c.view.item.code, "level": c.view.rule.level, "rule_version": c.view.rule.version,
                              "block": c.view.block.id, "index": c.index, "lot": c.lot.number if c.lot else None}
                             for c in info.candidates if c.view is not None]
    return out


@router.post("/pack", summary="Pack units into a case or cases onto a pallet (AggregationEvent ADD)")
async def pack(body: PackRequest, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep) -> dict[str, Any]:
    return await packing.pack(session, parent=body.parent, children=body.children, actor=principal.subject,
                              operator=body.operator, resolver=settings.resolver_base_url, at=body.at, read_point=body.read_point)


@router.post("/unpack", summary="Take children out of a case or pallet (AggregationEvent DELETE)")
async def unpack(body: UnpackRequest, session: SessionDep, settings: SettingsDep,
                 principal: PrincipalDep) -> dict[str, Any]:
    return await packing.unpack(session, parent=body.parent, children=body.children, actor=principal.subject,
                                operator=body.operator, resolver=settings.resolver_base_url, at=body.at)


@router.get("/contents", summary="Everything in a case or pallet down to units (now, or at a time)")
async def contents(code: str, session: SessionDep, at: datetime | None = None) -> dict[str, Any]:
    return await packing.contents(session, code, at=at)


@router.get("/history", summary="Where a code was packed, when, and what was in it")
async def history(code: str, session: SessionDep) -> list[dict[str, Any]]:
    return await packing.history(session, code)


@router.post("/containers/ship", summary="Mark a case or pallet shipped")
async def ship(code: str, body: ShipRequest, session: SessionDep, settings: SettingsDep,
               principal: PrincipalDep) -> dict[str, Any]:
    return await packing.ship_container(session, code=code, shipment=body.shipment, actor=principal.subject,
                                        operator=body.operator, resolver=settings.resolver_base_url)


@router.post("/pools", status_code=201, summary="Allocate an offline pool of codes to a line or printer")
async def create_pool(body: PoolCreate, session: SessionDep, settings: SettingsDep,
                      principal: PrincipalDep) -> dict[str, Any]:
    pool = await code_pools.allocate_pool(session, number=body.number, item=body.item, level=body.level,
                                          count=body.count, line=body.line, printer=body.printer,
                                          actor=principal.subject)
    view = await codes.block_view(session, pool.block_id)
    return {"number": pool.number, "line": pool.line, "printer": pool.printer, "state": pool.state,
            "block": codes.block_summary(view, settings.resolver_base_url)}


@router.post("/pools/{number}/revoke", summary="Revoke a pool: codes used after this are flagged")
async def revoke_pool(number: str, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    pool = await code_pools.revoke_pool(session, number=number, actor=principal.subject)
    return {"number": pool.number, "state": pool.state,
            "revoked_at": pool.revoked_at.isoformat() if pool.revoked_at else None}


@router.post("/pools/{number}/uploads", summary="The codes a line used offline, with time and lot")
async def upload_pool(number: str, body: PoolUploadIn, request: Request, session: SessionDep,
                      settings: SettingsDep, principal: PrincipalDep) -> dict[str, Any]:
    """A duplicate (one code used twice) holds the lot of the second use under an NCR, reviewed like any other.
    The NCR numbers are stored with the upload; their workflows start once it is committed, and each alert is
    marked started. Should this process die in between, the worker's NCR sweeper starts them
    (activities/ncr_sweeper.py); sending the same upload again (same upload_id) starts them at once."""
    out = await code_pools.upload(session, number=number, upload_id=body.upload_id,
                                  used=[u.model_dump() for u in body.used], resolver=settings.resolver_base_url,
                                  actor=principal.subject)
    dups = await code_pools.duplicate_ncrs(session, [a["id"] for a in out["alerts"] if a["kind"] == "duplicate"])
    await session.commit()
    if dups:  # Temporal only when there is an NCR to start
        started = await start_duplicate_ncrs(
            await get_temporal(request), dups, timing=Timing().with_defaults(settings.ncr.table()),
            task_queue=settings.temporal.task_queue)
        # the request's transaction is committed and closed: the marks take their own
        async with request.app.state.sessionmaker() as marks, marks.begin():
            await code_pools.mark_ncr_started(marks, started, actor=principal.subject)
    return out


@router.post("/pools/{number}/reconcile", summary="Return or void a pool's unused codes")
async def reconcile_pool(number: str, body: ReconcileIn, session: SessionDep,
                         principal: PrincipalDep) -> dict[str, Any]:
    return await code_pools.reconcile(session, number=number, action=body.action, actor=principal.subject,
                                      operator=body.operator)


@router.get("/alerts", summary="Duplicates, codes used outside their pool or after revocation, suspicious scans")
async def list_alerts(session: SessionDep, kind: str | None = None) -> list[dict[str, Any]]:
    return await code_pools.alerts(session, kind=kind)

