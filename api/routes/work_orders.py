"""Work orders: the record, the live workflow status, the history timeline, and operation reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.api.enums.v1 import EventType, PendingActivityState, TimeoutType
from temporalio.client import Client, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.models import OperationProgress, OperationReport, ShipmentRequest
from api.deps import ReadSessionDep, TemporalDep
from api.routes.erp import workflow_id
from api.security import PrincipalDep
from core.errors import Conflict, InvalidInput, NotFound
from domain import holds, inspection_triggers, production
from domain.models import WorkOrder
from workflows.work_order import WorkOrderStatus, WorkOrderWorkflow
from workflows.work_order_models import RetryRequest

router = APIRouter(prefix="/api/work-orders", tags=["work orders"])


def _record(wo: WorkOrder) -> dict[str, Any]:
    return {
        "number": wo.number, "item": wo.item.code, "quantity": wo.quantity, "uom": wo.uom, "line": wo.line,
        "status": wo.status, "stage": wo.stage, "good_quantity": wo.good_quantity,
        "scrap_quantity": wo.scrap_quantity, "sales_order": wo.sales_order, "customer": wo.customer,
        "routing": wo.routing, "workflow_id": wo.workflow_id, "released_at": wo.released_at.isoformat(),
        "completed_at": wo.completed_at.isoformat() if wo.completed_at else None,
    }


async def live_status(client: Client, wf_id: str) -> dict[str, Any]:
    """The workflow's own status query plus what Temporal knows of its pending activities (retries)."""
    handle = client.get_workflow_handle(wf_id)
    out: dict[str, Any] = {}
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return {"workflow": "not found"}
        return {"workflow": "unknown", "error": f"Temporal not reachable: {exc.message}"}
    out["workflow"] = desc.status.name if desc.status else "UNKNOWN"
    retries = []
    for pa in desc.raw_description.pending_activities:
        item = {"activity": pa.activity_type.name, "attempt": pa.attempt,
                "state": PendingActivityState.Name(pa.state).removeprefix("PENDING_ACTIVITY_STATE_").lower()}
        if pa.HasField("last_failure"):
            item["last_failure"] = pa.last_failure.message
        retries.append(item)
    out["pending_activities"] = retries
    try:
        st: WorkOrderStatus = await handle.query(WorkOrderWorkflow.status)
        status = st.model_dump(mode="json")
        for r in retries:
            if r["attempt"] > 1:
                status["waiting_for"].append(
                    f"retry: {r['activity']} attempt {r['attempt']}"
                    + (f", last error: {r['last_failure']}" if r.get("last_failure") else "")
                )
        out["status"] = status
    except Exception as exc:  # noqa: BLE001 - a query needs a worker; say so instead of failing the page
        out["status"] = None
        out["status_error"] = f"no worker answered the status query ({type(exc).__name__}: {exc})"
    return out


@router.get("", summary="List work orders")
async def list_work_orders(
    session: ReadSessionDep, status: str | None = None, limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**63 - 1)
) -> dict[str, Any]:
    q = select(WorkOrder)
    if status:
        q = q.where(WorkOrder.status == status)
    total = (await session.execute(select(func.count()).select_from(q.subquery()))).scalar_one()
    rows = (await session.execute(q.order_by(WorkOrder.id.desc()).limit(limit).offset(offset))).scalars().all()
    return {"total": total, "items": [_record(w) for w in rows]}


@router.get("/{number}", summary="A work order: its record plus the live workflow status")
async def get_work_order(number: str, session: ReadSessionDep, client: TemporalDep) -> dict[str, Any]:
    # the live status first, then the record: what the status says is done is then in the record too (and no
    # transaction is open during the Temporal query)
    live = await live_status(client, workflow_id(number))
    wo = await production.find_work_order(session, number)
    if wo is None and live.get("workflow") == "not found":
        await production.get_work_order(session, number)  # raises NotFound with the message
    if live.get("status"):
        await _recalled_material(session, live["status"])
    return {"record": _record(wo) if wo else None, **live}


async def _recalled_material(session: AsyncSession, status: dict[str, Any]) -> None:
    """The workflow's own view of its material lots (released once IQC passed) does not see a recall's hold or
    reject, which are records of their own (the workflow takes no command for them): such a lot shows its status in
    the record, `material_recalls` names the recalls holding it, and in production the status says why a report
    consuming it is refused."""
    found = await holds.recalled_lots(session, list(status.get("material_lots") or {}))
    status["material_recalls"] = {lot: x["recalls"] for lot, x in sorted(found.items()) if x["recalls"]}
    for lot, x in sorted(found.items()):
        status["material_lots"][lot] = x["status"]
        if x["recalls"] and status.get("stage") == "production":
            status["waiting_for"].append(
                f"reviewer: recall {', '.join(x['recalls'])} holds material lot {lot}: it may not be consumed until "
                "a reviewer releases it on the recall")


