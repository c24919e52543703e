"""Identity: users with argon2-hashed passwords, bearer tokens with expiry, and roles."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from domain.audit import MASK, audit, diff
from domain.models import utcnow
from domain.models_identity import ApiToken, User

PEOPLE_ROLES = ("operator", "inspector", "quality_engineer", "qa_supervisor", "mrb_production", "mrb_engineering",
                "quality_manager", "admin", "integrator", "auditor")
SYSTEM_ROLES = ("erp", "mes", "gauge", "printer")
ROLES = PEOPLE_ROLES + SYSTEM_ROLES
SESSION_TTL = timedelta(hours=8)
MIN_PASSWORD = 10
_hasher = PasswordHasher()
# verifying against a dummy hash keeps unknown-user logins as slow as wrong-password ones
_DUMMY_HASH = _hasher.hash("not-a-password-of-anyone")


@dataclass(frozen=True)
class Principal:
    subject: str
    roles: frozenset[str]
    kind: str  # session | api
    user_id: int | None = None
    full_name: str | None = None

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


def _check_roles(roles: list[str], allowed: tuple[str, ...], field: str) -> list[str]:
    if not roles:
        raise InvalidInput(f"{field}: give at least one role (one of: {', '.join(allowed)})", field=field)
    bad = [r for r in roles if r not in allowed]
    if bad:
        raise InvalidInput(f"{field}: unknown role(s) {bad}; use: {', '.join(allowed)}", field=field)
    return sorted(set(roles))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def count_users(session: AsyncSession) -> int:
    return (await session.execute(select(func.count()).select_from(User))).scalar_one()


async def create_user(session: AsyncSession, *, username: str, password: str, roles: list[str],
                      full_name: str | None = None, actor: str) -> User:
    if not username or len(username) > 80 or not username.replace(".", "").replace("-", "").replace("_", "").isalnum():
        raise InvalidInput("username: use 1-80 letters, digits, . - _", field="username")
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password: use at least {MIN_PASSWORD} characters", field="password")
    roles = _check_roles(roles, PEOPLE_ROLES, "roles")
    if (await session.execute(select(User).where(User.username == username))).scalar() is not None:
        raise Conflict(f"username {username!r} is taken: choose another", field="username")
    user = User(username=username, full_name=full_name, password_hash=_hasher.hash(password), roles=roles)
    session.add(user)
    await session.flush()
    await audit(session, actor=actor, action="user.created", entity="user", key=username,
                changes=diff(None, {"roles": roles, "full_name": full_name, "active": True, "password": MASK},
                             roles=roles, full_name=full_name))
    return user


async def get_user(session: AsyncSession, username: str) -> User:
    user = (await session.execute(select(User).where(User.username == username))).scalar()
    if user is None:
        raise NotFound(f"user {username!r} does not exist", field="username")
    return user


async def set_password(session: AsyncSession, username: str, password: str, *, actor: str,
                       keep_token_id: int | None = None) -> int:
    """Set a user's password and end their sessions (all but `keep_token_id`); the number of sessions ended."""
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"password: use at least {MIN_PASSWORD} characters", field="password")
    user = await get_user(session, username)
    before = _fingerprint(user.password_hash)
    user.password_hash = _hasher.hash(password)
    await session.flush()
    # neither password nor hash goes in the audit: a fingerprint of each salted hash shows that it changed
    await audit(session, actor=actor, action="user.password_set", entity="user", key=username,
                changes={"before": {"password": before}, "after": {"password": _fingerprint(user.password_hash)},
                         "fields": ["password"]})
    # whoever held the old password may hold a session too
    return await revoke_sessions(session, user, actor=actor, reason="password changed", keep_token_id=keep_token_id)


async def change_own_password(session: AsyncSession, *, username: str, current_password: str, new_password: str,
                              token: str) -> int:
    """A person changes their own password: the current one proves it is them; their other sessions end,
    the one making the change (`token`) goes on."""
    if len(new_password) < MIN_PASSWORD:
        raise InvalidInput(f"new_password: use at least {MIN_PASSWORD} characters", field="new_password")
    try:
        await check_password(session, username, current_password)
    except Unauthorized as exc:
        raise Forbidden("current_password: that is not your current password; nothing was changed",
                        field="current_password") from exc
    if current_password == new_password:
        raise InvalidInput("new_password: choose a password different from the current one", field="new_password")
    row = (await session.execute(select(ApiToken.id).where(ApiToken.token_hash == hash_token(token)))).scalar()
    return await set_password(session, username, new_password, actor=username, keep_token_id=row)


