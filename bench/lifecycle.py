"""Lifecycle benchmark of the hub: work orders end to end, a bare-workflow baseline, and worker memory.

    .venv/bin/python bench/lifecycle.py [--work-orders 200] [--open 1000] [--db sqlite|postgresql]
                                        [--driver http|temporal] [--concurrency 50] [--bare 200] ...

Everything runs for real on loopback, each piece in its own process as in production:
- the Temporal dev server (`temporal server start-dev`, SQLite file in a temp dir, WAL),
- the ERP simulator (erp_sim.app under uvicorn, in memory),
- the hub worker (`python worker.py`, configured through HUB_* variables like in production),
- the hub API (api.main:create_app under uvicorn, like `tracehub api`),
- a bare worker (this file with --bare-worker: one trivial workflow and one trivial activity, same SDK,
  same sandbox, same pydantic data converter, same max_concurrent_activities, its own task queue).

Phases (the warm-up, 3 work orders and 5 bare workflows, is left out of every figure):
2a. M/2 bare workflows, `--concurrency` at a time.
1.  N work orders through the whole lifecycle, `--concurrency` at a time: ERP release event (with its
    purchase receipt) -> IQC results in spec -> operation reports 10 and 20 -> final inspection results;
    every `--fail-every`-th work order fails final inspection and is decided through the NCR update
    (confirm by qa_supervisor, then use_as_is by mrb_engineering and, where the two-person MRB asks for
    it, by mrb_production) -> codes -> shipment to the ERP simulator -> completed. Wall time is from the
    first release to the last workflow close time.
2b. the other M/2 bare workflows (the halves bracket phase 1: the Temporal server slows as it fills).
3.  `--open` work orders driven until each waits for a reviewer on an open NCR (`--open-via iqc`: the
    IQC results fail; `final`: IQC passes, both operations, final inspection fails); then the RSS of
    the worker process (with its children) is measured.

Drivers (field "driver" in the output):
- "http" (default for phase 1): the floor's way, through the hub's HTTP API: POST /api/erp/events,
  GET /api/work-orders/{n} to see what the work order waits for (the workflow's status query), POST
  /api/inspections/{i}/results, POST /api/work-orders/{n}/operations, GET /api/ncrs/{ncr} and POST
  /api/ncrs/{ncr}/decisions. An HTTP 5xx is counted (`http_5xx_resent`) and sent again.
- "temporal" (default for phase 3, `--open-driver`): the same inputs straight to Temporal (start, the
  signals, the NCR `decide` update), bypassing the API process; progress is read from
  DescribeWorkflowExecution (the Temporal server alone) instead of the status query (a workflow
  activation on the worker per poll). Use `--driver temporal` to tell the API's cost from the rest.
Both wait for a work order's completion with a long poll on the workflow result (measurement machinery,
not floor traffic: it costs neither the API nor the worker).

stdout carries only JSON lines, one per metric: {"metric": ..., "value": ..., "unit": ..., ...}.
Progress, the load average, the CPU each process used per phase and the activity mix go to stderr.

Module level imports only the standard library and temporalio: the bare workflow below is loaded by the
Temporal sandbox as `bench.lifecycle`, and must stay light there.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow

# --- the bare baseline: one workflow, one trivial activity ---------------------------------------------


@activity.defn(name="bench_noop")
async def bench_noop(x: int) -> int:
    return x


@workflow.defn(name="BenchBareWorkflow")
class BenchBareWorkflow:
    @workflow.run
    async def run(self, x: int) -> int:
        return await workflow.execute_activity(
            "bench_noop", x, start_to_close_timeout=timedelta(seconds=30), result_type=int
        )


BARE_TASK_QUEUE = "bench-bare"
HUB_TASK_QUEUE = "tracehub-bench"
QUANTITY = 20
# phase 1's release events, their ERP records stored in the simulator first (the drivers send these)
EVENTS: dict[str, dict[str, Any]] = {}
IN_SPEC_IQC = [{"characteristic": "hardness", "values": [30.1]}]
OUT_SPEC_IQC = [{"characteristic": "hardness", "values": [35.0]}]
IN_SPEC_FINAL = [{"characteristic": "outer diameter", "values": [25.0, 25.01, 24.99]}]
OUT_SPEC_FINAL = [{"characteristic": "outer diameter", "values": [25.0, 25.2, 24.99]}]
ROOT = Path(__file__).parents[1]  # made absolute by main() (no filesystem calls here: the sandbox loads this)


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def log_load(what: str) -> None:
    """The machine's load: other work on it skews every figure here."""
    one, five, _ = os.getloadavg()
    log(f"{what}: load average {one:.2f} (1 min) {five:.2f} (5 min) on {os.cpu_count()} CPUs")


