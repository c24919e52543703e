"""User administration: roles, names and deactivation (which end the user's sessions at once), password
resets and changes, system tokens listed and revoked; each change audited with before and after; the CLI."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select, update
from typer.testing import CliRunner

from api.main import create_app
from core.errors import Conflict
from core.settings import DatabaseSettings, Settings
from domain import identity
from domain.audit import MASK
from domain.models_identity import ApiToken, User
from tests.helpers import PASSWORD, SUPER_HEADERS, role_headers
from tests.test_audit_coverage import audited, chain_ok, entries

pytestmark = pytest.mark.asyncio

ADMIN = "t-admin"  # the suite's admin user (tests/conftest.py)


@pytest_asyncio.fixture
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    """The API without Temporal: nothing here starts a workflow."""
    app = create_app(Settings(database=DatabaseSettings(url=db_url)), sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub") as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def new_user(hub: httpx.AsyncClient, *roles: str, full_name: str | None = None) -> str:
    name = f"ua-{uuid.uuid4().hex[:8]}"
    r = await hub.post("/api/users", headers=role_headers("admin"),
                       json={"username": name, "password": PASSWORD, "roles": list(roles), "full_name": full_name})
    assert r.status_code == 201, r.text
    return name


async def login(hub: httpx.AsyncClient, name: str, password: str = PASSWORD) -> httpx.Response:
    return await hub.post("/api/auth/login", json={"username": name, "password": password})


async def session_of(hub: httpx.AsyncClient, name: str, password: str = PASSWORD) -> dict[str, str]:
    r = await login(hub, name, password)
    assert r.status_code == 200, r.text
    return bearer(r.json()["token"])


async def test_a_role_change_ends_the_users_sessions_so_the_old_roles_stop_at_once(hub, sessionmaker):
    name = await new_user(hub, "operator", full_name="Olga Operator")
    old = await session_of(hub, name)
    assert (await hub.get("/api/auth/me", headers=old)).json()["roles"] == ["operator"]
    # the session was issued with the operator role: it may report operations, not inspect
    assert (await hub.get("/api/tokens", headers=old)).status_code == 403

    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"roles": ["inspector", "auditor"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"username": name, "full_name": "Olga Operator", "roles": ["auditor", "inspector"],
                        "active": True, "sessions_revoked": 1}
    r = await hub.get("/api/auth/me", headers=old)
    assert r.status_code == 401 and "log in again" in r.json()["detail"]
    new = await session_of(hub, name)
    assert (await hub.get("/api/auth/me", headers=new)).json()["roles"] == ["auditor", "inspector"]
    assert (await hub.get("/api/tokens", headers=new)).status_code == 200  # an auditor's read

    ch = await audited(sessionmaker, "user", name, "user.updated", actor=ADMIN)
    assert ch["before"] == {"roles": ["operator"]} and ch["after"] == {"roles": ["auditor", "inspector"]}
    ch = await audited(sessionmaker, "token", name, "token.revoked", actor=ADMIN)
    assert ch["reason"] == "roles changed" and ch["before"] == {"revoked_at": None} and ch["after"]["revoked_at"]

    # a name change alone ends nothing; null clears it
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"full_name": None})
    assert r.status_code == 200 and r.json()["full_name"] is None and r.json()["sessions_revoked"] == 0, r.text
    assert (await hub.get("/api/auth/me", headers=new)).status_code == 200
    ch = await audited(sessionmaker, "user", name, "user.updated", actor=ADMIN)
    assert ch["before"] == {"full_name": "Olga Operator"} and ch["after"] == {"full_name": None}

    # refusals name the field
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"roles": ["pilot"]})
    assert r.status_code == 422 and r.json()["field"] == "roles" and "unknown role" in r.json()["detail"], r.text
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"roles": ["erp"]})
    assert r.status_code == 422 and r.json()["field"] == "roles", r.text  # a system role is not a person's
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"roles": []})
    assert r.status_code == 422 and "at least one role" in r.json()["detail"], r.text
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={})
    assert r.status_code == 422 and "roles, full_name, active" in r.json()["detail"], r.text
    r = await hub.patch("/api/users/nobody-here", headers=role_headers("admin"), json={"active": False})
    assert r.status_code == 404 and "nobody-here" in r.json()["detail"], r.text
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("quality_manager"), json={"roles": ["admin"]})
    assert r.status_code == 403
    await chain_ok(sessionmaker)


async def test_deactivation_refuses_the_users_token_at_once_and_activation_lets_them_back(hub, sessionmaker):
    name = await new_user(hub, "inspector")
    first, second = await session_of(hub, name), await session_of(hub, name)
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False and r.json()["sessions_revoked"] == 2, r.text
    for h in (first, second):
        assert (await hub.get("/api/auth/me", headers=h)).status_code == 401
    assert (await login(hub, name)).status_code == 401
    async with sessionmaker() as s:
        uid = (await s.execute(select(User.id).where(User.username == name))).scalar_one()
        live = (await s.execute(select(ApiToken).where(ApiToken.user_id == uid,
                                                       ApiToken.revoked_at.is_(None)))).scalars().all()
    assert live == []  # the rows are revoked, not only refused while the user is inactive
    ch = await audited(sessionmaker, "user", name, "user.updated", actor=ADMIN)
    assert ch["before"] == {"active": True} and ch["after"] == {"active": False}
    revoked = await entries(sessionmaker, "token", name, "token.revoked")
    assert [e.changes["reason"] for e in revoked] == ["user deactivated"] * 2

    # reactivated, they log in again; the old sessions stay dead
    r = await hub.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"active": True})
    assert r.status_code == 200 and r.json()["active"] is True and r.json()["sessions_revoked"] == 0, r.text
    assert (await hub.get("/api/auth/me", headers=first)).status_code == 401
    assert (await hub.get("/api/auth/me", headers=await session_of(hub, name))).status_code == 200
    ch = await audited(sessionmaker, "user", name, "user.updated", actor=ADMIN)
    assert ch["before"] == {"active": False} and ch["after"] == {"active": True}


async def test_an_admin_cannot_deactivate_themselves_and_the_last_admin_keeps_the_role(hub, sessionmaker):
    admin = await new_user(hub, "admin")
    me = await session_of(hub, admin)
    r = await hub.patch(f"/api/users/{admin}", headers=me, json={"active": False})
    assert r.status_code == 409 and r.json()["field"] == "active" and "yourself" in r.json()["detail"], r.text
    assert (await hub.get("/api/auth/me", headers=me)).status_code == 200
    other = await new_user(hub, "admin")

    # a plant with these two admins only: one may lose the role, the last one may not (rolled back after)
    async with sessionmaker() as s:
        tx = await s.begin()
        try:
            await s.execute(update(User).where(User.username.not_in([admin, other])).values(active=False))
            await identity.update_user(s, other, actor=admin, roles=["auditor"])
            with pytest.raises(Conflict, match=f"cannot remove the admin role of {admin}, the last active admin"):
                await identity.update_user(s, admin, actor="tracehub-cli", roles=["auditor"])
            with pytest.raises(Conflict, match=f"cannot deactivate {admin}, the last active admin"):
                await identity.update_user(s, admin, actor="tracehub-cli", active=False)
            # adding a role to the last admin is fine
            u, _ = await identity.update_user(s, admin, actor="tracehub-cli", roles=["admin", "auditor"])
            assert u.roles == ["admin", "auditor"]
        finally:
            await tx.rollback()
    # with other admins about, one admin deactivates another
    r = await hub.patch(f"/api/users/{other}", headers=me, json={"active": False})
    assert r.status_code == 200 and r.json()["active"] is False, r.text
    await audited(sessionmaker, "user", other, "user.updated", actor=admin)


async def test_changing_ones_own_password(hub, sessionmaker):
    name = await new_user(hub, "qa_supervisor")
    this, other = await session_of(hub, name), await session_of(hub, name)
    new_password = PASSWORD + " v2"
    r = await hub.post("/api/auth/password", headers=this,
                       json={"current_password": "not my password", "new_password": new_password})
    assert r.status_code == 403 and r.json()["field"] == "current_password", r.text
    assert "not your current password" in r.json()["detail"]
    assert (await login(hub, name)).status_code == 200  # the old password still works (a third session)
    r = await hub.post("/api/auth/password", headers=this, json={"current_password": PASSWORD, "new_password": "short"})
    assert r.status_code == 422 and "new_password" in r.text, r.text
    r = await hub.post("/api/auth/password", headers=this, json={"current_password": PASSWORD,
                                                                 "new_password": PASSWORD})
    assert r.status_code == 422 and r.json()["field"] == "new_password", r.text

    r = await hub.post("/api/auth/password", headers=this,
                       json={"current_password": PASSWORD, "new_password": new_password})
    assert r.status_code == 200 and r.json() == {"sessions_revoked": 2}, r.text
    assert (await hub.get("/api/auth/me", headers=this)).status_code == 200  # the session in use goes on
    assert (await hub.get("/api/auth/me", headers=other)).status_code == 401
    assert (await login(hub, name)).status_code == 401
    assert (await login(hub, name, new_password)).status_code == 200
    ch = await audited(sessionmaker, "user", name, "user.password_set", actor=name)
    assert ch["before"]["password"].startswith(MASK) and ch["after"]["password"].startswith(MASK)
    assert PASSWORD not in json.dumps(ch)
    async with sessionmaker() as s:
        stored = (await s.execute(select(User.password_hash).where(User.username == name))).scalar_one()
    assert stored not in json.dumps(ch)

    # a system token has no password to change, whatever its roles
    r = await hub.post("/api/auth/password", headers=SUPER_HEADERS,
                       json={"current_password": PASSWORD, "new_password": new_password})
    assert r.status_code == 403 and "system token" in r.json()["detail"], r.text


async def test_an_admin_resets_a_password_and_the_users_sessions_end(hub, sessionmaker):
    name = await new_user(hub, "operator")
    h = await session_of(hub, name)
    r = await hub.post(f"/api/users/{name}/password", headers=role_headers("admin"), json={"password": "short"})
    assert r.status_code == 422 and "password" in r.text
    assert (await hub.get("/api/auth/me", headers=h)).status_code == 200
    r = await hub.post(f"/api/users/{name}/password", headers=role_headers("admin"),
                       json={"password": "a brand new secret"})
    assert r.status_code == 200 and r.json() == {"sessions_revoked": 1}, r.text
    assert (await hub.get("/api/auth/me", headers=h)).status_code == 401
    assert (await login(hub, name)).status_code == 401
    assert (await login(hub, name, "a brand new secret")).status_code == 200
    ch = await audited(sessionmaker, "user", name, "user.password_set", actor=ADMIN)
    assert "brand new" not in json.dumps(ch)
    r = await hub.post(f"/api/users/{name}/password", headers=role_headers("qa_supervisor"),
                       json={"password": "a brand new secret"})
    assert r.status_code == 403


async def test_system_tokens_are_listed_without_the_token_and_revoked_by_id(hub, sessionmaker):
    tname = f"erp-{uuid.uuid4().hex[:8]}"
    r = await hub.post("/api/tokens", headers=role_headers("admin"), json={"name": tname, "roles": ["erp"]})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    assert (await hub.get("/api/auth/me", headers=bearer(token))).status_code == 200
    r = await hub.get("/api/tokens", headers=role_headers("auditor"))
    assert r.status_code == 200 and token not in r.text and identity.hash_token(token) not in r.text
    row = next(t for t in r.json() if t["name"] == tname)
    assert row["roles"] == ["erp"] and row["created_by"] == ADMIN and row["revoked_at"] is None
    assert set(row) == {"id", "name", "roles", "created_by", "created_at", "expires_at", "revoked_at"}
    assert all(t["name"] != "t-inspector" for t in r.json())  # people's sessions are not system tokens

    assert (await hub.delete(f"/api/tokens/{row['id']}", headers=role_headers("auditor"))).status_code == 403
    assert (await hub.delete(f"/api/tokens/{row['id']}", headers=role_headers("admin"))).status_code == 204
    assert (await hub.get("/api/auth/me", headers=bearer(token))).status_code == 401
    r = await hub.delete(f"/api/tokens/{row['id']}", headers=role_headers("admin"))
    assert r.status_code == 409 and "revoked already" in r.json()["detail"]
    listed = next(t for t in (await hub.get("/api/tokens", headers=role_headers("admin"))).json()
                  if t["id"] == row["id"])
    assert listed["revoked_at"] is not None
    ch = await audited(sessionmaker, "token", tname, "token.revoked", actor=ADMIN)
    assert ch["token_id"] == row["id"] and ch["before"] == {"revoked_at": None}
    async with sessionmaker() as s:
        session_id = (await s.execute(select(ApiToken.id).where(ApiToken.kind == "session").limit(1))).scalar_one()
    r = await hub.delete(f"/api/tokens/{session_id}", headers=role_headers("admin"))
    assert r.status_code == 404 and "GET /api/tokens" in r.json()["detail"]
    r = await hub.delete("/api/tokens/0", headers=role_headers("admin"))
    assert r.status_code == 422
    # an admin's system token does not revoke itself by a slip
    r = await hub.post("/api/tokens", headers=role_headers("admin"), json={"name": f"{tname}-adm", "roles": ["admin"]})
    own = bearer(r.json()["token"])
    own_id = next(t["id"] for t in (await hub.get("/api/tokens", headers=own)).json() if t["name"] == f"{tname}-adm")
    r = await hub.delete(f"/api/tokens/{own_id}", headers=own)
    assert r.status_code == 409 and "this request uses" in r.json()["detail"], r.text
    assert (await hub.get("/api/auth/me", headers=own)).status_code == 200


def cli(db_url: str, *args: str, input: str | None = None):
    from tracehub_cli import app as cli_app

    return CliRunner().invoke(cli_app, list(args), input=input,
                              env={"HUB_DATABASE__URL": db_url, "COLUMNS": "200"})


async def test_the_cli_administers_users_and_tokens(hub, sessionmaker, db_url):
    async def run(*args: str, input: str | None = None):
        # the CLI runs its own event loop: off this one
        return await asyncio.to_thread(cli, db_url, *args, input=input)

    name = await new_user(hub, "operator")
    h = await session_of(hub, name)
    out = await run("users", "set-roles", name, "-r", "inspector", "-r", "operator")
    assert out.exit_code == 0 and "inspector, operator" in out.output and "1 session(s) ended" in out.output, \
        out.output
    assert (await hub.get("/api/auth/me", headers=h)).status_code == 401
    await audited(sessionmaker, "user", name, "user.updated", actor="tracehub-cli")
    out = await run("users", "set-roles", name, "-r", "pilot")
    assert out.exit_code == 1 and "unknown role" in out.output, out.output

    out = await run("users", "passwd", name, "--password-stdin", input="cli password 123\n")
    assert out.exit_code == 0, out.output
    assert (await login(hub, name, "cli password 123")).status_code == 200
    out = await run("users", "passwd", name, input="prompted password\nprompted password\n")
    assert out.exit_code == 0 and "prompted password" not in out.output, out.output
    h = await session_of(hub, name, "prompted password")
    out = await run("users", "passwd", name, "--password-stdin", input="short\n")
    assert out.exit_code == 1 and "at least" in out.output, out.output

    out = await run("users", "deactivate", name)
    assert out.exit_code == 0 and "inactive" in out.output, out.output
    assert (await hub.get("/api/auth/me", headers=h)).status_code == 401
    assert (await login(hub, name, "prompted password")).status_code == 401
    out = await run("users", "activate", name)
    assert out.exit_code == 0 and "active" in out.output, out.output
    assert (await login(hub, name, "prompted password")).status_code == 200
    out = await run("users", "deactivate", "nobody-here")
    assert out.exit_code == 1 and "nobody-here" in out.output

    tname = f"mes-{uuid.uuid4().hex[:8]}"
    out = await run("users", "token", tname, "-r", "mes")
    assert out.exit_code == 0, out.output
    token = out.output.strip().splitlines()[-1]
    out = await run("users", "tokens")
    line = next(ln for ln in out.output.splitlines() if tname in ln)
    assert token not in out.output and "mes" in line and "tracehub-cli" in line and "expires" in line, out.output
    token_id = line.split()[0]
    out = await run("users", "revoke-token", token_id)
    assert out.exit_code == 0 and f"token {token_id} ({tname}) revoked" in out.output, out.output
    assert (await hub.get("/api/auth/me", headers=bearer(token))).status_code == 401
    out = await run("users", "tokens")
    assert "revoked" in next(ln for ln in out.output.splitlines() if tname in ln)
    out = await run("users", "revoke-token", token_id)
    assert out.exit_code == 1 and "revoked already" in out.output
    await audited(sessionmaker, "token", tname, "token.revoked", actor="tracehub-cli")
    await chain_ok(sessionmaker)