@router.post("/{number}/operations", status_code=202, summary="Report an operation (MES or operator)")
async def post_operation(number: str, report: OperationReport, session: ReadSessionDep,
                         client: TemporalDep, principal: PrincipalDep) -> dict:
    if report.reported_by is not None:
        raise InvalidInput("reported_by: the hub sets it from your login (the audit trail's actor); leave it out "
                           "and name who ran the operation in `operator`", field="reported_by")
    report = report.model_copy(update={"reported_by": principal.subject})
    # only reads here (the workflow records the report): no write lock held across the Temporal round trip
    wo = await production.get_work_order(session, number)
    seqs = [op["seq"] for op in wo.routing]
    if report.seq not in seqs:
        raise InvalidInput(f"seq: operation {report.seq} is not in the routing of {number} (routing: {seqs})",
                           field="seq")
    handle = client.get_workflow_handle(wo.workflow_id)
    try:
        st: WorkOrderStatus = await handle.query(WorkOrderWorkflow.status)
    except RPCError:
        raise
    except Exception as exc:
        raise Conflict(f"work order {number} cannot take reports now ({exc}); send it again shortly") from exc
    if st.expected_operation != report.seq:
        now = (f"it waits for operation {st.expected_operation}" if st.expected_operation
               else f"it is in stage {st.stage} and waits for no operation report")
        raise Conflict(f"work order {number} is not waiting for operation {report.seq}: {now}", field="seq")
    await production.check_consumable(session, [(c.lot, c.quantity) for c in report.consumed])
    await handle.signal(WorkOrderWorkflow.report_operation, report)
    return {"accepted": True, "work_order": number, "report_id": report.report_id,
            "status_url": f"/api/work-orders/{number}"}


class ProgressIn(BaseModel):
    units: int = Field(ge=0, le=10_000_000, description="units made so far in this run of the operation")


async def _status(client: Client, wf_id: str, number: str, what: str) -> WorkOrderStatus:
    try:
        return await client.get_workflow_handle(wf_id).query(WorkOrderWorkflow.status)
    except RPCError:
        raise
    except Exception as exc:
        raise Conflict(f"work order {number} cannot take {what} now ({exc}); send it again shortly") from exc


@router.post("/{number}/operations/{seq}/progress", status_code=202,
             summary="Units made so far in the running operation (MES): patrol inspections every N units")
async def post_progress(number: str, seq: Annotated[int, Path(ge=1, le=9999)], body: ProgressIn,
                        session: ReadSessionDep, client: TemporalDep) -> dict[str, Any]:
    wo = await production.get_work_order(session, number)
    st = await _status(client, wo.workflow_id, number, "progress reports")
    if st.expected_operation != seq:
        now = (f"operation {st.expected_operation} is running" if st.expected_operation
               else f"it is in stage {st.stage} and no operation is running")
        raise Conflict(f"work order {number} is not running operation {seq}: {now}", field="seq")
    await client.get_workflow_handle(wo.workflow_id).signal(
        WorkOrderWorkflow.report_progress, OperationProgress(seq=seq, units=body.units))
    return {"accepted": True, "work_order": number, "seq": seq, "units": body.units,
            "status_url": f"/api/work-orders/{number}"}


@router.post("/{number}/shipment", status_code=202,
             summary="Request the shipment of the work order's lot; refused (409) when the lot is finished and "
                     "an outgoing inspection or an open NCR holds it")
