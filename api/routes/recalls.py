"""Recalls: start one (exactly once), see its scope and what it waits for, acknowledgements and decisions."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from activities.models import DecisionSignature, ReviewerRole
from activities.recall_models import (
    HoldDecision,
    RecallAck,
    RecallAckCreate,
    RecallContainerDecision,
    RecallCreate,
    RecallInput,
    RecallLotDecision,
    RecallStatus,
)
from api.deps import SessionDep, SettingsDep, TemporalDep
from api.errors import APP_ERROR_STATUS
from api.security import PrincipalDep
from core.errors import Conflict, Forbidden
from domain import gs1, identity, recall, trace
from domain.models_trace import Recall
from workflows.recall import DECIDERS, RecallWorkflow, workflow_id


class RecallDecisionRequest(BaseModel):
    """Release or reject a held lot. The reviewer and role come from the login; the password signs it."""

    lot: str = Field(min_length=1, max_length=64)
    decision: HoldDecision
    reason: str = Field(default="", max_length=2000, description="why: required")
    password: str = Field(min_length=1, max_length=1000, description="your password again: the decision is signed")



class RecallContainerDecisionRequest(BaseModel):
    """Release or reject a held case or pallet. The reviewer and role come from the login; the password signs it."""

    decision: HoldDecision
    reason: str = Field(default="", max_length=2000, description="why: required")
    password: str = Field(min_length=1, max_length=1000, description="your password again: the decision is signed")


router = APIRouter(prefix="/api/recalls", tags=["recalls"])


@router.post("", status_code=202, summary="Start a recall: scope, holds, ERP blocks, customer notices")
async def start_recall(body: RecallCreate, session: SessionDep, settings: SettingsDep,
                       client: TemporalDep, principal: PrincipalDep) -> JSONResponse:
    # the login is the requester of record (the audit actor of the recall and its holds); `requested_by` in the
    # body is "on behalf of", kept as data
    inp = RecallInput(**body.model_dump(), opened_by=principal.subject)
    # one recall per suspect: an open recall of another number that covers it is the one to follow (the same number
    # is the same recall: its start below answers `duplicate`, as before)
    other = await recall.open_recall_covering(session, suspect_kind=inp.suspect_kind.value, suspect=inp.suspect,
                                              since=inp.since, until=inp.until, except_number=inp.number)
    if other is not None:
        window = f" from {other.window_from.isoformat()} to {other.window_to.isoformat()}" \
            if other.window_from and other.window_to else ""
        raise Conflict(f"{inp.suspect_kind.value} {inp.suspect!r} is already covered by open recall {other.number}"
                       f"{window}: follow it at /api/recalls/{other.number} (nothing was started)", field="suspect")
    # refuse a suspect that matches nothing before anything reaches Temporal
    await trace.forward_starts(session, kind=inp.suspect_kind.value, value=inp.suspect, since=inp.since,
                               until=inp.until)
    await session.commit()
    wid = workflow_id(inp.number)
    body = {"workflow_id": wid, "status_url": f"/api/recalls/{inp.number}"}
    try:
        await client.start_workflow(
            RecallWorkflow.run, inp, id=wid, task_queue=settings.temporal.task_queue,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
    except WorkflowAlreadyStartedError:
        return JSONResponse({**body, "accepted": False, "duplicate": True,
                             "message": f"recall {inp.number} was already started; nothing was started again"},
                            status_code=200)
    return JSONResponse({**body, "accepted": True, "duplicate": False,
                         "message": f"recall {inp.number} started"}, status_code=202)


async def _status(client: TemporalDep, row: Recall) -> dict[str, Any] | None:
    try:
        st: RecallStatus = await client.get_workflow_handle(row.workflow_id).query(RecallWorkflow.status)
    except RPCError:
        return None
    return st.model_dump(mode="json")


@router.get("", summary="Recalls, newest first")
async def list_recalls(session: SessionDep, limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    rows = (await session.execute(select(Recall).order_by(Recall.id.desc()).limit(limit))).scalars()
    return [{"number": r.number, "status": r.status, "suspect_kind": r.suspect_kind, "suspect": r.suspect,
             "reason": r.reason, "created_at": r.created_at.isoformat(),
             "closed_at": r.closed_at.isoformat() if r.closed_at else None} for r in rows]


@router.get("/{number}", summary="A recall: scope (held lots, shipped quantities by customer), live status")
async def get_recall(number: str, request: Request, session: SessionDep, client: TemporalDep) -> dict[str, Any]:
    row = await recall.get_recall(session, number)
    await session.commit()  # do not hold a transaction across the Temporal query
    # the live status first, then the record (a transaction begun after it): what the status says is done is
    # then in the record too
    status = await _status(client, row)
    state = request.app.state
    async with (state.read_sessionmaker or state.sessionmaker)() as s:
        row = await recall.get_recall(s, number)
        # each decision with its signature, and whether it still holds for the decision and the recall as they are
        return {"record": await recall.scope(s, number, signatures=True), "status": status,
                "report": recall.closed_report(row)}


async def _update(session: SessionDep, client: TemporalDep, number: str, update: Any, arg: Any) -> JSONResponse:
    row = await recall.get_recall(session, number)
    await session.commit()
    try:
        st: RecallStatus = await client.get_workflow_handle(row.workflow_id).execute_update(update, arg)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        kind = cause.type if isinstance(cause, ApplicationError) else None
        msg = cause.message if isinstance(cause, ApplicationError) else str(cause or exc)
        return JSONResponse({"error": kind or "Refused", "detail": msg},
                            status_code=APP_ERROR_STATUS.get(kind or "", 409))
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.FAILED_PRECONDITION) or "completed" in exc.message:
            raise Conflict(f"recall {number} is closed: it takes no more updates") from exc
        raise
    return JSONResponse(st.model_dump(mode="json"), status_code=200)


@router.post("/{number}/acknowledgements", summary="A customer acknowledged the recall notification")
async def acknowledge(number: str, body: RecallAckCreate, session: SessionDep, client: TemporalDep,
                      principal: PrincipalDep) -> JSONResponse:
    # who acknowledged at the customer is data; the login that enters it is the audit actor
    ack = RecallAck(**body.model_dump(), recorded_by=principal.subject)
    return await _update(session, client, number, RecallWorkflow.acknowledge, ack)


async def _signing_reviewer(session: SessionDep, principal: PrincipalDep, password: str) -> ReviewerRole:
    """The login's reviewer role for a signed decision (a deciding role first), after the password check."""
    mine = [ReviewerRole(r) for r in sorted(principal.roles) if r in ReviewerRole.__members__]
    role = next((r for r in mine if r in DECIDERS), mine[0] if mine else None)
    if role is None:
        raise Forbidden(f"releasing recalled stock needs one of the roles {sorted(r.value for r in DECIDERS)}")
    if principal.kind != "session" or principal.user_id is None:
        raise Forbidden("decisions are signed by a person: log in with your own account (POST /api/auth/login)")
    await identity.check_password(session, principal.subject, password)
    return role


