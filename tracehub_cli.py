"""`tracehub`: run the hub (all of it, or one process), migrate, and play a demo plant."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from core.settings import Settings

app = typer.Typer(help="TraceHub: production-batch quality traceability hub.", no_args_is_help=True)
console = Console()
BIN = Path(sys.executable).parent


def _settings() -> Settings:
    return Settings()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema and seed the default ERP endpoint."""
    from migrations import upgrade

    s = _settings()
    upgrade(s.database.url)
    if s.database.app_role:
        _grant_app_role(s.database.url, s.database.app_role)
    asyncio.run(_seed(s))
    console.print(f"database ready: {s.database.url.split('@')[-1]}")


def _grant_app_role(url: str, role: str) -> None:
    """The application role's privileges (migrations/app_role.py), again after every upgrade: idempotent, and a
    role named after migration 0019 ran gets them too. PostgreSQL only."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from core.db import sync_url
    from migrations.app_role import grant_app_role

    if make_url(url).get_backend_name() != "postgresql":
        return
    engine = create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            grant_app_role(conn, role)
    finally:
        engine.dispose()
    console.print(f"role {role}: may read and write the hub's tables, and only read and append to audit_log")


async def _seed(s: Settings) -> None:
    from core.db import make_engine, make_sessionmaker
    from domain.endpoints import ensure_endpoint

    engine = make_engine(s.database.url)
    async with make_sessionmaker(engine)() as session, session.begin():
        await ensure_endpoint(session, name="erp", kind="erpnext", config={
            "base_url": s.erp.url, "api_key": s.erp.api_key, "api_secret": s.erp.api_secret.get_secret_value(),
            "webhook_secret": s.erp.webhook_secret.get_secret_value()})
    await engine.dispose()


@app.command()
def api(host: str = typer.Option(None, help="default: HUB_API__HOST or 127.0.0.1"),
        port: int = typer.Option(None, help="default: HUB_API__PORT or 8000")) -> None:
    """Run the HTTP API."""
    import uvicorn

    from api.main import create_app

    s = _settings()
    uvicorn.run(create_app(s), host=host or s.api.host, port=port or s.api.port, log_level="warning")


@app.command()
def worker() -> None:
    """Run a Temporal worker for the hub's workflows and activities."""
    import worker as worker_module

    asyncio.run(worker_module.main(_settings()))


def _dev_server_cmd(s: Settings) -> list[str]:
    Path(s.dev_server.db_filename).parent.mkdir(parents=True, exist_ok=True)
    return [
        str(BIN / "temporal"), "server", "start-dev", "--ip", "127.0.0.1",
        "--port", str(s.dev_server.port), "--ui-port", str(s.dev_server.ui_port),
        "--db-filename", s.dev_server.db_filename, "--namespace", s.temporal.namespace,
        "--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal",
        "--log-level", "warn",
    ]


@app.command("dev-server")
def dev_server() -> None:
    """Run the embedded Temporal dev server (data kept in var/temporal.db)."""
    os.execv(_dev_server_cmd(_settings())[0], _dev_server_cmd(_settings()))


@app.command("erp-sim")
def erp_sim(port: int = typer.Option(None, help="default: HUB_ERP_SIM_PORT or 8100")) -> None:
    """Run the loopback ERP simulator (ERPNext-shaped)."""
    import uvicorn

    from erp_sim.app import create_app

    s = _settings()
    sim = create_app(api_key=s.erp.api_key, api_secret=s.erp.api_secret.get_secret_value(),
                     hub_url=f"http://{s.api.host}:{s.api.port}", state_file=Path("var/erp.json"),
                     webhook_secret=s.erp.webhook_secret.get_secret_value())
    uvicorn.run(sim, host="127.0.0.1", port=port or s.erp_sim_port, log_level="warning")


