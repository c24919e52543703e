"""ERP events: each starts or advances a work order's durable workflow, exactly once.

ERPNext signs each webhook's body (HMAC-SHA256, base64, in X-Frappe-Webhook-Signature) with the
webhook's secret. When the ERP endpoint's config has a `webhook_secret`, an event without a valid
signature is refused (401) and logged, and its body is never processed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.models import PurchaseReceipt, ShipmentRequest, WorkOrderInput, released_work_order
from api.deps import SettingsDep, TemporalDep
from api.limits import refuse_nul_in_body
from connectors.erpnext import verify_webhook
from connectors.errors import ConnectorConfigError
from connectors.registry import connector_class
from core.errors import Conflict, InvalidInput, NotFound, Unauthorized
from domain import production
from domain.devices import REJECTED_ERP_EVENTS
from domain.endpoints import find_endpoint
from domain.models import ErpEvent
from workflows.work_order import WorkOrderWorkflow

router = APIRouter(prefix="/api/erp", tags=["erp"])
log = logging.getLogger("tracehub.erp.webhook")
SIGNATURE_HEADER = "X-Frappe-Webhook-Signature"


async def _webhook_secret(request: Request, endpoint: str) -> str | None:
    async with request.app.state.sessionmaker() as s:
        ep = await find_endpoint(s, endpoint)
    if ep is None:
        if endpoint == "erp":
            return None  # no ERP endpoint configured at all: nothing to verify against (development)
        raise NotFound(f"no ERP endpoint named {endpoint!r}: create it (POST /api/endpoints)", field="endpoint")
    try:
        config = connector_class(ep.kind).validate_config(ep.config)
    except (KeyError, ConnectorConfigError):
        # an endpoint we cannot read must not open the door: refuse rather than skip the check
        raise Unauthorized(f"ERP endpoint {endpoint!r} has a config the hub cannot read; events are refused "
                           "until it is fixed (PUT /api/endpoints/{name})") from None
    secret = getattr(config, "webhook_secret", None)
    return secret.get_secret_value() if secret is not None else None


async def verify_erp_signature(
    request: Request,
    endpoint: Annotated[str, Query(description="the ERP endpoint whose webhook secret signs the events")] = "erp",
) -> None:
    """Refuse an event whose signature does not match its body, before anything reads the body."""
    secret = await _webhook_secret(request, endpoint)
    if secret is None:
        if getattr(request.state, "signed_webhook", False):
            # the caller chose signature instead of a token: with no secret there is nothing to check it against
            raise Unauthorized(f"endpoint {endpoint!r} has no webhook_secret, so a signed webhook cannot be "
                               "verified: configure the secret, or send an API token with the erp role")
        return
    signature = request.headers.get(SIGNATURE_HEADER)
    if verify_webhook(secret, await request.body(), signature):
        await refuse_nul_in_body(request)
        return
    peer = request.client.host if request.client else "unknown"
    log.warning("refused an ERP event for endpoint %s from %s: %s %s", endpoint, peer,
                "bad" if signature else "missing", SIGNATURE_HEADER)
    raise Unauthorized(f"{SIGNATURE_HEADER} is {'wrong' if signature else 'missing'}: the event was refused "
                       f"unread; check that the ERP's webhook secret equals endpoint {endpoint!r}'s webhook_secret")


def workflow_id(number: str) -> str:
    return f"work-order-{number}"


def _sender(request: Request) -> str:
    """Who sent the event, the audit trail's actor of what it records: the API token's or login's subject, or
    `webhook:<endpoint>` for an event its endpoint's webhook secret signed."""
    principal = getattr(request.state, "principal", None)
    if principal is not None:
        return principal.subject
    return f"webhook:{request.query_params.get('endpoint', 'erp')}"


