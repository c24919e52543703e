"""The MES over HTTP: equipment states for a work order, and the MES messages the hub refused (over MQTT,
activities/mes.py records them: nothing is dropped silently)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from temporalio.service import RPCError, RPCStatusCode

from activities.models_connectors import EquipmentStateReport
from api.deps import ReadSessionDep, TemporalDep
from core.errors import InvalidInput
from domain import devices, mes, production
from workflows.work_order import WorkOrderWorkflow

router = APIRouter(tags=["MES"])


@router.post("/api/work-orders/{number}/equipment-states", status_code=202,
             summary="Report an equipment state for a work order (MES)")
async def post_equipment_state(number: str, report: EquipmentStateReport, read: ReadSessionDep,
                               client: TemporalDep, request: Request) -> dict[str, Any]:
    if report.work_order not in (None, number):
        raise InvalidInput(f"work_order: the body names {report.work_order!r} but the path {number!r}; send it to "
                           f"/api/work-orders/{report.work_order}/equipment-states or leave work_order out",
                           field="work_order")
    report = report.model_copy(update={"work_order": number})
    # reads first, without the write lock: the Temporal round trip is not made holding it
    wo = await production.get_work_order(read, number)
    if await devices.equipment_state_seen(read, report.event_id):
        return {"accepted": True, "duplicate": True, "work_order": number, "event_id": report.event_id}
    delivered = True
    try:
        # the signal first: a state found recorded was delivered (a retry after a failure signals again,
        # which only sets the same state)
        await client.get_workflow_handle(wo.workflow_id).signal(WorkOrderWorkflow.equipment_state, report)
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        delivered = False  # the work order has finished: the state is still the equipment's history
    async with request.app.state.sessionmaker() as session, session.begin():  # the write, after the round trip
        await devices.record_equipment_state(
            session, event_id=report.event_id, equipment=report.equipment, state=report.state,
            reason=report.reason, work_order=number, source="http", at=report.at)
    return {"accepted": True, "duplicate": False, "work_order": number, "event_id": report.event_id,
            "delivered_to_workflow": delivered, "status_url": f"/api/work-orders/{number}"}


@router.get("/api/mes/rejected", summary="MES messages the hub refused, with the reason (newest first)")
async def list_rejected(session: ReadSessionDep, work_order: str | None = None, endpoint: str | None = None,
                        limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**63 - 1)
                        ) -> dict[str, Any]:
    total, rows = await mes.list_rejections(session, work_order=work_order, endpoint=endpoint, limit=limit,
                                            offset=offset)
    return {"total": total, "items": [{
        "id": r.id, "source": r.source, "endpoint": r.endpoint, "topic": r.topic, "kind": r.kind,
        "work_order": r.work_order, "message_id": r.message_id, "field": r.field, "reason": r.reason,
        "payload": r.payload.get("json", r.payload.get("text")), "times": r.times,
        "first_at": r.first_at.isoformat(), "last_at": r.last_at.isoformat()} for r in rows]}
