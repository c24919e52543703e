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


# endpoint kinds the ERP poll reads (connectors/polling.py: a connector that lists changed work orders and receipts)
POLLED_KINDS = frozenset({"erpnext", "rest"})


def poll_every(kind: str | None, config: dict | None) -> timedelta | None:
    """How often an endpoint's config asks to be polled (`poll_every_s`), or None: not polled (webhooks)."""
    every = (config or {}).get("poll_every_s") if kind in POLLED_KINDS else None
    return timedelta(seconds=int(every)) if every else None


async def sync_poll_schedule(client: object, *, endpoint: str, kind: str | None, config: dict | None,
                             task_queue: str) -> str | None:
    """The endpoint's poll Schedule as its config says now: created or updated when the config has `poll_every_s`,
    deleted when it has not or the endpoint is gone (`kind` None). Returns the schedule's id while it polls."""
    from temporalio.service import RPCError, RPCStatusCode

    every = poll_every(kind, config)
    if every is not None:
        return await ensure_poll_schedule(client, endpoint=endpoint, every=every, task_queue=task_queue)
    try:
        await client.get_schedule_handle(schedule_id(endpoint)).delete()  # type: ignore[attr-defined]
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
    return None


async def sync_all_poll_schedules(client: object, endpoints: list[tuple[str, str, dict]], *,
                                  task_queue: str) -> list[str]:
    """Every endpoint's poll Schedule as its config says (`endpoints`: name, kind, config), and no Schedule for an
    endpoint that is gone: what the worker does at start (a config changed while no API could tell Temporal, or a
    schedule deleted by hand). Returns the endpoints polled."""
    from temporalio.client import Client

    assert isinstance(client, Client)
    # one listing of the schedules there are, so an endpoint that is not polled and has none costs no call
    existing = {s.id.removeprefix("erp-poll-") async for s in await client.list_schedules()
                if s.id.startswith("erp-poll-")}
    polled = []
    for name, kind, config in endpoints:
        if poll_every(kind, config) is not None:
            await sync_poll_schedule(client, endpoint=name, kind=kind, config=config, task_queue=task_queue)
            polled.append(name)
    for name in existing - set(polled):  # polling switched off, or the endpoint gone
        await sync_poll_schedule(client, endpoint=name, kind=None, config=None, task_queue=task_queue)
    return polled