def _wait_http(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    return False


@app.command()
def up() -> None:
    """Start everything on embedded defaults: Temporal dev server, ERP simulator, worker and API."""
    s = _settings()
    Path("var").mkdir(exist_ok=True)
    console.print("[bold]TraceHub[/] starting (data in var/) ...")
    migrate()
    if asyncio.run(_ensure_first_admin(s)):
        console.print("first start: created user [bold]admin[/]; its password is in var/admin-password "
                      "(log in at POST /api/auth/login, then create users: `tracehub users create NAME -r ROLE`)")
    me = [str(BIN / "tracehub")]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs = Path("var/log")
    logs.mkdir(parents=True, exist_ok=True)

    def start(name: str, cmd: list[str]) -> None:
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child's life
        procs[name] = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def stop_all() -> None:
        for p in reversed(list(procs.values())):
            if p.poll() is None:
                p.send_signal(signal.SIGINT if p is not procs.get("temporal") else signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs.values():
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # explicit handlers: a shell may start us with SIGINT ignored (background jobs), and SIGTERM should stop too
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    try:
        start("temporal", _dev_server_cmd(s))
        start("erp-sim", [*me, "erp-sim"])
        start("worker", [*me, "worker"])
        start("api", [*me, "api"])
        start("demo-plant", [*me, "demo-plant"])
        api_url = f"http://{s.api.host}:{s.api.port}"
        if not _wait_http(f"{api_url}/health", 60):
            raise RuntimeError("the API did not come up in 60 s: see var/log/api.log")
        if not _wait_http(f"{api_url}/health/ready", 60):
            console.print("[yellow]Temporal not ready yet: see var/log/temporal.log[/]")
        console.print(f"""
  API            {api_url}          (OpenAPI docs: {api_url}/docs)
  Temporal UI    http://127.0.0.1:{s.dev_server.ui_port}
  Temporal gRPC  127.0.0.1:{s.dev_server.port}
  ERP simulator  http://127.0.0.1:{s.erp_sim_port}   (docs: /docs)
  Demo plant     PLC modbus 127.0.0.1:5020, oven opc.tcp://127.0.0.1:4840, certificates :8200/?wsdl
                 (endpoints: GET {api_url}/api/endpoints; live values: .../api/endpoints/oven-1/read?point=oven_temp)
  Logs           var/log/*.log     Data: var/hub.db, var/temporal.db, var/erp.json

  Try it:  .venv/bin/tracehub demo -n 5      Ctrl-C stops everything (data and open work orders are kept).
""")
        while True:
            for name, p in list(procs.items()):
                if p.poll() is not None and name == "demo-plant":
                    # the demo's peers are optional: the hub goes on without them (e.g. a port in use)
                    console.print(f"[yellow]demo-plant exited with {p.returncode}: see var/log/demo-plant.log[/]")
                    del procs[name]
                elif p.poll() is not None:
                    raise RuntimeError(f"{name} exited with {p.returncode}: see var/log/{name}.log")
            time.sleep(0.5)
    except KeyboardInterrupt:
        console.print("\nstopping ...")
    except RuntimeError as exc:
        console.print(f"[red]{exc}[/]")
        stop_all()
        raise typer.Exit(1) from exc
    stop_all()
    console.print("stopped; run `make run` again to continue where you left off.")


# --- demo plant: real peers on loopback ------------------------------------------------------------------


@app.command("demo-plant")
def demo_plant(
    modbus_port: int = typer.Option(5020, help="the PLC's Modbus TCP port"),
    opcua_port: int = typer.Option(4840, help="the oven's OPC UA port"),
    soap_port: int = typer.Option(8200, help="the supplier's certificate service (SOAP) port"),
    mqtt: str = typer.Option("127.0.0.1:1883", help="the MQTT broker the MES publishes to"),
    release_every: float = typer.Option(45.0, min=0, help="seconds between work orders the ERP releases; 0: none"),
    max_open: int = typer.Option(3, min=1, help="release only while fewer work orders are open"),
    bad_heat_rate: float = typer.Option(0.15, min=0.0, max=1.0, help="share of heats out of spec"),
    seed: int = typer.Option(None, help="random seed"),
) -> None:
    """Start a plant on loopback (a PLC and an oven whose values drift, a supplier's certificate service),
    register them as the hub's endpoints, and let the ERP release work orders that use them."""
    asyncio.run(_demo_plant(modbus_port, opcua_port, soap_port, mqtt, release_every, max_open, bad_heat_rate,
                            seed))


async def _demo_plant(modbus_port: int, opcua_port: int, soap_port: int, mqtt: str, release_every: float,
                      max_open: int, bad_heat_rate: float, seed: int | None) -> None:
    from core.db import make_engine, make_sessionmaker
    from domain.endpoints import ensure_endpoint
    from erp_sim.plant import DEMO_ENDPOINTS, CertificateServiceSim, OvenSim, PlcSim
    from migrations import upgrade

    s = _settings()
    plc = await PlcSim(port=modbus_port).start()
    oven = await OvenSim(port=opcua_port).start()
    certs = CertificateServiceSim(port=soap_port).start()
    plc.drift(1.0, seed)
    oven.drift(1.0, seed)
    host, _, port = mqtt.partition(":")
    upgrade(s.database.url)
    engine = make_engine(s.database.url)
    async with make_sessionmaker(engine)() as session, session.begin():
        for name, kind, config in (
            (DEMO_ENDPOINTS["plc"], "modbus", plc.endpoint_config()),
            (DEMO_ENDPOINTS["oven"], "opcua", oven.endpoint_config()),
            (DEMO_ENDPOINTS["certs"], "soap", certs.endpoint_config(certificate_operation="GetCertificate")),
            (DEMO_ENDPOINTS["mes"], "mqtt", {"host": host, "port": int(port or 1883), "topics": [
                {"name": "operation_reports", "filter": "tracehub/mes/+/operation-report"},
                {"name": "equipment_states", "filter": "tracehub/mes/+/equipment-state"}]}),
        ):
            await ensure_endpoint(session, name=name, kind=kind, config=config, replace=True)
    await engine.dispose()
    print(f"demo plant: PLC modbus 127.0.0.1:{plc.port}, oven {oven.url}, certificates {certs.wsdl_url}; "
          f"endpoints {', '.join(DEMO_ENDPOINTS.values())}", flush=True)
    hub_url, erp_url = f"http://{s.api.host}:{s.api.port}", f"http://127.0.0.1:{s.erp_sim_port}"
    rng = random.Random(seed)
    released: list[str] = []
    expected_since: dict[str, tuple[int, float]] = {}
    try:
        floor_headers, reviewers = await _local_credentials(s)
        async with httpx.AsyncClient(base_url=hub_url, timeout=30, headers=floor_headers) as hub, \
                httpx.AsyncClient(base_url=erp_url, timeout=60) as erp:
            floor = DemoPlant(hub, fail_rate=0.1, seed=seed, reviewers=reviewers)
            next_release = time.monotonic() + 5
            while True:
                await asyncio.sleep(2)
                if release_every and time.monotonic() >= next_release:
                    next_release = time.monotonic() + release_every
                    open_now = [n for n in released if floor.stage.get(n) != "done"]
                    if len(open_now) < max_open:
                        prefix = "HX" if rng.random() < bad_heat_rate else "H"
                        try:
                            r = await erp.post("/sim/work-orders", json={"count": 1, "quantity": 20, "prefix": "PWO-",
                                                                         "plant": True, "heat_prefix": prefix})
                            released += r.json()["released"]
                            print(f"ERP released {r.json()['released']} (heat {prefix}...)", flush=True)
                        except httpx.HTTPError as exc:
                            print(f"ERP simulator not reachable ({exc}); will try again", flush=True)
                for number in released:
                    if floor.stage.get(number) == "done":
                        continue
                    try:
                        st = (await hub.get(f"/api/work-orders/{number}")).json().get("status") or {}
                    except httpx.HTTPError:
                        continue
                    seq = st.get("expected_operation")
                    # let the equipment run (and the oven's soak be sampled) before the MES reports it
                    if seq is not None:
                        first = expected_since.setdefault(number, (seq, time.monotonic()))
                        if first[0] != seq:
                            expected_since[number] = (seq, time.monotonic())
                            continue
                        if time.monotonic() - first[1] < 35:
                            continue
                    await floor.step(number)
    finally:
        await plc.stop()
        await oven.stop()
        certs.stop()


# --- local credentials ------------------------------------------------------------------------------

REVIEWER_ROLES = ("qa_supervisor", "mrb_engineering", "mrb_production", "quality_manager")


async def _local_credentials(s: Settings) -> tuple[dict[str, str], dict[str, tuple[dict[str, str], str]]]:
    """Credentials the local CLI plays the floor with, minted in the database it is configured for:
    one API token for the floor's systems (MES, gauges, ERP) and one logged-in user per reviewer role
    (their passwords are kept in var/demo-credentials.json, readable by the owner only)."""
    import json
    import secrets
    from datetime import timedelta

    from core.db import make_engine, make_sessionmaker
    from domain import identity

    store = Path("var/demo-credentials.json")
    saved = json.loads(store.read_text()) if store.exists() else {}
    engine = make_engine(s.database.url)
    reviewers: dict[str, tuple[dict[str, str], str]] = {}
    async with make_sessionmaker(engine)() as session, session.begin():
        floor, _ = await identity.issue_token(session, kind="api", name="demo-floor", roles=["mes", "gauge", "erp"],
                                              ttl=timedelta(hours=12), created_by="tracehub-cli")
        for role in REVIEWER_ROLES:
            username = f"demo-{role.replace('_', '-')}"
            password = saved.get(username) or secrets.token_urlsafe(16)
            try:
                await identity.get_user(session, username)
                if username not in saved:
                    await identity.set_password(session, username, password, actor="tracehub-cli")
            except Exception:  # noqa: BLE001 - NotFound: a new demo user
                await identity.create_user(session, username=username, password=password, roles=[role],
                                           full_name=f"Demo {role.replace('_', ' ')}", actor="tracehub-cli")
            saved[username] = password
            token, _, _ = await identity.login(session, username, password)
            reviewers[role] = ({"Authorization": f"Bearer {token}"}, password)
    await engine.dispose()
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(saved, indent=1))
    store.chmod(0o600)
    return {"Authorization": f"Bearer {floor}"}, reviewers


# --- demo ----------------------------------------------------------------------------------------------

STAGES = ["starting", "material_intake", "production", "final_inspection", "nonconformance_review", "erp_completion",
          "code_issuance",
          "shipment", "done"]


class DemoPlant:
    """Plays the inspector, the MES and the reviewers for the demo's work orders."""

    def __init__(self, hub: httpx.AsyncClient, fail_rate: float, seed: int | None,
                 reviewers: dict[str, tuple[dict[str, str], str]]) -> None:
        self.hub = hub
        self.reviewers = reviewers
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.sent: set[str] = set()
        self.stage: dict[str, str] = {}

    def _measure(self, ch: dict[str, Any]) -> list[float]:
        lo, hi = ch["lower"], ch["upper"]
        nominal = ch["nominal"] if ch["nominal"] is not None else (lo + hi) / 2
        span = (hi - lo) if lo is not None and hi is not None else abs(nominal) * 0.1 or 1.0
        bad = self.rng.random() < self.fail_rate
        vals = [round(nominal + self.rng.uniform(-0.2, 0.2) * span, 4) for _ in range(ch["sample_size"])]
        if bad:
            vals[-1] = round((hi if hi is not None else nominal) + 0.3 * span, 4)
        return vals

    async def step(self, number: str) -> bool:
        r = await self.hub.get(f"/api/work-orders/{number}")
        if r.status_code != 200 or not r.json().get("status"):
            return False
        st = r.json()["status"]
        self.stage[number] = st["stage"]
        if st["result"]:
            self.stage[number] = "done"
            return True
        for p in st["pending_inspections"]:
            if p["number"] in self.sent:
                continue
            ins = (await self.hub.get(f"/api/inspections/{p['number']}")).json()
            meas = [{"characteristic": c["name"], "values": self._measure(c)} for c in ins["characteristics"]]
            resp = await self.hub.post(f"/api/inspections/{p['number']}/results",
                                       json={"inspector": "demo-inspector", "measurements": meas})
            if resp.status_code in (200, 202):
                self.sent.add(p["number"])
        seq = st["expected_operation"]
        if seq is not None and f"{number}:op{seq}:{st['ncrs']}" not in self.sent:
            released = [lot for lot, s in st["material_lots"].items() if s == "released"]
            wo = r.json()["record"]
            consumed = [{"lot": released[0], "quantity": 1.0 * wo["quantity"]}] if seq == wo["routing"][0]["seq"] \
                and released and not st["ncrs"] else []
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            report = {"report_id": f"{number}-op{seq}-{len(st['ncrs'])}", "seq": seq,
                      "equipment": f"EQ-{seq}", "operator": "demo-operator", "shift": "A",
                      "started_at": now, "ended_at": now, "consumed": consumed,
                      "parameters": {"spindle_rpm": 1200} if seq == 10 else {"temperature_c": 860, "soak_min": 45},
                      "good_quantity": wo["quantity"], "scrap_quantity": 0}
            resp = await self.hub.post(f"/api/work-orders/{number}/operations", json=report)
            if resp.status_code == 202:
                self.sent.add(f"{number}:op{seq}:{st['ncrs']}")
        qa_headers, qa_password = self.reviewers["qa_supervisor"]
        mrb_headers, mrb_password = self.reviewers["mrb_engineering"]
        for ncr in st["open_ncrs"]:
            n = await self.hub.get(f"/api/ncrs/{ncr}", headers=qa_headers)
            if n.status_code != 200:
                continue
            state = n.json()["state"]
            if state == "open":
                headers = qa_headers
                body = {"action": "confirm", "reason": "out of specification confirmed", "password": qa_password}
            elif state == "mrb":
                iqc = "iqc" in n.json()["description"]
                action = "use_as_is" if iqc else self.rng.choice(["use_as_is", "rework", "use_as_is"])
                headers = mrb_headers
                body = {"action": action, "reason": "demo disposition", "password": mrb_password,
                        **({"rework_operation": 10} if action == "rework" else {})}
                if action == "use_as_is":  # a concession is signed by engineering and production
                    await self.hub.post(f"/api/ncrs/{ncr}/decisions", json=body, headers=headers)
                    headers, password = self.reviewers["mrb_production"]
                    body = {**body, "password": password}
            else:
                continue
            await self.hub.post(f"/api/ncrs/{ncr}/decisions", json=body, headers=headers)
        return False


@app.command("check-histories")
def check_histories(
    closed: bool = typer.Option(False, "--closed", help="also the closed runs (their status pages use replay too)"),
    limit: int = typer.Option(0, min=0, help="at most this many runs (0: all)"),
) -> None:
    """Replay the history of every running work order, NCR, recall and other hub workflow against this version's
    code, as a worker rebuilding it after a restart would, and list each that does not replay (a nondeterminism:
    that workflow cannot go on; finish or terminate it by hand). Reads only. Run it after an upgrade. Exit code 1
    when one does not replay."""
    asyncio.run(_check_histories(_settings(), closed=closed, limit=limit))


async def _check_histories(s: Settings, *, closed: bool, limit: int) -> None:
    from core.temporal import connect
    from worker import HUB_WORKFLOW_TYPES, replay_runs

    try:
        client = await connect(s.temporal)
    except Exception as exc:  # any connection failure: say where, and what to do
        typer.echo(f"Temporal at {s.temporal.address} (namespace {s.temporal.namespace}) is not reachable: {exc}. "
                   "Start the hub (tracehub up) or point HUB_TEMPORAL__ADDRESS at your Temporal server.", err=True)
        raise typer.Exit(2) from exc
    query = HUB_WORKFLOW_TYPES + ("" if closed else " AND ExecutionStatus = 'Running'")
    runs: list[tuple[str, str]] = []
    async for w in client.list_workflows(query):
        runs.append((w.id, w.run_id))
        if limit and len(runs) >= limit:
            break
    n, failures = await replay_runs(client, runs)
    for run, error in failures.items():
        typer.echo(f"does not replay: {run}: {error.splitlines()[0]}")
    typer.echo(f"{n} {'runs' if closed else 'running runs'} replayed, {len(failures)} do not replay")
    if failures:
        raise typer.Exit(1)


@app.command()
def demo(
    n: int = typer.Option(5, "-n", "--work-orders", min=1, help="work orders to release"),
    fail_rate: float = typer.Option(0.15, min=0.0, max=1.0, help="share of out-of-spec measurements"),
    quantity: int = typer.Option(50, min=1, help="units per work order"),
    seed: int = typer.Option(None, help="random seed, for a repeatable demo"),
    hub_url: str = typer.Option(None, help="default: the local API"),
    erp_url: str = typer.Option(None, help="default: the local ERP simulator"),
) -> None:
    """Release N work orders through the ERP simulator and play the floor until all finish."""
    s = _settings()
    hub_url = hub_url or f"http://{s.api.host}:{s.api.port}"
    erp_url = erp_url or f"http://127.0.0.1:{s.erp_sim_port}"
    asyncio.run(_demo(n, fail_rate, quantity, seed, hub_url, erp_url))


async def _demo(n: int, fail_rate: float, quantity: int, seed: int | None, hub_url: str, erp_url: str) -> None:
    floor_headers, reviewers = await _local_credentials(_settings())
    async with httpx.AsyncClient(base_url=erp_url, timeout=60) as erp, \
            httpx.AsyncClient(base_url=hub_url, timeout=30, headers=floor_headers) as hub:
        try:
            r = await erp.post("/sim/work-orders", json={"count": n, "quantity": quantity})
        except httpx.ConnectError as exc:
            console.print(f"[red]ERP simulator not reachable at {erp_url}: start the hub with `make run`[/]")
            raise typer.Exit(1) from exc
        r.raise_for_status()
        numbers = r.json()["released"]
        refused = [h for h in r.json()["hub"] if h["status"] not in (200, 202)]
        if refused:
            console.print(f"[red]the hub refused {len(refused)} event(s): {refused[0]['body']}[/]")
            raise typer.Exit(1)
        console.print(f"released {len(numbers)} work orders: {numbers[0]} .. {numbers[-1]}")
        plant = DemoPlant(hub, fail_rate, seed, reviewers)
        done: set[str] = set()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console) as progress:
            overall = progress.add_task("completed", total=len(numbers))
            bars = {st: progress.add_task(f"  {st}", total=len(numbers)) for st in STAGES[:-1]}
            while len(done) < len(numbers):
                for number in numbers:
                    if number not in done and await plant.step(number):
                        done.add(number)
                counts = {st: 0 for st in STAGES}
                for number in numbers:
                    st = plant.stage.get(number, "starting")
                    counts[st] = counts.get(st, 0) + 1  # a stage this display does not list is counted, not shown
                for st, task in bars.items():
                    progress.update(task, completed=counts[st])
                progress.update(overall, completed=len(done))
                await asyncio.sleep(0.3)
        rows = [(await hub.get(f"/api/work-orders/{x}")).json()["record"] for x in numbers]
        for row in rows:
            console.print(f"  {row['number']}: {row['status']}, good {row['good_quantity']}, "
                          f"scrap {row['scrap_quantity']}")
        console.print(f"trace a lot: {hub_url}/api/trace/forward/{numbers[0]}-M1   "
                      f"history: {hub_url}/api/work-orders/{numbers[0]}/history")


