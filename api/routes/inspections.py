"""Inspections: inspectors and gauges post measurements; the hub judges them."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from activities.models import InspectionResultInput, InspectionResults
from api.deps import ReadSessionDep, TemporalDep
from core.errors import Conflict
from domain import quality
from domain.models import Inspection, WorkOrder
from workflows.work_order import WorkOrderWorkflow

router = APIRouter(prefix="/api/inspections", tags=["inspections"])


def _read(ins: Inspection) -> dict[str, Any]:
    return {
        "number": ins.number, "kind": ins.kind, "lot": ins.lot.number, "status": ins.status,
        "inspector": ins.inspector, "opened_at": ins.opened_at.isoformat(),
        "inspected_at": ins.inspected_at.isoformat() if ins.inspected_at else None,
        "characteristics": [
            {"name": c.name, "nominal": c.nominal, "lower": c.lower, "upper": c.upper, "unit": c.unit,
             "sample_size": c.sample_size, "values": c.values, "verdict": c.verdict} for c in ins.characteristics
        ],
        "results_url": f"/api/inspections/{ins.number}/results",
    }


@router.get("", summary="List inspections (pending ones are what inspectors work from)")
async def list_inspections(session: ReadSessionDep, status: str | None = None, work_order: str | None = None,
                           limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    q = select(Inspection).order_by(Inspection.id.desc()).limit(limit)
    if status:
        q = q.where(Inspection.status == status)
    if work_order:
        q = q.join(WorkOrder, WorkOrder.id == Inspection.work_order_id).where(WorkOrder.number == work_order)
    return [_read(i) for i in (await session.execute(q)).scalars().all()]


@router.get("/{number}", summary="One inspection with its plan and results")
async def get_inspection(number: str, session: ReadSessionDep) -> dict[str, Any]:
    return _read(await quality.get_inspection(session, number))


@router.post("/{number}/results", status_code=202, summary="Post measurements; the hub computes the verdict")
async def post_results(number: str, results: InspectionResults, session: ReadSessionDep,
                       client: TemporalDep) -> JSONResponse:
    # only reads here (the workflow records the results): no write lock held across the Temporal round trip
    return await submit_results(number, results, session, client)


async def submit_results(number: str, results: InspectionResults, session: AsyncSession,
                         client: Client) -> JSONResponse:
    """Judge results and hand them to the work order: the one path of JSON and CSV uploads (api/routes/quality.py)."""
    ins = await quality.get_inspection(session, number)
    values = quality.check_results(ins, results.measurements)  # 422 naming each problem
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
        WorkOrderWorkflow.submit_inspection, InspectionResultInput(inspection=number, results=results)
    )
    return JSONResponse({**body, "message": "results accepted; the work order records them",
                         "status_url": f"/api/work-orders/{wo.number}"}, status_code=202)
