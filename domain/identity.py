"""Identity: users with argon2-hashed passwords, bearer tokens with expiry, and roles."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound, Unauthorized
from domain.audit import MASK, audit, diff
from domain.models import utcnow
from domain.models_identity import ApiToken, User

PEOPLE_ROLES = ("operator", "inspector", "qa_supervisor", "mrb_production", "mrb_engineering", "quality_manager",
                "admin", "integrator", "auditor")
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
        raise NotFound(f"user {username!r} does not exist")
    return user


async def set_password(session: AsyncSession, username: str, password: str, *, actor: str) -> None:
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


async def revoke(session: AsyncSession, token: str, *, actor: str | None = None) -> None:
    """Revoke a token; `actor` defaults to the token's own subject (a log-out)."""
    row = (await session.execute(select(ApiToken).where(ApiToken.token_hash == hash_token(token)))).scalar()
    if row is not None and row.revoked_at is None:
        row.revoked_at = utcnow()
        await session.flush()
        await audit(session, actor=actor or row.name, action="token.revoked", entity="token", key=row.name,
                    changes=diff({"revoked_at": None}, {"revoked_at": row.revoked_at.isoformat()},
                                 kind=row.kind, token_id=row.id))