users_app = typer.Typer(help="People and system tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")


def _with_session(fn):
    from core.db import make_engine, make_sessionmaker

    async def run():
        engine = make_engine(_settings().database.url)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await fn(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@users_app.command("create")
def users_create(
    username: str = typer.Argument(..., help="login name"),
    role: list[str] = typer.Option(..., "--role", "-r", help="a role; repeat for several (e.g. -r admin)"),  # noqa: B008 - typer declares options as defaults
    full_name: str = typer.Option(None, help="the person's name, shown on signatures"),
    password: str = typer.Option(None, help="default: asked for (not echoed)"),
) -> None:
    """Create a user. The first admin is created this way: `tracehub users create admin -r admin`."""
    from core.errors import HubError
    from domain import identity

    if password is None:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)

    async def create(session):
        return await identity.create_user(session, username=username, password=password, roles=role,
                                          full_name=full_name, actor="tracehub-cli")

    try:
        _with_session(create)
    except HubError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    console.print(f"user {username} created with roles {', '.join(sorted(set(role)))}")


@users_app.command("token")
def users_token(
    name: str = typer.Argument(..., help="the system that uses it, e.g. erp-prod"),
    role: list[str] = typer.Option(..., "--role", "-r", help="erp, mes, gauge, printer or a person's role"),  # noqa: B008
    days: int = typer.Option(365, min=1, max=3650, help="days until it expires"),
) -> None:
    """Create an API token for a system; it is printed once, only its hash is stored."""
    from datetime import timedelta

    from core.errors import HubError
    from domain import identity

    async def issue(session):
        return await identity.issue_token(session, kind="api", name=name, roles=role, ttl=timedelta(days=days),
                                          created_by="tracehub-cli")

    try:
        token, row = _with_session(issue)
    except HubError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc
    console.print(f"token for {name} ({', '.join(row.roles)}), expires {row.expires_at:%Y-%m-%d}:")
    print(token)


