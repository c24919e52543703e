"""The quality engineer (issue 6's roles): saves inspection plans, investigates NCRs (containment, root cause),
works CAPAs, reads the quality records; decides nothing an NCR's reviewers decide, administers nothing. People
are made quality engineers by the CLI and the API. (SPC warnings to the engineer: tests/test_spc_warnings.py.)"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import select

from domain.models import AuditLog
from tests.helpers import PASSWORD, role_headers
from tests.test_ncr_review import final_ncr
from tests.test_quality_plans import a_plan
from tests.test_users_admin import cli

pytestmark = pytest.mark.asyncio

QE = "t-quality_engineer"  # the suite's quality engineer (tests/conftest.py: one user per role)


async def actors(sessionmaker, entity: str, key: str) -> list[tuple[str, str]]:
    async with sessionmaker() as s:
        rows = (await s.execute(select(AuditLog).where(AuditLog.entity == entity, AuditLog.entity_key == key)
                                .order_by(AuditLog.seq))).scalars()
        return [(a.action, a.actor) for a in rows]


async def test_the_quality_engineer_saves_plans_investigates_and_works_capas_but_decides_nothing(
        api: httpx.AsyncClient, sessionmaker, wo_number):
    qe = role_headers("quality_engineer")

    # inspection plans: a new version each time, in the engineer's name
    item = f"QE-{uuid.uuid4().hex[:8].upper()}"
    r = await api.post("/api/quality/plans", json=a_plan(item), headers=qe)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["created_by"] == QE
    changed = a_plan(item)
    changed["characteristics"][0]["upper"] = 25.04
    r = await api.post("/api/quality/plans", json=changed, headers=qe)
    assert r.status_code == 201 and r.json()["version"] == 2, r.text
    r = await api.get(f"/api/quality/plans/{item}/final", headers=qe)
    assert [(v["version"], v["characteristics"][0]["upper"]) for v in r.json()] == [(1, 25.05), (2, 25.04)]

    # an NCR: the engineer reads it, and is refused its decisions by the route matrix, for the login's role
    ncr = await final_ncr(api, wo_number)
    r = await api.get(f"/api/ncrs/{ncr}", headers=qe)
    assert r.status_code == 200 and r.json()["state"] == "open"
    for body in ({"action": "confirm", "reason": "seen on the CMM"},
                 {"action": "scrap", "reason": "cracked"},
                 {"action": "confirm", "reason": "x", "acting_role": "qa_supervisor"}):
        r = await api.post(f"/api/ncrs/{ncr}/decisions", headers=qe, json={**body, "password": PASSWORD})
        assert r.status_code == 403, r.text
        assert r.json()["detail"] == (
            "POST /api/ncrs/{number}/decisions needs one of the roles ['mrb_engineering', 'mrb_production', "
            f"'qa_supervisor', 'quality_manager']; {QE} has ['quality_engineer']"), r.text
    # classifying (which re-times the NCR's escalation) stays with the reviewers
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qe, json={"severity": "critical"})
    assert r.status_code == 403 and r.json()["detail"].endswith(f"{QE} has ['quality_engineer']"), r.text

    # containment and root cause are the engineer's investigation
    due = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    r = await api.post(f"/api/ncrs/{ncr}/containment", headers=qe,
                       json={"action": "sort stock at the customer", "owner": QE, "due": due})
    assert r.status_code == 201 and r.json()["seq"] == 1, r.text
    r = await api.patch(f"/api/ncrs/{ncr}/containment/1", headers=qe, json={"done": True})
    assert r.status_code == 200 and r.json()["done_at"], r.text
    r = await api.patch(f"/api/ncrs/{ncr}/root-cause", headers=qe,
                        json={"category": "machine", "text": "worn grinding wheel"})
    assert r.status_code == 200, r.text
    n = (await api.get(f"/api/ncrs/{ncr}", headers=qe)).json()
    assert n["state"] == "open" and n["decisions"] == [] and n["severity"] == "major"  # nothing decided
    assert n["root_cause"] == {"category": "machine", "text": "worn grinding wheel"}
    assert [(c["action"], bool(c["done_at"])) for c in n["containment"]] == [("sort stock at the customer", True)]
    assert [a for a in await actors(sessionmaker, "ncr", ncr) if a[1] == QE] == [
        ("ncr.containment_added", QE), ("ncr.containment_updated", QE), ("ncr.root_cause", QE)]

    # a CAPA for it: opened and worked by the engineer; closing is the quality manager's signature
    r = await api.post("/api/capas", headers=qe, json={
        "title": "grinding wheel wear", "problem": "outer diameter over the upper limit",
        "root_cause_category": "machine", "root_cause": "wheel dressed too rarely", "ncrs": [ncr],
        "actions": [{"kind": "corrective", "description": "dress wheel every shift", "owner": QE, "due": due}]})
    assert r.status_code == 201, r.text
    capa = r.json()["number"]
    assert (await api.get(f"/api/ncrs/{ncr}", headers=qe)).json()["capa"] == capa
    r = await api.post(f"/api/capas/{capa}/actions", headers=qe, json={
        "kind": "preventive", "description": "wear check in the PM plan", "owner": QE, "due": due})
    assert r.status_code == 201 and r.json()["seq"] == 2, r.text
    for seq in (1, 2):
        r = await api.patch(f"/api/capas/{capa}/actions/{seq}", headers=qe, json={"status": "done"})
        assert r.status_code == 200, r.text
    assert (await api.get(f"/api/capas/{capa}", headers=qe)).json()["state"] == "effectiveness_check"
    r = await api.post(f"/api/capas/{capa}/close", headers=qe,
                       json={"effective": True, "result": "no NCR in a month", "password": PASSWORD})
    assert r.status_code == 403 and "['quality_manager']" in r.json()["detail"], r.text
    assert [a for a in await actors(sessionmaker, "capa", capa)][:1] == [("capa.created", QE)]
    assert ("capa.action_updated", QE) in await actors(sessionmaker, "capa", capa)

    # reads the quality records; no recall decisions, no administration
    for url in ("/api/inspections", "/api/ncrs", "/api/capas", "/api/recalls", "/api/supplier-returns",
                f"/api/trace/backward/{n['lot']}", "/api/quality/warnings"):
        r = await api.get(url, headers=qe)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
    for method, url in (("POST", "/api/recalls"), ("GET", "/api/users"), ("POST", "/api/users"),
                        ("POST", "/api/tokens"), ("GET", "/api/endpoints"), ("POST", "/api/defect-codes"),
                        ("POST", "/api/quality/sampling/resume")):
        r = await api.request(method, url, headers=qe, json={})
        assert r.status_code == 403 and r.json()["detail"].endswith(f"{QE} has ['quality_engineer']"), \
            (method, url, r.status_code)


async def test_people_are_made_quality_engineers_by_the_cli_and_the_api(api: httpx.AsyncClient, db_url):
    name = f"qe-cli-{uuid.uuid4().hex[:8]}"
    out = await asyncio.to_thread(cli, db_url, "users", "create", name, "-r", "quality_engineer",
                                  "--password", PASSWORD, "--full-name", "Quinn Engineer")
    assert out.exit_code == 0 and f"user {name} created with roles quality_engineer" in out.output, out.output
    r = await api.post("/api/auth/login", json={"username": name, "password": PASSWORD})
    assert r.status_code == 200 and r.json()["roles"] == ["quality_engineer"], r.text
    me = {"Authorization": f"Bearer {r.json()['token']}"}
    assert (await api.get("/api/quality/warnings", headers=me)).status_code == 200

    name = f"qe-api-{uuid.uuid4().hex[:8]}"
    r = await api.post("/api/users", headers=role_headers("admin"),
                       json={"username": name, "password": PASSWORD, "roles": ["quality_engineer", "inspector"]})
    assert r.status_code == 201 and r.json()["roles"] == ["inspector", "quality_engineer"], r.text
    # the unknown-role answer lists the role among those to use
    r = await api.post("/api/users", headers=role_headers("admin"),
                       json={"username": f"{name}-x", "password": PASSWORD, "roles": ["quality_enginer"]})
    assert r.status_code == 422 and "quality_engineer" in r.json()["detail"], r.text
    # and an admin makes an existing user one
    r = await api.patch(f"/api/users/{name}", headers=role_headers("admin"), json={"roles": ["quality_engineer"]})
    assert r.status_code == 200 and r.json()["roles"] == ["quality_engineer"], r.text
