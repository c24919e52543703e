"""A work order's stage writes run as local activities (PATCH_STAGE_LOCAL): no activity task on the Temporal server,
the stage still in the status and the record, and each write still in the history an admin reads, as an activity."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import timedelta

import httpx
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError, FailureError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.hub import HubActivities, build_activities
from activities.models import WorkOrderInput, released_work_order
from api.routes.work_orders import timeline
from core.db import make_engine, make_sessionmaker
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    OUT_SPEC_FINAL,
    decide,
    fast_release,
    post_results,
    run_production,
    wait_done,
    wait_ncr,
)
from tests.test_lifecycle import record_history
from worker import WORKFLOWS, build_worker
from workflows.work_order import WorkOrderWorkflow


async def wait_record_stage(api: httpx.AsyncClient, number: str, stage: str, timeout: float = 20.0) -> dict:
    deadline, last = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        last = (await api.get(f"/api/work-orders/{number}")).json()
        if (last.get("record") or {}).get("stage") == stage and last.get("status", {}).get("stage") == stage:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"the record and status of {number} never said stage {stage}; last: {last}")


async def test_stage_writes_are_local_activities_and_the_history_shows_each(api: httpx.AsyncClient, client,
                                                                            wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await wait_record_stage(api, wo_number, "material_intake")
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await wait_record_stage(api, wo_number, "production")
    await run_production(api, wo_number)
    await wait_record_stage(api, wo_number, "final_inspection")
    assert (await post_results(api, wo_number, "final", IN_SPEC_FINAL))["verdict"] == "passed"
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and done["record"]["status"] == "completed"
    assert done["status"]["stage"] == done["record"]["stage"]

    wf_id = f"work-order-{wo_number}"
    history = await client.get_workflow_handle(wf_id).fetch_history()
    regular = [e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events
               if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert "set_stage" not in regular and "notify_erp" in regular  # only the stage writes left the server
    markers = [e.marker_recorded_event_attributes.marker_name for e in history.events
               if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    assert markers.count("core_local_activity") == 6, markers

    # the admin's timeline: each stage write as an activity step (type, attempt, result, when)
    hist = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
    writes = [e for e in hist["events"] if e.get("activity") == "set_stage"]
    assert [e["event"] for e in writes] == ["local activity completed"] * 6, writes
    for w in writes:
        assert w["local"] is True and w["attempt"] == 1 and w["result"] is None and "failure" not in w
        assert w["time"].endswith("Z") and w["time"] >= hist["events"][0]["time"]
    assert [e["time"] for e in writes] == sorted(e["time"] for e in writes)
    assert hist["pending"] == []
    await record_history(client, wf_id, "work_order_stage_local")


async def test_a_database_outage_at_a_stage_write_is_waited_out_by_the_regular_activity(api: httpx.AsyncClient, client,
                                                                                       settings, sessionmaker,
                                                                                       wo_number):
    """The local stage write gives up after DB_LOCAL_RETRY's attempts; the regular activity then retries until the database
    is back, visible in the history's pending list meanwhile; the stage is written once it is back."""
    queue = f"stage-outage-{uuid.uuid4().hex[:8]}"
    # the stage writes of this worker go to a database nobody listens on (port 9: every connection is refused)
    dead_engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/tracehub")
    down = HubActivities(make_sessionmaker(dead_engine), resolver=settings.resolver_base_url).set_stage
    acts = [a for a in build_activities(sessionmaker, resolver=settings.resolver_base_url) if a.__name__ != "set_stage"]
    order = released_work_order(WorkOrderInput.model_validate(fast_release(wo_number)["work_order"]),
                                settings.ncr.table())
    wf_id = f"work-order-{wo_number}"
    try:
        async with Worker(client, task_queue=queue, workflows=WORKFLOWS, activities=[*acts, down]):
            await client.start_workflow(WorkOrderWorkflow.run, order, id=wf_id, task_queue=queue)
            deadline, hist = time.monotonic() + 60, {}
            while time.monotonic() < deadline:
                hist = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
                if any(p["activity"] == "set_stage" and p["attempt"] >= 2 for p in hist["pending"]):
                    break
                await asyncio.sleep(0.5)
            else:
                raise AssertionError(f"the stage write never went to the regular activity: {hist}")
        # the local run's last attempt failed (its attempts ran out) and is in the timeline; the regular one waits
        failed = [e for e in hist["events"] if e.get("activity") == "set_stage" and e.get("local")]
        assert [e["event"] for e in failed] == ["local activity failed"] and failed[0]["attempt"] == 6, failed
        assert "Connection refused" in failed[0]["failure"], failed
        waiting = next(p for p in hist["pending"] if p["activity"] == "set_stage")
        assert "Connection refused" in waiting["last_failure"], waiting
        # the database is back (a worker whose writes reach it): the waiting write goes through
        async with build_worker(client, settings, sessionmaker, task_queue=queue):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                hist = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
                if [e["event"] for e in hist["events"] if e.get("activity") == "set_stage"][-1] == "activity completed":
                    break
                await asyncio.sleep(0.3)
            else:
                raise AssertionError(f"the stage write never went through once the database was back: {hist}")
            assert not [p for p in hist["pending"] if p["activity"] == "set_stage"]
            await wait_record_stage(api, wo_number, "material_intake")
            await client.get_workflow_handle(wf_id).terminate("test done")
    finally:
        await dead_engine.dispose()