@users_app.command("list")
def users_list() -> None:
    """List users and their roles."""
    from sqlalchemy import select

    from domain.models_identity import User

    async def rows(session):
        return (await session.execute(select(User).order_by(User.username))).scalars().all()

    for u in _with_session(rows):
        console.print(f"{u.username:24} {', '.join(u.roles):40} {'active' if u.active else 'inactive'}")


def _users_run(fn) -> Any:
    """Run `fn(session)` in one transaction; a refusal (HubError) is printed and exits 1."""
    from core.errors import HubError

    try:
        return _with_session(fn)
    except HubError as exc:
        console.print(f"[red]{exc.message}[/]")
        raise typer.Exit(1) from exc


def _set_user(username: str, **fields: Any) -> None:
    from domain import identity

    async def update(session):
        return await identity.update_user(session, username, actor="tracehub-cli", **fields)

    u, ended = _users_run(update)
    state = "active" if u.active else "inactive"
    console.print(f"user {u.username}: roles {', '.join(u.roles)}, {state}"
                  + (f"; {ended} session(s) ended" if ended else ""))


@users_app.command("set-roles")
def users_set_roles(
    username: str = typer.Argument(..., help="login name"),
    role: list[str] = typer.Option(..., "--role", "-r", help="the new roles (they replace the old); repeat for several"),  # noqa: B008
) -> None:
    """Replace a user's roles; their sessions end, so the old roles stop working at once."""
    _set_user(username, roles=role)


