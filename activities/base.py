"""What every activity class shares: the session factory and a transaction per call."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker


class TransactionalActivities:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sm = sessionmaker

    @asynccontextmanager
    async def tx(self) -> AsyncIterator[AsyncSession]:
        """One transaction, committed when the block ends: activities own their transactions."""
        async with self.sm() as session, session.begin():
            yield session