async def request_shipment(number: str, req: ShipmentRequest, session: ReadSessionDep,
                           client: TemporalDep) -> dict[str, Any]:
    wo = await production.get_work_order(session, number)
    st = await _status(client, wo.workflow_id, number, "a shipment request")
    if st.shipment or st.result:
        raise Conflict(f"work order {number} is {st.result or 'shipped'}"
                       + (f" (shipment {st.shipment})" if st.shipment else "") + ": nothing more to ship",
                       field="shipment")
    ready = st.stage == "shipment"
    if ready and st.shipment_gate:
        raise Conflict(f"work order {number} already has a shipment request, held: " + "; ".join(st.shipment_gate),
                       field="shipment")
    if ready and not any(w.startswith("ERP: shipment request") for w in st.waiting_for):
        raise Conflict(f"work order {number} already has a shipment request and is shipping it", field="shipment")
    if ready:  # the lot is finished: what would hold the shipment can be checked now
        problems = await inspection_triggers.shipment_problems(session, work_order=number, lot=st.output_lot)
        if problems:
            raise Conflict(f"shipment {req.shipment} of lot {st.output_lot} refused: " + "; ".join(problems),
                           field="shipment")
    await client.get_workflow_handle(wo.workflow_id).signal(WorkOrderWorkflow.request_shipment, req)
    return {"accepted": True, "work_order": number, "shipment": req.shipment, "lot": st.output_lot,
            "message": "the lot ships now" if ready else
            f"the work order is in stage {st.stage}: the lot ships when it is finished, after its outgoing "
            "inspection (if its plan requires one) and with no NCR open on it",
            "status_url": f"/api/work-orders/{number}"}


class RetryIn(BaseModel):
    reason: str | None = Field(default=None, max_length=500, description="what was fixed (kept in the audit)")


@router.post("/{number}/retry", summary="Retry what the work order waits on after a refusal (admins; audited)",
             responses={409: {"description": "the work order waits on no refusal, or has finished"}})
async def retry_work_order(number: str, request: Request, session: ReadSessionDep, client: TemporalDep,
                           principal: PrincipalDep,
                           body: Annotated[RetryIn | None, Body()] = None) -> JSONResponse:
    """The ERP refused a document, or the shipment was refused: once the cause is fixed, the work order tries the
    refused step again (a document the ERP already took is not taken twice)."""
    wo = await production.find_work_order(session, number)
    wf_id = wo.workflow_id if wo else workflow_id(number)
    await session.commit()  # no transaction held across the Temporal round trip
    reason = body.reason if body else None
    try:
        retried = await client.get_workflow_handle(wf_id).execute_update(
            WorkOrderWorkflow.retry, RetryRequest(requested_by=principal.subject, reason=reason))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        msg = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        raise Conflict(msg, field="number") from exc
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            if wo is None:
                raise NotFound(f"work order {number!r} does not exist: check the number", field="number") from exc
            raise Conflict(f"work order {number} has no running workflow: nothing to retry", field="number") from exc
        if "completed" in exc.message or exc.status == RPCStatusCode.FAILED_PRECONDITION:
            raise Conflict(f"work order {number} has finished: nothing to retry", field="number") from exc
        raise
    async with request.app.state.sessionmaker() as s, s.begin():
        await production.record_retry(s, number, actor=principal.subject, retried=retried, reason=reason)
    return JSONResponse({"work_order": number, "retried": retried, "status_url": f"/api/work-orders/{number}"})


_LABELS = {
    "WORKFLOW_EXECUTION_STARTED": "workflow started",
    "WORKFLOW_EXECUTION_COMPLETED": "workflow completed",
    "WORKFLOW_EXECUTION_FAILED": "workflow failed",
    "WORKFLOW_EXECUTION_TERMINATED": "workflow terminated",
    "WORKFLOW_EXECUTION_SIGNALED": "signal received",
    "WORKFLOW_EXECUTION_UPDATE_ACCEPTED": "update accepted",
    "WORKFLOW_EXECUTION_UPDATE_COMPLETED": "update completed",
    "ACTIVITY_TASK_SCHEDULED": "activity scheduled",
    "ACTIVITY_TASK_STARTED": "activity started",
    "ACTIVITY_TASK_COMPLETED": "activity completed",
    "ACTIVITY_TASK_FAILED": "activity failed",
    "ACTIVITY_TASK_TIMED_OUT": "activity timed out",
    "TIMER_STARTED": "timer started",
    "TIMER_FIRED": "timer fired",
    "START_CHILD_WORKFLOW_EXECUTION_INITIATED": "child workflow requested",
    "CHILD_WORKFLOW_EXECUTION_STARTED": "child workflow started",
    "CHILD_WORKFLOW_EXECUTION_COMPLETED": "child workflow completed",
    "CHILD_WORKFLOW_EXECUTION_FAILED": "child workflow failed",
    "CHILD_WORKFLOW_EXECUTION_TERMINATED": "child workflow terminated",
    "CHILD_WORKFLOW_EXECUTION_CANCELED": "child workflow cancelled",
    "CHILD_WORKFLOW_EXECUTION_TIMED_OUT": "child workflow timed out",
    "WORKFLOW_TASK_FAILED": "workflow task failed",
}
_CHILD_ENDS = ("CHILD_WORKFLOW_EXECUTION_STARTED", "CHILD_WORKFLOW_EXECUTION_COMPLETED",
               "CHILD_WORKFLOW_EXECUTION_FAILED", "CHILD_WORKFLOW_EXECUTION_TERMINATED",
               "CHILD_WORKFLOW_EXECUTION_CANCELED", "CHILD_WORKFLOW_EXECUTION_TIMED_OUT")
