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
    asyncio.run(_seed(s))
    console.print(f"database ready: {s.database.url.split('@')[-1]}")


async def _seed(s: Settings) -> None:
    from core.db import make_engine, make_sessionmaker
    from domain.endpoints import ensure_endpoint

    engine = make_engine(s.database.url)
    async with make_sessionmaker(engine)() as session, session.begin():
        await ensure_endpoint(session, name="erp", kind="erpnext", config={
            "base_url": s.erp.url, "api_key": s.erp.api_key, "api_secret": s.erp.api_secret.get_secret_value()})
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
                     hub_url=f"http://{s.api.host}:{s.api.port}", state_file=Path("var/erp.json"))
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
  Logs           var/log/*.log     Data: var/hub.db, var/temporal.db, var/erp.json

  Try it:  .venv/bin/tracehub demo -n 5      Ctrl-C stops everything (data and open work orders are kept).
""")
        while True:
            for name, p in procs.items():
                if p.poll() is not None:
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


# --- demo ----------------------------------------------------------------------------------------------

STAGES = ["material_intake", "production", "final_inspection", "nonconformance_review", "erp_completion",
          "code_issuance",
          "shipment", "done"]


class DemoPlant:
    """Plays the inspector, the MES and the reviewers for the demo's work orders."""

    def __init__(self, hub: httpx.AsyncClient, fail_rate: float, seed: int | None) -> None:
        self.hub = hub
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
        for ncr in st["open_ncrs"]:
            n = await self.hub.get(f"/api/ncrs/{ncr}")
            if n.status_code != 200:
                continue
            state = n.json()["state"]
            if state == "open":
                body = {"action": "confirm", "role": "qa_supervisor", "reviewer": "demo-qa",
                        "reason": "out of specification confirmed"}
            elif state == "mrb":
                iqc = ncr and any(ncr == x for x in st["open_ncrs"]) and "iqc" in n.json()["description"]
                action = "use_as_is" if iqc else self.rng.choice(["use_as_is", "rework", "use_as_is"])
                body = {"action": action, "role": "mrb_engineering", "reviewer": "demo-mrb",
                        "reason": "demo disposition", **({"rework_operation": 10} if action == "rework" else {})}
            else:
                continue
            await self.hub.post(f"/api/ncrs/{ncr}/decisions", json=body)
        return False


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
    async with httpx.AsyncClient(base_url=erp_url, timeout=60) as erp, \
            httpx.AsyncClient(base_url=hub_url, timeout=30) as hub:
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
        plant = DemoPlant(hub, fail_rate, seed)
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
                    counts[plant.stage.get(number, "material_intake")] += 1
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


audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("verify")
def audit_verify() -> None:
    """Walk the audit hash chain and name any entry altered, removed or inserted."""
    from core.db import make_engine, make_sessionmaker
    from domain.audit import verify_chain

    async def run() -> None:
        engine = make_engine(_settings().database.url)
        async with make_sessionmaker(engine)() as session:
            report = await verify_chain(session)
        await engine.dispose()
        for p in report.problems:
            console.print(f"[red]{p}[/]")
        if not report.ok:
            console.print(f"[red]audit trail NOT intact[/]: {len(report.problems)} problem(s) in {report.entries} entries")
            raise typer.Exit(1)
        console.print(f"audit trail intact: {report.entries} entries")

    asyncio.run(run())


if __name__ == "__main__":
    app()