def _refuse_sender_fields(event: object) -> None:
    """`released_by` / `sent_by` are the hub's to set (_sender): never taken from a body."""
    if isinstance(event, WorkOrderReleased):
        if event.work_order.released_by is not None:
            raise InvalidInput("work_order.released_by: the hub sets it from who sent the event (the audit trail's "
                               "actor); leave it out", field="work_order.released_by")
        if any(r.sent_by is not None for r in event.work_order.receipts):
            raise InvalidInput("work_order.receipts.sent_by: the hub sets it from who sent the event; leave it out",
                               field="work_order.receipts.sent_by")
    elif isinstance(event, PurchaseReceiptPosted) and event.receipt.sent_by is not None:
        raise InvalidInput("receipt.sent_by: the hub sets it from who sent the event (the audit trail's actor); "
                           "leave it out", field="receipt.sent_by")


class _Envelope(BaseModel):
    event_id: str = Field(min_length=1, max_length=128, description="the ERP's unique id for this event")
    occurred_at: datetime | None = None


class WorkOrderReleased(_Envelope):
    event_type: Literal["work_order.released"]
    work_order: WorkOrderInput


class PurchaseReceiptPosted(_Envelope):
    event_type: Literal["purchase_receipt.posted"]
    work_order: str = Field(description="the work order this material is received for")
    receipt: PurchaseReceipt


class ShipmentRequested(_Envelope):
    event_type: Literal["shipment.requested"]
    work_order: str
    shipment: ShipmentRequest


ErpEventIn = Annotated[
    WorkOrderReleased | PurchaseReceiptPosted | ShipmentRequested, Field(discriminator="event_type")
]


class Accepted(BaseModel):
    accepted: bool
    duplicate: bool
    message: str
    workflow_id: str
    status_url: str


async def _remember(request: Request, ev: _Envelope, event_type: str, key: str) -> bool:
    """Store the event in the inbox; False when this event id was seen before."""
    try:
        async with request.app.state.sessionmaker() as s, s.begin():
            s.add(ErpEvent(event_id=ev.event_id, event_type=event_type, business_key=key,
                           workflow_id=workflow_id(key), payload=ev.model_dump(mode="json")))
        return True
    except IntegrityError:
        return False


async def _signal(client: Client, number: str, signal: str, arg: object) -> None:
    try:
        await client.get_workflow_handle(workflow_id(number)).signal(signal, arg)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFound(f"work order {number!r} has no running workflow: send work_order.released first "
                           "(or it has already finished)", field="number") from exc
        raise


def _read_session(request: Request) -> AsyncSession:
    state = request.app.state
    return (getattr(state, "read_sessionmaker", None) or state.sessionmaker)()


