"""Nonconformance reports and reviewers' decisions (sent as workflow updates)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.models import DecisionSignature, NcrAction, NcrDecision, NcrStatus, ReviewerRole
from api.deps import ReadSessionDep, SessionDep, TemporalDep
from api.errors import APP_ERROR_STATUS
from api.security import PrincipalDep
from core.errors import Conflict, Forbidden, NotFound
from domain import identity, quality
from domain.models import Ncr
from workflows.nonconformance import ALLOWED_ROLES, NonconformanceWorkflow

# what a reviewer's signature means, per decision
MEANING = {NcrAction.confirm: "reviewed", NcrAction.dismiss: "rejected"}


class NcrDecisionRequest(BaseModel):
    """A reviewer's decision. Who decides, and under which role, comes from the login, never from the body."""

    action: NcrAction
    reason: str = Field(default="", max_length=2000, description="why: required")
    rework_operation: int | None = Field(default=None, ge=1, description="rework: the routing seq to repeat")
    password: str = Field(min_length=1, max_length=1000,
                          description="your password again: the decision is electronically signed")
    acting_role: ReviewerRole | None = Field(
        default=None, description="which of your roles you act in, if you have several that may decide this")

router = APIRouter(prefix="/api/ncrs", tags=["nonconformance"])


def _read(n: Ncr, signatures: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    signatures = signatures or {}
    return {
        "number": n.number, "lot": n.lot.number, "state": n.state, "disposition": n.disposition,
        "description": n.description, "opened_at": n.opened_at.isoformat(),
        "reminded_at": n.reminded_at.isoformat() if n.reminded_at else None,
        "escalated_at": n.escalated_at.isoformat() if n.escalated_at else None,
        "closed_at": n.closed_at.isoformat() if n.closed_at else None,
        "decisions": [{"decision_id": d.decision_id, "action": d.action, "reviewer": d.reviewer, "role": d.role,
                       "reason": d.reason, "decided_at": d.decided_at.isoformat(),
                       "signature": signatures.get(d.decision_id)} for d in n.decisions],
        "decisions_url": f"/api/ncrs/{n.number}/decisions",
    }


@router.get("", summary="List NCRs")
async def list_ncrs(session: ReadSessionDep, state: str | None = None,
                    limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    q = select(Ncr).order_by(Ncr.id.desc()).limit(limit)
    if state:
        q = q.where(Ncr.state == state)
    return [_read(n) for n in (await session.execute(q)).scalars().all()]


@router.get("/{number}", summary="One NCR with its decisions")
async def get_ncr(number: str, session: ReadSessionDep) -> dict[str, Any]:
    ncr = await quality.get_ncr(session, number)
    return _read(ncr, await quality.decision_signatures(session, ncr))


@router.post("/{number}/decisions", summary="A reviewer's decision, validated by the NCR's workflow")
async def post_decision(number: str, body: NcrDecisionRequest, session: SessionDep, client: TemporalDep,
                        principal: PrincipalDep) -> JSONResponse:
    row = (await session.execute(select(Ncr).where(Ncr.number == number))).scalar()
    if row is None:
        raise NotFound(f"NCR {number!r} does not exist: list open NCRs at GET /api/ncrs?state=open")
    allowed = ALLOWED_ROLES[body.action]
    mine = [ReviewerRole(r) for r in sorted(principal.roles) if r in ReviewerRole.__members__]
    if body.acting_role is not None:
        if body.acting_role.value not in principal.roles:
            raise Forbidden(f"acting_role: you do not have the role {body.acting_role.value}", field="acting_role")
        role = body.acting_role
    else:
        role = next((r for r in mine if r in allowed), mine[0] if mine else None)
    if role is None or role not in allowed:
        raise Forbidden(f"{body.action.value} needs one of the roles {sorted(r.value for r in allowed)}; "
                        f"{principal.subject} has {sorted(principal.roles)}")
    if principal.kind != "session" or principal.user_id is None:
        raise Forbidden("decisions are signed by a person: log in with your own account (POST /api/auth/login)")
    # the electronic signature: the signer proves it is them again
    await identity.check_password(session, principal.subject, body.password)
    decision = NcrDecision(
        action=body.action, reviewer=principal.subject, role=role, reason=body.reason,
        rework_operation=body.rework_operation,
        signature=DecisionSignature(signer=principal.subject, signer_name=principal.full_name,
                                    meaning=MEANING.get(body.action, "approved")),
    )
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
