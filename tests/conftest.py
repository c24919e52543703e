"""Real services for the suite: PostgreSQL or SQLite, the Temporal dev server, an in-process worker,
the ERP simulator on loopback, and the API in-process."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
import uvicorn
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.testing import WorkflowEnvironment

from api.main import create_app
from core.db import make_engine, make_sessionmaker
from core.settings import DatabaseSettings, Settings, TemporalSettings
from domain.endpoints import ensure_endpoint
from erp_sim.app import create_app as create_erp_app
from migrations import upgrade
from tests.helpers import ERP_SIM, PASSWORD, ROLE_TOKENS, SUPER_HEADERS
from worker import build_worker

ROOT = Path(__file__).resolve().parents[1]
TEMPORAL_BIN = str(Path(sys.executable).parent / "temporal")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/tracehub_test"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _database_url(tmp: Path) -> str:
    backend = os.environ.get("HUB_TEST_DB", "postgresql")
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'hub-test.db'}"
    url = make_url(os.environ.get("HUB_TEST_DATABASE_URL", DEFAULT_PG))
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    # one database per run, so two runs on one server never drop each other's data
    url = url.set(database=f"{url.database}_{os.getpid()}")
    admin = create_engine(url.set(drivername="postgresql+psycopg", database="postgres"),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = _database_url(tmp_path_factory.mktemp("db"))
    upgrade(url)
    yield url
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
        admin.dispose()


@pytest_asyncio.fixture(scope="session")
async def sessionmaker(db_url: str):
    engine = make_engine(db_url)
    yield make_sessionmaker(engine)
    await engine.dispose()


@pytest_asyncio.fixture(scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=TEMPORAL_BIN,
        data_converter=pydantic_data_converter,
        dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"],
    )
    yield env
    if os.environ.get("HUB_TEST_REPLAY_ALL", "1") != "0":
        await replay_suite_workflows(env.client)
    await env.shutdown()
    await asyncio.sleep(0.2)


# runs a test makes under a hub workflow type on purpose to not replay (tests/test_check_histories.py)
NOT_A_HUB_RUN = "not-a-hub-run-"


async def replay_suite_workflows(client: Client) -> None:
    """At the end of the session (its workers stopped), every run of the hub's workflows the suite made is replayed
    against today's code (temporalio's Replayer); the runs still open, waiting for what their tests no longer send,
    are terminated first, so each history is whole. A history that does not replay (a nondeterminism: a worker
    could not rebuild that workflow after a restart or an eviction, nor answer a query once it closed) fails the
    session, naming the run. Workflows the tests define for themselves are left out (HUB_TEST_REPLAY_ALL=0 skips
    the whole check)."""
    import contextlib

    from temporalio.service import RPCError

    from worker import HUB_WORKFLOW_TYPES, replay_runs

    t = time.monotonic()
    runs = [(w.id, w.run_id, w.status) async for w in client.list_workflows(HUB_WORKFLOW_TYPES)]
    for wf_id, run_id, status in runs:
        if status is not None and status.name == "RUNNING":
            with contextlib.suppress(RPCError):  # closed meanwhile
                await client.get_workflow_handle(wf_id, run_id=run_id).terminate("test session over")
    n, failures = await replay_runs(client, [(wf_id, run_id) for wf_id, run_id, _ in runs
                                             if not wf_id.startswith(NOT_A_HUB_RUN)])
    line = (f"replayed the suite's {n} workflow runs ({sum(1 for r in runs if r[2] and r[2].name == 'RUNNING')} "
            f"of them terminated open) in {time.monotonic() - t:.1f} s; "
            f"{len(failures)} did not replay")
    print("\n" + line, file=sys.stderr)
    logs = ROOT / "var" / "test-logs"  # beside tests/run_suites.py's logs
    logs.mkdir(parents=True, exist_ok=True)
    (logs / f"replay-{os.environ.get('HUB_TEST_DB', 'postgresql')}.txt").write_text(line + "\n")
    assert not failures, f"workflow runs whose history does not replay: {failures}"


@pytest.fixture(scope="session")
def client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture(scope="session")
def settings(db_url: str, client: Client, erp_sim: ErpSim) -> Settings:
    return Settings(
        database=DatabaseSettings(url=db_url),
        temporal=TemporalSettings(address=client.service_client.config.target_host, task_queue="tracehub-test"),
    )


class ErpSim:
    """The ERP simulator on a loopback port, which tests may stop and start again (an outage)."""

    def __init__(self, state_file: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.state_file = state_file
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        app = create_erp_app(state_file=self.state_file)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        if self.server and self.thread:
            self.server.should_exit = True
            self.thread.join(10)
            self.server = None

    def all_documents(self, doctype: str) -> list[dict]:
        """Every document of the DocType in full, from the simulator's own view (a Frappe list never has
        child tables)."""
        r = httpx.get(f"{self.url}/sim/documents", params={"doctype": doctype})
        r.raise_for_status()
        return r.json()["data"]

    def keyed(self, doctype: str, key: str) -> list[dict]:
        """The documents the hub wrote under its key `key` (custom_hub_key): more than one is a doubled document."""
        return [d for d in self.all_documents(doctype) if d.get("custom_hub_key") == key]

    def hold(self, doctype: str, key: str, seconds: float = 60.0) -> None:
        """Store the next create of `doctype` under the hub's key `key` and hold its answer until `release` (or
        for `seconds`): the caller is then in the middle of its write, which the ERP has already made."""
        httpx.post(f"{self.url}/sim/hold", json={"doctype": doctype, "key": key, "seconds": seconds}).raise_for_status()

    def held(self) -> list[dict]:
        """The creates whose answers are held now (doctype, name, key)."""
        r = httpx.get(f"{self.url}/sim/hold")
        r.raise_for_status()
        return r.json()["held"]

    def release(self) -> None:
        """Answer every held create (its caller may be gone) and disarm the holds not taken yet."""
        httpx.delete(f"{self.url}/sim/hold").raise_for_status()

    def documents(self, doctype: str) -> dict:
        """The DocType's documents by the hub's key (the ERP names them itself), or by name for documents the
        hub did not write. A hub key held by two documents fails the test: a write was doubled."""
        out: dict = {}
        for d in self.all_documents(doctype):
            key = d.get("custom_hub_key") or d["name"]
            assert key not in out, f"the ERP holds {doctype} {key} twice: {out[key]['name']} and {d['name']}"
            out[key] = d
        return out


@pytest.fixture(scope="session")
def erp_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ErpSim]:
    sim = ErpSim(tmp_path_factory.mktemp("erp") / "erp.json")
    sim.start()
    ERP_SIM["url"] = sim.url  # tests.helpers.fast_release stores each release's ERP records here first
    yield sim
    ERP_SIM.pop("url", None)
    sim.stop()


@pytest_asyncio.fixture(scope="session")
async def seeded(sessionmaker, erp_sim: ErpSim) -> None:
    async with sessionmaker() as s, s.begin():
        await ensure_endpoint(s, name="erp", kind="erpnext", replace=True, config={
            "base_url": erp_sim.url, "api_key": "tracehub", "api_secret": "simulator-secret", "timeout_s": 5})


@pytest_asyncio.fixture(scope="session")
async def worker(client: Client, settings: Settings, sessionmaker, seeded) -> AsyncIterator[None]:
    w = build_worker(client, settings, sessionmaker)
    async with w:
        yield


@pytest_asyncio.fixture(scope="session")
async def api(settings: Settings, sessionmaker, client: Client, worker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, sessionmaker=sessionmaker, temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


@pytest_asyncio.fixture(scope="session", autouse=True)
async def credentials(sessionmaker) -> None:
    from datetime import timedelta

    from domain.identity import PEOPLE_ROLES, ROLES, create_user, issue_token, login

    async with sessionmaker() as s, s.begin():
        token, _ = await issue_token(s, kind="api", name="test-suite", roles=list(ROLES), ttl=timedelta(days=1),
                                     created_by="tests")
        SUPER_HEADERS["Authorization"] = f"Bearer {token}"
        for role in ROLES:
            if role in PEOPLE_ROLES:
                await create_user(s, username=f"t-{role}", password=PASSWORD, roles=[role],
                                  full_name=f"Test {role}", actor="tests")
                ROLE_TOKENS[role], _, _ = await login(s, f"t-{role}", PASSWORD)
            else:
                ROLE_TOKENS[role], _ = await issue_token(s, kind="api", name=f"t-{role}", roles=[role],
                                                         ttl=timedelta(days=1), created_by="tests")


@pytest.fixture
def wo_number() -> str:
    return f"WO-{uuid.uuid4().hex[:8].upper()}"
