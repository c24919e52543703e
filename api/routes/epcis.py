"""GS1 EPCIS 2.0 REST bindings: capture (jobs), events query, single events, named queries.

EPCIS clients expect RFC 7807 problems typed `epcisException:<Name>` with the statuses of the REST
bindings (400 for validation and query-parameter errors, not the hub's 422), so the errors of this router are
mapped here, in one function, rather than by the hub-wide handlers of api/errors.py.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, ParamSpec
from urllib.parse import quote, urlencode

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from activities.epcis_models import DeliverSubscriptionInput
from api.deps import SessionDep, SettingsDep, TemporalDep, get_temporal
from core.errors import Conflict, HubError, InvalidInput, NotFound
from domain import epcis_capture, epcis_query, epcis_subscriptions, epcis_xml
from domain.epcis_hash import context_prefixes, event_hash
from domain.models_trace import EpcisCaptureJob
from workflows.epcis_capture import start_capture
from workflows.epcis_subscription import delete_subscription_schedule, start_subscription_schedule

router = APIRouter(prefix="/epcis", tags=["epcis"])

# the bodies these routes read themselves (JSON-LD or XML, validated by the capture rules), as OpenAPI shows them
_EVENT_TYPES = ["ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent", "AssociationEvent"]
_EVENT = {"type": "object", "required": ["type", "eventTime", "eventTimeZoneOffset"], "properties": {
    "type": {"type": "string", "enum": _EVENT_TYPES}, "eventTime": {"type": "string", "format": "date-time"},
    "eventTimeZoneOffset": {"type": "string", "pattern": "^[+-][0-9]{2}:[0-9]{2}$"},
    "action": {"type": "string", "enum": ["ADD", "OBSERVE", "DELETE"]},
    "bizStep": {"type": "string"}, "disposition": {"type": "string"},
    "epcList": {"type": "array", "items": {"type": "string"}}}, "additionalProperties": True}
_XML = {"application/xml": {"schema": {"type": "string"}}}


def _body_doc(schema: dict[str, Any], *, xml: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": schema}, "application/ld+json": {"schema": schema}}
    if xml:
        content.update(_XML)
    return {"requestBody": {"required": True, "content": content}}


CAPTURE_BODY = _body_doc({"type": "object", "required": ["type", "epcisBody"], "properties": {
    "@context": {}, "type": {"type": "string", "enum": ["EPCISDocument"]}, "schemaVersion": {"type": "string"},
    "creationDate": {"type": "string", "format": "date-time"},
    "epcisBody": {"type": "object", "required": ["eventList"], "properties": {
        "eventList": {"type": "array", "items": _EVENT}}}}}, xml=True)
EVENT_BODY = _body_doc(_EVENT, xml=True)
QUERY_BODY = _body_doc({"type": "object", "required": ["name", "query"], "properties": {
    "name": {"type": "string"}, "query": {"type": "object", "additionalProperties": True}}})
SUBSCRIPTION_BODY = _body_doc({"type": "object", "required": ["dest"], "properties": {
    "dest": {"type": "string", "format": "uri"}, "signatureToken": {"type": "string"},
    "stream": {"type": "boolean"}, "reportIfEmpty": {"type": "boolean"},
    "schedule": {"type": "object", "additionalProperties": True}}})
P = ParamSpec("P")

PROBLEM = "application/problem+json"
_STATUS = {
    "ValidationException": 400, "QueryParameterException": 400, "QueryValidationException": 400,
    "CaptureLimitExceededException": 413, "QueryTooLargeException": 413, "NoSuchNameException": 404,
    "NoSuchResourceException": 404, "ResourceAlreadyExistsException": 409, "UnsupportedMediaTypeException": 415,
    "NotAcceptableException": 406, "SubscriptionControlsException": 400,
}


def _limits() -> dict[str, str]:
    return {
        "GS1-EPCIS-Version": "2.0.0", "GS1-CBV-Version": "2.0.0", "GS1-EPCIS-Min": "2.0.0", "GS1-EPCIS-Max": "2.0.0",
        "GS1-EPC-Format": "Always_GS1_Digital_Link",
        "GS1-EPCIS-Capture-Limit": str(epcis_capture.CAPTURE_LIMIT),
        "GS1-EPCIS-Capture-File-Size-Limit": str(epcis_capture.CAPTURE_FILE_SIZE_LIMIT),
        "GS1-Capture-Error-Behaviour": "rollback, proceed",
        "GS1-Vendor-Version": "tracehub-0.1.0",
    }


def problem(name: str, detail: str, *, status: int | None = None, **extra: Any) -> JSONResponse:
    body = {"type": f"epcisException:{name}", "title": name, "status": status or _STATUS.get(name, 400),
            "detail": detail, **extra}
    return JSONResponse(body, status_code=body["status"], media_type=PROBLEM, headers=_limits())


def _from_hub_error(exc: HubError) -> JSONResponse:
    if exc.kind in _STATUS:
        name = exc.kind
    elif isinstance(exc, NotFound):
        name = "NoSuchResourceException"
    elif isinstance(exc, Conflict):
        name = "ResourceAlreadyExistsException"
    elif isinstance(exc, InvalidInput):
        name = "QueryParameterException"
    else:
        name = "ImplementationException"
    return problem(name, exc.message, status=_STATUS.get(name, 500), **({"field": exc.field} if exc.field else {}))


def epcis_errors(fn: Callable[P, Awaitable[Response]]) -> Callable[P, Awaitable[Response]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Response:
        try:
            return await fn(*args, **kwargs)
        except HubError as exc:
            return _from_hub_error(exc)

    return wrapper


def _epc_format(request: Request) -> str:
    """The `GS1-EPC-Format` the client asks for (absent: Always_GS1_Digital_Link, as the REST binding says); a value
    outside the binding's four is refused, naming the header, rather than answered in a format nobody asked for."""
    asked = request.headers.get("GS1-EPC-Format")
    if asked is None:
        return "Always_GS1_Digital_Link"
    if asked.strip() not in epcis_query.EPC_FORMATS:
        raise InvalidInput(f"GS1-EPC-Format: {asked!r} is not a value of the EPCIS REST binding; use one of "
                           f"{', '.join(epcis_query.EPC_FORMATS)}, or leave the header out (Always_GS1_Digital_Link)",
                           field="GS1-EPC-Format")
    return asked.strip()


