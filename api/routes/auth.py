"""Log in and out, who am I, and the admin's users and system tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import SessionDep
from api.security import PrincipalDep
from domain import identity
from domain.models_identity import User

router = APIRouter(prefix="/api", tags=["identity"])


class LoginIn(BaseModel):
    username: str = Field(min_length=1, max_length=80)
    password: str = Field(min_length=1, max_length=1000)


class TokenOut(BaseModel):
    token: str = Field(description="send as `Authorization: Bearer <token>`; shown once")
    expires_at: datetime
    roles: list[str]


class UserIn(BaseModel):
    username: str = Field(min_length=1, max_length=80)
    password: str = Field(min_length=identity.MIN_PASSWORD, max_length=1000)
    roles: list[str] = Field(min_length=1, description=f"any of: {', '.join(identity.PEOPLE_ROLES)}")
    full_name: str | None = Field(default=None, max_length=200)


class UserOut(BaseModel):
    username: str
    full_name: str | None
    roles: list[str]
    active: bool


class ApiTokenIn(BaseModel):
    name: str = Field(min_length=1, max_length=80, description="the system that uses it, e.g. 'erp-prod'")
    roles: list[str] = Field(min_length=1, description=f"any of: {', '.join(identity.ROLES)}")
    expires_in_days: int = Field(default=365, ge=1, le=3650)


@router.post("/auth/login", response_model=TokenOut, summary="Log in: a session token valid for 8 hours")
async def login(body: LoginIn, session: SessionDep) -> TokenOut:
    token, row, user = await identity.login(session, body.username, body.password)
    return TokenOut(token=token, expires_at=row.expires_at, roles=list(user.roles))


@router.post("/auth/logout", status_code=204, summary="Log out: the session token stops working")
async def logout(request: Request, session: SessionDep, principal: PrincipalDep) -> None:
    token = request.headers.get("authorization", "").partition(" ")[2].strip()
    await identity.revoke(session, token)


@router.get("/auth/me", summary="Who the token belongs to and its roles")
async def me(principal: PrincipalDep) -> dict:
    return {"subject": principal.subject, "roles": sorted(principal.roles), "kind": principal.kind,
            "full_name": principal.full_name}


@router.get("/users", response_model=list[UserOut], summary="List users")
async def list_users(session: SessionDep) -> list[UserOut]:
    rows = (await session.execute(select(User).order_by(User.username))).scalars().all()
    return [UserOut(username=u.username, full_name=u.full_name, roles=list(u.roles), active=u.active) for u in rows]


@router.post("/users", status_code=201, response_model=UserOut, summary="Create a user (admin)")
async def create_user(body: UserIn, session: SessionDep, principal: PrincipalDep) -> UserOut:
    u = await identity.create_user(session, username=body.username, password=body.password, roles=body.roles,
                                   full_name=body.full_name, actor=principal.subject)
    return UserOut(username=u.username, full_name=u.full_name, roles=list(u.roles), active=u.active)


@router.post("/tokens", status_code=201, response_model=TokenOut, summary="Create a system API token (admin)")
async def create_token(body: ApiTokenIn, session: SessionDep, principal: PrincipalDep) -> TokenOut:
    token, row = await identity.issue_token(session, kind="api", name=body.name, roles=body.roles,
                                            ttl=timedelta(days=body.expires_in_days), created_by=principal.subject)
    return TokenOut(token=token, expires_at=row.expires_at, roles=list(row.roles))