_UNSET: Any = object()


async def _active_admins(session: AsyncSession) -> list[str]:
    # locked (PostgreSQL) so two admins demoting each other at once cannot both pass the last-admin check
    users = (await session.execute(
        select(User).where(User.active.is_(True)).order_by(User.id).with_for_update())).scalars()
    return [u.username for u in users if "admin" in (u.roles or [])]


def _user_fields(user: User) -> dict[str, Any]:
    return {"roles": sorted(user.roles or []), "full_name": user.full_name, "active": user.active}


async def update_user(session: AsyncSession, username: str, *, actor: str, roles: list[str] | None = None,
                      full_name: str | None = _UNSET, active: bool | None = None) -> tuple[User, int]:
    """Change a user's roles, name or active flag; the user and the number of their sessions ended.

    A session carries the roles copied at login, so a change of roles (or a deactivation) ends the user's
    sessions: the old roles stop working at once and the next login carries the new ones."""
    if roles is None and full_name is _UNSET and active is None:
        raise InvalidInput("body: give at least one of roles, full_name, active to change", field="body")
    user = await get_user(session, username)
    before = _user_fields(user)
    after = dict(before)
    if roles is not None:
        after["roles"] = _check_roles(roles, PEOPLE_ROLES, "roles")
    if full_name is not _UNSET:
        if full_name is not None and len(full_name) > 200:
            raise InvalidInput("full_name: use at most 200 characters", field="full_name")
        after["full_name"] = full_name
    if active is not None:
        after["active"] = active
    if after == before:
        return user, 0
    if before["active"] and not after["active"] and actor == username:
        raise Conflict("active: you cannot deactivate yourself; ask another admin", field="active")
    was_admin = before["active"] and "admin" in before["roles"]
    stays_admin = after["active"] and "admin" in after["roles"]
    if was_admin and not stays_admin and await _active_admins(session) == [username]:
        what = "deactivate" if not after["active"] else "remove the admin role of"
        field = "active" if not after["active"] else "roles"
        raise Conflict(f"{field}: cannot {what} {username}, the last active admin: give another user the "
                       "admin role first", field=field)
    user.roles, user.full_name, user.active = after["roles"], after["full_name"], after["active"]
    await session.flush()
    ends_sessions = after["roles"] != before["roles"] or not after["active"]
    changes = diff(before, after)
    await audit(session, actor=actor, action="user.updated", entity="user", key=username, changes=changes)
    ended = 0
    if ends_sessions:
        reason = "user deactivated" if not after["active"] else "roles changed"
        ended = await revoke_sessions(session, user, actor=actor, reason=reason)
    return user, ended


async def revoke_sessions(session: AsyncSession, user: User, *, actor: str, reason: str,
                          keep_token_id: int | None = None) -> int:
    """End every live session of `user` (but `keep_token_id`), each revocation audited; how many ended."""
    q = select(ApiToken).where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None),
                               ApiToken.expires_at > utcnow()).order_by(ApiToken.id)
    if keep_token_id is not None:
        q = q.where(ApiToken.id != keep_token_id)
    rows = list((await session.execute(q)).scalars())
    for row in rows:
        await _revoke_row(session, row, actor=actor, reason=reason)
    return len(rows)


def _fingerprint(password_hash: str | None) -> str:
    if not password_hash:
        return MASK
    return f"{MASK} (hash sha256:{hashlib.sha256(password_hash.encode()).hexdigest()[:12]})"


