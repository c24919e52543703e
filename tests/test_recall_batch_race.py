"""A recall's release does not unblock an ERP batch that another recall still holds.

The ERP's block of a batch is one flag (ERPNext: the Batch's `disabled`) shared by every recall. Recall R1 releases
lot A1 while nothing else holds it, so its decision sends the unblock (`Batch Hold`, hold 0); the ERP is down, and
the notice waits for its retry (held back here by pausing the activity in Temporal, so that its retry comes after
what the test does meanwhile). Meanwhile recall R2 holds A1 and blocks the batch. When R1's unblock is retried it
must not re-enable the batch: the notice asks the hub's record first, withholds the unblock (the recall's audit
trail says why) and is done; R2's release, the last one, then enables the batch. The same for a lot R2 rejected
(a rejected lot stays blocked). A plain release of a lot held by one recall still enables the batch, and the
recall's audit trail says the ERP was sent the unblock.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import PendingActivityState
from temporalio.api.workflow.v1 import PendingActivityInfo
from temporalio.api.workflowservice.v1 import PauseActivityRequest, UnpauseActivityRequest
from temporalio.client import Client

from domain.holds import ERP_UNBLOCK_WITHHELD, ERP_UNBLOCKED
from tests.conftest import ErpSim
from tests.test_recall import wait_recall
from tests.test_recall_holds import audit_entries, decide, wait_batch
from tests.test_trace_plant import build_plant, lot_status

pytestmark = pytest.mark.asyncio


async def start_recall(api: httpx.AsyncClient, number: str, kind: str, suspect: str) -> None:
    """Start a recall and wait until its holds are in the ERP (it waits for decisions then)."""
    r = await api.post("/api/recalls", json={"number": number, "suspect_kind": kind, "suspect": suspect,
                                             "reason": "cracks found"})
    assert r.status_code == 202, r.text
    await wait_recall(api, number, lambda x: (x["status"] or {}).get("stage") == "notifying", "holds")


async def erp_waits(api: httpx.AsyncClient, number: str) -> list[str]:
    return [w for w in (await api.get(f"/api/recalls/{number}")).json()["status"]["waiting_for"]
            if w.startswith("ERP")]


async def pending_notice(client: Client, workflow_id: str, timeout: float = 20) -> PendingActivityInfo:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        desc = await client.get_workflow_handle(workflow_id).describe()
        found = [a for a in desc.raw_description.pending_activities if a.activity_type.name == "notify_erp"]
        if found:
            return found[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id} never had an ERP notice pending")


async def pause_notice(client: Client, workflow_id: str, timeout: float = 20) -> str:
    """Pause the workflow's pending ERP notice once its attempt in flight has failed: no retry runs until
    unpause_notice. Returns the activity's id."""
    activity_id = (await pending_notice(client, workflow_id)).activity_id
    await client.workflow_service.pause_activity(PauseActivityRequest(
        namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id), id=activity_id,
        identity="test_recall_batch_race", reason="hold the unblock back until the other recall has held the lot"))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        a = await pending_notice(client, workflow_id)
        if a.state == PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED:
            assert a.attempt >= 1 and a.last_failure.message, "the unblock should have failed against the ERP"
            return activity_id
        await asyncio.sleep(0.1)
    raise AssertionError(f"{workflow_id}'s ERP notice never paused")


async def unpause_notice(client: Client, workflow_id: str, activity_id: str) -> None:
    await client.workflow_service.unpause_activity(UnpauseActivityRequest(
        namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id), id=activity_id,
        identity="test_recall_batch_race"))


