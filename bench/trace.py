"""Trace and EPCIS capture benchmark on PostgreSQL: a synthetic plant built in bulk, then timed traces.

    .venv/bin/python bench/trace.py [--lots 1000000] [--units 5000000] [--levels 5] [--fan-in 3]
                                    [--heat-lots 8] [--samples 300] [--forward-samples 20]
                                    [--capture-events 20000] [--capture-batch 1000] [--db-url URL] [--keep]

The plant (database `tracehub_bench` on HUB_TEST_DATABASE_URL's server, dropped and rebuilt unless --keep
finds it already built at the same size):
- `--lots` lots over `--levels` levels of genealogy, the same number per level. Level 0 are received material
  lots (supplier, supplier lot, certificate, an IQC inspection with its measurement); every `--heat-lots` of
  them share a heat number. Each lot above consumes `--fan-in` random lots of the level below, recorded by an
  operation (equipment, operator, shift, times, process parameters) and one lineage edge per consumed lot.
- `--units` unit serials on the top-level lots, one serial block per lot as the hub issues them (serial_block under
  each product's default unit code rule, with its first and last code: domain.codes.issue_block); half of the
  top-level lots are shipped (10 lots per shipment, 200 customers), the rest are in stock.
Rows go in with COPY (triggers off); the lineage index is the hub's own trace_node / trace_edge tables, and
the per-lot trace rows (trace_lot_doc) are then built in one pass by trace_lot_doc_rebuild(), as migration
0014_trace_doc does for existing data. With --keep the migrations are brought up to date on the kept plant.

Figures (warm-up runs excluded), one JSON line each on stdout: {"metric", "value", "unit", ...}:
- backward_trace_p50_ms / _p99_ms: the hub's trace, that is the JSON GET /api/trace/backward serves
  (domain.trace_containers.backward_answer serialised with trace.to_json: the bytes the route sends) from a
  random unit serial to raw materials, suppliers, heats and certificates, with every operation, inspection, NCR
  and shipment on the way, and the unit's packing (the plant packs no units: one query that finds none).
- forward_trace_heat_p50_ms: the hub's trace from a heat number, the JSON GET /api/trace/forward serves
  (domain.trace_containers.forward_answer, serialised: lots, units, where each is now, customers, and the
  cases and pallets holding the units: none in this plant); the line says how many units the heats reached.
- backward_vs_bare_cte_ratio / forward_vs_bare_cte_ratio: hub time / a bare recursive SQL query (node ids
  only) over the same lineage, run on a raw psycopg connection in the same run, both cold: the relations are
  first read into the kernel's page cache (pg_prewarm 'read'), and the hub and the bare query each start from
  their own half of one random draw of starts, which nobody has read since.
- forward_vs_per_node_walk_ratio: hub forward time / a walk of the same graph with one query per node (run
  after the hub and the bare query, on the pages they brought in).
- `..._warm` lines: the hub's trace and the bare query again on the hub's start, each on pages it has just read.
- `..._after_hub` lines: the bare query run right after the hub's cold trace on the pages the hub's walk brought
  in (the baseline of earlier versions of this bench: cold hub against warm bare).
- forward samples are heats reaching at least 10,000 units (`heats_under_10000_units_left_out` counts the
  others, timed and dropped); the bare query's starts are not filtered.
- epcis_capture_events_per_s: events validated (JSON Schema + rules), hashed, stored and indexed per
  second through POST /epcis/capture (the FastAPI app in-process, documents of `--capture-batch` events,
  1,000 by default: captured in the request), and epcis_capture_async_events_per_s the same for documents of
  `--capture-big-batch` events (10,000: captured by the capture workflow, the clock stops when their jobs end).
The hub's traces are timed as the API serves them: the routes' answer functions with a read-only session
(ReadSessionDep) and the app's trace reader (core.db.FastReader, autocommit connections: the trace's one
statement needs no transaction around it), after gc.collect() and gc.freeze() as the API does at start-up.
Both apply to the hub's side only, as they apply to the API; the baselines run as before on their own raw
connection.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/tracehub_test"
RESOLVER = "https://id.tracehub.example"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def emit(metric: str, value: float, unit: str, **extra: Any) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit, **extra}), flush=True)


def gtin(n: int) -> str:
    body = f"0950600{n:06d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


# --- the plant --------------------------------------------------------------------------------------------


class Copier:
    """COPY rows into a table through psycopg, in chunks."""

    def __init__(self, conn: psycopg.Connection, table: str, cols: list[str]) -> None:
        self.conn, self.table, self.cols = conn, table, cols
        self.rows: list[tuple[Any, ...]] = []
        self.count = 0

    def add(self, *row: Any) -> None:
        self.rows.append(row)
        if len(self.rows) >= 100_000:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        with self.conn.cursor() as cur, cur.copy(f"COPY {self.table} ({', '.join(self.cols)}) FROM STDIN") as cp:
            for r in self.rows:
                cp.write_row(r)
        self.count += len(self.rows)
        self.rows = []


def build(url: str, a: argparse.Namespace) -> dict[str, Any]:
    from domain.code_rules import IssueContext, default_spec, namespace_of
    from domain.codes import compiled, end_codes
    from domain.models_codes import CodeRule
    from migrations import upgrade

    sa_url = make_url(url)
    dsn = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
    rng = random.Random(7)
    per_level = a.lots // a.levels
    units_per_lot = max(1, a.units // per_level)
    meta = {"lots": per_level * a.levels, "levels": a.levels, "fan_in": a.fan_in, "units": units_per_lot * per_level,
            "heat_lots": a.heat_lots, "codes": "serial_block"}
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            row = c.execute("SELECT value FROM bench_meta WHERE key = 'plant'").fetchone()
            if a.keep and row and json.loads(row[0]) == meta:
                log("plant already built at this size (--keep): reusing it (migrations brought up to date)")
                upgrade(url)  # a newer migration builds what it needs for the rows already there
                return meta
    except (psycopg.errors.UndefinedTable, psycopg.OperationalError):  # no plant, or no database yet
        pass
    admin = create_engine(sa_url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{sa_url.database}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{sa_url.database}"'))
    admin.dispose()
    upgrade(url)
    log(f"building {meta['lots']:,} lots over {a.levels} levels, {meta['units']:,} units ...")
    t_build = time.perf_counter()
    now = datetime.now(UTC)
    with psycopg.connect(dsn) as c:
        c.execute("SET synchronous_commit = off")
        c.execute("SET session_replication_role = replica")  # bulk load: rows arrive table by table, FKs hold at the end
        top_items = 20
        items = Copier(c, "item", ["id", "code", "name", "gtin", "uom"])
        for lvl in range(a.levels - 1):
            items.add(lvl + 1, f"ITEM-L{lvl}", f"level {lvl} item", None, "KG" if lvl == 0 else "EA")
        for k in range(top_items):
            items.add(a.levels + k, f"PRODUCT-{k}", f"finished product {k}", gtin(500 + k), "EA")
        items.flush()
        # the finished products' unit code rules, as the hub saves them when an item has none (codes.current_rule:
        # GTIN + 12-digit serial), and their serial blocks below, as domain.codes.issue_block writes them
        rules = Copier(c, "code_rule", ["id", "item_id", "level", "version", "spec", "namespace", "secret",
                                        "created_by", "created_at"])
        bound: dict[int, tuple[Any, Any]] = {}
        namespaces: dict[int, str] = {}
        for k in range(top_items):
            g, code = gtin(500 + k), f"PRODUCT-{k}"
            spec = default_spec("unit", g, code)
            namespaces[k] = namespace_of(spec, item_code=code, level="unit", gtin=g)
            row = CodeRule(id=k + 1, item_id=a.levels + k, level="unit", version=1,
                           spec=spec.model_dump(exclude_none=True), namespace=namespaces[k],
                           secret=secrets.token_hex(32))
            rules.add(row.id, row.item_id, row.level, row.version, json.dumps(row.spec), row.namespace, row.secret,
                      "bench", now)
            cr = compiled(row, g)
            bound[k] = (cr, cr.bind(IssueContext(lot=None, line=None, gtin=g)))
        rules.flush()
        suppliers = Copier(c, "supplier", ["id", "code", "name"])
        for k in range(50):
            suppliers.add(k + 1, f"SUP-{k}", f"Supplier {k}")
        suppliers.flush()
        n_wo = (per_level * (a.levels - 1)) // 100 + 1
        wos = Copier(c, "work_order", ["id", "number", "workflow_id", "item_id", "quantity", "uom", "line", "routing",
                                       "status", "stage", "good_quantity", "scrap_quantity", "released_at"])
        for w in range(1, n_wo + 1):
            wos.add(w, f"WO-{w}", f"work-order-WO-{w}", 2, 100, "EA", f"LINE-{w % 8}",
                    json.dumps([{"seq": 10, "name": "Make"}]), "completed", "done", 100, 0, now)
        wos.flush()
        lots = Copier(c, "lot", ["id", "number", "kind", "item_id", "supplier_id", "supplier_lot", "heat_number",
                                 "certificate_ref", "receipt", "quantity", "quantity_remaining", "uom", "status",
                                 "location", "work_order_id", "created_at", "updated_at"])
        nodes = Copier(c, "trace_node", ["id", "uri", "kind", "lot_id"])
        edges = Copier(c, "trace_edge", ["parent_id", "child_id", "via"])
        ops = Copier(c, "operation_record", ["report_id", "work_order_id", "output_lot_id", "seq", "name", "rework",
                                             "equipment", "operator", "shift", "started_at", "ended_at", "parameters",
                                             "consumed", "good_quantity", "scrap_quantity", "recorded_at"])
        ins = Copier(c, "inspection", ["id", "number", "kind", "lot_id", "status", "inspector", "opened_at",
                                       "inspected_at"])
        chars = Copier(c, "characteristic_result", ["inspection_id", "name", "nominal", "lower", "upper", "unit",
                                                    "sample_size", "values", "verdict"])
        blocks = Copier(c, "serial_block", ["key", "namespace", "rule_id", "first_seq", "count", "purpose", "lot_id",
                                            "work_order", "first_code", "last_code", "created_at"])
        ships = Copier(c, "shipment", ["id", "number", "sales_order", "customer", "carrier", "shipped_at"])
        lines = Copier(c, "shipment_line", ["shipment_id", "lot_id", "quantity"])
        next_seq = {k: 0 for k in range(top_items)}
        lot_id = 0
        level_ids: list[range] = []
        shipment_id = 0
        for lvl in range(a.levels):
            start = lot_id + 1
            for i in range(per_level):
                lot_id += 1
                t = T0 + timedelta(minutes=lot_id)
                top = lvl == a.levels - 1
                if lvl == 0:
                    heat = f"H{i // a.heat_lots:07d}"
                    sup = 1 + (i // a.heat_lots) % 50
                    lots.add(lot_id, f"M-{lot_id}", "material", 1, sup, f"SL-{lot_id}", heat, f"CERT-{heat}",
                             f"PR-{lot_id // 20}", 100.0, 0.0, "KG", "consumed", "STORE-1", None, t, t)
                    nodes.add(lot_id, f"urn:tracehub:lot:M-{lot_id}", "lot", lot_id)
                    ins.add(lot_id, f"IQC-M-{lot_id}", "iqc", lot_id, "passed", "inspector-1", t, t)
                    chars.add(lot_id, "hardness", 30.0, 28.0, 32.0, "HRC", 1, json.dumps([round(29 + rng.random() * 2, 2)]),
                              "passed")
                else:
                    item = a.levels + (i % top_items) if top else lvl + 1
                    status = "consumed" if not top else ("shipped" if i % 2 == 0 else "released")
                    number = f"L{lvl}-{lot_id}"
                    wo = 1 + (lot_id - per_level) // 100
                    remaining = 0.0 if status != "released" else float(units_per_lot)
                    lots.add(lot_id, number, "output", item, None, None, None, None, None, float(units_per_lot),
                             remaining, "EA", status, f"WH-{lvl}", wo, t, t)
                    if top:
                        g = gtin(500 + i % top_items)
                        nodes.add(lot_id, f"https://id.gs1.org/01/{g}/10/{number}", "lot", lot_id)
                    else:
                        nodes.add(lot_id, f"urn:tracehub:lot:{number}", "lot", lot_id)
                    below = level_ids[lvl - 1]
                    parents = rng.sample(below, a.fan_in)
                    for p in parents:
                        edges.add(p, lot_id, "transformation")
                    consumed = json.dumps([{"lot": f"lot-{p}", "quantity": 1.0} for p in parents])
                    ops.add(f"R-{lot_id}", wo, lot_id, 10, "Make", False, f"EQ-{lot_id % 40}", f"op-{lot_id % 60}", "A",
                            t, t + timedelta(minutes=30), json.dumps({"temperature_c": 850 + lot_id % 20, "soak_min": 45}),
                            consumed, units_per_lot, 0, t)
                    if top:
                        k = i % top_items
                        first_code, last_code = end_codes(*bound[k], next_seq[k], units_per_lot)
                        blocks.add(f"WO-{wo}:{number}:unit", namespaces[k], k + 1, next_seq[k], units_per_lot, "order",
                                   lot_id, f"WO-{wo}", first_code, last_code, t)
                        next_seq[k] += units_per_lot
                        if status == "shipped":
                            if (i // 2) % 10 == 0:
                                shipment_id += 1
                                ships.add(shipment_id, f"DN-{shipment_id}", f"SO-{shipment_id}",
                                          f"Customer {shipment_id % 200}", "DHL", t)
                            lines.add(shipment_id, lot_id, float(units_per_lot))
            level_ids.append(range(start, lot_id + 1))
            log(f"  level {lvl}: {per_level:,} lots")
        for cp in (lots, nodes, edges, ops, ins, chars, blocks, ships, lines):
            cp.flush()
        counters = Copier(c, "code_counter", ["namespace", "next_seq"])
        for k in range(top_items):
            counters.add(namespaces[k], next_seq[k])
        counters.flush()
        for table, col in (("item", "id"), ("supplier", "id"), ("work_order", "id"), ("lot", "id"),
                           ("inspection", "id"), ("shipment", "id"), ("code_rule", "id"), ("serial_block", "id")):
            c.execute(f"SELECT setval(pg_get_serial_sequence('{table}', '{col}'), (SELECT max({col}) FROM {table}))")
        c.execute("CREATE TABLE IF NOT EXISTS bench_meta (key text primary key, value text)")
        # the rows went in with the triggers off (replica role): build the per-lot trace rows the triggers keep
        # (migrations/versions/0014_trace_doc.py) in one pass, as that migration does for existing data
        t_doc = time.perf_counter()
        c.execute("SET session_replication_role = origin")
        c.execute("ANALYZE")  # statistics of the tables just loaded, for the rebuild's per-lot lookups
        c.execute("SELECT trace_lot_doc_rebuild()")
        log(f"  per-lot trace rows: {time.perf_counter() - t_doc:.1f} s")
        c.execute("INSERT INTO bench_meta VALUES ('plant', %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                  (json.dumps(meta),))
        c.commit()
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("VACUUM ANALYZE")
    log(f"built in {time.perf_counter() - t_build:.1f} s")
    emit("plant_build_s", time.perf_counter() - t_build, "s", **meta)
    return meta


# --- the measurements -------------------------------------------------------------------------------------

BARE_UP = """WITH RECURSIVE up(id) AS (SELECT %s::bigint UNION SELECT e.parent_id FROM trace_edge e
             JOIN up ON e.child_id = up.id) SELECT id FROM up"""
BARE_DOWN = """WITH RECURSIVE down(id) AS (SELECT n.id FROM trace_node n JOIN lot l ON l.id = n.lot_id
               WHERE l.heat_number = %s UNION SELECT e.child_id FROM trace_edge e JOIN down ON e.parent_id = down.id)
               SELECT id FROM down"""


# what the traces and the baselines read: brought into the kernel's page cache (not PostgreSQL's buffers) first
_PREWARM = ("trace_edge", "trace_edge_pkey", "ix_trace_edge_child_parent_via", "trace_lot_doc", "trace_lot_doc_pkey",
            "trace_node", "trace_node_pkey", "trace_node_lot_id_key", "serial_block", "ix_serial_block_range",
            "serial_block_key_key", "ix_serial_block_lot_id", "code_rule", "code_block", "ix_code_block_item_first_seq",
            "lot", "lot_pkey", "item", "supplier")


def prewarm(dsn: str) -> bool:
    """Read the plant's trace relations once into the kernel's page cache (pg_prewarm 'read'), as on a server
    that has been answering traces for a while: without it, the figures depend on what else ran on the machine
    since the plant was built (a trace then waits for the disk). PostgreSQL's own buffers are left as they are."""
    try:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
            t = time.perf_counter()
            n = c.execute("SELECT sum(pg_prewarm(c.oid::regclass, 'read')) FROM pg_class c WHERE c.relname = ANY(%s)"
                          " OR c.relname LIKE 'ix_lot_%%'", (list(_PREWARM),)).fetchone()[0]
            log(f"prewarmed {n or 0:,} pages into the page cache in {time.perf_counter() - t:.1f} s")
            return True
    except psycopg.Error as e:
        log(f"no prewarm (pg_prewarm unavailable: {e}); cold figures include disk reads")
        return False


