"""Driving a work order as the plant does: ERP events, inspector results, MES reports, reviewers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from erp_sim.app import release_event

# Credentials the suite uses (filled by the session fixture `credentials` in conftest.py): one token
# carrying every role, for tests about other things than authorization, and one user per role with a
# password (sessions, signatures, the route matrix).
SUPER_HEADERS: dict[str, str] = {}
PASSWORD = "correct horse battery staple"
ROLE_TOKENS: dict[str, str] = {}


def role_headers(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {ROLE_TOKENS[role]}"}


IN_SPEC_IQC = [{"characteristic": "hardness", "values": [30.1]}]
OUT_SPEC_IQC = [{"characteristic": "hardness", "values": [35.0]}]
IN_SPEC_FINAL = [{"characteristic": "outer diameter", "values": [25.0, 25.01, 24.99]}]
OUT_SPEC_FINAL = [{"characteristic": "outer diameter", "values": [25.0, 25.2, 24.99]}]


# The ERP simulator's URL (filled by the session fixture `erp_sim` in conftest.py). A release the tests send
# straight to the hub has its ERP records (Work Order, Purchase Receipt, Batches) stored there first, as an ERP has
# them before it sends the event (bench/lifecycle.py does the same): the hub's consumption entries then name
# batches the ERP knows.
ERP_SIM: dict[str, str] = {}


def remember_in_erp(*events: dict[str, Any]) -> None:
    """Store the ERP's records behind these work_order.released events in the simulator (POST /sim/documents);
    nothing when no simulator runs in this session. Idempotent: a document the simulator has is kept."""
    url = ERP_SIM.get("url")
    if url:
        httpx.post(f"{url}/sim/documents", json=list(events), timeout=10).raise_for_status()


def remember_batches(items: dict[str, str]) -> None:
    """Store Batches (lot number -> item code) in the simulator, as the ERP has every lot the hub knows (received
    with a purchase receipt, or made by a manufacture entry): for lots a test builds in the hub's database alone,
    whose recall holds are sent to the ERP as the Batch's `disabled`. A batch the simulator has is kept."""
    url = ERP_SIM.get("url")
    if not url:
        return
    auth = {"Authorization": "token tracehub:simulator-secret"}
    for lot, item in items.items():
        r = httpx.post(f"{url}/api/resource/Batch", json={"batch_id": lot, "item": item}, headers=auth, timeout=10)
        if r.status_code != 409:  # 409: the ERP has it
            r.raise_for_status()


def fast_release(number: str, quantity: int = 20, *, with_shipment: bool = True) -> dict[str, Any]:
    """A work_order.released event with short NCR durations, its ERP records stored in the simulator first."""
    ev = release_event(number, quantity, with_shipment=with_shipment)
    ev["work_order"]["timing"] = {"ncr_reminder_after": 600, "ncr_escalate_after": 1200}
    remember_in_erp(ev)
    return ev


async def wait_status(api: httpx.AsyncClient, number: str, pred: Callable[[dict], bool],
                      timeout: float = 30.0, what: str = "condition") -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        r = await api.get(f"/api/work-orders/{number}")
        if r.status_code == 200:
            last = r.json()
            if last.get("status") and pred(last["status"]):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} on {number}; last: {last}")


def waits_for_inspection(kind: str) -> Callable[[dict], bool]:
    return lambda s: any(p["kind"] == kind and not s.get("_") for p in s["pending_inspections"])


async def post_results(api: httpx.AsyncClient, number: str, kind: str, measurements: list[dict]) -> dict:
    st = await wait_status(api, number, lambda s: any(p["kind"] == kind for p in s["pending_inspections"]),
                           what=f"a pending {kind} inspection")
    ins = next(p for p in st["status"]["pending_inspections"] if p["kind"] == kind)
    r = await api.post(f"/api/inspections/{ins['number']}/results",
                       json={"inspector": "inspector-1", "measurements": measurements})
    assert r.status_code == 202, r.text
    return r.json()