_QUIET = {"WORKFLOW_TASK_SCHEDULED", "WORKFLOW_TASK_STARTED", "WORKFLOW_TASK_COMPLETED"}
# a local activity (run in the worker, e.g. a work order's stage write) leaves no activity events, only this marker
_LOCAL_ACTIVITY_MARKER = "core_local_activity"


async def _local_activity(client: Client, e: Any, row: dict[str, Any]) -> None:
    """A local activity's marker as an activity step: its type, attempt, result or failure, and when it ended."""
    a = e.marker_recorded_event_attributes
    row["event"] = "local activity failed" if a.HasField("failure") else "local activity completed"
    row["local"] = True
    if "data" in a.details and a.details["data"].payloads:
        data = (await client.data_converter.decode(a.details["data"].payloads))[0]
        if isinstance(data, dict):
            row["activity"] = data.get("activity_type")
            row["attempt"] = data.get("attempt")
            ended = data.get("complete_time")
            if isinstance(ended, dict) and ended.get("seconds"):  # when it ended in the worker, not the task's time
                at = datetime.fromtimestamp(int(ended["seconds"]) + int(ended.get("nanos") or 0) / 1e9, UTC)
                row["time"] = at.replace(tzinfo=None).isoformat() + "Z"
    if a.HasField("failure"):
        row["failure"] = (a.failure.cause.message if a.failure.HasField("cause") and a.failure.cause.message
                          else a.failure.message)
    elif "result" in a.details and a.details["result"].payloads:
        row["result"] = (await client.data_converter.decode(a.details["result"].payloads))[0]


async def timeline(client: Client, wf_id: str, *, include_workflow_tasks: bool = False) -> list[dict[str, Any]]:
    history = await client.get_workflow_handle(wf_id).fetch_history()
    scheduled: dict[int, str] = {}
    updates: dict[str, str] = {}
    timers: dict[int, str] = {}
    children: dict[int, str] = {}
    out = []
    for e in history.events:
        name = EventType.Name(e.event_type).removeprefix("EVENT_TYPE_")
        if name in _QUIET and not include_workflow_tasks:
            continue
        row: dict[str, Any] = {"id": e.event_id, "time": e.event_time.ToDatetime().isoformat() + "Z",
                               "event": _LABELS.get(name, name.lower().replace("_", " "))}
        if name == "ACTIVITY_TASK_SCHEDULED":
            a = e.activity_task_scheduled_event_attributes
            scheduled[e.event_id] = a.activity_type.name
            row["activity"] = a.activity_type.name
        elif name == "ACTIVITY_TASK_STARTED":
            a = e.activity_task_started_event_attributes
            row["activity"] = scheduled.get(a.scheduled_event_id)
            row["attempt"] = a.attempt
            if a.HasField("last_failure"):
                row["last_failure"] = a.last_failure.message
        elif name == "ACTIVITY_TASK_COMPLETED":
            row["activity"] = scheduled.get(e.activity_task_completed_event_attributes.scheduled_event_id)
        elif name == "ACTIVITY_TASK_FAILED":
            a = e.activity_task_failed_event_attributes
            row["activity"] = scheduled.get(a.scheduled_event_id)
            row["failure"] = a.failure.message
        elif name == "ACTIVITY_TASK_TIMED_OUT":
            a = e.activity_task_timed_out_event_attributes
            row["activity"] = scheduled.get(a.scheduled_event_id)
            if a.HasField("failure"):
                row["failure"] = a.failure.message
                if a.failure.HasField("timeout_failure_info"):
                    row["timeout"] = TimeoutType.Name(a.failure.timeout_failure_info.timeout_type) \
                        .removeprefix("TIMEOUT_TYPE_").lower()
        elif name == "TIMER_STARTED":
            a = e.timer_started_event_attributes
            timers[e.event_id] = a.timer_id
            row["timer"] = a.timer_id
            row["duration_s"] = a.start_to_fire_timeout.ToTimedelta().total_seconds()
        elif name == "TIMER_FIRED":
            row["timer"] = timers.get(e.timer_fired_event_attributes.started_event_id)
        elif name == "WORKFLOW_EXECUTION_SIGNALED":
            row["signal"] = e.workflow_execution_signaled_event_attributes.signal_name
        elif name == "WORKFLOW_EXECUTION_UPDATE_ACCEPTED":
            a = e.workflow_execution_update_accepted_event_attributes
            row["update"] = a.accepted_request.input.name
            updates[a.accepted_request.meta.update_id or a.protocol_instance_id] = a.accepted_request.input.name
        elif name == "WORKFLOW_EXECUTION_UPDATE_COMPLETED":
            a = e.workflow_execution_update_completed_event_attributes
            row["update"] = updates.get(a.meta.update_id)
            if a.outcome.HasField("failure"):
                row["failure"] = a.outcome.failure.message
        elif name == "START_CHILD_WORKFLOW_EXECUTION_INITIATED":
            a = e.start_child_workflow_execution_initiated_event_attributes
            children[e.event_id] = a.workflow_id
            row["child"] = a.workflow_id
            row["workflow_type"] = a.workflow_type.name
        elif name in _CHILD_ENDS:
            attrs = getattr(e, e.WhichOneof("attributes"))
            row["child"] = attrs.workflow_execution.workflow_id
            if name == "CHILD_WORKFLOW_EXECUTION_FAILED":
                row["failure"] = attrs.failure.message
        elif name == "WORKFLOW_EXECUTION_FAILED":
            row["failure"] = e.workflow_execution_failed_event_attributes.failure.message
        elif name == "WORKFLOW_TASK_FAILED":
            a = e.workflow_task_failed_event_attributes
            row["failure"] = a.failure.message
        elif name == "WORKFLOW_EXECUTION_STARTED":
            row["workflow_type"] = e.workflow_execution_started_event_attributes.workflow_type.name
        elif name == "MARKER_RECORDED" and e.marker_recorded_event_attributes.marker_name == _LOCAL_ACTIVITY_MARKER:
            await _local_activity(client, e, row)
        out.append(row)
    return out