async def measure_traces(url: str, a: argparse.Namespace, meta: dict[str, Any]) -> None:
    """Each sample: the hub's trace from a start nobody has read since the prewarm ("cold": its pages are in the
    kernel's cache, not in PostgreSQL's buffers), the bare query from another such start (cold too: the two
    sets of starts are disjoint halves of one random draw), then on the hub's start the bare query once (on the
    pages the hub's walk has just brought in: the figure earlier versions reported as the baseline) and both
    again, timed ("warm": each on pages it has just read itself)."""
    import gc

    import numpy as np
    import orjson

    from core.db import FastReader, make_engine, make_read_sessionmaker
    from domain import trace, trace_containers
    from domain.code_rules import IssueContext
    from domain.codes import compiled
    from domain.models_codes import CodeRule

    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    prewarmed = prewarm(dsn)
    engine = make_engine(url)
    sm = make_read_sessionmaker(engine)  # what the routes' ReadSessionDep gives
    reader = FastReader(engine.url)  # what the routes pass: the app's trace_reader (api/main.py)
    await reader.open()
    raw = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    rng = random.Random(11)
    async with sm() as s:
        blocks = (await s.execute(text(
            "SELECT b.lot_id, b.first_seq, b.count, b.rule_id, n.id FROM serial_block b "
            "JOIN trace_node n ON n.lot_id = b.lot_id ORDER BY random() LIMIT :n"), {"n": 2 * (a.samples + 20)})).all()
        # each block's codes as its rule version renders them (domain.codes)
        renderers = {}
        for rid, item_id, level, version, spec, namespace, secret, g in (await s.execute(text(
                "SELECT r.id, r.item_id, r.level, r.version, r.spec, r.namespace, r.secret, i.gtin FROM code_rule r "
                "JOIN item i ON i.id = r.item_id"))).all():
            cr = compiled(CodeRule(id=rid, item_id=item_id, level=level, version=version, spec=spec,
                                   namespace=namespace, secret=secret), g)
            renderers[rid] = (cr, cr.bind(IssueContext(lot=None, line=None, gtin=g)))
        heats = [r[0] for r in (await s.execute(text(
            "SELECT DISTINCT heat_number FROM lot WHERE heat_number IS NOT NULL ORDER BY 1 LIMIT 5000"))).all()]
    rng.shuffle(heats)
    # as the API does once started (api/main.py lifespan): what is loaded lives as long as the process
    gc.collect()
    gc.freeze()

    async def timed(fn: Any, *args: Any) -> tuple[float, Any]:
        t = time.perf_counter()
        out = await fn(*args)
        return (time.perf_counter() - t) * 1000, out

    async def hub_b(unit: str) -> bytes:
        async with sm() as s:
            return trace.to_json(await trace_containers.backward_answer(s, unit, resolver=RESOLVER, reader=reader,
                                                                        as_sent=True))

    async def hub_f(heat: str) -> bytes:
        async with sm() as s:
            return trace.to_json(await trace_containers.forward_answer(s, resolver=RESOLVER, kind="heat", value=heat,
                                                                       reader=reader))

    async def walk(heat: str) -> set[int]:
        # one query per node: what a naive graph walk does
        cur = await raw.execute("SELECT n.id FROM trace_node n JOIN lot l ON l.id = n.lot_id "
                                "WHERE l.heat_number = %s", (heat,))
        frontier = [r[0] for r in await cur.fetchall()]
        seen = set(frontier)
        while frontier:
            nxt = []
            for nid in frontier:
                cur = await raw.execute("SELECT child_id FROM trace_edge WHERE parent_id = %s", (nid,))
                for (cid,) in await cur.fetchall():
                    if cid not in seen:
                        seen.add(cid)
                        nxt.append(cid)
            frontier = nxt
        return seen

    async def bare(sql: str, arg: Any) -> list[Any]:
        return await (await raw.execute(sql, (arg,))).fetchall()

    def ratio(x: list[float], y: list[float]) -> float:
        return statistics.median(x) / statistics.median(y)

    # backward: unit serial -> raw materials
    f: dict[str, list[float]] = {k: [] for k in ("hub", "bare", "after", "hub_w", "bare_w")}
    sizes = []
    for k in range(len(blocks) // 2):
        (_lot, first, count, rule_id, node), (*_, other) = blocks[2 * k], blocks[2 * k + 1]
        cr, bound = renderers[rule_id]
        unit = RESOLVER + bound.render(cr.numbers(np.array([first + rng.randrange(count)], dtype=np.uint64)),
                                       "")[0].value
        dt, body = await timed(hub_b, unit)
        db, _ = await timed(bare, BARE_UP, other)
        da, ids = await timed(bare, BARE_UP, node)
        dtw, _ = await timed(hub_b, unit)
        dbw, _ = await timed(bare, BARE_UP, node)
        # checks only, not timed (the API sends the bytes as they are); parsed after the timed runs and dropped
        # before the next, so the bench's own copy of an answer never sits in the heap the hub's runs collect
        res = orjson.loads(body)
        n_nodes, reached_supplier = len(res["nodes"]), bool(res["suppliers"])
        del res, body
        assert len(ids) == n_nodes, (len(ids), n_nodes)
        assert reached_supplier, "the backward trace did not reach a supplier"
        if k >= 20:
            for key, v in zip(f, (dt, db, da, dtw, dbw), strict=True):
                f[key].append(v)
            sizes.append(n_nodes)
    n = len(f["hub"])
    emit("backward_trace_p50_ms", statistics.median(f["hub"]), "ms", target="< 5", samples=n,
         lots_per_trace=statistics.median(sizes), prewarmed=prewarmed)
    emit("backward_trace_p99_ms", pct(f["hub"], 99), "ms", samples=n)
    emit("backward_bare_cte_p50_ms", statistics.median(f["bare"]), "ms", starts="cold, other units")
    emit("backward_vs_bare_cte_ratio", ratio(f["hub"], f["bare"]), "x", target="<= 5", both="cold")
    emit("backward_trace_warm_p50_ms", statistics.median(f["hub_w"]), "ms", p99=round(pct(f["hub_w"], 99), 3))
    emit("backward_bare_cte_warm_p50_ms", statistics.median(f["bare_w"]), "ms")
    emit("backward_vs_bare_cte_warm_ratio", ratio(f["hub_w"], f["bare_w"]), "x", both="warm")
    emit("backward_bare_cte_after_hub_p50_ms", statistics.median(f["after"]), "ms")
    emit("backward_vs_bare_cte_after_hub_ratio", ratio(f["hub"], f["after"]), "x",
         hub="cold", bare="on the pages the hub has just read (the baseline of earlier versions)")

    # forward: heat -> every lot, unit and customer
    f = {k: [] for k in ("hub", "bare", "after", "walk", "hub_w", "bare_w")}
    units = []
    small = 0  # heats reaching under 10,000 units: timed, not counted (the figure is for heats reaching more)
    for k in range(len(heats) // 2):
        if len(f["hub"]) >= a.forward_samples:
            break
        heat, other = heats[2 * k], heats[2 * k + 1]
        dt, body = await timed(hub_f, heat)
        db, _ = await timed(bare, BARE_DOWN, other)
        da, ids = await timed(bare, BARE_DOWN, heat)
        dw, seen = await timed(walk, heat)
        dtw, _ = await timed(hub_f, heat)
        dbw, _ = await timed(bare, BARE_DOWN, heat)
        res = orjson.loads(body)  # checks only, not timed, and dropped before the next sample's runs (as above)
        n_nodes, n_units = len(res["nodes"]), res["summary"]["units"]
        del res, body
        assert len(ids) == len(seen) == n_nodes, (len(ids), len(seen), n_nodes)
        if n_units < 10_000:
            small += 1
        elif k >= 3:
            for key, v in zip(f, (dt, db, da, dw, dtw, dbw), strict=True):
                f[key].append(v)
            units.append(n_units)
    n = len(f["hub"])
    # the bare query's starts are not filtered by reach: smaller heats there only make the ratio larger
    emit("forward_trace_heat_p50_ms", statistics.median(f["hub"]), "ms", target="< 100", samples=n,
         units_reached_median=statistics.median(units), units_reached_min=min(units), prewarmed=prewarmed,
         heats_under_10000_units_left_out=small)
    emit("forward_bare_cte_p50_ms", statistics.median(f["bare"]), "ms", starts="cold, other heats")
    emit("forward_vs_bare_cte_ratio", ratio(f["hub"], f["bare"]), "x", target="<= 3", both="cold")
    emit("forward_per_node_walk_p50_ms", statistics.median(f["walk"]), "ms")
    emit("forward_vs_per_node_walk_ratio", ratio(f["hub"], f["walk"]), "x", target="< 0.25",
         hub="cold", walk="after the hub's and the bare query's walks over the same edges")
    emit("forward_trace_heat_warm_p50_ms", statistics.median(f["hub_w"]), "ms")
    emit("forward_bare_cte_warm_p50_ms", statistics.median(f["bare_w"]), "ms")
    emit("forward_vs_bare_cte_warm_ratio", ratio(f["hub_w"], f["bare_w"]), "x", both="warm")
    emit("forward_vs_per_node_walk_warm_ratio", ratio(f["hub_w"], f["walk"]), "x")
    emit("forward_bare_cte_after_hub_p50_ms", statistics.median(f["after"]), "ms")
    emit("forward_vs_bare_cte_after_hub_ratio", ratio(f["hub"], f["after"]), "x",
         hub="cold", bare="on the pages the hub has just read (the baseline of earlier versions)")
    await raw.close()
    await reader.close()
    await engine.dispose()


def capture_document(batch: int, seq: int, run: int) -> dict[str, Any]:
    events = []
    for i in range(batch):
        n = seq * batch + i
        t = (T0 + timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
        n = run * 10_000_000 + n  # identifiers unique across runs on the same database
        if i % 4 == 3:
            events.append({
                "type": "TransformationEvent", "eventTime": t, "eventTimeZoneOffset": "+00:00",
                "inputQuantityList": [{"epcClass": f"urn:epc:class:lgtin:4012345.012345.IN{n}", "quantity": 10,
                                       "uom": "KGM"}],
                "outputQuantityList": [{"epcClass": f"urn:epc:class:lgtin:4012345.012346.OUT{n}", "quantity": 9,
                                        "uom": "KGM"}],
                "bizStep": "commissioning", "ilmd": {"acme:heatNumber": f"HEAT{n // 8}"},
                "bizTransactionList": [{"type": "prodorder", "bizTransaction": f"urn:acme:wo:{n // 100}"}]})
        else:
            events.append({
                "type": "ObjectEvent", "action": "OBSERVE", "eventTime": t, "eventTimeZoneOffset": "+00:00",
                "bizStep": "shipping", "disposition": "in_transit",
                "epcList": [f"urn:epc:id:sgtin:4012345.011111.{n}", f"urn:epc:id:sgtin:4012345.011111.{n}b"],
                "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
                "bizTransactionList": [{"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:4012345000054:{n // 50}"},
                                       {"type": "desadv", "bizTransaction": f"urn:acme:desadv:{n // 50}"}],
                "destinationList": [{"type": "owning_party", "destination": "urn:epc:id:pgln:4012345.00000"}],
                "acme:carrier": "DHL"})
    return {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
                         {"acme": "https://ns.acme.example/epcis/"}],
            "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "2026-01-05T08:00:00Z",
            "epcisBody": {"eventList": events}}


async def capture_credentials(sm: Any, run: int) -> dict[str, str]:
    """A bearer token for the capture client (an ERP integration), when the hub asks for one."""
    try:
        from domain.identity import issue_token
    except ImportError:  # a hub without authentication
        return {}
    async with sm() as s, s.begin():
        token, _ = await issue_token(s, kind="api", name=f"bench-trace-{run}", roles=["erp"], ttl=timedelta(hours=2),
                                     created_by="bench/trace.py")
    return {"Authorization": f"Bearer {token}"}


async def measure_capture(url: str, a: argparse.Namespace) -> None:
    """Documents above INLINE_MAX_EVENTS are captured by a workflow: the 202 says running, so the clock stops
    when every job has finished (validated and stored), with a Temporal dev server and a worker in-process."""
    import sys
    from pathlib import Path

    import httpx
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from activities.epcis_capture import EpcisCaptureActivities
    from api.main import create_app
    from core.db import make_engine, make_sessionmaker
    from core.settings import DatabaseSettings, Settings, TemporalSettings
    from domain.epcis_capture import INLINE_MAX_EVENTS
    from workflows.epcis_capture import CaptureEpcisDocumentWorkflow

    engine = make_engine(url)
    sm = make_sessionmaker(engine)
    # the dev server inherits this process's stdout at its start, and prints its banner there: started with stdout
    # pointing at stderr, so stdout keeps only the JSON lines
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        env = await WorkflowEnvironment.start_local(
            dev_server_existing_path=str(Path(sys.executable).parent / "temporal"),
            data_converter=pydantic_data_converter,
            dev_server_extra_args=["--sqlite-pragma", "journal_mode=wal", "--sqlite-pragma", "synchronous=normal"])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    queue = "bench-capture"
    settings = Settings(database=DatabaseSettings(url=url),
                        temporal=TemporalSettings(address=env.client.service_client.config.target_host,
                                                  task_queue=queue))
    app = create_app(settings, sessionmaker=sm, temporal=env.client)
    run = random.randrange(1_000_000)
    headers = {"content-type": "application/ld+json", **await capture_credentials(sm, run)}
    worker = Worker(env.client, task_queue=queue, workflows=[CaptureEpcisDocumentWorkflow],
                    activities=EpcisCaptureActivities(sm).all(), max_concurrent_activities=a.capture_clients)
    async with worker, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                         timeout=600) as c:

        async def done(r: httpx.Response) -> dict[str, Any]:
            assert r.status_code == 202, r.text[:500]
            job = r.json()
            while job["running"]:
                await asyncio.sleep(0.05)
                job = (await c.get(r.headers["Location"], headers=headers)).json()
            assert job["success"], str(job)[:500]
            return job

        async def measure(batch: int, first: int) -> tuple[float, int, int]:
            n_docs = max(1, a.capture_events // batch)
            bodies = [json.dumps(capture_document(batch, first + k, run)) for k in range(n_docs + 1)]
            await done(await c.post("/epcis/capture", content=bodies[0], headers=headers))  # warm-up
            stored = 0
            pending = list(bodies[1:])

            async def client() -> None:
                nonlocal stored
                while pending:
                    body = pending.pop()
                    job = await done(await c.post("/epcis/capture", content=body, headers=headers))
                    stored += job["storedCount"]

            t = time.perf_counter()
            await asyncio.gather(*[client() for _ in range(a.capture_clients)])
            return stored / (time.perf_counter() - t), stored, n_docs

        # documents of up to INLINE_MAX_EVENTS are captured in the request; larger ones by the capture workflow
        inline = await measure(a.capture_batch, 0)
        big = await measure(a.capture_big_batch, 1_000_000)
    await env.shutdown()
    await engine.dispose()
    await asyncio.sleep(0.2)
    emit("epcis_capture_events_per_s", inline[0], "events/s", target=">= 5000", events=inline[1],
         documents=inline[2], events_per_document=a.capture_batch, concurrent_clients=a.capture_clients,
         path="in the request" if a.capture_batch <= INLINE_MAX_EVENTS else "capture workflow")
    emit("epcis_capture_async_events_per_s", big[0], "events/s", events=big[1], documents=big[2],
         events_per_document=a.capture_big_batch, concurrent_clients=a.capture_clients,
         path="in the request" if a.capture_big_batch <= INLINE_MAX_EVENTS else "capture workflow")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lots", type=int, default=1_000_000)
    p.add_argument("--units", type=int, default=5_000_000)
    p.add_argument("--levels", type=int, default=5)
    p.add_argument("--fan-in", type=int, default=3)
    p.add_argument("--heat-lots", type=int, default=8, help="raw lots per heat number")
    p.add_argument("--samples", type=int, default=300, help="backward traces timed")
    p.add_argument("--forward-samples", type=int, default=20, help="forward traces timed")
    p.add_argument("--capture-events", type=int, default=20_000)
    p.add_argument("--capture-batch", type=int, default=1000, help="events per captured document")
    p.add_argument("--capture-big-batch", type=int, default=10_000,
                   help="events per document of the second capture measurement (the capture workflow's path)")
    p.add_argument("--capture-clients", type=int, default=1, help="documents posted at the same time")
    p.add_argument("--db-url", default=None, help="default: HUB_TEST_DATABASE_URL's server, database tracehub_bench")
    p.add_argument("--keep", action="store_true", help="reuse a plant already built at the same size")
    p.add_argument("--only", choices=["traces", "capture"], help="run one part only")
    a = p.parse_args()
    url = a.db_url or make_url(os.environ.get("HUB_TEST_DATABASE_URL", DEFAULT_PG)).set(
        drivername="postgresql+psycopg", database="tracehub_bench").render_as_string(hide_password=False)
    meta = build(url, a)
    if a.only in (None, "traces"):
        log("timing traces ...")
        asyncio.run(measure_traces(url, a, meta))
    if a.only in (None, "capture"):
        log("timing EPCIS capture ...")
        asyncio.run(measure_capture(url, a))


if __name__ == "__main__":
    main()
