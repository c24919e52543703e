"""create_app(): the HTTP API of the hub."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from api import errors
from api.routes import erp, health, inspections, ncrs, trace, work_orders
from core.db import make_engine, make_sessionmaker
from core.settings import Settings


def create_app(
    settings: Settings | None = None,
    *,
    sessionmaker: async_sessionmaker[AsyncSession] | None = None,
    temporal: Client | None = None,
) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = None
        if app.state.sessionmaker is None:
            engine = make_engine(settings.database.url, echo=settings.database.echo)
            app.state.sessionmaker = make_sessionmaker(engine)
        yield
        if engine is not None:
            await engine.dispose()

    app = FastAPI(
        title="TraceHub",
        version="0.1.0",
        description="Production-batch quality traceability: ERP events in, work orders as durable workflows, "
        "inspections, nonconformance review, codes, shipments, and trace both ways.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker
    app.state.temporal = temporal
    errors.install(app)
    for r in (health, erp, work_orders, inspections, ncrs, trace):
        app.include_router(r.router)
    return app