# --- how the timeline maps a local activity that retried, and one that failed --------------------------------------

ATTEMPTS: dict[str, int] = {}


@activity.defn(name="stage_local_probe")
async def stage_local_probe(key: str) -> dict:
    ATTEMPTS[key] = activity.info().attempt
    if key.endswith("-refused"):
        raise ApplicationError(f"work order {key} does not exist", type="NotFound", non_retryable=True)
    if activity.info().attempt < 2:
        raise ApplicationError("database unavailable, try again")
    return {"rows": 1}


@workflow.defn(name="StageLocalProbe")
class StageLocalProbe:
    @workflow.run
    async def run(self, key: str) -> str:
        policy = RetryPolicy(initial_interval=timedelta(milliseconds=50))
        await workflow.execute_local_activity("stage_local_probe", key, start_to_close_timeout=timedelta(seconds=5),
                                              retry_policy=policy)
        try:
            await workflow.execute_local_activity("stage_local_probe", f"{key}-refused", retry_policy=policy,
                                                  start_to_close_timeout=timedelta(seconds=5))
        except FailureError:  # a local activity's failure comes as is (here the ApplicationError)
            return "refused"
        return "accepted"


async def test_the_timeline_shows_a_local_activitys_last_attempt_result_and_failure(client):
    queue, key = f"stage-local-{uuid.uuid4().hex[:8]}", f"probe-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[StageLocalProbe], activities=[stage_local_probe],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        assert await client.execute_workflow(StageLocalProbe.run, key, id=key, task_queue=queue) == "refused"
    events = await timeline(client, key)
    steps = [e for e in events if e.get("local")]
    assert [(e["event"], e["activity"], e["attempt"]) for e in steps] == [
        ("local activity completed", "stage_local_probe", 2), ("local activity failed", "stage_local_probe", 1)]
    assert steps[0]["result"] == {"rows": 1} and "failure" not in steps[0]
    assert f"work order {key}-refused does not exist" in steps[1]["failure"] and "result" not in steps[1]
    assert all(e["time"].endswith("Z") for e in steps)


# --- status queries while stage writes run: the history still replays (PATCH_STAGE_BACKGROUND) ----------------------

async def test_status_queries_during_slow_stage_writes_leave_histories_that_replay(api: httpx.AsyncClient, client,
                                                                                  settings, sessionmaker):
    """A status query that reaches the worker while a stage write (a local activity) runs can make the worker report
    the local activity's result in a workflow task of its own. Awaited inline, the work order then took its next patch
    decision one task later than a replay does, and the history no longer replayed: the status query of the completed
    work order failed, and a worker could not resume it after an eviction. Here every stage write takes 0.3 s while
    the work orders' status is queried every 20 ms; each completed history must replay against today's code."""
    from temporalio.worker import Replayer

    queue = f"stage-queries-{uuid.uuid4().hex[:8]}"
    numbers = [f"WO-{uuid.uuid4().hex[:8].upper()}" for _ in range(8)]
    done_flag = asyncio.Event()

    async def hammer(number: str) -> None:
        handle = client.get_workflow_handle(f"work-order-{number}")
        while not done_flag.is_set():
            with contextlib.suppress(Exception):  # not started yet, or failing: the replay below judges
                await handle.query(WorkOrderWorkflow.status)
            await asyncio.sleep(0.005)

    async def run(number: str) -> None:
        order = released_work_order(WorkOrderInput.model_validate(fast_release(number)["work_order"]),
                                    settings.ncr.table())
        await client.start_workflow(WorkOrderWorkflow.run, order, id=f"work-order-{number}", task_queue=queue)
        await post_results(api, number, "iqc", IN_SPEC_IQC)
        await run_production(api, number)
        if numbers.index(number) % 2:  # every other one fails final inspection, and its NCR is dismissed
            await post_results(api, number, "final", OUT_SPEC_FINAL)
            ncr = await wait_ncr(api, number)
            assert (await decide(api, ncr, "dismiss", "qa_supervisor", reason="gauge misread")).status_code == 200
        else:
            await post_results(api, number, "final", IN_SPEC_FINAL)
        await client.get_workflow_handle(f"work-order-{number}").result()

    async with build_worker(client, settings, sessionmaker, task_queue=queue):
        hammers = [asyncio.create_task(hammer(n)) for n in numbers]
        try:
            await asyncio.wait_for(asyncio.gather(*(run(n) for n in numbers)), 120)
        finally:
            done_flag.set()
            await asyncio.gather(*hammers)
        shown = (await api.get(f"/api/work-orders/{numbers[0]}")).json()  # the status query of a completed order
        assert shown["record"]["status"] == "completed", shown
        assert shown["record"]["stage"] == shown["status"]["stage"] == "done", shown
    replayer = Replayer(workflows=WORKFLOWS, data_converter=client.data_converter)
    for number in numbers:
        history = await client.get_workflow_handle(f"work-order-{number}").fetch_history()
        await replayer.replay_workflow(history)  # raises on a nondeterminism error
    await record_history(client, f"work-order-{numbers[0]}", "work_order_stage_background")
