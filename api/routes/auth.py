"""Log in and out, who am I, and the admin's users and system tokens."""

from __future__ import annotations

from datetime import datetime, timedelta

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import ReadSessionDep, SessionDep
from api.security import PrincipalDep
from core.errors import Forbidden
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
    await identity.revoke(session, _bearer(request))


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


class UserPatch(BaseModel):
    roles: list[str] | None = Field(default=None, description=f"replaces the roles; any of: "
                                                              f"{', '.join(identity.PEOPLE_ROLES)}")
    full_name: str | None = Field(default=None, max_length=200, description="null clears it")
    active: bool | None = Field(default=None, description="false deactivates: the user's sessions end at once")


class UserChanged(UserOut):
    sessions_revoked: int = Field(description="live sessions ended by this change (roles or active changed)")


class PasswordReset(BaseModel):
    password: str = Field(min_length=identity.MIN_PASSWORD, max_length=1000)


class PasswordChange(BaseModel):
    current_password: str = Field(min_length=1, max_length=1000)
    new_password: str = Field(min_length=identity.MIN_PASSWORD, max_length=1000)


class PasswordChanged(BaseModel):
    sessions_revoked: int = Field(description="the user's sessions ended by the change")


class ApiTokenOut(BaseModel):
    id: int
    name: str
    roles: list[str]
    created_by: str | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


def _bearer(request: Request) -> str:
    return request.headers.get("authorization", "").partition(" ")[2].strip()


@router.patch("/users/{username}", response_model=UserChanged,
              summary="Change a user's roles, name or active flag (admin); a role change or deactivation ends "
                      "their sessions")
async def update_user(username: str, body: UserPatch, session: SessionDep, principal: PrincipalDep) -> UserChanged:
    kw = {k: getattr(body, k) for k in body.model_fields_set}
    if "roles" in kw and kw["roles"] is None:
        del kw["roles"]
    if "active" in kw and kw["active"] is None:
        del kw["active"]
    u, ended = await identity.update_user(session, username, actor=principal.subject, **kw)
    return UserChanged(username=u.username, full_name=u.full_name, roles=list(u.roles), active=u.active,
                       sessions_revoked=ended)


@router.post("/users/{username}/password", response_model=PasswordChanged,
             summary="Reset a user's password (admin); their sessions end")
async def reset_password(username: str, body: PasswordReset, session: SessionDep,
                         principal: PrincipalDep) -> PasswordChanged:
    ended = await identity.set_password(session, username, body.password, actor=principal.subject)
    return PasswordChanged(sessions_revoked=ended)


@router.post("/auth/password", response_model=PasswordChanged,
             summary="Change your own password; your other sessions end, this one goes on")
async def change_password(body: PasswordChange, request: Request, session: SessionDep,
                          principal: PrincipalDep) -> PasswordChanged:
    if principal.kind != "session" or principal.user_id is None:
        raise Forbidden("a system token has no password: log in with your own account (POST /api/auth/login)")
    ended = await identity.change_own_password(session, username=principal.subject,
                                               current_password=body.current_password,
                                               new_password=body.new_password, token=_bearer(request))
    return PasswordChanged(sessions_revoked=ended)


@router.get("/tokens", response_model=list[ApiTokenOut], summary="List system API tokens (never the tokens)")
async def list_tokens(session: ReadSessionDep) -> list[ApiTokenOut]:
    return [ApiTokenOut(id=t.id, name=t.name, roles=list(t.roles), created_by=t.created_by, created_at=t.created_at,
                        expires_at=t.expires_at, revoked_at=t.revoked_at)
            for t in await identity.list_api_tokens(session)]


@router.delete("/tokens/{token_id}", status_code=204, summary="Revoke a system API token (admin)")
async def revoke_token(request: Request, session: SessionDep, principal: PrincipalDep,
                       token_id: int = Path(ge=1, le=2**31 - 1, description="the id GET /api/tokens shows")) -> None:
    await identity.revoke_api_token(session, token_id, actor=principal.subject, current_token=_bearer(request))