def emit(metric: str, value: Any, unit: str, **extra: Any) -> None:
    print(json.dumps({"metric": metric, "value": value, "unit": unit, **extra}), flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- child processes ----------------------------------------------------------------------------------


class Children:
    """Every subprocess we start, each in its own session; stopped in reverse order, by pid."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        atexit.register(self.stop_all)  # a last resort: stop_all is also called in bench()'s finally

    def start(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        logfile = self.logdir / f"{name}.log"
        with open(logfile, "wb") as out:
            p = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, p, logfile))
        log(f"started {name} (pid {p.pid})")
        return p

    def check_alive(self) -> None:
        for name, p, logfile in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}:\n{tail(logfile)}")

    def stop_all(self) -> None:
        while self.procs:
            name, p, _ = self.procs.pop()
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)  # its own session: the group id is its pid
                except ProcessLookupError:
                    pass
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    log(f"{name} did not stop in 15 s: killing it")
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(5)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by each child (with its children) and by this process."""
        import psutil

        out = {}
        for name, p, _ in self.procs + [("bench", None, None)]:
            try:
                proc = psutil.Process(p.pid if p else os.getpid())
                t = proc.cpu_times()
                total = t.user + t.system
                if p is not None:
                    for c in proc.children(recursive=True):
                        ct = c.cpu_times()
                        total += ct.user + ct.system
                out[name] = total
            except psutil.Error:
                pass
        return out

    def log_cpu(self, since: dict[str, float], wall: float) -> None:
        now = self.cpu_seconds()
        parts = [f"{k} {now[k] - since.get(k, 0):.1f}s ({100 * (now[k] - since.get(k, 0)) / wall:.0f}%)"
                 for k in now]
        log("  CPU: " + ", ".join(parts))

    def dump_logs(self) -> None:
        for name, _, logfile in self.procs:
            t = tail(logfile, 15)
            if t.strip():
                log(f"--- last lines of {name} ---\n{t}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --- database -----------------------------------------------------------------------------------------


DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/tracehub_bench"
BENCH_PG_DATABASE = "tracehub_bench_lifecycle"


def prepare_database(kind: str, tmp: Path, db_url: str | None = None) -> str:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from migrations import upgrade

    if kind == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp / 'hub.db'}"
    else:
        if db_url:
            u = make_url(db_url)
        else:
            # the server of HUB_TEST_DATABASE_URL (or the local default), but a database of our own: the
            # test suite's database must not be dropped under it, nor bench/trace.py's `tracehub_bench`
            u = make_url(os.environ.get("HUB_TEST_DATABASE_URL", DEFAULT_PG)).set(database=BENCH_PG_DATABASE)
        if u.drivername in ("postgresql", "postgres"):
            u = u.set(drivername="postgresql+psycopg")
        admin = create_engine(u.set(drivername="postgresql+psycopg", database="postgres"),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
            c.execute(text(f'CREATE DATABASE "{u.database}"'))
        admin.dispose()
        url = u.render_as_string(hide_password=False)
    upgrade(url)
    return url


BENCH_PASSWORD = "bench: correct horse battery staple"
REVIEWERS = {"qa_supervisor": "bench-qa", "mrb_engineering": "bench-mrb-eng", "mrb_production": "bench-mrb-prod"}


async def seed_hub(db_url: str, erp_url: str) -> dict[str, str]:
    """The ERP endpoint (the simulator), API tokens for the systems (ERP, MES, gauge) and the reviewers'
    accounts, as an admin sets them up. Returns the tokens by role."""
    from datetime import timedelta

    from core.db import make_engine, make_sessionmaker
    from domain.endpoints import ensure_endpoint

    engine = make_engine(db_url)
    tokens: dict[str, str] = {}
    try:
        async with make_sessionmaker(engine)() as s, s.begin():
            await ensure_endpoint(s, name="erp", kind="erpnext", replace=True, config={
                "base_url": erp_url, "api_key": "tracehub", "api_secret": "simulator-secret", "timeout_s": 10})
            try:
                from domain.identity import create_user, issue_token
            except ImportError:  # a hub without authentication
                return tokens
            for role in ("erp", "mes", "gauge"):
                tokens[role], _ = await issue_token(s, kind="api", name=f"bench-{role}", roles=[role],
                                                    ttl=timedelta(days=1), created_by="bench")
            for role, username in REVIEWERS.items():
                await create_user(s, username=username, password=BENCH_PASSWORD, roles=[role],
                                  full_name=f"Bench {role}", actor="bench")
    finally:
        await engine.dispose()
    return tokens


# --- services -----------------------------------------------------------------------------------------


async def start_temporal(children: Children, tmp: Path) -> str:
    from temporalio.client import Client

    port = free_port()
    temporal = str(Path(sys.executable).parent / "temporal")
    children.start("temporal", [
        temporal, "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port),
        "--ui-port", str(free_port()), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
        "--db-filename", str(tmp / "temporal.db"),
        "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal", "--log-level", "warn",
    ])
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        children.check_alive()
        try:
            await Client.connect(address)
            return address
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def wait_http(children: Children, url: str, headers: dict[str, str] | None = None, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as c:
        while True:
            children.check_alive()
            try:
                if (await c.get(url, headers=headers)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer 200 within {timeout} s")
            await asyncio.sleep(0.2)


async def wait_log(children: Children, name: str, needle: str, timeout: float = 60) -> None:
    path = children.logdir / f"{name}.log"
    deadline = time.monotonic() + timeout
    while needle not in (path.read_text(errors="replace") if path.exists() else ""):
        children.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not log {needle!r} within {timeout} s:\n{tail(path)}")
        await asyncio.sleep(0.1)


def hub_env(db_url: str, address: str) -> dict[str, str]:
    return {"HUB_DATABASE__URL": db_url, "HUB_TEMPORAL__ADDRESS": address,
            "HUB_TEMPORAL__TASK_QUEUE": HUB_TASK_QUEUE, "PYTHONUNBUFFERED": "1"}


def rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    total = p.memory_info().rss
    for c in p.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return round(total / 2**20, 1)


# --- drivers ------------------------------------------------------------------------------------------


class Refused(RuntimeError):
    pass


def _op_report(number: str, seq: int) -> dict:
    return {
        "report_id": f"{number}-op{seq}", "seq": seq,
        "equipment": {10: "LATHE-01", 20: "FURNACE-02"}[seq], "operator": "op-7", "shift": "A",
        "started_at": "2026-11-21T08:00:00Z", "ended_at": "2026-11-21T09:00:00Z",
        "consumed": [{"lot": f"{number}-M1", "quantity": 10.0}] if seq == 10 else [],
        "parameters": {"spindle_rpm": 1200} if seq == 10 else {"temperature_c": 860, "soak_min": 45},
        "good_quantity": QUANTITY, "scrap_quantity": 0,
    }


class Driver:
    """Moves one work order through the floor's steps; subclasses say how (HTTP API or Temporal)."""

    name = "?"

    def __init__(self, client: Any, poll: float, step_timeout: float) -> None:
        self.client = client  # temporalio Client (both drivers await completion through it)
        self.poll = poll
        self.step_timeout = step_timeout
        self.requests = 0
        self.errors: dict[int, int] = {}  # HTTP 5xx answers by status, sent again

    async def _until(self, fetch, pred, what: str) -> Any:
        """Poll `fetch` until `pred` holds for its answer; the interval grows from `poll` to 4x `poll`."""
        deadline = time.monotonic() + self.step_timeout
        delay = self.poll
        last: Any = None
        while True:
            self.requests += 1
            last = await fetch()
            if last is not None and pred(last):
                return last
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}; last: {last}")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll * 4)

    async def run(self, number: str, *, fail: str | None, stop_at_reviewer: bool = False) -> None:
        """One work order; `fail` = "iqc" or "final" makes that inspection fail (an NCR), None passes all."""
        await self.release(number)
        iqc = await self.wait_inspection(number, "iqc")
        await self.results(number, iqc, OUT_SPEC_IQC if fail == "iqc" else IN_SPEC_IQC)
        if fail != "iqc":
            for seq in (10, 20):
                await self.wait_operation(number, seq)
                await self.report(number, _op_report(number, seq))
            fin = await self.wait_inspection(number, "final")
            await self.results(number, fin, OUT_SPEC_FINAL if fail == "final" else IN_SPEC_FINAL)
        if fail:
            ncr = f"NCR-{number}-1"  # the work order names its NCRs NCR-<work order>-<n>
            await self.wait_ncr_open(ncr)
            if stop_at_reviewer:
                return
            if fail == "iqc":
                raise NotImplementedError("the lifecycle phase fails final inspection only")
            await self.decide(ncr, "confirm", "qa_supervisor", "diameter confirmed on CMM")
            st = await self.decide(ncr, "use_as_is", "mrb_engineering", "customer concession C-12")
            if st.get("state") == "mrb":
                # two-person MRB: a concession also needs the production member's signature
                await self.decide(ncr, "use_as_is", "mrb_production", "customer concession C-12")

    async def wait_done(self, number: str) -> None:
        # a long poll on the result: measurement machinery, costs neither the API nor the worker
        try:
            await asyncio.wait_for(self.client.get_workflow_handle(f"work-order-{number}").result(),
                                   self.step_timeout)
        except TimeoutError:
            raise TimeoutError(f"work order {number} did not complete within {self.step_timeout} s of its "
                               "last input") from None

    # implemented by the drivers
    async def release(self, number: str) -> None: ...
    async def wait_inspection(self, number: str, kind: str) -> str: ...
    async def wait_operation(self, number: str, seq: int) -> None: ...
    async def results(self, number: str, inspection: str, measurements: list[dict]) -> None: ...
    async def report(self, number: str, report: dict) -> None: ...
    async def wait_ncr_open(self, ncr: str) -> None: ...
    async def decide(self, ncr: str, action: str, role: str, reason: str) -> dict: ...
    async def close(self) -> None: ...


class HttpDriver(Driver):
    """Through the hub's HTTP API, as ERP webhooks, inspectors, the MES and reviewers do: what to do next is
    read from GET /api/work-orders/{n} (the workflow's status query), as the floor's screens do."""

    name = "http"

    def __init__(self, client: Any, poll: float, step_timeout: float, api_url: str, concurrency: int,
                 tokens: dict[str, str]) -> None:
        import httpx

        super().__init__(client, poll, step_timeout)
        self.http = httpx.AsyncClient(
            base_url=api_url, timeout=60,
            limits=httpx.Limits(max_connections=2 * concurrency, max_keepalive_connections=2 * concurrency))
        self.tokens = dict(tokens)  # by role: the systems' API tokens, then the reviewers' session tokens

    async def login(self) -> None:
        """The reviewers log in (decisions are signed by a person, with a session of their own)."""
        if not self.tokens:
            return
        for role, username in REVIEWERS.items():
            r = await self._call("POST", "/api/auth/login", None, ok=(200,),
                                 body={"username": username, "password": BENCH_PASSWORD})
            self.tokens[role] = r["token"]

    async def _call(self, method: str, path: str, role: str | None, *, ok: tuple[int, ...],
                    retry: tuple[int, ...] = (), body: Any = None) -> Any:
        """One request as `role`; `retry` statuses (and 5xx) are sent again after a pause until step_timeout."""
        deadline = time.monotonic() + self.step_timeout
        delay = self.poll
        headers = {"Authorization": f"Bearer {self.tokens[role]}"} if role and role in self.tokens else None
        while True:
            self.requests += 1
            r = await self.http.request(method, path, json=body, headers=headers)
            if r.status_code in ok:
                return r.json()
            if r.status_code >= 500:
                # the hub failed this request (e.g. SQLite "database is locked" after its 30 s busy timeout):
                # count it, and send it again as a floor client would (the hub deduplicates re-sends)
                self.errors[r.status_code] = self.errors.get(r.status_code, 0) + 1
                log(f"  {method} {path} -> {r.status_code} {r.text[:200]!r}: sending it again")
            if r.status_code in retry or r.status_code >= 500:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{method} {path}: still {r.status_code} {r.text[:300]}")
                await asyncio.sleep(delay)
                delay = min(delay * 1.5, self.poll * 4)
                continue
            raise Refused(f"{method} {path} -> {r.status_code} {r.text[:500]}")

    async def _status(self, number: str) -> dict | None:
        self.requests -= 1  # counted by _until
        return (await self._call("GET", f"/api/work-orders/{number}", "mes", ok=(200,))).get("status")

    async def release(self, number: str) -> None:
        from erp_sim.app import release_event

        # 200: a re-sent event already accepted (after a 5xx)
        await self._call("POST", "/api/erp/events", "erp", ok=(200, 202),
                         body=EVENTS.get(number) or release_event(number, QUANTITY))

    async def wait_inspection(self, number: str, kind: str) -> str:
        st = await self._until(lambda: self._status(number),
                               lambda s: any(p["kind"] == kind for p in s["pending_inspections"]), f"{kind} inspection")
        return next(p["number"] for p in st["pending_inspections"] if p["kind"] == kind)

    async def wait_operation(self, number: str, seq: int) -> None:
        await self._until(lambda: self._status(number), lambda s: s["expected_operation"] == seq, f"operation {seq}")

    async def results(self, number: str, inspection: str, measurements: list[dict]) -> None:
        await self._call("POST", f"/api/inspections/{inspection}/results", "gauge", ok=(202,),
                         body={"inspector": "gauge-1", "measurements": measurements})

    async def report(self, number: str, report: dict) -> None:
        await self._call("POST", f"/api/work-orders/{number}/operations", "mes", ok=(202,), body=report)

    async def wait_ncr_open(self, ncr: str) -> None:
        # recorded by the NCR's first activity; the QA supervisor looks it up
        await self._call("GET", f"/api/ncrs/{ncr}", "qa_supervisor", ok=(200,), retry=(404,))

    async def decide(self, ncr: str, action: str, role: str, reason: str) -> dict:
        # who decides, and in which role, comes from the login; the password signs the decision
        body = {"action": action, "reason": reason, "password": BENCH_PASSWORD}
        if not self.tokens:  # a hub without authentication takes reviewer and role from the body
            body = {"action": action, "reviewer": REVIEWERS[role], "role": role, "reason": reason}
        return await self._call("POST", f"/api/ncrs/{ncr}/decisions", role, ok=(200,), body=body)

    async def close(self) -> None:
        await self.http.aclose()


class TemporalDriver(Driver):
    """The same inputs straight to Temporal (start_workflow, signals, the NCR `decide` update): no API process,
    no inbox row, no API-side checks. What to do next is not read from the status query (which would cost
    the worker a workflow activation per poll) but from DescribeWorkflowExecution, served by the Temporal
    server alone: a work order between two floor inputs always has a pending activity or workflow task, so
    none pending means it waits for the next input (a new child NCR workflow has a moment with neither
    before its first workflow task is scheduled: its history length tells that moment apart). Inspection numbers are the hub's: IQC-<lot>,
    FIN-<work order>-<attempt>."""

    name = "temporal"

    async def _quiet(self, wf_id: str) -> bool | None:
        from temporalio.client import WorkflowExecutionStatus
        from temporalio.service import RPCError, RPCStatusCode

        try:
            d = await self.client.get_workflow_handle(wf_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return None
            raise
        if d.status != WorkflowExecutionStatus.RUNNING:
            raise Refused(f"{wf_id} is {d.status.name if d.status else '?'}")
        raw = d.raw_description
        # history_length > 1: a child workflow exists for a moment with no workflow task scheduled yet
        return (raw.workflow_execution_info.history_length > 1 and not raw.pending_activities
                and not raw.HasField("pending_workflow_task"))

    async def _wait_quiet(self, wf_id: str, what: str) -> None:
        await self._until(lambda: self._quiet(wf_id), bool, what)

    async def release(self, number: str) -> None:
        from activities.models import WorkOrderInput
        from erp_sim.app import release_event

        self.requests += 1
        await self.client.start_workflow(
            "WorkOrderWorkflow",
            WorkOrderInput.model_validate((EVENTS.get(number) or release_event(number, QUANTITY))["work_order"]),
            id=f"work-order-{number}", task_queue=HUB_TASK_QUEUE)

    async def wait_inspection(self, number: str, kind: str) -> str:
        await self._wait_quiet(f"work-order-{number}", f"{kind} inspection of {number}")
        return f"IQC-{number}-M1" if kind == "iqc" else f"FIN-{number}-1"

    async def wait_operation(self, number: str, seq: int) -> None:
        await self._wait_quiet(f"work-order-{number}", f"operation {seq} of {number}")

    async def results(self, number: str, inspection: str, measurements: list[dict]) -> None:
        from activities.models import InspectionResultInput

        self.requests += 1
        await self.client.get_workflow_handle(f"work-order-{number}").signal(
            "submit_inspection", InspectionResultInput.model_validate(
                {"inspection": inspection, "results": {"inspector": "inspector-1", "measurements": measurements}}))

    async def report(self, number: str, report: dict) -> None:
        from activities.models import OperationReport

        self.requests += 1
        await self.client.get_workflow_handle(f"work-order-{number}").signal(
            "report_operation", OperationReport.model_validate(report))

    async def wait_ncr_open(self, ncr: str) -> None:
        # The API takes decisions only on an NCR it has a record of (written by the NCR's first activity).
        # Waiting for the same here also keeps updates out of the NCR's very first workflow task, where
        # NonconformanceWorkflow.decide would trip on `assert self.inp is not None` (run() not begun yet).
        await self._wait_quiet(f"ncr-{ncr}", f"{ncr} recorded")

    async def decide(self, ncr: str, action: str, role: str, reason: str) -> dict:
        from activities.models import NcrDecision

        self.requests += 1
        return await self.client.get_workflow_handle(f"ncr-{ncr}").execute_update(
            "decide", NcrDecision(action=action, reviewer=REVIEWERS[role], role=role, reason=reason), result_type=dict)


# --- phases -------------------------------------------------------------------------------------------


async def run_many(items: list[Any], concurrency: int, fn) -> list[Any]:
    """fn(x) for every item, `concurrency` at a time; the first failure cancels the rest (and is raised)."""
    sem = asyncio.Semaphore(concurrency)

    async def one(x: Any) -> Any:
        async with sem:
            return await fn(x)

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(x)) for x in items]
    except BaseExceptionGroup as eg:
        raise eg.exceptions[0] from None
    return [t.result() for t in tasks]


async def close_time(client: Any, wf_id: str) -> float:
    d = await client.get_workflow_handle(wf_id).describe()
    return d.close_time.timestamp()


async def count_activities(client: Any, wf_ids: list[str], concurrency: int = 20) -> dict[str, Any]:
    """Completed activities (total and by type) and retried attempts, from the workflow histories; local activities
    (run in the worker, a marker in the history: no activity task on the server) counted apart, by type too."""
    from collections import Counter

    from temporalio.api.enums.v1 import EventType

    by_type: Counter[str] = Counter()
    local_by_type: Counter[str] = Counter()
    retries = 0

    async def one(wf_id: str) -> None:
        nonlocal retries
        h = await client.get_workflow_handle(wf_id).fetch_history()
        scheduled: dict[int, str] = {}
        for e in h.events:
            if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                m = e.marker_recorded_event_attributes
                if m.marker_name == "core_local_activity" and m.details["data"].payloads:
                    data = json.loads(m.details["data"].payloads[0].data)
                    local_by_type[data.get("activity_type", "?")] += 1
                    retries += max(0, int(data.get("attempt") or 1) - 1)
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled[e.event_id] = e.activity_task_scheduled_event_attributes.activity_type.name
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                by_type[scheduled.get(e.activity_task_completed_event_attributes.scheduled_event_id, "?")] += 1
            elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                retries += max(0, e.activity_task_started_event_attributes.attempt - 1)

    await run_many(wf_ids, concurrency, one)
    return {"total": sum(by_type.values()), "retries": retries, "by_type": dict(by_type.most_common()),
            "local": sum(local_by_type.values()), "local_by_type": dict(local_by_type.most_common())}


async def lifecycle_phase(driver: Driver, client: Any, numbers: list[str], fail_every: int,
                          concurrency: int) -> dict[str, Any]:
    failing = {n for i, n in enumerate(numbers) if fail_every and i % fail_every == fail_every - 1}
    started: dict[str, float] = {}
    progress = {"done": 0}

    async def one(number: str) -> None:
        started[number] = time.time()
        await driver.run(number, fail="final" if number in failing else None)
        await driver.wait_done(number)
        progress["done"] += 1
        if progress["done"] % max(1, len(numbers) // 10) == 0:
            log(f"  {progress['done']}/{len(numbers)} work orders completed")

    t0 = time.time()
    await run_many(numbers, concurrency, one)
    t_end_seen = time.time()
    closes = await run_many([f"work-order-{n}" for n in numbers], 20, lambda w: close_time(client, w))
    wall = max(closes) - t0
    results = await run_many([f"work-order-{n}" for n in numbers], 20,
                             lambda w: client.get_workflow_handle(w, result_type=dict).result())
    bad = [r for r in results if r.get("status") != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} work orders did not complete as expected, e.g. {bad[0]}")
    lat = sorted(c - started[n] for c, n in zip(closes, numbers, strict=True))
    wf_ids = [f"work-order-{n}" for n in numbers] + [f"ncr-NCR-{n}-1" for n in sorted(failing)]
    acts = await count_activities(client, wf_ids)
    return {"wall": wall, "seen_wall": t_end_seen - t0, "activities": acts["total"], "retries": acts["retries"],
            "by_type": acts["by_type"], "local": acts["local"], "local_by_type": acts["local_by_type"],
            "failing": len(failing), "lat_p50": statistics.median(lat), "lat_p95": lat[int(0.95 * (len(lat) - 1))]}


async def bare_phase(client: Any, ids: list[str], concurrency: int) -> dict[str, Any]:
    async def one(wf_id: str) -> None:
        await client.execute_workflow("BenchBareWorkflow", 1, id=wf_id, task_queue=BARE_TASK_QUEUE, result_type=int)

    t0 = time.time()
    await run_many(ids, concurrency, one)
    closes = await run_many(ids, 20, lambda w: close_time(client, w))
    acts = await count_activities(client, ids)
    return {"wall": max(closes) - t0, "activities": acts["total"], "retries": acts["retries"]}


async def open_phase(driver: Driver, numbers: list[str], concurrency: int, via: str) -> float:
    progress = {"n": 0}

    async def one(number: str) -> None:
        await driver.run(number, fail=via, stop_at_reviewer=True)
        progress["n"] += 1
        if progress["n"] % max(1, len(numbers) // 10) == 0:
            log(f"  {progress['n']}/{len(numbers)} work orders wait for a reviewer")

    t0 = time.monotonic()
    await run_many(numbers, concurrency, one)
    return time.monotonic() - t0


async def confirm_waiting(client: Any, numbers: list[str]) -> None:
    """Every open work order is in nonconformance review with its NCR open and waiting for a reviewer."""
    async def one(number: str) -> bool:
        ncr = await client.get_workflow_handle(f"ncr-NCR-{number}-1").query("status", result_type=dict)
        return ncr["state"] == "open" and bool(ncr["waiting_for"])

    sample = numbers[:: max(1, len(numbers) // 50)]  # queries replay evicted workflows: check a sample
    ok = await run_many(sample, 10, one)
    if not all(ok):
        raise RuntimeError("some open work orders are not waiting for a reviewer")
    running_wo = await client.count_workflows('WorkflowType="WorkOrderWorkflow" AND ExecutionStatus="Running"')
    running_ncr = await client.count_workflows('WorkflowType="NonconformanceWorkflow" AND ExecutionStatus="Running"')
    log(f"running: {running_wo.count} work orders, {running_ncr.count} NCRs (sample of {len(sample)} checked)")


# --- main ---------------------------------------------------------------------------------------------


async def bench(args: argparse.Namespace) -> None:
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    tmp = Path(tempfile.mkdtemp(prefix="tracehub-bench-"))
    children = Children(tmp)
    driver: Driver | None = None
    ok = False
    t_start = time.monotonic()
    log(f"temp dir {tmp}")
    try:
        db_url = prepare_database(args.db, tmp, args.db_url)
        log(f"database {args.db}: migrated")
        address = await start_temporal(children, tmp)
        log(f"Temporal dev server at {address}")
        erp_port = free_port()
        children.start("erp_sim", [sys.executable, "-m", "uvicorn", "--factory", "erp_sim.app:create_app",
                                   "--host", "127.0.0.1", "--port", str(erp_port), "--log-level", "warning",
                                   "--no-access-log", "--lifespan", "off"])
        erp_url = f"http://127.0.0.1:{erp_port}"
        await wait_http(children, f"{erp_url}/api/method/frappe.auth.get_logged_user",
                        headers={"Authorization": "token tracehub:simulator-secret"})
        tokens = await seed_hub(db_url, erp_url)
        worker = children.start("worker", [sys.executable, "worker.py"], env=hub_env(db_url, address))
        children.start("bare_worker", [sys.executable, str(Path(__file__).resolve()), "--bare-worker", address],
                       env={"PYTHONUNBUFFERED": "1"})
        api_port = free_port()
        if "http" in (args.driver, args.open_driver):
            children.start("api", [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app",
                                   "--host", "127.0.0.1", "--port", str(api_port), "--log-level", "warning",
                                   "--no-access-log"], env=hub_env(db_url, address))
            await wait_http(children, f"http://127.0.0.1:{api_port}/health/ready")
        await wait_log(children, "worker", "worker: polling")
        await wait_log(children, "bare_worker", "bare worker: polling")

        client = await Client.connect(address, data_converter=pydantic_data_converter)
        if args.driver == "http":
            driver = HttpDriver(client, args.poll, args.step_timeout, f"http://127.0.0.1:{api_port}",
                                args.concurrency, tokens)
            await driver.login()
        else:
            driver = TemporalDriver(client, args.poll, args.step_timeout)

        # warm-up: imports, sandbox module caches, connection pools (not measured)
        log_load("before the warm-up")
        log("warm-up")
        await lifecycle_phase(driver, client, ["WARM-1", "WARM-2", "WARM-3"], 3, 3)
        await bare_phase(client, [f"bare-warm-{i}" for i in range(5)], 5)

        # the bare baseline runs in two halves, just before and just after the hub phase, so that both
        # see the same Temporal server (its database grows and its background work changes over a run)
        m = args.bare
        halves = [m // 2, m - m // 2]
        bare_runs = []

        async def bare_half(k: int) -> None:
            ids = [f"bare-{k}-{i}" for i in range(halves[k])]
            log(f"phase 2{'ab'[k]}: {len(ids)} bare workflows, {args.concurrency} at a time")
            cpu0, w0 = children.cpu_seconds(), time.monotonic()
            r = await bare_phase(client, ids, args.concurrency)
            children.log_cpu(cpu0, time.monotonic() - w0)
            log(f"  wall {r['wall']:.2f} s, {r['activities']} activities, {len(ids) / r['wall']:.1f} workflows/s")
            bare_runs.append(r)

        await bare_half(0)

        n = args.work_orders
        # the ERP's own records of phase 1's work orders (Work Order, Purchase Receipt, Batch), as a real ERP has
        # them before it sends the release: the hub's consumption entries then name batches the ERP knows
        import httpx

        from erp_sim.app import release_event

        numbers = [f"LC-{i:05d}" for i in range(1, n + 1)]
        EVENTS.update({x: release_event(x, QUANTITY) for x in numbers})
        async with httpx.AsyncClient(base_url=erp_url, timeout=60) as erp:
            (await erp.post("/sim/documents", json=[EVENTS[x] for x in numbers])).raise_for_status()
        log_load("before phase 1")
        log(f"phase 1: {n} work orders through the lifecycle, {args.concurrency} at a time, driver {driver.name}")
        driver.requests, driver.errors = 0, {}
        cpu0, w0 = children.cpu_seconds(), time.monotonic()
        hub = await lifecycle_phase(driver, client, numbers, args.fail_every, args.concurrency)
        hub_requests = driver.requests
        children.log_cpu(cpu0, time.monotonic() - w0)
        children.check_alive()
        rss_after_lifecycle = rss_mb(worker.pid)
        log(f"  wall {hub['wall']:.2f} s, {hub['activities']} activities, {hub['retries']} retried attempts, "
            f"{hub_requests} driver requests, latency p50 {hub['lat_p50']:.2f} s p95 {hub['lat_p95']:.2f} s")
        log(f"  activities by type: {hub['by_type']}")
        log(f"  local activities by type: {hub['local_by_type']}")

        await bare_half(1)
        bare = {"wall": sum(r["wall"] for r in bare_runs), "activities": sum(r["activities"] for r in bare_runs)}

        common = {"db": args.db, "driver": driver.name, "work_orders": n}
        emit("work_orders", n, "count", **common)
        emit("db", args.db, "backend", **common)
        emit("work_orders_per_s", round(n / hub["wall"], 2), "work_orders/s", **common,
             concurrency=args.concurrency, wall_s=round(hub["wall"], 2), failing_final=hub["failing"],
             latency_p50_s=round(hub["lat_p50"], 2), latency_p95_s=round(hub["lat_p95"], 2),
             driver_requests=hub_requests, http_5xx_resent=sum(driver.errors.values()))
        emit("bare_workflows_per_s", round(m / bare["wall"], 2), "workflows/s", db=args.db, workflows=m,
             concurrency=args.concurrency, wall_s=round(bare["wall"], 2),
             halves_per_s=[round(h / r["wall"], 2) for h, r in zip(halves, bare_runs, strict=True)])
        emit("activities_per_work_order", round(hub["activities"] / n, 2), "activities", **common,
             total=hub["activities"], retried_attempts=hub["retries"])
        # local activities (a work order's stage writes) cost the Temporal server no activity task: counted apart,
        # and left out of cost_per_activity_vs_bare_ratio, whose unit is the server-side activity of the bare workflow
        emit("local_activities_per_work_order", round(hub["local"] / n, 2), "activities", **common,
             total=hub["local"], by_type=hub["local_by_type"])
        hub_cost = hub["wall"] / hub["activities"]
        bare_cost = bare["wall"] / bare["activities"]
        emit("cost_per_activity_vs_bare_ratio", round(hub_cost / bare_cost, 2), "ratio", **common,
             hub_ms_per_activity=round(1000 * hub_cost, 2), bare_ms_per_activity=round(1000 * bare_cost, 2),
             ratio_counting_local=round(hub["wall"] / (hub["activities"] + hub["local"]) / bare_cost, 2),
             target="<= 1.5")
        emit("worker_rss_mb_after_lifecycle", rss_after_lifecycle, "MB", **common)

        opened = args.open
        rss_open = None
        open_wall = 0.0
        if opened:
            log_load("before phase 3")
            log(f"phase 3: {opened} work orders up to an open NCR ({args.open_via} inspection failed) waiting for a "
                f"reviewer, {args.open_concurrency} at a time, driver {args.open_driver}")
            numbers = [f"OPEN-{i:05d}" for i in range(1, opened + 1)]
            if args.open_driver == driver.name:
                open_driver = driver
            elif args.open_driver == "http":
                open_driver = HttpDriver(client, args.open_poll, args.step_timeout, f"http://127.0.0.1:{api_port}",
                                         args.open_concurrency, tokens)
                await open_driver.login()
            else:
                open_driver = TemporalDriver(client, args.open_poll, args.step_timeout)
            open_driver.poll = args.open_poll
            open_driver.requests = 0
            cpu0, w0 = children.cpu_seconds(), time.monotonic()
            open_wall = await open_phase(open_driver, numbers, args.open_concurrency, args.open_via)
            children.log_cpu(cpu0, time.monotonic() - w0)
            log(f"  {open_driver.requests} driver requests")
            if open_driver is not driver:
                await open_driver.close()
            await confirm_waiting(client, numbers)
            await asyncio.sleep(1.0)  # let the worker settle (no task in flight)
            children.check_alive()
            rss_open = max(rss_mb(worker.pid) for _ in range(3))
            log_load("after phase 3")
            log(f"  {opened} open in {open_wall:.1f} s; worker RSS {rss_open} MB")

        if rss_open is not None:
            emit("worker_rss_mb_1000_open" if opened == 1000 else f"worker_rss_mb_{opened}_open", rss_open, "MB",
                 **common, open_work_orders=opened, open_via=args.open_via, open_driver=args.open_driver,
                 open_s=round(open_wall, 1))
        ok = True
    except (KeyboardInterrupt, asyncio.CancelledError):
        ok = True  # interrupted: nothing to keep
        raise
    except BaseException:
        children.dump_logs()
        raise
    finally:
        if driver is not None:
            await driver.close()
        children.stop_all()
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp} (logs of the child processes, databases)")
        log(f"all child processes stopped; {time.monotonic() - t_start:.0f} s in all")
        await asyncio.sleep(0.2)


async def bare_worker(address: str) -> None:
    """The baseline worker process: same SDK defaults as the hub worker, only the workflow is trivial."""
    import importlib

    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.worker import Worker

    # the sandbox re-imports a workflow's module by name: use this file as `bench.lifecycle`, not __main__
    mod = importlib.import_module("bench.lifecycle")
    client = await Client.connect(address, data_converter=pydantic_data_converter)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(client, task_queue=BARE_TASK_QUEUE, workflows=[mod.BenchBareWorkflow],
                    activities=[mod.bench_noop], max_concurrent_activities=50)
    print("bare worker: polling", flush=True)
    async with worker:
        await stop.wait()
    await asyncio.sleep(0.2)


def main() -> None:
    global ROOT
    ROOT = Path(__file__).resolve().parents[1]
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    if len(sys.argv) == 3 and sys.argv[1] == "--bare-worker":
        asyncio.run(bare_worker(sys.argv[2]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work-orders", type=int, default=200, help="work orders through the lifecycle (N)")
    p.add_argument("--open", type=int, default=1000, help="work orders left open for the RSS figure (0: skip)")
    p.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    p.add_argument("--db-url", default=None,
                   help=f"postgresql only: the database to drop and recreate (default: HUB_TEST_DATABASE_URL's "
                        f"server or 127.0.0.1:5432, database {BENCH_PG_DATABASE})")
    p.add_argument("--driver", choices=["http", "temporal"], default="http")
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--bare", type=int, default=200, help="bare workflows (M)")
    p.add_argument("--fail-every", type=int, default=10, help="every k-th work order fails final inspection")
    p.add_argument("--poll", type=float, default=0.25, help="first status poll interval, s (grows to 4x)")
    p.add_argument("--open-via", choices=["final", "iqc"], default="iqc",
                   help="which inspection fails to leave the open work orders waiting for a reviewer")
    p.add_argument("--open-driver", choices=["http", "temporal"], default="temporal")
    p.add_argument("--open-concurrency", type=int, default=50)
    p.add_argument("--open-poll", type=float, default=0.5, help="first poll interval in phase 3, s")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs) at the end")
    p.add_argument("--step-timeout", type=float, default=120.0, help="give up on one step after this, s")
    args = p.parse_args()

    def _term(*_: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