async def _run_state(client: Client, wf_id: str) -> str:
    """The work order's latest run: none, running, completed, or ended otherwise (failed, terminated...)."""
    try:
        desc = await client.get_workflow_handle(wf_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return "none"
        raise
    status = desc.status
    if status == WorkflowExecutionStatus.RUNNING:
        return "running"
    if status in (WorkflowExecutionStatus.COMPLETED, WorkflowExecutionStatus.CONTINUED_AS_NEW):
        return "completed"
    return "ended"


async def _waits_for_release(client: Client, wf_id: str) -> bool:
    """Does the run wait for a corrected release (its first step refused the release)?"""
    try:
        st = await client.get_workflow_handle(wf_id).query(WorkOrderWorkflow.status,
                                                           rpc_timeout=timedelta(seconds=10))
    except Exception:  # noqa: BLE001 - no answer (closed run, no worker yet): it waits for none
        return False
    return bool(st.release_refused)


async def _deliver_correction(client: Client, wf_id: str, order: WorkOrderInput, *,
                              waits: bool | None = None) -> bool:
    """A run whose release was refused inside the workflow waits for a corrected release: give it this one.
    False when the run waits for none (a plain duplicate). `waits`: already asked in this request."""
    if not (waits if waits is not None else await _waits_for_release(client, wf_id)):
        return False
    await client.get_workflow_handle(wf_id).signal(WorkOrderWorkflow.correct_release, order)
    return True


@router.post(
    "/events", status_code=202, response_model=Accepted,
    summary="Receive an ERP event (work order released, purchase receipt posted, shipment requested)",
    responses={200: {"model": Accepted, "description": "duplicate: already accepted, nothing started"},
               401: {"description": f"{SIGNATURE_HEADER} missing or wrong: refused unread"}},
    dependencies=[Depends(verify_erp_signature)],
)
async def post_erp_event(
    request: Request, client: TemporalDep, settings: SettingsDep, event: Annotated[ErpEventIn, Body()]
) -> JSONResponse:
    _refuse_sender_fields(event)
    if isinstance(event, WorkOrderReleased):
        number = event.work_order.number
        # NCR durations per severity from the settings, unless the event chose its own (kept in the input): the
        # same input the ERP poll builds (activities.models.released_work_order); and who sent it
        event.work_order = released_work_order(event.work_order, settings.ncr.table(), sent_by=_sender(request))
        wf_id = workflow_id(number)
        order = event.work_order
        waits: bool | None = None  # does the run wait for a corrected release (asked once, if at all)
        # what the workflow's first step would refuse, checked before anything is stored or started: a refused
        # release leaves nothing behind, so its corrected resend is a release, not a duplicate
        try:
            async with _read_session(request) as s:
                await production.check_release(s, number=number, item=order.item, gtin=order.gtin,
                                               output_lot=order.lot_number, receipts=order.receipts)
        except Conflict:
            # a resend of a work order already under way (or done) is a duplicate whatever changed since; a run
            # that waits for a corrected release is told nothing it would refuse again
            state = await _run_state(client, wf_id)
            waits = state == "running" and await _waits_for_release(client, wf_id)
            if state not in ("running", "completed") or waits:
                raise
        await _remember(request, event, event.event_type, number)
        try:
            # one run per number; a new one only after a run failed or was terminated (an operator ended it): the
            # work order is released again. Concurrent copies still start exactly one run.
            await client.start_workflow(
                WorkOrderWorkflow.run, order, id=wf_id, task_queue=settings.temporal.task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE_FAILED_ONLY,
                id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
            )
            started = True
        except WorkflowAlreadyStartedError:
            started = False
        corrected = not started and await _deliver_correction(client, wf_id, order, waits=waits)
        # exactly one start succeeds, whatever the number of concurrent or later copies
        duplicate = not started and not corrected
        msg = (f"work order {number} was already accepted (workflow {wf_id}); nothing new was started"
               if duplicate else
               f"corrected release of work order {number} delivered: workflow {wf_id} goes on with it" if corrected
               else f"work order {number} accepted: workflow {wf_id} started")
    else:
        number = event.work_order
        first = await _remember(request, event, event.event_type, number)
        if isinstance(event, PurchaseReceiptPosted):
            await _signal(client, number, "receive_material",
                          event.receipt.model_copy(update={"sent_by": _sender(request)}))
            what = f"purchase receipt {event.receipt.receipt}"
        else:
            await _signal(client, number, "request_shipment", event.shipment)
            what = f"shipment request {event.shipment.shipment}"
        wf_id = workflow_id(number)
        duplicate = not first
        msg = (f"event {event.event_id} was already accepted; the work order ignores repeats"
               if duplicate else f"{what} delivered to work order {number}")
    body = Accepted(accepted=True, duplicate=duplicate, message=msg, workflow_id=wf_id,
                    status_url=f"/api/work-orders/{number}")
    return JSONResponse(body.model_dump(), status_code=200 if duplicate else 202)


@router.get("/events", summary="The ERP event inbox, newest first",
            description="Each event: event_id, event_type, work_order, received_at. A rejected event (work_order.rejected, purchase_receipt.rejected) also gives `field` (the ERP field at fault) and `reason` (what to fix in the ERP).")
async def list_erp_events(request: Request, limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict]:
    async with request.app.state.sessionmaker() as s:
        rows = (await s.execute(select(ErpEvent).order_by(ErpEvent.id.desc()).limit(limit))).scalars()
        out = []
        for r in rows:
            item = {"event_id": r.event_id, "event_type": r.event_type, "work_order": r.business_key,
                    "received_at": r.received_at.isoformat()}
            if r.event_type in REJECTED_ERP_EVENTS:
                # why the hub could not use it, as recorded: the ERP field at fault and what to fix there
                p = r.payload or {}
                item.update(field=p.get("field"), reason=p.get("reason"))
            out.append(item)
        return out