def operation_report(number: str, seq: int, consumed: list[dict], *, report_id: str | None = None,
                     good: int = 20, scrap: int = 0) -> dict:
    return {
        "report_id": report_id or f"{number}-op{seq}",
        "seq": seq, "equipment": {10: "LATHE-01", 20: "FURNACE-02"}.get(seq, "EQ-1"), "operator": "op-7",
        "shift": "A", "started_at": "2026-11-21T08:00:00Z", "ended_at": "2026-11-21T09:00:00Z",
        "consumed": consumed,
        "parameters": {"spindle_rpm": 1200} if seq == 10 else {"temperature_c": 860, "soak_min": 45},
        "good_quantity": good, "scrap_quantity": scrap,
    }


async def report_operation(api: httpx.AsyncClient, number: str, seq: int, consumed: list[dict], **kw: Any) -> None:
    await wait_status(api, number, lambda s: s["expected_operation"] == seq, what=f"operation {seq}")
    r = await api.post(f"/api/work-orders/{number}/operations", json=operation_report(number, seq, consumed, **kw))
    assert r.status_code == 202, r.text


async def run_production(api: httpx.AsyncClient, number: str, quantity: int = 20) -> None:
    await report_operation(api, number, 10, [{"lot": f"{number}-M1", "quantity": 10.0}], good=quantity)
    await report_operation(api, number, 20, [], good=quantity)


async def decide(api: httpx.AsyncClient, ncr: str, action: str, role: str, reason: str = "checked",
                 **extra: Any) -> httpx.Response:
    """A reviewer of `role` decides, signing with their password (the suite's user t-<role>)."""
    return await api.post(f"/api/ncrs/{ncr}/decisions", headers=role_headers(role),
                          json={"action": action, "reason": reason, "password": PASSWORD, **extra})


async def wait_ncr(api: httpx.AsyncClient, number: str) -> str:
    st = await wait_status(api, number, lambda s: bool(s["open_ncrs"]), what="an open NCR")
    ncr = st["status"]["open_ncrs"][0]
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the NCR row is written by the child's first activity
        if (await api.get(f"/api/ncrs/{ncr}")).status_code == 200:
            return ncr
        await asyncio.sleep(0.1)
    raise AssertionError(f"NCR {ncr} never recorded")


async def wait_done(api: httpx.AsyncClient, number: str, timeout: float = 40.0) -> dict:
    return await wait_status(api, number, lambda s: s["result"] is not None, timeout=timeout, what="completion")


async def scrap_work_order(api: httpx.AsyncClient, number: str) -> tuple[str, dict]:
    """Release the work order, pass IQC, run production, fail final inspection and scrap the lot through its NCR
    (confirm, then one MRB signature); the NCR's number and the work order's final status."""
    assert (await api.post("/api/erp/events", json=fast_release(number))).status_code == 202
    await post_results(api, number, "iqc", IN_SPEC_IQC)
    await run_production(api, number)
    await post_results(api, number, "final", OUT_SPEC_FINAL)
    ncr = await wait_ncr(api, number)
    assert (await decide(api, ncr, "confirm", "qa_supervisor")).status_code == 200
    assert (await decide(api, ncr, "scrap", "mrb_production", reason="cracked")).status_code == 200
    return ncr, await wait_done(api, number)


def new_gtin() -> str:
    """A fresh, valid GTIN-14 (a GTIN belongs to one item, so tests that make items need their own)."""
    import secrets

    from domain import gs1
    body = "0" + "950" + f"{secrets.randbelow(10**9):09d}"  # not `random`: hypothesis seeds it per example
    return body + str(gs1.mod10(body))


async def delete_schedule_and_runs(client: Any, schedule_id: str, *, timeout: float = 20.0) -> None:
    """Delete a Schedule and see its runs in flight end: a poll still running would retry against a peer the test
    is about to stop, in the session's worker, while later tests run. A run that does not finish in `timeout`
    seconds is terminated."""
    from temporalio.service import RPCError

    handle = client.get_schedule_handle(schedule_id)
    try:
        await handle.pause(note="test over")
        running = (await handle.describe()).info.running_actions
        await handle.delete()
    except RPCError:
        return  # gone already
    for action in running:
        wf = client.get_workflow_handle(action.workflow_id, run_id=action.first_execution_run_id)
        try:
            await asyncio.wait_for(wf.result(), timeout)
        except TimeoutError:
            await wf.terminate("test over")
        except Exception as e:  # noqa: BLE001 - the run failed: it is over all the same
            print(f"poll run {action.workflow_id} ended failing: {e}")
