"""EpcisDeliveryWorkflow: one delivery run of an EPCIS query subscription, started by the subscription's
Temporal Schedule (a calendar for `schedule`, a short interval for `stream`). The schedule's overlap policy
skips a run while the previous one still delivers, so the watermark has one writer."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.epcis_models import DeliverSubscriptionInput, DeliverSubscriptionResult
    from workflows.policies import NON_RETRYABLE

DELIVERY_TIMEOUT = timedelta(minutes=5)
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=6,  # then the next scheduled run tries again, from the same watermark
    non_retryable_error_types=NON_RETRYABLE,
)
CALENDAR_FIELDS = {"second": "second", "minute": "minute", "hour": "hour", "dayOfMonth": "day_of_month",
                   "month": "month", "dayOfWeek": "day_of_week"}


@workflow.defn
class EpcisDeliveryWorkflow:
    @workflow.run
    async def run(self, inp: DeliverSubscriptionInput) -> DeliverSubscriptionResult:
        return await workflow.execute_activity(
            "deliver_epcis_subscription", inp, start_to_close_timeout=DELIVERY_TIMEOUT,
            retry_policy=DELIVERY_RETRY, result_type=DeliverSubscriptionResult)


def schedule_id(subscription_id: str) -> str:
    return f"epcis-subscription-{subscription_id}"


async def start_subscription_schedule(client: object, *, inp: DeliverSubscriptionInput, task_queue: str,
                                      ranges: dict[str, list[tuple[int, int, int]]] | None,
                                      stream_every: timedelta) -> str:
    """The Schedule that delivers a subscription: on its calendar (`ranges` from
    epcis_subscriptions.parse_schedule) or, for a stream, every `stream_every`."""
    from temporalio.client import (
        Client,
        Schedule,
        ScheduleActionStartWorkflow,
        ScheduleAlreadyRunningError,
        ScheduleCalendarSpec,
        ScheduleIntervalSpec,
        ScheduleOverlapPolicy,
        SchedulePolicy,
        ScheduleRange,
        ScheduleSpec,
    )

    assert isinstance(client, Client)
    sid = schedule_id(inp.subscription_id)
    if ranges is None:
        spec = ScheduleSpec(intervals=[ScheduleIntervalSpec(every=stream_every)])
    else:
        spec = ScheduleSpec(calendars=[ScheduleCalendarSpec(**{
            CALENDAR_FIELDS[f]: [ScheduleRange(a, b, c) for a, b, c in rs] for f, rs in ranges.items()})])
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(EpcisDeliveryWorkflow.run, inp, id=f"{sid}-run", task_queue=task_queue),
        spec=spec, policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP))
    try:
        await client.create_schedule(sid, schedule)
    except ScheduleAlreadyRunningError:
        pass  # created by an earlier attempt of the same request
    return sid


async def delete_subscription_schedule(client: object, subscription_id: str) -> None:
    from temporalio.client import Client
    from temporalio.service import RPCError, RPCStatusCode

    assert isinstance(client, Client)
    try:
        await client.get_schedule_handle(schedule_id(subscription_id)).delete()
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
