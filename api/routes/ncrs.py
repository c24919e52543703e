"""Nonconformance reports: reviewers' decisions (sent as workflow updates), the review content (severity,
defect codes, quantity, containment, root cause, CAPA link), overdue NCRs, and the defect code catalogue."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from activities.models import (
    DecisionSignature,
    NcrAction,
    NcrDecision,
    NcrState,
    NcrStatus,
    ReviewerRole,
    Severity,
)
from api.deps import ReadSessionDep, SessionDep, TemporalDep
from api.errors import APP_ERROR_STATUS
from api.security import PrincipalDep
from core.errors import Conflict, Forbidden, NotFound
from domain import identity, ncr_review, quality
from domain.models import Ncr, utcnow
from domain.models_ncr import NcrReview
from workflows.nonconformance import ALLOWED_ROLES, NonconformanceWorkflow

# what a reviewer's signature means, per decision
MEANING = {NcrAction.confirm: "reviewed", NcrAction.review: "reviewed", NcrAction.dismiss: "rejected",
           NcrAction.verify: "verified"}
_CODE = r"^[A-Z0-9][A-Z0-9._-]{0,31}$"
# due dates and done times: with a UTC offset, within a range every database stores
When = Annotated[AwareDatetime, Field(ge=datetime(2000, 1, 1, tzinfo=UTC), le=datetime(2999, 12, 31, tzinfo=UTC))]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NcrDecisionRequest(BaseModel):
    """A reviewer's decision. Who decides, and under which role, comes from the login, never from the body."""

    action: NcrAction
    reason: str = Field(default="", max_length=2000, description="why: required")
    rework_operation: int | None = Field(default=None, ge=1, description="rework: the routing seq to repeat")
    password: str = Field(min_length=1, max_length=1000,
                          description="your password again: the decision is electronically signed")
    acting_role: ReviewerRole | None = Field(
        default=None, description="which of your roles you act in, if you have several that may decide this")


class NcrUpdate(_Body):
    """Classification of an NCR; send only the fields you change."""

    severity: Severity | None = Field(default=None, description="critical, major or minor: sets the due time "
                                      "and the reminder/escalation durations")
    defect_codes: list[str] | None = Field(default=None, max_length=20,
                                           description="codes of GET /api/defect-codes; raise the severity to "
                                                       "the codes' default unless severity is given")
    quantity_affected: float | None = Field(default=None, gt=0, description="how much of the lot is affected")
    capa: str | None = Field(default=None, max_length=32, description="link to a CAPA (CAPA-00001); null unlinks")

    @model_validator(mode="after")
    def _something(self) -> NcrUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of severity, defect_codes, quantity_affected, capa")
        if "severity" in self.model_fields_set and self.severity is None:
            raise ValueError("severity: give critical, major or minor (it cannot be removed)")
        return self


class ContainmentCreate(_Body):
    action: str = Field(min_length=1, max_length=2000, description="e.g. 'sort stock in warehouse A'")
    owner: str = Field(min_length=1, max_length=80)
    due: When | None = Field(default=None, description="when it must be done (with a UTC offset)")


class ContainmentUpdate(_Body):
    action: str | None = Field(default=None, min_length=1, max_length=2000)
    owner: str | None = Field(default=None, min_length=1, max_length=80)
    due: When | None = None
    done: bool | None = Field(default=None, description="true: done now (or at done_at); false: not done")
    done_at: When | None = None

    @model_validator(mode="after")
    def _something(self) -> ContainmentUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of action, owner, due, done, done_at")
        return self


class RootCause(_Body):
    category: str = Field(description=f"one of {ncr_review.ROOT_CAUSE_CATEGORIES} (the 6M)")
    text: str = Field(min_length=1, max_length=4000, description="the cause found, e.g. by 5 whys")


class DefectCodeCreate(_Body):
    code: str = Field(pattern=_CODE, description="upper case, e.g. DIM-OOT")
    description: str = Field(min_length=1, max_length=200)
    default_severity: Severity


router = APIRouter(tags=["nonconformance"])


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


async def _full(session: Any, ncr: Ncr) -> dict[str, Any]:
    rev = await ncr_review.find_review(session, ncr)
    return {**_read(ncr, await quality.decision_signatures(session, ncr)),
            **await ncr_review.review_fields(session, ncr, rev),
            "disposed": await quality.disposed_quantity(session, ncr)}


