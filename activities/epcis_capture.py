"""Asynchronous EPCIS capture: validate and store a queued document in one transaction with its job's outcome.

A killed attempt commits nothing, so its retry does the whole document; an attempt after a finished one finds
the job finished and stores nothing (domain/epcis_capture.run_job). Storing is idempotent by eventID anyway."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.base import TransactionalActivities
from activities.epcis_capture_models import (
    CaptureEpcisDocumentInput,
    CaptureEpcisDocumentResult,
    FailEpcisCaptureInput,
)
from activities.errors import translated
from domain import epcis_capture

HEARTBEAT_EVERY = 2.0  # seconds; the workflow's heartbeat timeout is several times this


async def _heartbeat() -> None:
    while True:
        activity.heartbeat()
        await asyncio.sleep(HEARTBEAT_EVERY)


class EpcisCaptureActivities(TransactionalActivities):
    def all(self) -> list[object]:
        return [self.capture_epcis_document, self.fail_epcis_capture]

    @activity.defn
    @translated
    async def capture_epcis_document(self, inp: CaptureEpcisDocumentInput) -> CaptureEpcisDocumentResult:
        """Validate and store the job's document (all or nothing, or greedily under `proceed`).

        Heartbeats while it works, so a killed worker's attempt is retried after the heartbeat timeout rather
        than the whole start-to-close timeout."""
        beating = asyncio.create_task(_heartbeat())
        try:
            async with self.tx() as s:
                job = await epcis_capture.run_job(s, inp.job_id)
                return CaptureEpcisDocumentResult(job_id=job.id, success=bool(job.success),
                                                  stored_count=job.stored_count, error_count=len(job.errors or []))
        finally:
            beating.cancel()

    @activity.defn
    @translated
    async def fail_epcis_capture(self, inp: FailEpcisCaptureInput) -> CaptureEpcisDocumentResult:
        """End a job whose capture could not run (retries exhausted): nothing of it was stored."""
        async with self.tx() as s:
            job = await epcis_capture.fail_job(s, inp.job_id, inp.reason)
            return CaptureEpcisDocumentResult(job_id=job.id, success=bool(job.success),
                                              stored_count=job.stored_count, error_count=len(job.errors or []))
