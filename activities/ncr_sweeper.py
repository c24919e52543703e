"""Durable start of the NCRs of duplicate codes.

An offline pool's upload (domain/code_pools.py) records each duplicate alert with its NCR number in the upload's
transaction; the upload route starts the NCR review workflows after the commit and marks the alerts
(`code_alert.ncr_started_at`). If the API dies between the two, the alert stays unmarked: the sweeper, run in
the worker process beside the MES bridge, starts every NCR whose alert is unmarked and older than
`min_age_s` (so it does not race the route), then marks it.

Nothing is doubled: the workflow id is the NCR's (`ncr-<number>`) and a start is refused for an id that ran
before (REJECT_DUPLICATE), so "already started" counts as started; an NCR whose row is recorded (its workflow's
first activity writes it) is only marked, even after the server dropped the closed workflow's history.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy
from temporalio.exceptions import WorkflowAlreadyStartedError

from activities.base import BackgroundLoop
from activities.models import NonconformanceInput, Timing
from domain import code_pools
from domain.models import utcnow

log = logging.getLogger("tracehub.ncr_sweeper")

NCR_WORKFLOW = "NonconformanceWorkflow"  # by name: activities do not import workflows
SWEEPER = "system:ncr-sweeper"


async def start_duplicate_ncrs(client: Client, dups: Iterable[dict[str, Any]], *, timing: Timing,
                               task_queue: str) -> list[int]:
    """Start the review workflow of each duplicate's NCR (code_pools.duplicate_ncrs describes them); returns
    the alert ids whose workflow now exists (started here or before). A failure to reach Temporal raises."""
    started = []
    for d in dups:
        try:
            await client.start_workflow(
                NCR_WORKFLOW,
                NonconformanceInput(ncr=d["ncr"], work_order=d["work_order"], lot=d["lot"], inspection="",
                                    stage="codes", description=d["description"], timing=timing),
                id=f"ncr-{d['ncr']}", task_queue=task_queue,
                id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE)
        except WorkflowAlreadyStartedError:
            pass
        started.append(int(d["alert"]))
    return started


class NcrSweeper(BackgroundLoop):
    """Starts the NCRs whose upload route did not (see the module doc). `async with NcrSweeper(...)` runs it
    every `interval_s` in the background; `sweep()` is one pass."""

    task_name = "ncr-sweeper"

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], client: Client, *, task_queue: str,
                 ncr_table: dict[str, Any], interval_s: float = 30.0, min_age_s: float = 30.0) -> None:
        self.sm = sessionmaker
        self.client = client
        self.task_queue = task_queue
        self.timing = Timing().with_defaults(ncr_table)
        self.interval_s = interval_s
        self.min_age_s = min_age_s

    async def run(self) -> None:
        while True:
            try:
                if started := await self.sweep():
                    log.warning("NCR sweeper: started %s (their upload did not)", ", ".join(started))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a database or Temporal outage: the next pass tries again
                log.warning("NCR sweeper: pass failed (%s: %s); trying again in %.0f s", type(exc).__name__, exc,
                            self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def sweep(self, *, min_age_s: float | None = None) -> list[str]:
        """One pass: start and mark every unmarked NCR older than the minimum age; returns the NCR numbers
        marked in this pass (started here, or found started)."""
        age = self.min_age_s if min_age_s is None else min_age_s
        marked: list[str] = []
        while True:
            async with self.sm() as s:
                dups = await code_pools.unstarted_ncrs(s, older_than=utcnow() - timedelta(seconds=age))
            if not dups:
                return marked
            recorded = [int(d["alert"]) for d in dups if d["recorded"]]
            started = await start_duplicate_ncrs(self.client, [d for d in dups if not d["recorded"]],
                                                 timing=self.timing, task_queue=self.task_queue)
            async with self.sm() as s, s.begin():
                done = await code_pools.mark_ncr_started(s, recorded + started, actor=SWEEPER)
            marked += done
            if not done:  # marked by someone else meanwhile; what is left waits for the next pass
                return marked