@router.post("/{number}/decisions", summary="A reviewer releases or rejects a held lot")
async def decide(number: str, body: RecallDecisionRequest, session: SessionDep,
                 client: TemporalDep, principal: PrincipalDep) -> JSONResponse:
    role = await _signing_reviewer(session, principal, body.password)
    # the signature travels with the decision: the activity that applies the decision writes it in the same
    # transaction, so a decision never exists without its signature and a refused resend signs nothing
    decision = RecallLotDecision(
        lot=body.lot, decision=body.decision, reviewer=principal.subject, role=role, reason=body.reason,
        signature=DecisionSignature(signer=principal.subject, signer_name=principal.full_name,
                                    meaning="released" if body.decision.value == "release" else "rejected"))
    return await _update(session, client, number, RecallWorkflow.decide, decision)


def _container_code(code: str) -> str:
    """A box as the recall lists it (`/00/<SSCC>`), from that form, `00/<SSCC>`, the bare SSCC, or the box's GS1
    Digital Link URI."""
    c = code.strip()
    if "00" in (ais := gs1.parse_digital_link(c.replace(":/", "://", 1) if ":/" in c and "://" not in c else c)):
        return f"/00/{ais['00']}"
    if c.isdigit():
        return f"/00/{c}"
    return "/" + c.lstrip("/")


@router.post("/{number}/containers/{code:path}/decisions",
             summary="A reviewer releases or rejects a held case or pallet that no lot decision can release")
async def decide_container(number: str, code: str, body: RecallContainerDecisionRequest, session: SessionDep,
                           client: TemporalDep, principal: PrincipalDep) -> JSONResponse:
    # the same reviewer, role and signature handling as a lot's decision; `code` is the box's code as the recall's
    # containers list it (its GS1 Digital Link URI may hold slashes)
    role = await _signing_reviewer(session, principal, body.password)
    decision = RecallContainerDecision(
        code=_container_code(code), decision=body.decision, reviewer=principal.subject, role=role, reason=body.reason,
        signature=DecisionSignature(signer=principal.subject, signer_name=principal.full_name,
                                    meaning="released" if body.decision.value == "release" else "rejected"))
    return await _update(session, client, number, RecallWorkflow.decide_container, decision)