@users_app.command("deactivate")
def users_deactivate(username: str = typer.Argument(..., help="login name")) -> None:
    """Deactivate a user: they cannot log in and their sessions end at once."""
    _set_user(username, active=False)


@users_app.command("activate")
def users_activate(username: str = typer.Argument(..., help="login name")) -> None:
    """Let a deactivated user log in again."""
    _set_user(username, active=True)


@users_app.command("passwd")
def users_passwd(
    username: str = typer.Argument(..., help="login name"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from standard input"),
) -> None:
    """Set a user's password (asked for, not echoed); their sessions end."""
    from domain import identity

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("new password", hide_input=True, confirmation_prompt=True)

    async def set_password(session):
        return await identity.set_password(session, username, password, actor="tracehub-cli")

    ended = _users_run(set_password)
    console.print(f"password of {username} set" + (f"; {ended} session(s) ended" if ended else ""))


@users_app.command("tokens")
def users_tokens() -> None:
    """List system API tokens (id, name, roles, who created them, expiry, revocation); never the tokens."""
    from domain import identity
    from domain.models import utcnow

    async def rows(session):
        return await identity.list_api_tokens(session)

    now = utcnow()
    for t in _users_run(rows):
        state = (f"revoked {t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else
                 "expired" if t.expires_at <= now else f"expires {t.expires_at:%Y-%m-%d}")
        console.print(f"{t.id:>6} {t.name:24} {', '.join(t.roles):24} by {t.created_by or '-':16} {state}",
                      highlight=False)


@users_app.command("revoke-token")
def users_revoke_token(token_id: int = typer.Argument(..., help="the id `tracehub users tokens` shows")) -> None:
    """Revoke a system API token: it stops working at once."""
    from domain import identity

    async def revoke(session):
        return await identity.revoke_api_token(session, token_id, actor="tracehub-cli")

    row = _users_run(revoke)
    console.print(f"token {token_id} ({row.name}) revoked")


async def _ensure_first_admin(s: Settings, password_file: Path = Path("var/admin-password")) -> str | None:
    """On first start, create user `admin` with a random password kept in var/admin-password (owner-only)."""
    import secrets

    from core.db import make_engine, make_sessionmaker
    from domain import identity

    engine = make_engine(s.database.url)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            if await identity.count_users(session):
                return None
            password = secrets.token_urlsafe(12)
            await identity.create_user(session, username="admin", password=password, roles=["admin"],
                                       full_name="Administrator", actor="tracehub-up")
            # written before the commit: if the file cannot be written, no admin exists whose password is lost
            _write_owner_only(password_file, password + "\n")
    finally:
        await engine.dispose()
    return password


def _write_owner_only(path: Path, text: str) -> None:
    """Write a secret to a file that is never readable by others: created with mode 0600 (write, then chmod,
    would leave it world-readable for a moment), and a file already there is narrowed before it is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _expected_head(value: str | None) -> tuple[int, str] | None:
    import re

    if value is None:
        return None
    seq, _, hash_ = value.strip().partition(":")
    if not seq.isdigit() or not re.fullmatch(r"[0-9a-f]{64}", hash_):
        raise typer.BadParameter(f"{value!r} is not SEQ:HASH: give the line `tracehub audit head` printed, "
                                 "e.g. 1234:3f5a... (64 hex digits)", param_hint="--expect")
    return int(seq), hash_


@audit_app.command("head")
def audit_head() -> None:
    """Print SEQ:HASH of the newest audit entry. Keep it where the database's users cannot write (a ticket, a
    signed mail, another system): `tracehub audit verify --expect SEQ:HASH` then finds entries removed from the
    end of the chain, which the chain alone cannot show."""
    from core.db import make_engine, make_sessionmaker
    from domain.audit import chain_head

    async def run() -> tuple[int, str]:
        engine = make_engine(_settings().database.url)
        try:
            async with make_sessionmaker(engine)() as session:
                return await chain_head(session)
        finally:
            await engine.dispose()

    seq, hash_ = asyncio.run(run())
    typer.echo(f"{seq}:{hash_}")


@audit_app.command("verify")
def audit_verify(
    expect: str = typer.Option(None, "--expect", metavar="SEQ:HASH",
                               help="a head printed earlier by `tracehub audit head`: fail if that entry is gone "
                                    "or differs (entries removed from the end of the chain)"),
) -> None:
    """Walk the audit hash chain and name any entry altered, removed or inserted."""
    from core.db import make_engine, make_sessionmaker
    from domain.audit import check_head, verify_chain

    head = _expected_head(expect)

    async def run() -> None:
        engine = make_engine(_settings().database.url)
        async with make_sessionmaker(engine)() as session:
            report = await verify_chain(session)
            if head is not None:
                report.problems.extend(await check_head(session, *head))
        await engine.dispose()
        for p in report.problems:
            console.print(f"[red]{p}[/]")
        if not report.ok:
            console.print(f"[red]audit trail NOT intact[/]: {len(report.problems)} problem(s) in {report.entries} entries")
            raise typer.Exit(1)
        console.print(f"audit trail intact: {report.entries} entries")

    asyncio.run(run())


# --- trace ---------------------------------------------------------------------------------------------

trace_app = typer.Typer(help="Trace genealogy both ways and print it as a tree.", no_args_is_help=True)
app.add_typer(trace_app, name="trace")


def _trace_label(n: dict[str, Any]) -> str:
    if n["node"] == "external":
        return f"[magenta]{n['id']}[/] (supplier side: {len(n.get('events', []))} captured event(s))"
    bits = [f"[bold]{n['id']}[/] {n['item']}", f"[cyan]{n['where']}[/]"]
    if n.get("supplier"):
        bits.append(f"supplier {n['supplier']} lot {n['supplier_lot']}")
    if n.get("heat_number"):
        bits.append(f"heat [yellow]{n['heat_number']}[/]")
    if n.get("certificate_ref"):
        bits.append(f"cert {n['certificate_ref']}")
    if n.get("units", {}).get("count"):
        bits.append(f"{n['units']['count']} units")
    if n.get("concession"):
        bits.append(f"[yellow]released under concession: {n['concession']}[/]")
    return ", ".join(bits)


def _print_trace(t: dict[str, Any]) -> None:
    from rich.tree import Tree

    nodes = {n["id"]: n for n in t["nodes"]}
    nxt: dict[str, list[str]] = {}
    for e in t["edges"]:
        a, b = (e["to"], e["from"]) if t["direction"] == "backward" else (e["from"], e["to"])
        nxt.setdefault(a, []).append(b)
    roots = [n["id"] for n in t["nodes"] if n["level"] == 0]
    title = f"{t['direction']} trace of {t['query'] if t['direction'] == 'backward' else t['query']['value']}"
    tree = Tree(f"[bold]{title}[/]")

    def add(branch: Any, nid: str, path: set[str]) -> None:
        n = nodes[nid]
        sub = branch.add(_trace_label(n))
        for op in n.get("operations", []):
            params = ", ".join(f"{k}={v}" for k, v in (op["parameters"] or {}).items())
            sub.add(f"op {op['seq']} {op['name']}: {op['equipment']}, {op['operator']}, {op['started_at']} {params}")
        for ins in n.get("inspections", []):
            sub.add(f"inspection {ins['number']} {ins['status']} by {ins['inspector']}")
        for ncr in n.get("ncrs", []):
            sub.add(f"[red]{ncr['number']}[/] {ncr['state']} {ncr['disposition'] or ''}")
        for child in sorted(nxt.get(nid, [])):
            if child not in path:
                add(sub, child, path | {child})

    for r in roots:
        add(tree, r, {r})
    console.print(tree)
    for c in t.get("by_customer", []):
        console.print(f"customer [bold]{c['customer']}[/]: {c['quantity']:g} on "
                      + ", ".join(s["shipment"] for s in c["shipments"]))
    _print_packing(t)


def _print_packing(t: dict[str, Any]) -> None:
    """The cases and pallets of a trace: a unit's chain with its pack events, the boxes holding a lot's units,
    a forward trace's containers, or what a traced case or pallet holds."""
    from rich.markup import escape

    from domain.trace import containers, describe_container

    p = t.get("packing") or {}
    boxes = containers(t)
    if p.get("of") == "unit":
        if not p["chain"]:
            console.print(f"[bold]packing[/]: unit {escape(p['unit'])} has never been packed")
            return
        state = "is packed" if p["packed"] else "is not packed now; when it was last packed"
        shipped = f", shipped to [bold]{escape(p['customer'])}[/] on {escape(p['shipment'])}" if p.get("shipment") \
            else ""
        console.print(f"[bold]packing[/]: unit {escape(p['unit'])} {state}{shipped}")
    elif p.get("of") == "lot" and not boxes:
        console.print(f"[bold]packing[/]: no case or pallet holds units of lot {escape(p['lot'])} now")
        return
    elif boxes:
        console.print(f"[bold]cases and pallets[/] ({len(boxes)}):")
    for b in boxes:
        console.print(f"  {escape(describe_container(b))}", soft_wrap=True)


