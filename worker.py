"""The worker process: the composition root that wires settings, database, Temporal and activities."""

from __future__ import annotations

import asyncio
import compileall
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from activities.codes import CodeActivities
from activities.connectors import build_connector_activities
from activities.epcis import EpcisActivities
from activities.epcis_capture import EpcisCaptureActivities
from activities.hub import build_activities
from activities.mes import MesActivities, MesBridge
from activities.ncr_signals import NcrSignalActivities
from activities.ncr_sweeper import NcrSweeper
from connectors.errors import ConnectorLoadError
from connectors.registry import load_connectors
from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from core.temporal import connect
from workflows.epcis_capture import CaptureEpcisDocumentWorkflow
from workflows.epcis_subscription import EpcisDeliveryWorkflow
from workflows.erp_poll import ErpPollWorkflow
from workflows.issue_codes import IssueCodesWorkflow
from workflows.nonconformance import NonconformanceWorkflow
from workflows.recall import RecallWorkflow
from workflows.work_order import WorkOrderWorkflow

WORKFLOWS = [WorkOrderWorkflow, NonconformanceWorkflow, RecallWorkflow, IssueCodesWorkflow, ErpPollWorkflow,
             EpcisDeliveryWorkflow]
WORKFLOWS.append(CaptureEpcisDocumentWorkflow)


# every workflow type the hub runs, as a visibility query (replay checks, the admin's `tracehub check-histories`)
HUB_WORKFLOW_TYPES = "WorkflowType IN (" + ", ".join(
    f"'{w.__temporal_workflow_definition.name}'" for w in WORKFLOWS) + ")"  # type: ignore[attr-defined]


async def replay_runs(client: Client, runs: list[tuple[str, str]]) -> tuple[int, dict[str, str]]:
    """Replay each run's history (workflow id, run id) against this code, as a worker rebuilding it would: how many
    were replayed, and for each that does not replay ("workflow id (run run id)") the error, shortened. A running
    run replays up to its last completed workflow task. Reads only: nothing is started, signalled or ended."""
    from temporalio.service import RPCError, RPCStatusCode
    from temporalio.worker import Replayer

    async def histories() -> Any:
        for wf_id, run_id in runs:
            try:
                yield await client.get_workflow_handle(wf_id, run_id=run_id).fetch_history()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
                # deleted since it was listed (retention, an admin): nothing left to replay

    failures: dict[str, str] = {}
    n = 0
    replayer = Replayer(workflows=WORKFLOWS, data_converter=client.data_converter)
    async with replayer.workflow_replay_iterator(histories()) as results:
        async for r in results:
            n += 1
            if r.replay_failure is not None:
                failures[f"{r.history.workflow_id} (run {r.history.run_id})"] = str(r.replay_failure)[:400]
    return n, failures


PACKAGES = ("workflows", "activities", "connectors", "core", "domain", "api", "erp_sim")


def cache_bytecode() -> None:
    """Write the bytecode of the project's loaded modules where Python looks for it (__pycache__, or
    sys.pycache_prefix) when it is missing or stale.

    The workflow sandbox imports the workflow modules anew for every workflow run it starts or replays. With
    bytecode writing off (PYTHONDONTWRITEBYTECODE, common in containers and CI) nothing was ever cached, so
    every run compiled those modules from source: about a seventh of the worker's CPU with work orders
    arriving. Reading bytecode is never off, so writing it once here is enough. Where the tree cannot be
    written (an installed package: pip compiled it already) nothing changes."""
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and f.endswith(".py") and name.split(".", 1)[0] in PACKAGES:
            try:
                compileall.compile_file(Path(f), quiet=2)  # skips a module whose bytecode is current
            except OSError:
                pass


def build_worker(client: Client, settings: Settings, sessionmaker, *, task_queue: str | None = None) -> Worker:
    cache_bytecode()
    return Worker(
        client,
        task_queue=task_queue or settings.temporal.task_queue,
        workflows=WORKFLOWS,
        activities=build_activities(sessionmaker, resolver=settings.resolver_base_url)
        + CodeActivities(sessionmaker, resolver=settings.resolver_base_url).all()
        + build_connector_activities(sessionmaker, ncr_table=settings.ncr.table())
        + MesActivities(sessionmaker).all()
        + EpcisActivities(sessionmaker).all()
        + EpcisCaptureActivities(sessionmaker).all()
        + NcrSignalActivities(sessionmaker).all(),
        max_concurrent_activities=settings.worker.max_concurrent_activities,
        max_cached_workflows=settings.worker.max_cached_workflows,
    )


async def _connect_with_retry(settings: Settings) -> Client:
    delay = 0.5
    while True:
        try:
            return await connect(settings.temporal)
        except Exception as exc:  # noqa: BLE001 - the server may still be starting
            print(f"worker: Temporal at {settings.temporal.address} not reachable ({exc}); retrying", flush=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5)


async def sync_poll_schedules(client: Client, sessionmaker: Any, *, task_queue: str) -> None:
    """The ERP endpoints' poll Schedules as their configs say (`poll_every_s`), at start: the API keeps them in step
    with each change, this mends what changed while it could not (a database restored, a schedule deleted by hand).
    A failure is reported and the worker starts all the same."""
    from domain.endpoints import list_endpoints
    from workflows.erp_poll import sync_all_poll_schedules

    try:
        async with sessionmaker() as s:
            eps = [(e.name, e.kind, dict(e.config or {})) for e in await list_endpoints(s)]
        polled = await sync_all_poll_schedules(client, eps, task_queue=task_queue)
        if polled:
            print(f"worker: ERP poll schedules for {', '.join(polled)}", flush=True)
    except Exception as exc:  # noqa: BLE001 - polling is mended at the next start; the worker's work goes on
        print(f"worker: could not bring the ERP poll schedules in step with the endpoints: {exc}", flush=True)


async def main(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    try:
        kinds = load_connectors()  # every connector, built in or by entry point, before anything else
    except ConnectorLoadError as exc:
        raise SystemExit(f"worker: not starting: {exc}") from exc
    print(f"worker: connectors {', '.join(sorted(kinds))}", flush=True)
    engine = make_engine(settings.database.url, echo=settings.database.echo)
    client = await _connect_with_retry(settings)
    sessionmaker = make_sessionmaker(engine)
    await sync_poll_schedules(client, sessionmaker, task_queue=settings.temporal.task_queue)
    worker = build_worker(client, settings, sessionmaker)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"worker: polling task queue {settings.temporal.task_queue!r} on {settings.temporal.address}", flush=True)
    # the MES bridge runs here: it needs what the worker holds (database, Temporal client), and the
    # workflows it signals are queried from this process (activities/mes.py says more)
    async with worker, contextlib.AsyncExitStack() as extra:
        if settings.worker.mes_bridge:
            await extra.enter_async_context(MesBridge(sessionmaker, client))
        # duplicate-code NCRs whose upload committed but whose workflow did not start (the API died between):
        # idempotent, so it runs in every worker process
        await extra.enter_async_context(NcrSweeper(sessionmaker, client, task_queue=settings.temporal.task_queue,
                                                   ncr_table=settings.ncr.table()))
        await stop.wait()
    await engine.dispose()
    await asyncio.sleep(0.2)  # let the SDK finish its shutdown before the interpreter exits


if __name__ == "__main__":
    asyncio.run(main())