async def check_password(session: AsyncSession, username: str, password: str) -> User:
    """The user if the password is right; one message for every failure so usernames do not leak."""
    user = (await session.execute(select(User).where(User.username == username))).scalar()
    try:
        # argon2 is deliberately slow (~100 ms of CPU): off the event loop
        await asyncio.to_thread(_hasher.verify, user.password_hash if user else _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        user = None
    if user is None or not user.active:
        raise Unauthorized("wrong username or password")
    return user


async def issue_token(session: AsyncSession, *, kind: str, name: str, roles: list[str], ttl: timedelta,
                      user: User | None = None, created_by: str) -> tuple[str, ApiToken]:
    """A new bearer token; the plain token is returned once and only its hash is stored."""
    roles = _check_roles(roles, ROLES if kind == "api" else PEOPLE_ROLES, "roles")
    token = f"th_{secrets.token_urlsafe(32)}"
    row = ApiToken(token_hash=hash_token(token), kind=kind, name=name, user_id=user.id if user else None,
                   roles=roles, expires_at=utcnow() + ttl, created_by=created_by)
    session.add(row)
    await session.flush()
    if kind == "api":
        await audit(session, actor=created_by, action="token.created", entity="token", key=name,
                    changes=diff(None, {"kind": kind, "roles": roles, "expires_at": row.expires_at.isoformat(),
                                        "token_id": row.id},
                                 roles=roles, expires_at=row.expires_at.isoformat()))
    return token, row


async def login(session: AsyncSession, username: str, password: str) -> tuple[str, ApiToken, User]:
    user = await check_password(session, username, password)
    token, row = await issue_token(session, kind="session", name=username, roles=list(user.roles),
                                   ttl=SESSION_TTL, user=user, created_by=username)
    return token, row, user


async def principal_for(session: AsyncSession, token: str, *, now: datetime | None = None) -> Principal:
    row = (await session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).scalar()
    now = now or utcnow()
    if row is None or row.revoked_at is not None:
        raise Unauthorized("token not valid: log in again (POST /api/auth/login) or ask an admin for a token")
    if row.expires_at <= now:
        raise Unauthorized("token expired: log in again (POST /api/auth/login)")
    full_name = None
    if row.user_id is not None:
        user = await session.get(User, row.user_id)
        if user is None or not user.active:
            raise Unauthorized("this user is deactivated")
        full_name = user.full_name
    return Principal(subject=row.name, roles=frozenset(row.roles), kind=row.kind, user_id=row.user_id,
                     full_name=full_name)


async def _revoke_row(session: AsyncSession, row: ApiToken, *, actor: str, **context: Any) -> None:
    row.revoked_at = utcnow()
    await session.flush()
    await audit(session, actor=actor, action="token.revoked", entity="token", key=row.name,
                changes=diff({"revoked_at": None}, {"revoked_at": row.revoked_at.isoformat()},
                             kind=row.kind, token_id=row.id, **context))


async def revoke(session: AsyncSession, token: str, *, actor: str | None = None) -> None:
    """Revoke a token; `actor` defaults to the token's own subject (a log-out)."""
    row = (await session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).scalar()
    if row is not None and row.revoked_at is None:
        await _revoke_row(session, row, actor=actor or row.name)


async def list_api_tokens(session: AsyncSession) -> list[ApiToken]:
    """The system (API) tokens, newest first; people's sessions are not listed."""
    return list((await session.execute(
        select(ApiToken).where(ApiToken.kind == "api").order_by(ApiToken.id.desc()))).scalars())


async def revoke_api_token(session: AsyncSession, token_id: int, *, actor: str,
                           current_token: str | None = None) -> ApiToken:
    """Revoke one system token by its id (GET /api/tokens lists them); not the one making the request
    (`current_token`): like deactivating oneself, that would lock its holder out by a slip."""
    row = await session.get(ApiToken, token_id)
    if row is None or row.kind != "api":
        raise NotFound(f"no system token with id {token_id}: list them at GET /api/tokens", field="token_id")
    if row.revoked_at is not None:
        raise Conflict(f"token {token_id} ({row.name}) was revoked already at {row.revoked_at.isoformat()}")
    if current_token is not None and row.token_hash == hash_token(current_token):
        raise Conflict(f"token {token_id} ({row.name}) is the one this request uses: revoke it with another "
                       "admin credential (or `tracehub users revoke-token`)")
    await _revoke_row(session, row, actor=actor)
    return row
