"""Every route is authorized by the permission matrix; people log in; decisions are signed."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import text

from api.main import create_app
from api.security import PEOPLE, PERMISSIONS, PUBLIC, SYSTEMS, roles_for
from domain.identity import PEOPLE_ROLES, ROLES, SYSTEM_ROLES, issue_token, principal_for
from domain.models import utcnow
from tests.helpers import (
    IN_SPEC_IQC,
    OUT_SPEC_FINAL,
    PASSWORD,
    decide,
    fast_release,
    post_results,
    role_headers,
    run_production,
    wait_ncr,
)


def _routes(app) -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops]


def _concrete(path: str) -> str:
    path = path.replace("{fmt}", "png")
    return re.sub(r"\{[^}]+\}", "x", path)


def test_every_route_is_in_the_permission_matrix(settings):
    routes = _routes(create_app(settings))
    listed = set(PERMISSIONS) | PUBLIC
    missing = [r for r in routes if r not in listed]
    assert not missing, f"add these routes to api/security.py PERMISSIONS (or PUBLIC): {missing}"
    stale = [r for r in listed if r not in routes]
    assert not stale, f"these matrix entries name no route: {stale}"


def test_the_matrix_knows_every_role_users_and_tokens_can_have():
    # a role added to domain/identity.py and not here would be refused even the routes every person may use
    assert PEOPLE == set(PEOPLE_ROLES) and SYSTEMS == set(SYSTEM_ROLES)


# The quality engineer's routes, decided route by route (README, "Roles"): every write it may make. A change to
# the matrix that gives it more, or takes one away, fails here until this list is changed with it.
QUALITY_ENGINEER_WRITES = {
    ("POST", "/api/auth/logout"), ("POST", "/api/auth/password"),  # its own session and password
    ("POST", "/api/quality/plans"),  # inspection plan versions and their characteristics
    ("POST", "/api/quality/warnings/{warning_id}/acknowledge"),  # SPC warnings are addressed to it
    ("POST", "/api/ncrs/{number}/containment"), ("PATCH", "/api/ncrs/{number}/containment/{seq}"),
    ("PATCH", "/api/ncrs/{number}/root-cause"),  # the NCR's investigation, not its decisions
    ("POST", "/api/capas"), ("POST", "/api/capas/{number}/actions"), ("PATCH", "/api/capas/{number}/actions/{seq}"),
}
# reads it is refused: administration (users, tokens, endpoints, connectors, ERP and MES message logs, EPCIS
# capture jobs) and the workflow event history (admins, auditors, the quality manager)
QUALITY_ENGINEER_NOT_READ = {
    "/api/users", "/api/tokens", "/api/erp/events", "/api/mes/rejected", "/api/connectors", "/api/endpoints",
    "/api/endpoints/{name}", "/api/endpoints/{name}/discover", "/api/endpoints/{name}/read",
    "/api/work-orders/{number}/history", "/epcis/capture", "/epcis/capture/{capture_id}",
}


def test_the_quality_engineer_may_do_what_was_decided_and_no_more(settings):
    routes = _routes(create_app(settings))
    granted = {r for r in routes if "quality_engineer" in (roles_for(*r) or ())}
    # so no NCR or recall decision, no classification, no CAPA close, no user, token or endpoint administration
    assert {r for r in granted if r[0] != "GET"} == QUALITY_ENGINEER_WRITES
    # it reads whatever the QA supervisor reads (every quality record), and none of the administration
    assert not [r for r in routes if r[0] == "GET" and "qa_supervisor" in (roles_for(*r) or ()) and r not in granted]
    assert not {p for m, p in granted if m == "GET"} & QUALITY_ENGINEER_NOT_READ
    assert {p for m, p in routes if m == "GET"} >= QUALITY_ENGINEER_NOT_READ  # each names a route


# Item master data (api/routes/items.py): every person reads it; a correction (a wrong GTIN) is the quality manager's or
# an admin's, as decided for the items API
def test_item_corrections_are_the_quality_managers_and_admins():
    assert roles_for("PATCH", "/api/items/{code}") == {"admin", "quality_manager"}
    assert roles_for("GET", "/api/items") == PEOPLE and roles_for("GET", "/api/items/{code:path}") == PEOPLE


@pytest.mark.asyncio
async def test_the_matrix_holds_for_every_role_on_every_route(api: httpx.AsyncClient):
    routes = _routes(api._transport.app)  # type: ignore[attr-defined]
    wrong = []
    for method, path in routes:
        url = _concrete(path)
        allowed = roles_for(method, path)
        anon = await api.request(method, url, headers={"Authorization": ""})
        if allowed is None:
            if anon.status_code in (401, 403):
                wrong.append(f"{method} {path}: public route refused anonymous ({anon.status_code})")
            continue
        if anon.status_code != 401:
            wrong.append(f"{method} {path}: anonymous got {anon.status_code}, expected 401")
        for role in ROLES:
            if (method, path) == ("POST", "/api/auth/logout"):
                continue  # it would end the role's session for the rest of the walk; covered below
            r = await api.request(method, url, headers=role_headers(role))
            if role in allowed and r.status_code in (401, 403):
                wrong.append(f"{method} {path}: {role} is allowed but got {r.status_code} {r.text[:120]}")
            if role not in allowed and r.status_code != 403:
                wrong.append(f"{method} {path}: {role} is not allowed but got {r.status_code}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.asyncio
async def test_login_logout_and_expiry(api: httpx.AsyncClient, sessionmaker):
    r = await api.post("/api/auth/login", json={"username": "t-inspector", "password": "wrong password!"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    r = await api.post("/api/auth/login", json={"username": "nobody", "password": PASSWORD})
    assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    r = await api.post("/api/auth/login", json={"username": "t-inspector", "password": PASSWORD})
    assert r.status_code == 200 and r.json()["roles"] == ["inspector"]
    h = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await api.get("/api/auth/me", headers=h)).json()["subject"] == "t-inspector"
    assert (await api.post("/api/auth/logout", headers=h)).status_code == 204
    r = await api.get("/api/auth/me", headers=h)
    assert r.status_code == 401 and "log in again" in r.json()["detail"]
    async with sessionmaker() as s, s.begin():
        token, _ = await issue_token(s, kind="api", name="short", roles=["erp"], ttl=timedelta(seconds=1),
                                     created_by="tests")
    async with sessionmaker() as s:
        with pytest.raises(Exception, match="expired"):
            await principal_for(s, token, now=utcnow() + timedelta(seconds=2))
    # the database never holds a token, only its hash
    async with sessionmaker() as s:
        assert (await s.execute(text("SELECT count(*) FROM api_token WHERE token_hash = :t"),
                                {"t": token})).scalar_one() == 0


@pytest.mark.asyncio
async def test_admin_creates_users_and_system_tokens(api: httpx.AsyncClient):
    r = await api.post("/api/users", headers=role_headers("admin"),
                       json={"username": "new.inspector", "password": "short", "roles": ["inspector"]})
    assert r.status_code == 422 and "password" in r.json()["detail"]
    r = await api.post("/api/users", headers=role_headers("admin"),
                       json={"username": "new.inspector", "password": PASSWORD, "roles": ["pilot"]})
    assert r.status_code == 422 and "unknown role" in r.json()["detail"]
    r = await api.post("/api/users", headers=role_headers("admin"),
                       json={"username": "new.inspector", "password": PASSWORD, "roles": ["inspector"]})
    assert r.status_code == 201 and "password" not in r.text
    r = await api.post("/api/tokens", headers=role_headers("admin"),
                       json={"name": "mes-line-2", "roles": ["mes"], "expires_in_days": 30})
    assert r.status_code == 201
    mes = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await api.get("/api/auth/me", headers=mes)).json()["roles"] == ["mes"]
    assert (await api.post("/api/users", headers=mes, json={})).status_code == 403


@pytest.mark.asyncio
async def test_decisions_are_signed_and_a_changed_record_shows_its_signature_invalid(
        api: httpx.AsyncClient, sessionmaker, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", OUT_SPEC_FINAL)
    ncr = await wait_ncr(api, wo_number)
    # a role claimed in the body is not a thing: the login's role decides. An inspector is refused by the
    # route matrix, for the login's role
    r = await api.post(f"/api/ncrs/{ncr}/decisions", headers=role_headers("inspector"),
                       json={"action": "confirm", "reason": "x", "password": PASSWORD, "role": "qa_supervisor"})
    assert r.status_code == 403 and r.json()["detail"].endswith("t-inspector has ['inspector']"), r.text
    # an MRB member passes the matrix; claiming qa_supervisor in the body would allow a confirm, and the refusal
    # names the login's own role: the claim was ignored (a 422 would only mean the body's shape was refused)
    r = await api.post(f"/api/ncrs/{ncr}/decisions", headers=role_headers("mrb_production"),
                       json={"action": "confirm", "reason": "x", "password": PASSWORD, "role": "qa_supervisor"})
    assert r.status_code == 403, r.text
    detail = r.json()["detail"]
    assert detail.startswith("confirm needs one of the roles [") and "'qa_supervisor'" in detail \
        and detail.endswith("t-mrb_production has ['mrb_production']"), r.text
    # the one role field there is, acting_role, only chooses among the login's own roles
    r = await api.post(f"/api/ncrs/{ncr}/decisions", headers=role_headers("mrb_production"),
                       json={"action": "confirm", "reason": "x", "password": PASSWORD, "acting_role": "qa_supervisor"})
    assert r.status_code == 403 and r.json()["detail"] == "acting_role: you do not have the role qa_supervisor", r.text
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "open" and n["decisions"] == [], n
    r = await api.post(f"/api/ncrs/{ncr}/decisions", headers=role_headers("qa_supervisor"),
                       json={"action": "confirm", "reason": "x", "password": "not my password"})
    assert r.status_code == 401
    # a system token cannot sign
    r = await api.post(f"/api/ncrs/{ncr}/decisions",
                       json={"action": "confirm", "reason": "x", "password": PASSWORD})
    assert r.status_code == 403 and "log in with your own account" in r.json()["detail"]
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="diameter confirmed")).status_code == 200
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    sig = n["decisions"][0]["signature"]
    assert sig["signer"] == "t-qa_supervisor" and sig["meaning"] == "reviewed" and sig["valid"] is True
    # someone edits the decision in the database behind the hub's back
    async with sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE ncr_decision SET reason = 'nothing to see' WHERE decision_id = :d"),
                        {"d": n["decisions"][0]["decision_id"]})
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["decisions"][0]["signature"]["valid"] is False
    # and the lot's trace shows it so too
    lot = next(x for x in (await api.get(f"/api/trace/backward/{n['lot']}")).json()["nodes"] if x["id"] == n["lot"])
    sigs = next(x for x in lot["ncrs"] if x["number"] == ncr)["decisions"][0]["signatures"]
    assert [(x["signer"], x["meaning"], x["valid"]) for x in sigs] == [("t-qa_supervisor", "reviewed", False)]