@pytest.mark.parametrize("then", ["holds", "rejects"])
async def test_a_late_unblock_leaves_the_batch_blocked_while_another_recall_holds_it(
        api: httpx.AsyncClient, client: Client, erp_sim: ErpSim, sessionmaker, then: str):
    plant = await build_plant(sessionmaker, ship=False)
    tag, a1, b1 = plant.tag, plant.lots["A1"], plant.lots["B1"]
    first, second = f"RC-BR1-{tag}", f"RC-BR2-{tag}"
    await start_recall(api, first, "lot", a1)  # holds A1 and B1 (made from A1)
    assert erp_sim.documents("Batch")[a1]["disabled"] == 1

    # the ERP goes down; R1 releases A1, which nothing else holds: its decision sends the unblock, which fails and
    # waits for its retry (paused here, so it is retried only once R2 has held the lot)
    async with httpx.AsyncClient(base_url=erp_sim.url) as sim:
        (await sim.post("/sim/faults", json={"status": 503, "seconds": 60})).raise_for_status()
        try:
            r = await decide(api, first, a1, "release")
            assert r.status_code == 200, r.text
            assert r.json()["still_held_by"] == {}
            assert await lot_status(sessionmaker, a1) == "released"
            notice = await pause_notice(client, f"recall-{first}")
        finally:
            (await sim.delete("/sim/faults")).raise_for_status()
    assert await erp_waits(api, first) == [f"ERP: unblock lot {a1} (retried until the ERP answers)"]
    assert erp_sim.documents("Batch")[a1]["disabled"] == 1

    # R2 (by the heat A1 is made of) holds A1 and blocks the batch; it stays blocked whatever R2 decides next
    await start_recall(api, second, "heat", plant.heats["M1"])
    assert await lot_status(sessionmaker, a1) == "on_hold"
    holder = f"recall {second}"
    if then == "rejects":
        r = await decide(api, second, a1, "reject")
        assert r.status_code == 200, r.text
        assert await lot_status(sessionmaker, a1) == "rejected"
        holder = f"recall {second} (rejected it)"

    # R1's unblock is retried now: it asks the record, withholds the unblock and is done; the batch stays blocked
    await unpause_notice(client, f"recall-{first}", notice)
    deadline = time.monotonic() + 30
    while await erp_waits(api, first):
        assert time.monotonic() < deadline, "R1's unblock notice never finished"
        await asyncio.sleep(0.1)
    assert erp_sim.documents("Batch")[a1]["disabled"] == 1
    (withheld,) = await audit_entries(sessionmaker, "recall", first, ERP_UNBLOCK_WITHHELD)
    assert (withheld["lot"], withheld["notice"], withheld["still_blocked_by"]) == \
        (a1, f"{first}/{a1}-RELEASE", [holder])
    assert holder in withheld["why"] and f"batch {a1}" in withheld["why"]
    assert await audit_entries(sessionmaker, "recall", first, ERP_UNBLOCKED) == []

    # the other lot both hold: released by both, the last release unblocks it
    assert (await decide(api, first, b1, "release")).status_code == 200
    assert (await decide(api, second, b1, "release")).status_code == 200
    await wait_batch(erp_sim, b1, disabled=0)
    if then == "holds":
        # R2, the last holder of A1, releases it: now the batch is enabled, and R2's trail says it sent the unblock
        r = await decide(api, second, a1, "release")
        assert r.status_code == 200, r.text
        await wait_batch(erp_sim, a1, disabled=0)
        assert await lot_status(sessionmaker, a1) == "released"
        sent = await audit_entries(sessionmaker, "recall", second, ERP_UNBLOCKED)
        assert sorted(e["lot"] for e in sent) == sorted([a1, b1])
    for number in (first, second):
        await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    assert erp_sim.documents("Batch")[a1]["disabled"] == (0 if then == "holds" else 1)
    assert await audit_entries(sessionmaker, "recall", second, ERP_UNBLOCK_WITHHELD) == []


async def test_a_release_by_the_only_recall_still_unblocks_the_batch(
        api: httpx.AsyncClient, erp_sim: ErpSim, sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    tag, b1 = plant.tag, plant.lots["B1"]
    number = f"RC-BR3-{tag}"
    await start_recall(api, number, "lot", b1)  # B1 alone: nothing was made from it
    assert erp_sim.documents("Batch")[b1]["disabled"] == 1
    r = await decide(api, number, b1, "release")
    assert r.status_code == 200, r.text
    await wait_batch(erp_sim, b1, disabled=0)
    await wait_recall(api, number, lambda x: x["record"]["status"] == "closed", "closing")
    (sent,) = await audit_entries(sessionmaker, "recall", number, ERP_UNBLOCKED)
    assert (sent["lot"], sent["notice"]) == (b1, f"{number}/{b1}-RELEASE")
    assert await audit_entries(sessionmaker, "recall", number, ERP_UNBLOCK_WITHHELD) == []
