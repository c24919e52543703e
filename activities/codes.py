"""Code issuance activities: a very large order is issued block by block, heartbeating its progress."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity

from activities.codes_models import IssueCodeBlocksInput, IssueCodeBlocksProgress, IssueCodeBlocksResult
from activities.errors import translated
from domain import codes, production


class CodeActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, resolver: str) -> None:
        self.sm = sessionmaker
        self.resolver = resolver

    @activity.defn
    @translated
    async def issue_code_blocks(self, inp: IssueCodeBlocksInput) -> IssueCodeBlocksResult:
        """Issue `quantity` unit codes for the lot in blocks of `chunk_size`, one transaction per block.
        Each block is keyed (work order, lot, chunk number), so a retry after a crash finds the blocks
        already committed; the heartbeat says how far it got, and a retry resumes from there."""
        total = max(1, -(-inp.quantity // inp.chunk_size))
        start = 0
        details = activity.info().heartbeat_details
        if details:
            start = IssueCodeBlocksProgress.model_validate(details[0]).chunks_done
        first: str | None = None
        last: str | None = None
        batch = ""
        for n in range(total):
            size = min(inp.chunk_size, inp.quantity - n * inp.chunk_size)
            async with self.sm() as s, s.begin():
                lot = await production.get_lot(s, inp.lot)
                issued = await codes.issue_for_lot(s, work_order=inp.work_order, lot=lot, quantity=size,
                                                   resolver=self.resolver, chunk=None if total == 1 else n + 1)
            batch = issued.batch_code
            first = first or issued.first_serial
            last = issued.last_serial
            if n + 1 > start:
                activity.heartbeat(IssueCodeBlocksProgress(
                    chunks_done=n + 1, chunks_total=total,
                    codes_done=min(inp.quantity, (n + 1) * inp.chunk_size)).model_dump())
        return IssueCodeBlocksResult(batch_code=batch, first_serial=first, last_serial=last,
                                     count=inp.quantity, blocks=total if inp.quantity else 0)

    def all(self) -> list[Any]:
        return [self.issue_code_blocks]