def _get_trace(hub_url: str | None, path: str, params: dict[str, Any]) -> dict[str, Any]:
    s = _settings()
    url = hub_url or f"http://{s.api.host}:{s.api.port}"
    token = os.environ.get("TRACEHUB_TOKEN")
    if not token:
        console.print("[red]set TRACEHUB_TOKEN to your token: log in with POST /api/auth/login, or ask an admin "
                      "for one (`tracehub users token NAME --role quality_manager`)[/]")
        raise typer.Exit(2)
    try:
        r = httpx.get(f"{url}{path}", params={k: v for k, v in params.items() if v is not None}, timeout=60,
                      headers={"Authorization": f"Bearer {token}"})
    except httpx.ConnectError as exc:
        console.print(f"[red]the hub API is not reachable at {url}: start it with `make run`[/]")
        raise typer.Exit(1) from exc
    if r.status_code != 200:
        console.print(f"[red]{r.json().get('detail', r.text)}[/]")
        raise typer.Exit(1)
    return r.json()


@trace_app.command("backward")
def trace_backward(code: str = typer.Argument(..., help="unit serial (Digital Link), batch code or lot number"),
                   as_json: bool = typer.Option(False, "--json", help="print the JSON answer"),
                   hub_url: str = typer.Option(None, help="default: the local API")) -> None:
    """Where did it come from: the tree down to suppliers, heats and certificates."""
    t = _get_trace(hub_url, f"/api/trace/backward/{code}", {})
    console.print_json(data=t) if as_json else _print_trace(t)


