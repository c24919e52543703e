"""create_app(): the HTTP API of the hub."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from api import errors
from api.limits import BodySizeLimit, refuse_nul_characters
from api.routes import (
    auth,
    capas,
    codes,
    endpoints,
    epcis,
    erp,
    health,
    inspections,
    items,
    mes,
    ncrs,
    quality,
    recalls,
    resolver,
    supplier_returns,
    trace,
    work_orders,
)
from api.routes.resolver import ResolverFastPath
from api.security import authenticate
from core.db import FastReader, engine_of, make_engine, make_read_sessionmaker, make_sessionmaker
from core.settings import Settings
from domain.code_scans import ScanRecorder

log = logging.getLogger(__name__)


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
            app.state.read_sessionmaker = make_read_sessionmaker(engine)
            app.state.scan_recorder.sessionmaker = app.state.sessionmaker
            if settings.api.resolver_fast_path:
                app.state.fast_reader = FastReader(engine.url)
                try:
                    await app.state.fast_reader.open()
                except Exception:  # the database may still be starting: the reader connects when first used
                    log.warning("resolver fast path: could not connect yet", exc_info=True)
            app.state.trace_reader = FastReader(engine.url) if engine.url.get_backend_name() == "postgresql" else None
        # everything loaded so far (modules, the app, the metadata) lives as long as the process: keep it out of
        # the collector's full passes, which otherwise stall every request for tens of milliseconds now and then
        gc.collect()
        gc.freeze()
        yield
        await app.state.scan_recorder.close()  # the scans not written yet
        if app.state.fast_reader is not None:
            await app.state.fast_reader.close()
        if app.state.trace_reader is not None:
            await app.state.trace_reader.close()
        if engine is not None:
            await engine.dispose()

    app = FastAPI(
        title="TraceHub",
        version="0.1.0",
        description="Production-batch quality traceability: ERP events in, work orders as durable workflows, "
        "inspections, nonconformance review, codes, shipments, and trace both ways.",
        lifespan=lifespan,
        # every route is authorized through the permission matrix in api/security.py
        dependencies=[Depends(authenticate), Depends(refuse_nul_characters)],
    )
    app.state.settings = settings
    app.state.sessionmaker = sessionmaker
    # readers (ReadSessionDep) share the writers' engine and pool; the resolver's scans are written in batches
    app.state.read_sessionmaker = make_read_sessionmaker(engine_of(sessionmaker)) if sessionmaker else None
    app.state.scan_recorder = ScanRecorder(sessionmaker)
    app.state.fast_reader = FastReader(engine_of(sessionmaker).url) if sessionmaker and \
        settings.api.resolver_fast_path else None
    # traces (domain.trace) run their one statement on autocommit connections of their own (PostgreSQL)
    app.state.trace_reader = FastReader(engine_of(sessionmaker).url) if sessionmaker and \
        engine_of(sessionmaker).url.get_backend_name() == "postgresql" else None
    app.state.temporal = temporal
    errors.install(app)
    app.add_middleware(BodySizeLimit, default=settings.api.max_body_bytes,
                       routes={("POST", "/epcis/capture"): settings.api.max_capture_body_bytes})
    app.add_middleware(ResolverFastPath)  # outermost: phone scans skip routing when they can
    for r in (health, auth, erp, work_orders, inspections, ncrs, trace, endpoints, codes, resolver, epcis, recalls,
              quality):
        app.include_router(r.router)
    app.include_router(mes.router)
    app.include_router(capas.router)
    app.include_router(supplier_returns.router)
    app.include_router(items.router)
    return app
