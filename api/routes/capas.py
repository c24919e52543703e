"""Corrective and preventive actions (CAPA): records with their own actions, due dates, effectiveness check."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from api.deps import ReadSessionDep, SessionDep
from api.security import PrincipalDep
from core.errors import Forbidden
from domain import capa, identity

router = APIRouter(prefix="/api/capas", tags=["capa"])
# due dates and done times: with a UTC offset, within a range every database stores
When = Annotated[AwareDatetime, Field(ge=datetime(2000, 1, 1, tzinfo=UTC), le=datetime(2999, 12, 31, tzinfo=UTC))]

Kind = Literal["corrective", "preventive"]
Status = Literal["open", "in_progress", "done", "cancelled"]
State = Literal["open", "in_progress", "effectiveness_check", "closed"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CapaActionCreate(_Body):
    kind: Kind
    description: str = Field(min_length=1, max_length=4000)
    owner: str = Field(min_length=1, max_length=80)
    due: When = Field(description="due date and time, with a UTC offset")


class CapaActionUpdate(_Body):
    status: Status | None = None
    description: str | None = Field(default=None, min_length=1, max_length=4000)
    owner: str | None = Field(default=None, min_length=1, max_length=80)
    due: When | None = None

    @model_validator(mode="after")
    def _something(self) -> CapaActionUpdate:
        if not self.model_fields_set:
            raise ValueError("give at least one of status, description, owner, due")
        return self


class CapaCreate(_Body):
    title: str = Field(min_length=1, max_length=200)
    problem: str = Field(min_length=1, max_length=8000, description="the problem statement")
    root_cause_category: str | None = Field(default=None, description="man, machine, method, material, "
                                            "measurement or environment (the 6M)")
    root_cause: str | None = Field(default=None, max_length=8000)
    ncrs: list[str] = Field(default_factory=list, max_length=200, description="NCR numbers this CAPA answers")
    actions: list[CapaActionCreate] = Field(default_factory=list, max_length=100)
    effectiveness_criteria: str | None = Field(default=None, max_length=4000,
                                               description="how effectiveness will be checked")


class CapaClose(_Body):
    effective: bool = Field(description="the effectiveness check: true closes the CAPA, false sends it back")
    result: str = Field(min_length=1, max_length=4000, description="the evidence of the effectiveness check")
    password: str = Field(min_length=1, max_length=1000, description="your password again: closing is signed")


@router.post("", status_code=201, summary="Open a CAPA (problem, root cause, linked NCRs, actions)")
async def create_capa(body: CapaCreate, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    c = await capa.create_capa(
        session, actor=principal.subject, title=body.title, problem=body.problem,
        root_cause_category=body.root_cause_category, root_cause=body.root_cause, ncrs=body.ncrs,
        actions=[a.model_dump() for a in body.actions], effectiveness_criteria=body.effectiveness_criteria)
    return await capa.read_capa(session, c)


@router.get("", summary="List CAPAs (overdue_actions=true: with an open action past its due date)")
async def list_capas(session: ReadSessionDep, state: State | None = None, overdue_actions: bool | None = None,
                     limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
    rows = await capa.list_capas(session, state=state, overdue_actions=overdue_actions, limit=limit)
    return [await capa.read_capa(session, c, full=False) for c in rows]


@router.get("/{number}", summary="One CAPA with its actions, NCRs and signatures")
async def get_capa(number: str, session: ReadSessionDep) -> dict[str, Any]:
    return await capa.read_capa(session, await capa.get_capa(session, number))


@router.post("/{number}/actions", status_code=201, summary="Add a corrective or preventive action")
async def add_action(number: str, body: CapaActionCreate, session: SessionDep,
                     principal: PrincipalDep) -> dict[str, Any]:
    return await capa.add_action(session, number, actor=principal.subject, kind=body.kind,
                                 description=body.description, owner=body.owner, due=body.due)


@router.patch("/{number}/actions/{seq}", summary="Update an action (status, owner, due date)")
async def update_action(number: str, seq: int, body: CapaActionUpdate, session: SessionDep,
                        principal: PrincipalDep) -> dict[str, Any]:
    return await capa.update_action(session, number, seq, actor=principal.subject,
                                    fields={k: getattr(body, k) for k in body.model_fields_set})


@router.post("/{number}/close", summary="Record the effectiveness check and close (signed: password again)")
async def close_capa(number: str, body: CapaClose, session: SessionDep, principal: PrincipalDep) -> dict[str, Any]:
    if principal.kind != "session" or principal.user_id is None:
        raise Forbidden("closing a CAPA is signed by a person: log in with your own account (POST /api/auth/login)")
    await identity.check_password(session, principal.subject, body.password)
    role = "quality_manager" if "quality_manager" in principal.roles else min(principal.roles)
    c = await capa.close_capa(session, number, actor=principal.subject, actor_name=principal.full_name, role=role,
                              effective=body.effective, result=body.result)
    return await capa.read_capa(session, c)
