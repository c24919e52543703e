"""Audit chain benchmark on PostgreSQL: concurrent appends, and verifying a chain of a million entries.

    .venv/bin/python bench/audit.py [--entries 1000000] [--writers 8] [--appends 2000] [--db-url URL]

The database is `tracehub_bench_audit` on HUB_TEST_DATABASE_URL's server (default
postgresql+psycopg://postgres@127.0.0.1:5432/...), or exactly `--db-url`; it is dropped, recreated and
upgraded with the hub's migrations. Then:
1. the chain of `--entries` entries is built in bulk: the hashes are computed in Python, in order, with the
   hub's own `entry_hash` / `canonical_changes`, and the rows go in with COPY (the append-only triggers
   refuse only UPDATE, DELETE and TRUNCATE);
2. `--writers` asyncio tasks append `--appends` entries between them on top of it, each append in its own
   transaction through `domain.audit.audit` (what the hub does: the advisory lock serialises them);
3. `domain.audit.verify_chain` walks the whole chain, which must come back with no problem and every entry.

One JSON line per figure on stdout ({"metric", "value", "unit", ...}); progress on stderr:
- audit_append_per_s: appends committed per second, all writers together (with p50/p99 latency of one append);
- audit_verify_entries_per_s: entries verified per second by verify_chain (the whole chain, one session);
- audit_bulk_build_entries_per_s: how fast step 1 built the chain (hashing + COPY), for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from core.db import make_engine, make_sessionmaker
from domain.audit import GENESIS, audit, canonical_changes, entry_hash, verify_chain
from migrations import upgrade

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/tracehub_bench_audit"
DB_NAME = "tracehub_bench_audit"
T0 = datetime(2026, 1, 1, tzinfo=UTC)
ACTIONS = [("lot.received", "lot"), ("lot.status", "lot"), ("inspection.recorded", "inspection"),
           ("work_order.released", "work_order"), ("ncr.decided", "ncr"), ("shipment.sent", "shipment")]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(metric: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 1), "unit": unit, **extra}), flush=True)


def database_url(arg: str | None) -> str:
    if arg:
        return arg
    env = os.environ.get("HUB_TEST_DATABASE_URL")
    u = make_url(env or DEFAULT_PG)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.get_backend_name() != "postgresql":
        raise SystemExit(f"bench/audit.py measures PostgreSQL; {u.drivername} given")
    # the server of HUB_TEST_DATABASE_URL, never its database: this one is dropped
    return u.set(database=DB_NAME).render_as_string(hide_password=False)


def recreate(url: str) -> None:
    u = make_url(url)
    admin = create_engine(u.set(drivername="postgresql+psycopg", database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{u.database}"'))
    admin.dispose()
    upgrade(url)


def changes_of(i: int) -> dict[str, Any]:
    # what the hub records: status moves, quantities, people's words (non-ASCII included)
    return {"status": ["quarantine", "released"] if i % 2 else ["released", "shipped"], "qty": 1.5 * (i % 977),
            "by": f"user{i % 37}", "why": "checked ✓ é" if i % 5 == 0 else "ok"}


def build_chain(url: str, n: int) -> float:
    """COPY n chained entries; returns seconds taken."""
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    cols = "seq, prev_hash, hash, at, actor, action, entity, entity_key, changes"
    t = time.perf_counter()
    prev = GENESIS
    with psycopg.connect(dsn) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY audit_log ({cols}) FROM STDIN") as cp:
            for seq in range(1, n + 1):
                action, entity = ACTIONS[seq % len(ACTIONS)]
                at = T0 + timedelta(microseconds=seq * 1_000_003)  # distinct instants, some on whole seconds
                actor, key = f"user{seq % 37}", f"{entity.upper()}-{seq // 3}"
                cj = canonical_changes(changes_of(seq))
                h = entry_hash(prev, seq, at, actor, action, entity, key, cj)
                cp.write_row((seq, prev, h, at, actor, action, entity, key, cj))
                prev = h
                if seq % 200_000 == 0:
                    log(f"  {seq:,} entries hashed and sent")
        conn.commit()
        conn.execute("ANALYZE audit_log")
    return time.perf_counter() - t


async def append(url: str, writers: int, total: int) -> tuple[float, list[float]]:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    latencies: list[float] = []
    per_writer = total // writers

    async def writer(w: int) -> None:
        for i in range(per_writer):
            t = time.perf_counter()
            async with sm() as s, s.begin():  # one transaction per append, as a route or an activity does
                await audit(s, actor=f"writer{w}", action="lot.status", entity="lot", key=f"W{w}-{i}",
                            changes=changes_of(i))
            latencies.append(time.perf_counter() - t)

    async with sm() as s:  # open the pool's connections before the clock starts
        await s.execute(text("SELECT 1"))
    t = time.perf_counter()
    await asyncio.gather(*(writer(w) for w in range(writers)))
    wall = time.perf_counter() - t
    await engine.dispose()
    return wall, latencies


async def verify(url: str) -> tuple[float, Any]:
    engine = make_engine(url)
    async with make_sessionmaker(engine)() as s:
        t = time.perf_counter()
        report = await verify_chain(s)
        wall = time.perf_counter() - t
    await engine.dispose()
    return wall, report


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000, help="chain length built in bulk")
    ap.add_argument("--writers", type=int, default=8, help="concurrent appending tasks")
    ap.add_argument("--appends", type=int, default=2000, help="appends by all writers together")
    ap.add_argument("--db-url", default=None, help="exact database URL (dropped and recreated)")
    a = ap.parse_args()
    url = database_url(a.db_url)
    log(f"database {make_url(url).render_as_string(hide_password=True)}: dropped, recreated, upgraded")
    recreate(url)

    log(f"building a chain of {a.entries:,} entries (hashes in Python, COPY)")
    built = build_chain(url, a.entries)
    emit("audit_bulk_build_entries_per_s", a.entries / built, "entries/s", entries=a.entries, seconds=round(built, 1))

    log(f"{a.writers} writers appending {a.appends:,} entries, one transaction each")
    wall, lat = asyncio.run(append(url, a.writers, a.appends))
    emit("audit_append_per_s", len(lat) / wall, "appends/s", writers=a.writers, appends=len(lat),
         p50_ms=round(pct(lat, 50) * 1000, 2), p99_ms=round(pct(lat, 99) * 1000, 2),
         chain_before=a.entries)

    expected = a.entries + len(lat)
    log(f"verify_chain over {expected:,} entries")
    wall, report = asyncio.run(verify(url))
    if not report.ok or report.entries != expected:
        raise SystemExit(f"verify_chain found {report.entries} entries (expected {expected}) and problems: "
                         f"{report.problems[:5]}")
    emit("audit_verify_entries_per_s", report.entries / wall, "entries/s", entries=report.entries,
         seconds=round(wall, 1))


if __name__ == "__main__":
    main()
