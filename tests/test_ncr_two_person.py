"""NCR review (issue 6): the MRB's two concession signatures come from two people, and a disposition's electronic
signature covers the NCR it disposes (lot, severity, defect codes, quantity affected): that classification is frozen
once a disposition is signed, and a change made behind the API's back shows the signature invalid in GET
/api/ncrs/{n} and in the backward trace. Signatures made over the old content (the decision only) still hold."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from domain.models import NcrDecisionRecord
from domain.models_identity import Signature
from domain.quality import decision_content
from domain.signatures import content_hash
from tests.helpers import PASSWORD, decide, role_headers, wait_done
from tests.test_ncr_review import final_ncr, wait_ncr_state

pytestmark = pytest.mark.asyncio


async def both_mrb_roles(sessionmaker) -> tuple[str, dict[str, str]]:
    """A person who sits on the board for production and for engineering: (username, headers of a session)."""
    from domain.identity import create_user, login

    name = f"t-mrb-both-{uuid.uuid4().hex[:6]}"
    async with sessionmaker() as s, s.begin():
        await create_user(s, username=name, password=PASSWORD, roles=["mrb_production", "mrb_engineering"],
                          full_name="Both Boards", actor="tests")
        token, _, _ = await login(s, name, PASSWORD)
    return name, {"Authorization": f"Bearer {token}"}


async def sign(api: httpx.AsyncClient, headers: dict[str, str], ncr: str, action: str, role: str | None = None,
               reason: str = "customer concession C-7") -> httpx.Response:
    body = {"action": action, "reason": reason, "password": PASSWORD, **({"acting_role": role} if role else {})}
    return await api.post(f"/api/ncrs/{ncr}/decisions", headers=headers, json=body)


def signatures(n: dict) -> list[tuple[str, str, bool]]:
    return [(d["action"], d["reviewer"], d["signature"]["valid"]) for d in n["decisions"] if d["signature"]]


def trace_signatures(back: dict, lot: str, ncr: str) -> list[tuple[str, bool]]:
    node = next(x for x in back["nodes"] if x["id"] == lot)
    decisions = next(x for x in node["ncrs"] if x["number"] == ncr)["decisions"]
    return [(d["action"], s["valid"]) for d in decisions for s in d["signatures"]]


async def test_one_person_holding_both_mrb_roles_cannot_complete_a_concession(api: httpx.AsyncClient, sessionmaker,
                                                                             wo_number):
    ncr = await final_ncr(api, wo_number)
    both, headers = await both_mrb_roles(sessionmaker)
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="confirmed on CMM")).status_code == 200
    r = await sign(api, headers, ncr, "use_as_is", "mrb_production")
    assert r.status_code == 200 and r.json()["state"] == "mrb", r.text
    assert r.json()["waiting_on"] == ["mrb_engineering"] and f"another person than {both}" in r.json()["waiting_for"]
    # the same person again, in the role still missing, or letting the hub pick the role: refused, and nothing
    # recorded
    for role in ("mrb_engineering", None):
        r = await sign(api, headers, ncr, "use_as_is", role)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert f"{both} already signed use_as_is as mrb_production" in detail, detail
        assert "needs the signature of mrb_engineering" in detail and "second person" in detail
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "mrb" and [d["action"] for d in n["decisions"]] == ["confirm", "use_as_is"]
    assert f"another person than {both}" in n["waiting_for"] and n["waiting_on"] == ["mrb_engineering"]
    # once the first board signature is given, the classification it signed is frozen
    r = await api.patch(f"/api/ncrs/{ncr}", headers=role_headers("qa_supervisor"), json={"severity": "critical"})
    assert r.status_code == 409 and r.json()["detail"].startswith("severity:"), r.text
    # a second person completes the concession
    r = await decide(api, ncr, "use_as_is", "mrb_engineering", reason="customer concession C-7")
    assert r.status_code == 200 and r.json()["state"] == "closed", r.text
    assert (await wait_done(api, wo_number))["status"]["result"] == "completed"
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert signatures(n) == [("confirm", "t-qa_supervisor", True), ("use_as_is", both, True),
                             ("use_as_is", "t-mrb_engineering", True)]
    assert n["disposed"]["action"] == "use_as_is" and n["disposed"]["quantity"] == 20


async def test_the_same_person_signing_both_roles_at_once_gets_one_signature(api: httpx.AsyncClient, sessionmaker,
                                                                            wo_number):
    ncr = await final_ncr(api, wo_number)
    _, headers = await both_mrb_roles(sessionmaker)
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="confirmed")).status_code == 200
    answers = await asyncio.gather(sign(api, headers, ncr, "use_as_is", "mrb_production"),
                                   sign(api, headers, ncr, "use_as_is", "mrb_engineering"))
    assert sorted(r.status_code for r in answers) == [200, 409], [r.text for r in answers]
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "mrb" and [d["action"] for d in n["decisions"]] == ["confirm", "use_as_is"]


async def test_a_disposition_signature_covers_the_ncr_and_freezes_its_classification(
        api: httpx.AsyncClient, sessionmaker, erp_sim, wo_number):
    ncr = await final_ncr(api, wo_number)
    qa = role_headers("qa_supervisor")
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"defect_codes": ["SURF-CRACK"], "quantity_affected": 5})
    assert r.status_code == 200 and r.json()["severity"] == "critical", r.text
    lot = r.json()["lot"]
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="crack confirmed")).status_code == 200
    # still classifiable after the confirmation (the MRB classifies)
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"quantity_affected": 6})
    assert r.status_code == 200 and r.json()["quantity_affected"] == 6
    r = await decide(api, ncr, "scrap", "mrb_production", reason="cracked")
    assert r.status_code == 200, r.text
    # D3: the answer says plainly what was written off: the whole remaining lot, not the 6 affected
    disposed = r.json()["disposed"]
    assert disposed["action"] == "scrap" and disposed["quantity"] == 20 and disposed["quantity_affected"] == 6
    assert f"20 EA of lot {lot} written off" in disposed["note"] and "written off" in disposed["note"]
    assert "quantity_affected (6)" in disposed["note"], disposed

    # what the scrap's signature covers: the decision and the NCR as it was at signing
    async with sessionmaker() as s:
        sigs = {d.action: sig for d, sig in (await s.execute(
            select(NcrDecisionRecord, Signature)
            .join(Signature, (Signature.entity == "ncr_decision") & (Signature.entity_key == NcrDecisionRecord.decision_id))
            .where(NcrDecisionRecord.decision_id.like(f"{ncr}-D%")))).all()}
    assert sigs["scrap"].content["content_version"] == 2
    assert sigs["scrap"].content["signed_ncr"] == {"lot": lot, "severity": "critical", "defect_codes": ["SURF-CRACK"],
                                                   "quantity_affected": 6}
    assert sigs["confirm"].content["signed_ncr"] == {"lot": lot}  # the NCR is classified after its confirmation

    # after the signed disposition the classification cannot change through the API; the CAPA link still can
    for body, field in (({"severity": "minor"}, "severity"), ({"quantity_affected": 3}, "quantity_affected"),
                        ({"defect_codes": ["DIM-OOT"]}, "defect_codes")):
        r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json=body)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail.startswith(f"{field}:") and "scrap" in detail and "t-mrb_production" in detail, detail
        assert "cannot change after it" in detail
    r = await api.patch(f"/api/ncrs/{ncr}", headers=qa, json={"quantity_affected": 6, "severity": "critical"})
    assert r.status_code == 200, r.text  # the values it has: nothing changes
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "verification", "verification")
    assert signatures(n) == [("confirm", "t-qa_supervisor", True), ("scrap", "t-mrb_production", True)]
    assert n["decisions"][1]["signature"]["content_version"] == 2
    assert n["disposed"]["quantity"] == 20

    # a change behind the API's back: the scrap's signature shows invalid, in the NCR and in the trace
    async with sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE ncr_review SET severity = 'minor' WHERE ncr_id = "
                             "(SELECT id FROM ncr WHERE number = :n)"), {"n": ncr})
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["severity"] == "minor"
    assert signatures(n) == [("confirm", "t-qa_supervisor", True), ("scrap", "t-mrb_production", False)]
    back = (await api.get(f"/api/trace/backward/{lot}")).json()
    assert trace_signatures(back, lot, ncr) == [("confirm", True), ("scrap", False)]
    async with sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE ncr_review SET severity = 'critical' WHERE ncr_id = "
                             "(SELECT id FROM ncr WHERE number = :n)"), {"n": ncr})
        await s.execute(text("UPDATE ncr_review SET quantity_affected = 20 WHERE ncr_id = "
                             "(SELECT id FROM ncr WHERE number = :n)"), {"n": ncr})
    back = (await api.get(f"/api/trace/backward/{lot}")).json()
    assert trace_signatures(back, lot, ncr) == [("confirm", True), ("scrap", False)]
    await wait_done(api, wo_number)


async def test_a_signature_made_over_the_old_content_still_holds(api: httpx.AsyncClient, sessionmaker, wo_number):
    ncr = await final_ncr(api, wo_number)
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="confirmed")).status_code == 200
    r = await decide(api, ncr, "scrap", "mrb_engineering", reason="cracked")
    assert r.status_code == 200, r.text
    lot = r.json()["lot"]
    await wait_done(api, wo_number)
    # the scrap as signed before signatures covered the NCR: its stored content is the decision only
    async with sessionmaker() as s, s.begin():
        rec = (await s.execute(select(NcrDecisionRecord).where(NcrDecisionRecord.decision_id == f"{ncr}-D2"))).scalar_one()
        assert rec.action == "scrap"
        old = decision_content(ncr, rec)
        assert "content_version" not in old and "signed_ncr" not in old
        sig = (await s.execute(select(Signature).where(Signature.entity == "ncr_decision",
                                                       Signature.entity_key == rec.decision_id))).scalar_one()
        sig.content, sig.content_hash = old, content_hash(old)
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert signatures(n) == [("confirm", "t-qa_supervisor", True), ("scrap", "t-mrb_engineering", True)]
    assert [d["signature"]["content_version"] for d in n["decisions"]] == [2, 1]
    assert trace_signatures((await api.get(f"/api/trace/backward/{lot}")).json(), lot, ncr) == [
        ("confirm", True), ("scrap", True)]
    # it never covered the classification: a later change of it leaves the old signature valid; a change of what
    # it did cover (the reason) invalidates it
    async with sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE ncr_review SET severity = 'minor' WHERE ncr_id = "
                             "(SELECT id FROM ncr WHERE number = :n)"), {"n": ncr})
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert signatures(n) == [("confirm", "t-qa_supervisor", True), ("scrap", "t-mrb_engineering", True)]
    async with sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE ncr_decision SET reason = 'nothing' WHERE decision_id = :d"),
                        {"d": f"{ncr}-D2"})
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert signatures(n) == [("confirm", "t-qa_supervisor", True), ("scrap", "t-mrb_engineering", False)]
    back = (await api.get(f"/api/trace/backward/{lot}")).json()
    assert trace_signatures(back, lot, ncr) == [("confirm", True), ("scrap", False)]


async def _confirmed_ncr_off_queue(api: httpx.AsyncClient, client, settings, sessionmaker, wo_number: str,
                                   tag: str) -> tuple[Any, Any]:
    """An NCR's workflow on a task queue of its own, confirmed (state mrb), with no worker polling that queue any
    more: updates sent now wait at the server and reach the workflow together, in one activation, once a worker
    (the second value: settings without a sticky cache, so it takes the task at once) starts."""
    from activities.models import NcrAction, NcrDecision, NonconformanceInput, ReviewerRole
    from worker import build_worker
    from workflows.nonconformance import NonconformanceWorkflow

    await final_ncr(api, wo_number)  # a lot of its own for this NCR
    queue = f"ncr-{tag}-{wo_number}"
    quiet = settings.model_copy(update={"worker": settings.worker.model_copy(update={"max_cached_workflows": 0})})
    async with build_worker(client, quiet, sessionmaker, task_queue=queue):
        handle = await client.start_workflow(
            NonconformanceWorkflow.run, NonconformanceInput(
                ncr=f"NCR-{tag.upper()}-{wo_number}", work_order=wo_number, lot=f"{wo_number}-L1",
                inspection=f"{wo_number}-{tag}", stage="final", description="bore oversize"),
            id=queue, task_queue=queue)
        st = await handle.execute_update(NonconformanceWorkflow.decide, NcrDecision(
            action=NcrAction.confirm, reviewer="t-qa_supervisor", role=ReviewerRole.qa_supervisor, reason="confirmed"))
        assert st.state == "mrb"
    return handle, lambda: build_worker(client, quiet, sessionmaker, task_queue=queue)


async def test_two_signatures_of_one_person_in_one_workflow_task_get_one(api: httpx.AsyncClient, client, settings,
                                                                         sessionmaker, wo_number):
    """Both updates reach the NCR's workflow in the same activation (sent while no worker polls its queue): the
    second one's validator runs before the first one's handler records the concession, and still refuses it."""
    from temporalio.client import WorkflowUpdateFailedError

    from activities.models import NcrAction, NcrDecision, ReviewerRole
    from workflows.nonconformance import NonconformanceWorkflow

    handle, worker = await _confirmed_ncr_off_queue(api, client, settings, sessionmaker, wo_number, "race")

    def concession(role: ReviewerRole) -> NcrDecision:
        return NcrDecision(action=NcrAction.use_as_is, reviewer="t-mrb-both", role=role, reason="concession C-9")

    sent = [asyncio.create_task(handle.execute_update(NonconformanceWorkflow.decide, concession(role)))
            for role in (ReviewerRole.mrb_production, ReviewerRole.mrb_engineering)]
    await asyncio.sleep(1.5)  # both admitted by the server, waiting for a worker
    assert not any(t.done() for t in sent)
    async with worker():
        answers = await asyncio.gather(*sent, return_exceptions=True)
        refused = [a for a in answers if isinstance(a, WorkflowUpdateFailedError)]
        assert len(refused) == 1, answers
        assert "second person" in str(refused[0].cause), refused[0].cause
        st = await handle.query(NonconformanceWorkflow.status)
        assert st.state == "mrb" and [d.action for d in st.decisions] == ["confirm", "use_as_is"], st
        await handle.terminate("test done")


async def test_two_dispositions_in_one_workflow_task_get_one(api: httpx.AsyncClient, client, settings, sessionmaker,
                                                             wo_number):
    """Scrap and rework from two board members reach the NCR's workflow in the same activation: the second one's
    validator sees the first decision's state, and refuses it (before, both were accepted and recorded)."""
    from temporalio.client import WorkflowUpdateFailedError

    from activities.models import NcrAction, NcrDecision, ReviewerRole
    from workflows.nonconformance import NonconformanceWorkflow

    handle, worker = await _confirmed_ncr_off_queue(api, client, settings, sessionmaker, wo_number, "race2")
    decisions = [NcrDecision(action=NcrAction.scrap, reviewer="t-mrb-p", role=ReviewerRole.mrb_production,
                             reason="cracked"),
                 NcrDecision(action=NcrAction.rework, reviewer="t-mrb-e", role=ReviewerRole.mrb_engineering,
                             reason="regrind", rework_operation=20)]
    sent = [asyncio.create_task(handle.execute_update(NonconformanceWorkflow.decide, d)) for d in decisions]
    await asyncio.sleep(1.5)  # both admitted by the server, waiting for a worker
    assert not any(t.done() for t in sent)
    async with worker():
        answers = await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), 60)
        refused = [a for a in answers if isinstance(a, WorkflowUpdateFailedError)]
        assert len(refused) == 1, answers
        assert "is not allowed" in str(refused[0].cause), refused[0].cause
        st = await handle.query(NonconformanceWorkflow.status)
        assert st.decisions[0].action == "confirm" and len(st.decisions) == 2, st.decisions
        await handle.terminate("test done")


