"""SPC warnings (issue 6): a Western Electric rule violation completed by recorded measurements raises a warning
to the quality engineer, not an NCR; it is raised once, listed open first, and acknowledged once, audited."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import func, select

from domain import spc_warnings
from domain.models import AuditLog, Inspection, Item, Lot, Ncr
from domain.models_quality import SpcWarning
from tests.helpers import IN_SPEC_IQC, post_results, role_headers, run_production, wait_done
from tests.test_inspection_triggers import release
from tests.test_quality_plans import record_samples

pytestmark = pytest.mark.asyncio

NAME = "outer diameter"


def new_item() -> str:
    return f"SPCW-{uuid.uuid4().hex[:8].upper()}"


async def seed(sessionmaker, item: str, samples: list[list[float]], *, start: datetime) -> list[str]:
    """Recorded inspections of lots of `item`, one per sample, an hour apart from `start`; their numbers."""
    return [f"INS-{lot}" for lot in await record_samples(sessionmaker, item, NAME, samples, start=start)]


def in_control(n: int, seed_: int = 11) -> list[list[float]]:
    rng = random.Random(seed_)
    return [[round(rng.gauss(25.0, 0.004), 4) for _ in range(5)] for _ in range(n)]


async def check(sessionmaker, number: str) -> list[tuple[int, str]]:
    async with sessionmaker() as s, s.begin():
        ins = (await s.execute(select(Inspection).where(Inspection.number == number))).scalar_one()
        return [(w.rule, w.side) for w in await spc_warnings.check_inspection(s, ins)]


async def warnings_of(api: httpx.AsyncClient, item: str, role: str = "quality_engineer", **params) -> list[dict]:
    r = await api.get("/api/quality/warnings", params={"item": item, **params}, headers=role_headers(role))
    assert r.status_code == 200, r.text
    return r.json()


async def test_recorded_final_results_raise_a_warning_not_an_ncr(api: httpx.AsyncClient, sessionmaker, wo_number):
    item, material = new_item(), f"MAT-{uuid.uuid4().hex[:6]}"
    history = await seed(sessionmaker, item, in_control(20), start=datetime.now(UTC) - timedelta(days=3))
    assert await warnings_of(api, item) == []
    assert (await api.post("/api/erp/events", json=release(wo_number, item, material))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    # within the spec limits (24.95 .. 25.05), so the inspection passes, but far off the process centre
    fin = await post_results(api, wo_number, "final", [{"characteristic": NAME, "values": [25.04, 25.045, 25.042]}])
    assert fin["verdict"] == "passed"
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and done["status"]["ncrs"] == []  # no NCR

    # the warning is to the quality engineer first; a plant without one has the QA supervisor and manager
    found = await warnings_of(api, item)
    assert [(w["rule"], w["side"], w["state"]) for w in found] == [(1, "above", "open")], found
    w = found[0]
    assert w["to"] == ["quality_engineer", "qa_supervisor", "quality_manager"]
    assert await warnings_of(api, item, "qa_supervisor") == found == await warnings_of(api, item, "quality_manager")
    assert w["inspection"] == fin["inspection"] and w["characteristic"] == NAME
    assert w["description"] == "one point beyond 3 sigma" and w["acknowledged_by"] is None
    # the subgroup that broke the rule: the newest five values, two of the last seeded lot and the three new ones
    (g,) = w["subgroups"]
    assert g["inspections"] == sorted([history[-1], fin["inspection"]])
    assert [v["value"] for v in g["values"]][-3:] == [25.04, 25.045, 25.042]
    assert g["mean"] > w["chart"]["ucl"] and w["chart"]["subgroup_size"] == 5
    async with sessionmaker() as s:
        raised = (await s.execute(select(AuditLog).where(
            AuditLog.entity == "spc_warning", AuditLog.entity_key == str(w["id"])))).scalars().all()
        assert [a.action for a in raised] == ["spc_warning.raised"]
        assert raised[0].changes["after"]["inspection"] == fin["inspection"]
        assert raised[0].changes["after"]["to"] == ["quality_engineer", "qa_supervisor", "quality_manager"]
        lot = (await s.execute(select(Lot).where(Lot.number == fin["lot"]))).scalar_one()
        assert (await s.execute(select(func.count()).select_from(Ncr).where(Ncr.lot_id == lot.id))).scalar() == 0
    # recording (judging) the same results again raises nothing new
    assert await check(sessionmaker, fin["inspection"]) == []
    assert len(await warnings_of(api, item)) == 1

    # the quality engineer acknowledges it, once; the API says who and when, the audit trail before and after
    r = await api.post(f"/api/quality/warnings/{w['id']}/acknowledge", headers=role_headers("quality_engineer"),
                       json={"note": "insert changed on line 2, centring checked"})
    assert r.status_code == 200, r.text
    ack = r.json()
    assert ack["state"] == "acknowledged" and ack["acknowledged_by"] == "t-quality_engineer" \
        and ack["acknowledged_at"] and ack["note"] == "insert changed on line 2, centring checked"
    r = await api.post(f"/api/quality/warnings/{w['id']}/acknowledge", headers=role_headers("qa_supervisor"))
    assert r.status_code == 409 and "already acknowledged by t-quality_engineer" in r.json()["detail"], r.text
    r = await api.post("/api/quality/warnings/999999999/acknowledge", headers=role_headers("quality_engineer"))
    assert r.status_code == 404 and "GET /api/quality/warnings" in r.json()["detail"]
    async with sessionmaker() as s:
        a = (await s.execute(select(AuditLog).where(
            AuditLog.entity == "spc_warning", AuditLog.entity_key == str(w["id"]),
            AuditLog.action == "spc_warning.acknowledged"))).scalar_one()
        assert a.actor == "t-quality_engineer" and a.changes["before"]["acknowledged_by"] is None
        assert a.changes["after"]["acknowledged_by"] == "t-quality_engineer"
    assert await warnings_of(api, item, state="open") == []
    # an inspector does not read them; an auditor does, but does not acknowledge them
    r = await api.get("/api/quality/warnings", headers=role_headers("inspector"))
    assert r.status_code == 403
    r = await api.post(f"/api/quality/warnings/{w['id']}/acknowledge", headers=role_headers("auditor"))
    assert r.status_code == 403 and r.json()["detail"].startswith(
        "POST /api/quality/warnings/{warning_id}/acknowledge needs one of the roles ['qa_supervisor', "
        "'quality_engineer', 'quality_manager']"), r.text
    r = await api.get("/api/quality/warnings", params={"item": item}, headers=role_headers("auditor"))
    assert r.status_code == 200 and [x["id"] for x in r.json()] == [w["id"]]


async def test_a_violation_is_raised_once_and_a_continuing_pattern_is_the_open_warning(api: httpx.AsyncClient,
                                                                                       sessionmaker):
    item = new_item()
    start = datetime(2026, 10, 1, 6, 0, tzinfo=UTC)
    await seed(sessionmaker, item, in_control(20), start=start)
    high = [25.03, 25.031, 25.03, 25.029, 25.03]  # within spec, far above the centre, little spread

    async def shifted(hour: int) -> str:
        return (await seed(sessionmaker, item, [high], start=start + timedelta(hours=hour)))[0]

    a = await shifted(20)
    assert await check(sessionmaker, a) == [(1, "above")]
    assert await check(sessionmaker, a) == []  # the same results again: the same violation, not raised again
    b = await shifted(21)
    # a new point beyond 3 sigma, and 2 of 3 beyond 2 sigma (a and b)
    assert sorted(await check(sessionmaker, b)) == [(1, "above"), (2, "above")]
    c = await shifted(22)
    # rule 2 goes on (a, b, c) while its warning is open: not a second rule 2 warning; c is a new rule 1 point
    assert await check(sessionmaker, c) == [(1, "above")]
    rows = await warnings_of(api, item)
    assert [(w["rule"], w["inspection"]) for w in rows] == [(1, c), (2, b), (1, b), (1, a)]  # newest first
    rule2 = next(w for w in rows if w["rule"] == 2)
    assert [g["inspections"] for g in rule2["subgroups"]] == [[a], [b]]
    r = await api.post(f"/api/quality/warnings/{rule2['id']}/acknowledge", headers=role_headers("quality_manager"))
    assert r.status_code == 200, r.text
    # acknowledged: the pattern seen again with new values is a new warning; 4 of 5 beyond 1 sigma is new too
    d = await shifted(23)
    assert sorted(await check(sessionmaker, d)) == [(1, "above"), (2, "above"), (3, "above")]
    rows = await warnings_of(api, item)
    assert [w["state"] for w in rows] == ["open"] * 6 + ["acknowledged"]  # open ones first
    assert rows[-1]["id"] == rule2["id"]
    async with sessionmaker() as s:
        assert (await s.execute(select(func.count()).select_from(SpcWarning).join(
            Item, Item.id == SpcWarning.item_id).where(Item.code == item))).scalar() == 7


async def test_too_few_values_make_no_chart_and_no_warning(sessionmaker):
    item = new_item()
    start = datetime(2026, 10, 1, 6, 0, tzinfo=UTC)
    numbers = await seed(sessionmaker, item, [[25.0, 25.001, 24.999, 25.0, 25.002], [25.04] * 4],
                         start=start)
    assert await check(sessionmaker, numbers[-1]) == []  # 9 values: fewer than two subgroups of 5
