"""Nonconformance reports and reviewers' decisions (sent as workflow updates)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.models import NcrDecision, NcrStatus
from api.deps import SessionDep, TemporalDep
from api.errors import APP_ERROR_STATUS
from core.errors import Conflict, NotFound
from domain import quality
from domain.models import Ncr
from workflows.nonconformance import NonconformanceWorkflow

router = APIRouter(prefix="/api/ncrs", tags=["nonconformance"])


def _read(n: Ncr) -> dict[str, Any]:
    return {
        "number": n.number, "lot": n.lot.number, "state": n.state, "disposition": n.disposition,
        "description": n.description, "opened_at": n.opened_at.isoformat(),
        "reminded_at": n.reminded_at.isoformat() if n.reminded_at else None,
        "escalated_at": n.escalated_at.isoformat() if n.escalated_at else None,
        "closed_at": n.closed_at.isoformat() if n.closed_at else None,
        "decisions": [{"action": d.action, "reviewer": d.reviewer, "role": d.role, "reason": d.reason,
                       "decided_at": d.decided_at.isoformat()} for d in n.decisions],
        "decisions_url": f"/api/ncrs/{n.number}/decisions",
    }


@router.get("", summary="List NCRs")
async def list_ncrs(session: SessionDep, state: str | None = None,
                    limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    q = select(Ncr).order_by(Ncr.id.desc()).limit(limit)
    if state:
        q = q.where(Ncr.state == state)
    return [_read(n) for n in (await session.execute(q)).scalars().all()]


@router.get("/{number}", summary="One NCR with its decisions")
async def get_ncr(number: str, session: SessionDep) -> dict[str, Any]:
    return _read(await quality.get_ncr(session, number))


@router.post("/{number}/decisions", summary="A reviewer's decision, validated by the NCR's workflow")
async def post_decision(number: str, decision: NcrDecision, session: SessionDep,
                        client: TemporalDep) -> JSONResponse:
    row = (await session.execute(select(Ncr).where(Ncr.number == number))).scalar()
    if row is None:
        raise NotFound(f"NCR {number!r} does not exist: list open NCRs at GET /api/ncrs?state=open")
    await session.commit()  # do not hold a database transaction across the workflow round trip
    handle = client.get_workflow_handle(row.workflow_id)
    try:
        st: NcrStatus = await handle.execute_update(NonconformanceWorkflow.decide, decision)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        kind = cause.type if isinstance(cause, ApplicationError) else None
        msg = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        return JSONResponse({"error": kind or "Refused", "detail": msg}, status_code=APP_ERROR_STATUS.get(kind or "", 409))
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION) or "completed" in exc.message:
            raise Conflict(f"NCR {number} is already decided and closed ({row.state}): no further decisions") from exc
        raise
    return JSONResponse(st.model_dump(mode="json"), status_code=200)