@trace_app.command("forward")
def trace_forward(
    lot: str = typer.Option(None, help="a lot number"), heat: str = typer.Option(None, help="a heat number"),
    supplier_lot: str = typer.Option(None, help="a supplier lot"),
    equipment: str = typer.Option(None, help="an equipment id (needs --since and --until)"),
    operator: str = typer.Option(None, help="an operator (needs --since and --until)"),
    since: str = typer.Option(None, help="window start, e.g. 2026-01-05T08:00:00Z"),
    until: str = typer.Option(None, help="window end"),
    as_json: bool = typer.Option(False, "--json", help="print the JSON answer"),
    hub_url: str = typer.Option(None, help="default: the local API"),
) -> None:
    """Where did it go: every lot and unit made from it, and where each is now."""
    given = {k: v for k, v in {"lot": lot, "heat": heat, "supplier_lot": supplier_lot, "equipment": equipment,
                               "operator": operator}.items() if v}
    if len(given) != 1:
        console.print("[red]give exactly one of --lot, --heat, --supplier-lot, --equipment, --operator[/]")
        raise typer.Exit(2)
    kind, value = next(iter(given.items()))
    t = _get_trace(hub_url, "/api/trace/forward", {"kind": kind, "value": value, "since": since, "until": until})
    console.print_json(data=t) if as_json else _print_trace(t)