@router.get("/{number}/history", summary="The workflow's history as a readable timeline (admins)")
async def get_history(number: str, session: ReadSessionDep, client: TemporalDep,
                      include_children: bool = True) -> dict[str, Any]:
    wo = await production.find_work_order(session, number)
    wf_id = wo.workflow_id if wo else workflow_id(number)
    try:
        events = await timeline(client, wf_id)
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            await production.get_work_order(session, number)
        raise
    result: dict[str, Any] = {"work_order": number, "workflow_id": wf_id, "events": events,
                              "pending": await pending(client, wf_id)}
    if include_children:
        # children of children too (a work order's code issuance, an NCR's follow-ups), each once
        result["children"], result["children_pending"] = {}, {}
        todo = list(dict.fromkeys(e["child"] for e in events if e.get("child")))
        while todo and len(result["children"]) < _MAX_CHILDREN:
            c = todo.pop(0)
            if c in result["children"]:
                continue
            result["children"][c] = child_events = await timeline(client, c)
            if (waiting := await pending(client, c)):
                result["children_pending"][c] = waiting
            todo += [e["child"] for e in child_events if e.get("child") and e["child"] not in result["children"]]
    return result


_MAX_CHILDREN = 200  # a history page stays readable (and bounded) however many children a workflow started


async def pending(client: Client, wf_id: str) -> list[dict[str, Any]]:
    """What the workflow's history cannot show yet: its activities running or waiting to retry, with the attempt,
    the last error and when the next attempt is due (Temporal records an activity's attempts in the history only
    once it ends, so during an outage the history alone says no more than "activity scheduled")."""
    try:
        desc = await client.get_workflow_handle(wf_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return []
        raise
    out = []
    for pa in desc.raw_description.pending_activities:
        item: dict[str, Any] = {
            "activity": pa.activity_type.name, "activity_id": pa.activity_id, "attempt": pa.attempt,
            "state": PendingActivityState.Name(pa.state).removeprefix("PENDING_ACTIVITY_STATE_").lower()}
        if pa.maximum_attempts:
            item["maximum_attempts"] = pa.maximum_attempts
        if pa.HasField("last_failure"):
            item["last_failure"] = pa.last_failure.message
        if pa.HasField("last_started_time"):
            item["last_started"] = pa.last_started_time.ToDatetime().isoformat() + "Z"
        if pa.HasField("last_attempt_complete_time"):
            item["last_attempt_ended"] = pa.last_attempt_complete_time.ToDatetime().isoformat() + "Z"
        if pa.HasField("next_attempt_schedule_time"):
            item["next_attempt"] = pa.next_attempt_schedule_time.ToDatetime().isoformat() + "Z"
        out.append(item)
    return out

