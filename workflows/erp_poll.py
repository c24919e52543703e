"""ErpPollWorkflow: one poll of an ERP without webhooks, run by a Temporal Schedule every N seconds.
The schedule's overlap policy skips a poll while the previous one still runs."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.models_connectors import PollErpInput, PollErpResult
    from workflows.connector_policies import POLL_RETRY, POLL_TIMEOUT


@workflow.defn
class ErpPollWorkflow:
    @workflow.run
    async def run(self, inp: PollErpInput) -> PollErpResult:
        return await workflow.execute_activity(
            "poll_erp", inp, start_to_close_timeout=POLL_TIMEOUT, retry_policy=POLL_RETRY,
            result_type=PollErpResult,
        )


def schedule_id(endpoint: str) -> str:
    return f"erp-poll-{endpoint}"


async def ensure_poll_schedule(client: object, *, endpoint: str, every: timedelta, task_queue: str,
                               work_order_queue: str | None = None) -> str:
    """Create (or update) the Schedule that polls `endpoint` every `every`; returns its id."""
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleSpec,
        ScheduleUpdate,
        ScheduleUpdateInput,
    )

    assert isinstance(client, Client)
    sid = schedule_id(endpoint)
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            ErpPollWorkflow.run, PollErpInput(endpoint=endpoint, task_queue=work_order_queue or task_queue),
            id=f"{sid}-run", task_queue=task_queue),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        async def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(sid).update(update)
    return sid