async def test_whoever_confirmed_an_ncr_may_not_also_decide_its_disposition(api: httpx.AsyncClient, sessionmaker,
                                                                             wo_number):
    """Four eyes: a quality manager may confirm an NCR (a review role) and may dispose of one (a board role), but
    not both on the same NCR; nor may one login holding a review role and a board role. Another member of the board
    then decides, and the refusal changed nothing."""
    from domain.identity import create_user, login

    ncr = await final_ncr(api, wo_number)
    assert (await decide(api, ncr, "confirm", "quality_manager", reason="confirmed on CMM")).status_code == 200
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] == "mrb", "the board")
    assert "another person than t-quality_manager" in n["waiting_for"], n["waiting_for"]
    r = await decide(api, ncr, "scrap", "quality_manager", reason="cracked")
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "t-quality_manager confirmed this NCR" in detail and "another member of the review board" in detail, detail
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert n["state"] == "mrb" and [d["action"] for d in n["decisions"]] == ["confirm"], n

    # one person with a review role and a board role: the same rule, whichever role they act in
    name = f"t-qa-and-board-{uuid.uuid4().hex[:6]}"
    async with sessionmaker() as s, s.begin():
        await create_user(s, username=name, password=PASSWORD, roles=["qa_supervisor", "mrb_production"],
                          full_name="Two Hats", actor="tests")
        token, _, _ = await login(s, name, PASSWORD)
    two_hats = {"Authorization": f"Bearer {token}"}
    wo2 = f"{wo_number}-B"
    ncr2 = await final_ncr(api, wo2)
    assert (await sign(api, two_hats, ncr2, "confirm", "qa_supervisor")).status_code == 200
    r = await sign(api, two_hats, ncr2, "rework", "mrb_production")
    assert r.status_code == 409 and f"{name} confirmed this NCR" in r.json()["detail"], r.text

    # another member of the board decides
    r = await decide(api, ncr, "scrap", "mrb_engineering", reason="cracked")
    assert r.status_code == 200, r.text
    n = await wait_ncr_state(api, ncr, lambda n: n["state"] in ("verification", "closed"), "the scrap carried out")
    assert [(d["action"], d["reviewer"]) for d in n["decisions"]][:2] == [
        ("confirm", "t-quality_manager"), ("scrap", "t-mrb_engineering")], n["decisions"]
