"""What every activity class shares: the session factory and a transaction per call."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Self

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class TransactionalActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sm = sessionmaker

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction, committed when the block ends: activities own their transactions."""
        async with self.sm() as session, session.begin():
            yield session


class BackgroundLoop:
    """Something the worker process runs beside its activities (the MES bridge, the NCR sweeper): `run()` starts
    as a task on entering `async with`, and is cancelled on leaving it."""

    task_name = "background"
    _task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self.run(), name=self.task_name)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