def _declared_ns(request: Request) -> dict[str, str]:
    """`GS1-Extensions: acme=https://ns.acme.example/epcis/, ex=...` names the query's extension prefixes."""
    out = {}
    for part in request.headers.get("GS1-Extensions", "").split(","):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


async def _body(request: Request, xml: Callable[[bytes], Any] | None = None) -> Any:
    """The JSON body; with `xml` (a parser of epcis_xml), an application/xml or text/xml body is read with it."""
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    as_xml = xml is not None and epcis_xml.is_xml(ctype)
    if ctype not in ("application/json", "application/ld+json") and not as_xml:
        raise _Refused("UnsupportedMediaTypeException",
                       f"content type {ctype!r} is not accepted: send application/json or application/ld+json"
                       + (", or application/xml" if xml is not None else ""), field="content-type")
    size = int(request.headers.get("content-length") or 0)
    if size > epcis_capture.CAPTURE_FILE_SIZE_LIMIT:
        raise _Refused("CaptureLimitExceededException", f"the document has {size} bytes; the limit is "
                       f"{epcis_capture.CAPTURE_FILE_SIZE_LIMIT}: split it into smaller documents")
    raw = await request.body()
    if len(raw) > epcis_capture.CAPTURE_FILE_SIZE_LIMIT:
        raise _Refused("CaptureLimitExceededException", f"the document has {len(raw)} bytes; the limit is "
                       f"{epcis_capture.CAPTURE_FILE_SIZE_LIMIT}: split it into smaller documents")
    if as_xml and xml is not None:  # a large document takes a while to convert: off the event loop
        return await run_in_threadpool(xml, raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _Refused("ValidationException", f"the body is not JSON ({exc}): send an EPCIS document") from None


class _Refused(Exception):
    def __init__(self, name: str, detail: str, field: str = "body") -> None:
        super().__init__(detail)
        self.name = name
        self.detail = detail
        self.field = field  # what the refusal is about: the body, or its content-type header


@router.get("", summary="EPCIS top-level resources")
async def epcis_root() -> JSONResponse:
    return JSONResponse({"type": "Collection", "member": ["capture", "events", "queries", "eventTypes"]},
                        headers=_limits())


@router.options("/capture", summary="Capture discovery: versions, formats and capture limits")
async def capture_options() -> Response:
    return Response(status_code=204, headers=_limits())


@router.post("/capture", status_code=202, summary="Capture an EPCISDocument (all events, or none)",
             openapi_extra=CAPTURE_BODY)
@epcis_errors
async def capture_document(request: Request, session: SessionDep) -> Response:
    try:
        doc = await _body(request, epcis_xml.parse_document)
    except _Refused as r:
        return problem(r.name, r.detail, field=r.field)
    behaviour = request.headers.get("GS1-Capture-Error-Behaviour", "rollback").lower()
    if behaviour not in ("rollback", "proceed"):
        return problem("ValidationException", "GS1-Capture-Error-Behaviour is rollback or proceed",
                       field="GS1-Capture-Error-Behaviour")
    if not isinstance(doc, dict) or doc.get("type") not in ("EPCISDocument", "EPCISQueryDocument"):
        return problem("ValidationException", "capture takes an EPCISDocument or an EPCISQueryDocument "
                       "(JSON-LD with type EPCISDocument)", field="type")
    if epcis_capture.event_count(doc) <= epcis_capture.INLINE_MAX_EVENTS:  # small: done in the request
        job = await epcis_capture.capture(session, doc, behaviour=behaviour)
        return JSONResponse(epcis_capture.job_view(job), status_code=202,
                            headers={"Location": f"/epcis/capture/{job.id}", **_limits()})
    return await _capture_later(request, session, doc, behaviour)


async def _capture_later(request: Request, session: SessionDep, doc: Any, behaviour: str) -> Response:
    """Keep the document with a running job (committed), then let a workflow validate and store it."""
    # the document as JSON, the body itself when it is JSON (an XML body was converted already): the workflow
    # reads it back from the database
    ctype = request.headers.get("content-type", "application/json").split(";")[0].strip()
    body = await request.body() if ctype in ("application/json", "application/ld+json") else orjson.dumps(doc)
    job = await epcis_capture.enqueue(session, doc, body, behaviour=behaviour, content_type="application/ld+json")
    view = epcis_capture.job_view(job)
    await session.commit()
    try:
        await start_capture(await get_temporal(request), job_id=job.id,
                            task_queue=request.app.state.settings.temporal.task_queue)
    except Exception as exc:  # noqa: BLE001 - whatever kept the workflow from starting, the job must not hang
        async with request.app.state.sessionmaker() as s, s.begin():
            await epcis_capture.fail_job(s, job.id, f"the capture could not be started ({exc}): nothing was "
                                                    "stored; send the document again shortly")
        return problem("ImplementationException", f"the capture could not be started ({exc}): nothing was stored; "
                       "send the document again shortly", status=503, captureID=job.id)
    return JSONResponse(view, status_code=202, headers={"Location": f"/epcis/capture/{job.id}", **_limits()})


@router.get("/capture", summary="Capture jobs, newest first")
async def list_capture_jobs(session: SessionDep) -> JSONResponse:
    jobs = (await session.execute(select(EpcisCaptureJob).order_by(EpcisCaptureJob.created_at.desc())
                                  .limit(100))).scalars()
    return JSONResponse([epcis_capture.job_view(j) for j in jobs], headers=_limits())


@router.get("/capture/{capture_id}", summary="One capture job: running, success, every error")
@epcis_errors
async def get_capture_job(capture_id: str, session: SessionDep) -> Response:
    return JSONResponse(epcis_capture.job_view(await epcis_capture.get_job(session, capture_id)), headers=_limits())


@router.post("/events", status_code=201, summary="Capture one event synchronously",
             openapi_extra=EVENT_BODY)
@epcis_errors
async def capture_event(request: Request, session: SessionDep) -> Response:
    try:
        ev = await _body(request, epcis_xml.parse_event)
    except _Refused as r:
        return problem(r.name, r.detail, field=r.field)
    job = await epcis_capture.capture(session, ev, single_event=True)
    if not job.success:
        return problem("ValidationException", "; ".join(e["detail"] for e in job.errors), errors=job.errors)
    eid = ev.get("eventID") or event_hash({k: v for k, v in ev.items() if k not in ("@context", "recordTime")},
                                          context_prefixes(ev.get("@context")))
    return JSONResponse({"eventID": eid}, status_code=201,
                        headers={"Location": f"/epcis/events/{quote(str(eid), safe='')}", **_limits()})


def _own_prefixes(request: Request) -> list[str]:
    """The plant's GS1 company prefixes (HUB_GS1__COMPANY_PREFIXES), for GS1-EPC-Format: Always_EPC_URN."""
    return list(request.app.state.settings.gs1.company_prefixes)


def _params(request: Request) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in request.query_params.multi_items():
        out[k] = f"{out[k]}|{v}" if k in out else v
    return out


async def _answer(session: SessionDep, request: Request, params: dict[str, Any], name: str | None,
                  frozen_ns: dict[str, Any] | None = None) -> Response:
    """`frozen_ns`: a named query's prefix bindings from its creation, which a header cannot change."""
    fmt = _epc_format(request)
    declared = {**_declared_ns(request), **(frozen_ns or {})}
    doc, token = await epcis_query.run(session, params, declared_ns=declared, epc_format=fmt,
                                       own_prefixes=_own_prefixes(request))
    if name:
        doc["epcisBody"]["queryResults"]["queryName"] = name
    headers = {**_limits(), "GS1-EPC-Format": fmt}
    if token:
        nxt = {k: v for k, v in request.query_params.multi_items() if k != "nextPageToken"}
        nxt["nextPageToken"] = token
        headers["Link"] = f'<{request.url.path}?{urlencode(nxt)}>; rel="next"'
        headers["GS1-Next-Page-Token"] = token
    return _negotiated(request, doc, headers)


def _negotiated(request: Request, doc: dict[str, Any], headers: dict[str, str]) -> Response:
    """The EPCISQueryDocument as XML when `Accept` prefers application/xml or text/xml, else as JSON-LD."""
    if epcis_xml.wants_xml(request.headers.get("accept")):
        return Response(epcis_xml.query_document_xml(doc), media_type="application/xml", headers=headers)
    return JSONResponse(doc, media_type="application/ld+json", headers=headers)


@router.get("/events", summary="Query events (SimpleEventQuery parameters in the query string)")
@epcis_errors
async def query_events(request: Request, session: SessionDep) -> Response:
    return await _answer(session, request, _params(request), None)


@router.get("/events/{event_id:path}", summary="One event and its error declarations")
@epcis_errors
async def get_event(event_id: str, request: Request, session: SessionDep) -> Response:
    if request.url.query and "?" not in event_id:
        event_id = f"{event_id}?{request.url.query}"  # an unencoded hash ID: ni:///sha-256;...?ver=CBV2.0
    doc = await epcis_query.get_event(session, event_id, epc_format=_epc_format(request),
                                      own_prefixes=_own_prefixes(request))
    return _negotiated(request, doc, {**_limits(), "GS1-EPC-Format": _epc_format(request)})


@router.get("/eventTypes", summary="The event types")
async def event_types() -> JSONResponse:
    return JSONResponse({"type": "Collection", "member": ["ObjectEvent", "AggregationEvent", "TransactionEvent",
                                                          "TransformationEvent", "AssociationEvent"]})


@router.post("/queries", status_code=201, summary="Create a named query: {name, query: {parameters}}",
             openapi_extra=QUERY_BODY)
@epcis_errors
async def create_query(request: Request, session: SessionDep) -> Response:
    try:
        body = await _body(request)
    except _Refused as r:
        return problem(r.name, r.detail, field=r.field)
    if not isinstance(body, dict) or not isinstance(body.get("query", {}), dict) or "name" not in body:
        return problem("QueryValidationException", 'send {"name": "...", "query": {"EQ_bizStep": ["shipping"]}}',
                       field="body")
    row = await epcis_query.create_named(session, str(body["name"]), body.get("query") or {},
                                         declared_ns=_declared_ns(request))
    return JSONResponse({"name": row.name, "query": row.query}, status_code=201,
                        headers={"Location": f"/epcis/queries/{row.name}", **_limits()})


@router.get("/queries", summary="Named queries")
async def list_queries(session: SessionDep) -> JSONResponse:
    return JSONResponse([{"name": q.name, "query": q.query} for q in await epcis_query.list_named(session)])


@router.get("/queries/{name}", summary="One named query")
@epcis_errors
async def get_query(name: str, session: SessionDep) -> Response:
    row = await epcis_query.get_named(session, name)
    return JSONResponse({"name": row.name, "query": row.query})


@router.delete("/queries/{name}", status_code=204, summary="Delete a named query and unsubscribe its subscribers")
@epcis_errors
async def delete_query(name: str, request: Request, session: SessionDep) -> Response:
    for sub in await epcis_subscriptions.list_active(session, name):  # Temporal only when there are subscribers
        await delete_subscription_schedule(await get_temporal(request), sub.id)
        await epcis_subscriptions.delete(session, sub)
    await epcis_query.delete_named(session, name)
    return Response(status_code=204)


# --- subscriptions (webhooks) -----------------------------------------------------------------------------

@router.post("/queries/{name}/subscriptions", status_code=201,
             summary="Subscribe a webhook to a named query: {dest, signatureToken?, stream: true | schedule}",
             openapi_extra=SUBSCRIPTION_BODY)
@epcis_errors
async def subscribe(name: str, request: Request, session: SessionDep, client: TemporalDep,
                    settings: SettingsDep) -> Response:
    try:
        body = await _body(request)
    except _Refused as r:
        return problem(r.name, r.detail, field=r.field)
    row = await epcis_subscriptions.create(session, name, body, epc_format=_epc_format(request),
                                           own_prefixes=settings.gs1.company_prefixes)
    ranges = epcis_subscriptions.parse_schedule(row.schedule) if row.schedule is not None else None
    inp = DeliverSubscriptionInput(subscription_id=row.id, lag_seconds=settings.epcis.record_lag_seconds,
                                   batch=settings.epcis.callback_batch)
    await session.commit()  # the schedule's first run must find the subscription
    await start_subscription_schedule(client, inp=inp, task_queue=settings.temporal.task_queue, ranges=ranges,
                                      stream_every=timedelta(seconds=settings.epcis.stream_every_seconds))
    return JSONResponse(epcis_subscriptions.view(row), status_code=201, headers={
        "Location": f"/epcis/queries/{quote(name)}/subscriptions/{row.id}", **_limits()})


@router.get("/queries/{name}/subscriptions", summary="The active subscriptions of a named query")
@epcis_errors
async def list_subscriptions(name: str, session: SessionDep) -> Response:
    return JSONResponse([epcis_subscriptions.view(r) for r in await epcis_subscriptions.list_active(session, name)],
                        headers=_limits())


@router.get("/queries/{name}/subscriptions/{subscription_id}", summary="One subscription (never its token)")
@epcis_errors
async def get_subscription(name: str, subscription_id: str, session: SessionDep) -> Response:
    row = await epcis_subscriptions.get(session, name, subscription_id)
    return JSONResponse(epcis_subscriptions.view(row), headers=_limits())


@router.delete("/queries/{name}/subscriptions/{subscription_id}", status_code=204, summary="Unsubscribe")
@epcis_errors
async def unsubscribe(name: str, subscription_id: str, session: SessionDep, client: TemporalDep) -> Response:
    row = await epcis_subscriptions.get(session, name, subscription_id)
    await delete_subscription_schedule(client, row.id)
    await epcis_subscriptions.delete(session, row)
    return Response(status_code=204)


@router.get("/queries/{name}/events", summary="Run a named query (paged with perPage / nextPageToken)")
@epcis_errors
async def run_query(name: str, request: Request, session: SessionDep) -> Response:
    row = await epcis_query.get_named(session, name)
    params = dict(row.query)
    for k, v in request.query_params.items():
        if k in ("perPage", "nextPageToken"):
            params[k] = v
        else:
            # the named query's parameters are fixed when it is created: a filter added here would be ignored
            raise InvalidInput(f"{k}: a named query's parameters are fixed (query {name!r} has "
                               f"{', '.join(sorted(row.query)) or 'none'}); only perPage and nextPageToken may be "
                               "given here. Query GET /epcis/events with the parameters, or create another named "
                               "query", field=k)
    return await _answer(session, request, params, name, row.namespaces)
