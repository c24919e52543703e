"""CaptureEpcisDocumentWorkflow: one asynchronous EPCIS capture job (POST /epcis/capture of a large document).

The document waits in the database with its job (Temporal payloads stay small: the input is the job id). One
activity validates and stores it in a single transaction with the job's outcome, retried on outages and
crashes; if it never succeeds, a second activity ends the job as failed, so no job stays `running` forever."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from activities.epcis_capture_models import (
        CaptureEpcisDocumentInput,
        CaptureEpcisDocumentResult,
        FailEpcisCaptureInput,
    )
    from workflows.policies import DB_RETRY, DB_TIMEOUT, NON_RETRYABLE

CAPTURE_TIMEOUT = timedelta(minutes=10)  # 10,000 events validate and store in a few seconds; the rest is margin
# the activity heartbeats every 2 s: a worker killed mid-capture is noticed after this, and the next attempt runs
CAPTURE_HEARTBEAT = timedelta(seconds=20)
CAPTURE_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=500),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=8,
    non_retryable_error_types=NON_RETRYABLE,
)


def capture_workflow_id(job_id: str) -> str:
    return f"epcis-capture-{job_id}"


@workflow.defn
class CaptureEpcisDocumentWorkflow:
    @workflow.run
    async def run(self, inp: CaptureEpcisDocumentInput) -> CaptureEpcisDocumentResult:
        try:
            return await workflow.execute_activity(
                "capture_epcis_document", inp, start_to_close_timeout=CAPTURE_TIMEOUT,
                heartbeat_timeout=CAPTURE_HEARTBEAT, retry_policy=CAPTURE_RETRY, result_type=CaptureEpcisDocumentResult)
        except ActivityError as exc:
            cause = exc.cause if exc.cause is not None else exc
            return await workflow.execute_activity(
                "fail_epcis_capture", FailEpcisCaptureInput(
                    job_id=inp.job_id, reason=f"the capture could not be completed ({cause}): nothing was stored; "
                                              "capture the document again"),
                start_to_close_timeout=DB_TIMEOUT, retry_policy=DB_RETRY, result_type=CaptureEpcisDocumentResult)


async def start_capture(client: object, *, job_id: str, task_queue: str) -> str:
    """Start the job's workflow (its id is the job's: a repeated start is refused, never doubled)."""
    from temporalio.client import Client
    from temporalio.common import WorkflowIDReusePolicy
    from temporalio.exceptions import WorkflowAlreadyStartedError

    assert isinstance(client, Client)
    wid = capture_workflow_id(job_id)
    try:
        await client.start_workflow(CaptureEpcisDocumentWorkflow.run, CaptureEpcisDocumentInput(job_id=job_id),
                                    id=wid, task_queue=task_queue,
                                    id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
    except WorkflowAlreadyStartedError:
        pass
    return wid
