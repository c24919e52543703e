"""Code issuance benchmark: prints JSON lines {"metric", "value", "unit", ...}.

    .venv/bin/python bench/codes.py [--export N] [--qr N] [--scans N] [--only resolver] [--db sqlite|postgresql]
                                    [--client raw|httpx]

Runs on a fresh SQLite database in a temporary directory, or with `--db postgresql` on a fresh database
`tracehub_bench_codes` on HUB_TEST_DATABASE_URL's server (default 127.0.0.1:5432, user postgres), dropped at
the end; HUB_BENCH_DATABASE_URL overrides both (used as it is, not dropped).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import io
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from core.db import make_engine, make_sessionmaker
from domain import codes, labels, qr
from domain.models import Base, Lot
from domain.production import upsert_item
from migrations import upgrade

DOMAIN = "https://id.tracehub.example"
GTIN = "09506000134352"


def emit(metric: str, value: float, unit: str, **extra: object) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit, **extra}), flush=True)


async def _rows(sm) -> int:
    async with sm() as s:
        total = 0
        for t in Base.metadata.sorted_tables:
            total += (await s.execute(select(func.count()).select_from(t))).scalar_one()
        return total


async def issuance(url: str, export_n: int, workdir: Path) -> tuple[int, str | None]:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    async with sm() as s, s.begin():
        it = await upsert_item(s, "BENCH-1", name="Bench shaft", gtin=GTIN)
        s.add(Lot(number="BENCH-L1", kind="output", item_id=it.id, quantity=1, quantity_remaining=1,
                  status="released", location="LINE-1"))
        await codes.save_rule(s, item="BENCH-1", level="unit", spec={"elements": [
            {"ai": "01"}, {"ai": "10"}, {"ai": "21", "segments": [{"kind": "sequence", "width": 11},
                                                                   {"kind": "check"}]}]})
    before = await _rows(sm)
    t = time.perf_counter()
    async with sm() as s, s.begin():
        it = await codes.get_item(s, "BENCH-1")
        lot = (await s.execute(select(Lot).where(Lot.number == "BENCH-L1"))).scalar_one()
        rule = await codes.current_rule(s, it, "unit")
        block = await codes.issue_block(s, rule=rule, count=100_000_000, key="bench-100m", purpose="order",
                                        lot=lot, gtin=GTIN)
    dt = time.perf_counter() - t
    rows = await _rows(sm) - before
    emit("allocate_100m_serials_s", dt, "s", target="< 1")
    emit("db_rows_written", rows, "rows", target="<= 10", what="rows written by the 100M allocation")

    if export_n <= 0:
        await engine.dispose()
        return block.id, None
    async with sm() as s:
        view = await codes.block_view(s, block.id)
    for fmt, metric, what in (("uri", "export_codes_per_s", "Digital Link URI per line"),
                              ("csv", "export_csv_codes_per_s", "CSV: code, element string, Digital Link URI")):
        out = workdir / f"export.{fmt}"
        t = time.perf_counter()
        with out.open("wb") as f:
            for chunk in labels.export_chunks(view, fmt=fmt, domain=DOMAIN, count=export_n):
                f.write(chunk)
        dt = time.perf_counter() - t
        size = out.stat().st_size
        with out.open() as f:
            sample = f.readlines(4096)[1].strip()
        out.unlink()
        emit(metric, export_n / dt, "codes/s", target=">= 1000000", codes=export_n, mb=round(size / 1e6, 1),
             what=what + " (12-digit serial with its GS1 check digit)", sample=sample)
    await engine.dispose()
    return block.id, sample.split(",")[-1].strip('"')


def _png_batch(texts: list[str]) -> list[bytes]:
    return [qr.qr_png(t) for t in texts]


def qr_bench(n: int) -> None:
    texts = [f"{DOMAIN}/01/{GTIN}/10/BENCH-L1/21/{i:011d}{i % 10}" for i in range(n)]
    workers = os.cpu_count() or 2
    chunks = [texts[i::workers * 8] for i in range(workers * 8)]
    ctx = mp.get_context("fork")
    with ctx.Pool(workers) as pool:
        pool.map(_png_batch, [texts[:20]] * workers)  # warm the templates in each worker
        t = time.perf_counter()
        results = pool.map(_png_batch, chunks)
        dt = time.perf_counter() - t
    emit("qr_png_per_s", n / dt, "images/s", target=">= 1500", processes=workers, images=n)
    import zxingcpp
    from PIL import Image
    ok = 0
    for chunk, pngs in zip(chunks, results, strict=True):
        for want, png in zip(chunk, pngs, strict=True):
            got = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
            ok += len(got) == 1 and got[0].text == want
    emit("qr_png_decoded", ok, "images", of=n, decoder="zxing-cpp")


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used so far; 0 where /proc is missing."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _KeepAlive:
    """A lean HTTP/1.1 client: one keep-alive connection, GET only, Content-Length bodies. The load generator
    shares the machine with the server; httpx's AsyncClient with 100 connections costs some 5 ms of CPU per
    request on a small machine (measured), so it saturates before the server does and the latencies it reports
    are its own queueing. This one costs about 0.1 ms a request."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, accept: str) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(f"GET {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\naccept: {accept}\r\n\r\n"
                              .encode())
            head = await self.reader.readuntil(b"\r\n\r\n")
            length, close = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            await self.reader.readexactly(length)
            if close:
                self.close()
            return int(head[9:12])
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def resolver_bench(url: str, block_id: int, scans_per_client: int, clients: int = 100,
                         think_s: float = 0.1, client_kind: str = "raw") -> None:
    import httpx
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    async with sm() as s:
        view = await codes.block_view(s, block_id)
        paths = [r.digital_link.removeprefix(DOMAIN) for r in view.render(0, 5000, DOMAIN)]
    await engine.dispose()
    port = _free_port()
    env = {**os.environ, "HUB_DATABASE__URL": url}
    server = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
        [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning", "--no-access-log"],
        cwd=Path(__file__).resolve().parents[1], env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                httpx.get(base + "/health", timeout=1)  # noqa: ASYNC210 - waiting for start-up
                break
            except httpx.HTTPError:
                time.sleep(0.2)  # noqa: ASYNC251
        lat: list[float] = []
        errors = [0]
        accept = "application/json"

        async def client(c: httpx.AsyncClient) -> None:
            rnd = random.Random()
            raw = _KeepAlive("127.0.0.1", port)
            for _ in range(scans_per_client):
                # think before each scan, so the 100 clients do not all fire at the same instant at the start
                await asyncio.sleep(rnd.uniform(0, 2 * think_s))
                path = rnd.choice(paths)
                t = time.perf_counter()
                try:
                    if client_kind == "raw":
                        ok = await asyncio.wait_for(raw.get(path, accept), 30) == 200
                    else:
                        ok = (await c.get(path, headers={"accept": accept})).status_code == 200
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                    ok = False
                lat.append((time.perf_counter() - t) * 1000)
                errors[0] += not ok
            raw.close()

        # a running resolver has read the block's rule and binding once; the measurement is the steady state
        warm = _KeepAlive("127.0.0.1", port)
        t = time.perf_counter()
        assert await warm.get(paths[0], accept) == 200
        first_ms = (time.perf_counter() - t) * 1000
        warm.close()
        # the load generator must not stall its own clock: this process holds the whole hub's modules and the
        # issuance data, and a full collection here (tens of ms) would be counted as server latency
        gc.collect()
        gc.freeze()
        gc.disable()
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as c:
            t, cpu, server_cpu = time.perf_counter(), time.process_time(), _cpu_s(server.pid)
            await asyncio.gather(*(client(c) for _ in range(clients)))
            dt, cpu = time.perf_counter() - t, time.process_time() - cpu
            server_cpu = _cpu_s(server.pid) - server_cpu
        gc.enable()
        lat.sort()
        emit("resolver_p99_ms", lat[int(len(lat) * 0.99) - 1], "ms", target="< 50",
             db=make_url(url).get_backend_name(), clients=clients, think_ms=think_s * 1000, requests=len(lat),
             p50_ms=round(statistics.median(lat), 2), requests_per_s=round(len(lat) / dt, 1), errors=errors[0],
             client=client_kind, first_scan_ms=round(first_ms, 2), client_cpu_ms_per_request=round(cpu / len(lat) * 1000, 3),
             server_cpu_ms_per_request=round(server_cpu / len(lat) * 1000, 3), load_avg=os.getloadavg()[0])
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--export", type=int, default=10_000_000)
    ap.add_argument("--qr", type=int, default=6000)
    ap.add_argument("--scans", type=int, default=20, help="scans per client (100 clients)")
    ap.add_argument("--think-ms", type=float, default=100.0)
    ap.add_argument("--only", choices=["resolver"], help="run one part only (the resolver: no export, no QR)")
    ap.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw",
                    help="load generator: a lean keep-alive HTTP/1.1 client (default), or httpx's AsyncClient "
                         "(as before; it saturates first on a small machine)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pg_admin = None
        url = os.environ.get("HUB_BENCH_DATABASE_URL")
        if url is None and args.db == "postgresql":
            u = make_url(os.environ.get("HUB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/x"))
            u = u.set(drivername="postgresql+psycopg", database="tracehub_bench_codes")
            pg_admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
            with pg_admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
                c.execute(text(f'CREATE DATABASE "{u.database}"'))
            url = u.render_as_string(hide_password=False)
        url = url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        try:
            upgrade(url)
            block_id, _ = asyncio.run(issuance(url, 0 if args.only else args.export, Path(tmp)))
            print(json.dumps({"note": "load average while measuring", "value": os.getloadavg(),
                              "db": make_url(url).get_backend_name()}), flush=True)
            if not args.only:
                qr_bench(args.qr)
            asyncio.run(resolver_bench(url, block_id, args.scans, think_s=args.think_ms / 1000,
                                       client_kind=args.client))
        finally:
            if pg_admin is not None:
                with pg_admin.connect() as c:
                    c.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
                pg_admin.dispose()



if __name__ == "__main__":
    main()
