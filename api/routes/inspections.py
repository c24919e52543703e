"""Inspections: inspectors and gauges post measurements; the hub judges them. Photos of visual characteristics
are uploaded to the inspection (PNG or JPEG, checked by their bytes) before its results."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from activities.models import InspectionResultInput, InspectionResults, Measurement, MeasurementSource
from api.deps import ReadSessionDep, TemporalDep
from api.limits import read_bounded
from api.security import PrincipalDep
from connectors.errors import ConnectorConfigError
from connectors.registry import connector_class
from core.errors import Conflict, InvalidInput
from domain import attachments, inspection_triggers, quality, quality_plans
from domain.endpoints import find_endpoint
from domain.models import Inspection, WorkOrder
from domain.models_inspection import InspectionSampling
from workflows.work_order import WorkOrderWorkflow

router = APIRouter(prefix="/api/inspections", tags=["inspections"])


def _read(ins: Inspection, sampling: InspectionSampling | None = None) -> dict[str, Any]:
    return {
        "number": ins.number, "kind": ins.kind, "lot": ins.lot.number, "status": ins.status,
        "inspector": ins.inspector, "opened_at": ins.opened_at.isoformat(),
        "inspected_at": ins.inspected_at.isoformat() if ins.inspected_at else None,
        "characteristics": [
            {"name": c.name, "nominal": c.nominal, "lower": c.lower, "upper": c.upper, "unit": c.unit,
             "sample_size": c.sample_size, "values": c.values, "verdict": c.verdict} for c in ins.characteristics
        ],
        "results_url": f"/api/inspections/{ins.number}/results",
        # opened from an item's plan: its version, trigger and ISO 2859-1 sample of each characteristic
        "sampling": inspection_triggers.sampling_view(sampling),
    }


async def _samplings(session: AsyncSession, rows: list[Inspection]) -> dict[int, InspectionSampling]:
    if not rows:
        return {}
    found = (await session.execute(select(InspectionSampling).where(
        InspectionSampling.inspection_id.in_([i.id for i in rows])))).scalars()
    return {s.inspection_id: s for s in found}


@router.get("", summary="List inspections (pending ones are what inspectors work from)")
async def list_inspections(session: ReadSessionDep, status: str | None = None, work_order: str | None = None,
                           limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    q = select(Inspection).order_by(Inspection.id.desc()).limit(limit)
    if status:
        q = q.where(Inspection.status == status)
    if work_order:
        q = q.join(WorkOrder, WorkOrder.id == Inspection.work_order_id).where(WorkOrder.number == work_order)
    rows = list((await session.execute(q)).scalars().all())
    kept = await _samplings(session, rows)
    return [_read(i, kept.get(i.id)) for i in rows]


@router.get("/{number}", summary="One inspection with its plan and results")
async def get_inspection(number: str, session: ReadSessionDep) -> dict[str, Any]:
    ins = await quality.get_inspection(session, number)
    out = _read(ins, await inspection_triggers.sampling_of(session, ins))
    out["photos"] = [attachments.photo_view(a, number) for a in await attachments.list_photos(session, number)]
    return out


@router.post("/{number}/results", status_code=202, summary="Post measurements; the hub computes the verdict")
async def post_results(number: str, results: InspectionResults, session: ReadSessionDep,
                       client: TemporalDep, principal: PrincipalDep) -> JSONResponse:
    # only reads here (the workflow records the results): no write lock held across the Temporal round trip
    for i, m in enumerate(results.measurements):
        if m.source is not None:
            raise InvalidInput(f"measurements[{i}].source: the hub sets the source when it reads a gauge "
                               f"(POST /api/inspections/{number}/read-gauges); leave it out", field="measurements")
    return await submit_results(number, results, session, client, submitted_by=principal.subject)


# --- measurements from gauges through connectors ----------------------------------------------------------


class ReadGaugesIn(BaseModel):
    inspector: str = Field(min_length=1, max_length=80, description="who triggers the read (person or gauge id)")
    measurements: list[Measurement] = Field(
        default_factory=list, max_length=1000,
        description="values measured otherwise: characteristics without a gauge, or the other units of a "
                    "gauge characteristic's sample (the read value is added after them)")
    result_id: str | None = Field(default=None, max_length=80, description="caller's id for this submission")


@router.post("/{number}/read-gauges", status_code=202,
             summary="Read the inspection's gauge characteristics through their connector endpoints; the hub "
                     "computes the verdict")
async def read_gauges(number: str, body: ReadGaugesIn, session: ReadSessionDep,
                      client: TemporalDep, principal: PrincipalDep) -> JSONResponse:
    """Each variable characteristic whose plan gauge is `<endpoint>:<point>` is read once, now, through the
    endpoint's connector, and recorded with its source (endpoint, point, time); then the results take the path
    of posted ones. The connector is used here, not through an activity: the inspector stands at the gauge and
    waits for the value and the verdict, a read changes nothing on the device (a failed one is simply triggered
    again, its 503 or 422 naming the cause), and the values reach the work order by the same durable signal as
    typed-in results, so nothing is recorded twice."""
    ins = await quality.get_inspection(session, number)
    if ins.status != "pending":
        raise Conflict(f"inspection {number} already has its verdict ({ins.status}): gauges are read for a "
                       "pending inspection", field="number")
    for i, m in enumerate(body.measurements):
        if m.source is not None:
            raise InvalidInput(f"measurements[{i}].source: the hub sets the source of gauge reads; leave it out",
                               field="measurements")
    points = await quality_plans.gauge_points(session, ins)
    if not points:
        raise InvalidInput(f"inspection {number}: no characteristic of its plan names a gauge as "
                           "`<endpoint>:<point>`; post the measurements at "
                           f"/api/inspections/{number}/results, or set the gauge in a new plan version",
                           field="number")
    units = {c.name: c.unit for c in ins.characteristics}
    by_endpoint: dict[str, list[tuple[str, str]]] = {}
    for name, (endpoint, point) in points.items():
        by_endpoint.setdefault(endpoint, []).append((name, point))
    manual = {m.characteristic: m for m in body.measurements}
    read: list[Measurement] = []
    for endpoint, chars in sorted(by_endpoint.items()):
        ep = await find_endpoint(session, endpoint)
        if ep is None:
            raise InvalidInput(f"gauge endpoint {endpoint!r} (of {', '.join(n for n, _ in chars)}) does not "
                               "exist: create it (POST /api/endpoints) or correct the plan's gauge",
                               field="gauge")
        try:
            conn = connector_class(ep.kind)(ep.config)
        except (KeyError, ConnectorConfigError) as exc:
            raise InvalidInput(f"gauge endpoint {endpoint!r} cannot be used: {exc}; fix it at "
                               f"PUT /api/endpoints/{endpoint}", field="gauge") from None
        async with conn:
            readings = await conn.read_many([p for _, p in chars])
        for (name, point), r in zip(chars, readings, strict=True):
            if isinstance(r.value, bool) or not isinstance(r.value, int | float):
                raise InvalidInput(f"{name}: gauge {endpoint}:{point} read {r.value!r}, not a number; a variable "
                                   "characteristic needs a numeric point", field="gauge")
            if r.unit and units.get(name) and r.unit != units[name]:
                raise InvalidInput(f"{name}: gauge {endpoint}:{point} reads in {r.unit!r}, the plan measures in "
                                   f"{units[name]!r}; configure the point's unit and scale to match",
                                   field="gauge")
            earlier = list(manual.pop(name).values) if name in manual else []
            read.append(Measurement(characteristic=name, values=[*earlier, float(r.value)],
                                    source=MeasurementSource(endpoint=endpoint, point=point, at=r.at, unit=r.unit,
                                                             index=len(earlier))))
    results = InspectionResults(inspector=body.inspector, measurements=[*read, *manual.values()],
                                result_id=body.result_id)
    response = await submit_results(number, results, session, client, submitted_by=principal.subject)
    return _with_sources(response, read)


def _with_sources(response: JSONResponse, read: list[Measurement]) -> JSONResponse:
    body = json.loads(bytes(response.body))
    body["read"] = [{"characteristic": m.characteristic, "value": m.values[-1],
                     **m.source.model_dump(mode="json")} for m in read if m.source is not None]
    return JSONResponse(body, status_code=response.status_code)


async def submit_results(number: str, results: InspectionResults, session: AsyncSession,
                         client: Client, *, submitted_by: str) -> JSONResponse:
    """Judge results and hand them to the work order: the one path of JSON and CSV uploads (api/routes/quality.py).
    `submitted_by` is the request's login (or system token), the audit entry's actor; `results.inspector`, who
    measured, is recorded as data beside it."""
    ins = await quality.get_inspection(session, number)
    values = quality.check_results(ins, results.measurements)  # 422 naming each problem
    if ins.status == "pending":  # a plan's counts within the sample, photos of visual characteristics
        await inspection_triggers.check_planned_results(session, ins, results.measurements)
    verdict, failed = quality.verdict_of(ins, values)
    body = {"inspection": number, "lot": ins.lot.number, "verdict": verdict, "failed_characteristics": failed}
    if ins.status != "pending":
        stored = {c.name: c.values for c in ins.characteristics}
        if stored != values:
            raise Conflict(f"inspection {number} already has results ({ins.status}, by {ins.inspector}); "
                           "recorded results are not changed", field="measurements")
        return JSONResponse({**body, "message": "these results were already recorded"}, status_code=200)
    wo = await session.get(WorkOrder, ins.work_order_id) if ins.work_order_id else None
    if wo is None:
        raise Conflict(f"inspection {number} belongs to no work order; nothing waits for it")
    await client.get_workflow_handle(wo.workflow_id).signal(
        WorkOrderWorkflow.submit_inspection,
        InspectionResultInput(inspection=number, results=results, submitted_by=submitted_by)
    )
    return JSONResponse({**body, "message": "results accepted; the work order records them",
                         "status_url": f"/api/work-orders/{wo.number}"}, status_code=202)


# --- photos of visual characteristics ---------------------------------------------------------------------

MULTIPART_OVERHEAD = 16 * 1024  # boundaries and part headers around the photo in a multipart upload


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": "PayloadTooLarge", "limit": limit,
         "detail": f"the photo is larger than {limit} bytes: send a smaller or more compressed PNG or JPEG"},
        status_code=413, headers={"connection": "close"})  # the unread rest cannot be skipped


def _param(header: str, name: str) -> str | None:
    for piece in header.split(";")[1:]:
        key, _, value = piece.strip().partition("=")
        if key.strip().lower() == name:
            return value.strip().strip('"')
    return None


def parse_multipart(raw: bytes, content_type: str) -> tuple[bytes, str | None, str | None]:
    """The first file part of a multipart/form-data body: (bytes, its content type, its file name)."""
    boundary = _param(content_type, "boundary")
    if not boundary:
        raise InvalidInput("photo: multipart/form-data without a boundary; send the form as a browser does, or "
                           "the photo itself with Content-Type image/png or image/jpeg", field="photo")
    delimiter = b"--" + boundary.encode("latin-1")
    for part in raw.split(delimiter)[1:]:
        if part.startswith(b"--"):
            break
        head, sep, body = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            continue
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        disposition = headers.get("content-disposition", "")
        filename = _param(disposition, "filename")
        if filename is None and _param(disposition, "name") not in ("photo", "file"):
            continue
        return body.removesuffix(b"\r\n"), headers.get("content-type"), filename
    raise InvalidInput("photo: the form has no file part; send the photo in a field named 'photo' (or 'file')",
                       field="photo")


@router.post("/{number}/characteristics/{characteristic}/photos", status_code=201,
             summary="Attach a photo (PNG or JPEG; the raw image or multipart/form-data) to a visual characteristic",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "image/png": {"schema": {"type": "string", "format": "binary"}},
                 "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
                 "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                     "file": {"type": "string", "format": "binary"}}}}}}})
async def upload_photo(number: str, characteristic: Annotated[str, Path(min_length=1, max_length=80)],
                       request: Request, principal: PrincipalDep,
                       filename: Annotated[str | None, Query(max_length=200)] = None) -> JSONResponse:
    limit = request.app.state.settings.api.max_photo_bytes
    ctype = request.headers.get("content-type", "")
    multipart = ctype.split(";")[0].strip().lower() == "multipart/form-data"
    raw = await read_bounded(request, limit + (MULTIPART_OVERHEAD if multipart else 0))
    if raw is None:
        return _too_large(limit)
    declared: str | None = ctype or None
    if multipart:
        raw, declared, form_name = parse_multipart(raw, ctype)
        filename = filename or form_name
        if len(raw) > limit:
            return _too_large(limit)
    # the session is opened after the upload is read: a slow client holds no transaction (nor SQLite's lock)
    async with request.app.state.sessionmaker() as session, session.begin():
        att, new = await attachments.add_photo(session, inspection=number, characteristic=characteristic,
                                               data=raw, content_type=declared, filename=filename,
                                               actor=principal.subject)
        body = attachments.photo_view(att, number)
    return JSONResponse({**body, "duplicate": not new}, status_code=201 if new else 200)


@router.get("/{number}/photos", summary="The photos attached to an inspection")
async def list_photos(number: str, session: ReadSessionDep) -> list[dict[str, Any]]:
    return [attachments.photo_view(a, number) for a in await attachments.list_photos(session, number)]


@router.get("/{number}/photos/{attachment_id}", summary="Download a photo as it was uploaded",
            response_class=Response)
async def download_photo(number: str, attachment_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
                         session: ReadSessionDep) -> Response:
    att = await attachments.get_photo(session, number, attachment_id)
    ext = "png" if att.content_type == "image/png" else "jpg"
    return Response(att.data, media_type=att.content_type, headers={
        "etag": f'"{att.sha256}"', "x-content-sha256": att.sha256, "x-content-type-options": "nosniff",
        "content-disposition": f'inline; filename="{number}-{attachment_id}.{ext}"'})