codes_app = typer.Typer(help="Codes: export blocks for printers.", no_args_is_help=True)
app.add_typer(codes_app, name="codes")


@codes_app.command("export")
def codes_export(
    block: int = typer.Argument(..., help="block id (GET /api/codes/blocks/{id})"),
    out: Path = typer.Option(..., "--out", "-o", help="file to write"),  # noqa: B008
    fmt: str = typer.Option("csv", "--format", "-f", help="csv | ndjson | uri (one Digital Link URI per line)"),
    first: int = typer.Option(0, help="index of the first code in the block"),
    count: int = typer.Option(None, help="how many codes (default: to the end of the block)"),
) -> None:
    """Write a block's codes to a file at full speed, with a progress bar."""
    asyncio.run(_codes_export(block, out, fmt, first, count))


async def _codes_export(block: int, out: Path, fmt: str, first: int, count: int | None) -> None:
    from core.db import make_engine, make_sessionmaker
    from domain import codes, labels

    s = _settings()
    engine = make_engine(s.database.url)
    async with make_sessionmaker(engine)() as session:
        view = await codes.block_view(session, block)
    await engine.dispose()
    total = view.block.count - first if count is None else min(count, view.block.count - first)
    with Progress(TextColumn("[bold]block {task.fields[block]}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console) as bar, \
            out.open("wb") as f:
        task = bar.add_task("export", total=total, block=block)
        for chunk in labels.export_chunks(view, fmt=fmt, domain=s.resolver_base_url, first=first, count=total,
                                          chunk=500_000, progress=lambda n: bar.advance(task, n)):
            f.write(chunk)
    console.print(f"wrote {total:,} codes to {out}")


if __name__ == "__main__":
    app()