@router.get("/api/ncrs", summary="List NCRs (overdue=true: past their due time and not closed)")
async def list_ncrs(session: ReadSessionDep, state: NcrState | None = None, overdue: bool | None = None,
                    severity: Severity | None = None,
                    limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    now = utcnow()
    q = select(Ncr, NcrReview).outerjoin(NcrReview, NcrReview.ncr_id == Ncr.id).order_by(Ncr.id.desc()).limit(limit)
    if state:
        q = q.where(Ncr.state == state.value)
    if severity:
        q = q.where(NcrReview.severity == severity.value)
    if overdue is True:
        q = q.where(ncr_review.overdue_clause(now))
    elif overdue is False:
        q = q.where(ncr_review.not_overdue_clause(now))
    rows = (await session.execute(q)).all()
    return [{**_read(n), **await ncr_review.review_fields(session, n, rev, now=now, with_containment=False)}
            for n, rev in rows]


@router.get("/api/ncrs/{number}", summary="One NCR: state, what it waits for and who, content, decisions")
async def get_ncr(number: str, session: ReadSessionDep) -> dict[str, Any]:
    return await _full(session, await quality.get_ncr(session, number))


@router.patch("/api/ncrs/{number}", summary="Classify an NCR: severity, defect codes, quantity affected, CAPA link")
async def update_ncr(number: str, body: NcrUpdate, session: SessionDep, client: TemporalDep,
                     principal: PrincipalDep) -> dict[str, Any]:
    fields = {k: getattr(body, k) for k in body.model_fields_set}
    if fields.get("severity") is not None:
        fields["severity"] = fields["severity"].value
    ncr, retimed = await ncr_review.update_ncr(session, number, actor=principal.subject, fields=fields)
    out = await _full(session, ncr)
    wf, severity = ncr.workflow_id, out["severity"]
    await session.commit()
    if retimed:  # the NCR's reminder and escalation follow the new severity
        try:
            await client.get_workflow_handle(wf).signal(NonconformanceWorkflow.reclassify, Severity(severity))
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise
    return out


@router.post("/api/ncrs/{number}/containment", status_code=201, summary="Add a containment action to an NCR")
async def add_containment(number: str, body: ContainmentCreate, session: SessionDep,
                          principal: PrincipalDep) -> dict[str, Any]:
    return await ncr_review.add_containment(session, number, actor=principal.subject, action=body.action,
                                            owner=body.owner, due=body.due)


@router.patch("/api/ncrs/{number}/containment/{seq}", summary="Update a containment action (done, owner, due)")
async def update_containment(number: str, seq: int, body: ContainmentUpdate, session: SessionDep,
                             principal: PrincipalDep) -> dict[str, Any]:
    fields = {k: getattr(body, k) for k in body.model_fields_set}
    return await ncr_review.update_containment(session, number, seq, actor=principal.subject, fields=fields)


@router.patch("/api/ncrs/{number}/root-cause", summary="Set the root cause of an NCR (6M category and text)")
async def set_root_cause(number: str, body: RootCause, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    ncr = await ncr_review.set_root_cause(session, number, actor=principal.subject, category=body.category,
                                          text=body.text)
    return await _full(session, ncr)


@router.get("/api/defect-codes", summary="The defect code catalogue")
async def list_defect_codes(session: ReadSessionDep, include_inactive: bool = False) -> list[dict[str, Any]]:
    return [{"code": c.code, "description": c.description, "default_severity": c.default_severity,
             "active": c.active} for c in await ncr_review.list_defect_codes(session, include_inactive=include_inactive)]


@router.post("/api/defect-codes", status_code=201, summary="Add a defect code (quality manager)")
async def create_defect_code(body: DefectCodeCreate, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    c = await ncr_review.create_defect_code(session, code=body.code, description=body.description,
                                            default_severity=body.default_severity.value, actor=principal.subject)
    return {"code": c.code, "description": c.description, "default_severity": c.default_severity, "active": c.active}


@router.post("/api/ncrs/{number}/decisions", summary="A reviewer's decision, validated by the NCR's workflow")
async def post_decision(number: str, body: NcrDecisionRequest, session: SessionDep, client: TemporalDep,
                        principal: PrincipalDep, read: ReadSessionDep) -> JSONResponse:
    row = (await session.execute(select(Ncr).where(Ncr.number == number))).scalar()
    if row is None:
        raise NotFound(f"NCR {number!r} does not exist: list open NCRs at GET /api/ncrs?state=open",
                       field="number")
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
    out = st.model_dump(mode="json")
    if st.disposition is not None and st.disposition.value in ncr_review.DISPOSITION_ACTIONS:
        # what the disposition was carried out on (the workflow answers once it is, in the database)
        out["disposed"] = await quality.disposed_quantity(read, await quality.get_ncr(read, number))
    return JSONResponse(out, status_code=200)

