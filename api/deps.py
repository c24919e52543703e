"""Dependencies: sessions (transaction per request), the Temporal client, settings.

`SessionDep` is for handlers that write (on SQLite its transaction takes the write lock at BEGIN, so writers
queue); `ReadSessionDep` for handlers that only read: no lock on SQLite, readers never wait for writers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.errors import TemporalUnavailable
from core.settings import Settings
from core.temporal import connect


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessionmaker() as session, session.begin():
        yield session


async def get_read_session(request: Request) -> AsyncIterator[AsyncSession]:
    # nothing to commit: the transaction (a snapshot on SQLite) is rolled back when the session closes
    async with request.app.state.read_sessionmaker() as session:
        yield session


async def get_temporal(request: Request) -> Client:
    state = request.app.state
    if state.temporal is None:
        try:
            state.temporal = await connect(state.settings.temporal)
        except Exception as exc:
            raise TemporalUnavailable(
                f"Temporal at {state.settings.temporal.address} is not reachable ({exc}); nothing was changed, "
                "send the request again shortly"
            ) from exc
    return state.temporal


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadSessionDep = Annotated[AsyncSession, Depends(get_read_session)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
