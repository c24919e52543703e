"""A small plant built through the domain services (no Temporal): shared by the trace, EPCIS and recall tests.

    M1 (heat H1, ACME) --+
    M2 (heat H2, ACME) --+--> A1 (SHAFT, op 10 on LATHE-01 by op-7) --+--> B1 (ASSY, op 10 on PRESS-09 by op-9)
    M3 (heat H3, BOLT) --------------------------------------------------+         |-> shipped to Customer X
    A1 keeps 10 of its 40 in stock; M3 keeps 30 in stock; B1 has 20 unit serials.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from activities.models import Characteristic, ConsumedLot, Measurement, OperationReport
from domain import production, quality, shipping
from domain.models import CodeBlock, Lot, LotStatus
from tests.helpers import remember_batches

RESOLVER = "https://id.tracehub.example"
GTIN_A = "09506000134352"


@dataclass
class Plant:
    tag: str
    heats: dict[str, str]
    lots: dict[str, str]
    gtin_b: str
    first_serial: int

    def unit(self, i: int = 0) -> str:
        return f"{RESOLVER}/01/{self.gtin_b}/21/{self.first_serial + i:012d}"


def _gtin(n: int) -> str:
    body = f"0950600{n:06d}"
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return body + str((10 - total % 10) % 10)


async def _release(s, lot: str, tag: str) -> None:
    plan = [Characteristic(name="hardness", nominal=30, lower=28, upper=32, unit="HRC")]
    await quality.open_inspection(s, number=f"IQC-{lot}", kind="iqc", work_order=None, lot=lot, plan=plan)
    await quality.record_results(s, number=f"IQC-{lot}", inspector="inspector-1",
                                 measurements=[Measurement(characteristic="hardness", values=[30.2])],
                                 inspected_at=None, result_id=None, resolver=RESOLVER)


async def build_plant(sessionmaker, *, ship: bool = True) -> Plant:
    tag = uuid.uuid4().hex[:6].upper()
    heats = {"M1": f"H1-{tag}", "M2": f"H2-{tag}", "M3": f"H3-{tag}"}
    lots = {k: f"{k}-{tag}" for k in ("M1", "M2", "M3", "A1", "B1")}
    gtin_b = _gtin(int(tag, 16) % 999_999)
    async with sessionmaker() as s, s.begin():
        wo_a = await production.create_work_order(
            s, number=f"WOA-{tag}", workflow_id=f"wf-a-{tag}", item="SHAFT-25", item_name=None, gtin=GTIN_A,
            quantity=40, uom="EA", line="LINE-1", due_date=None, routing=[{"seq": 10, "name": "Turning"}],
            sales_order=None, customer=None)
        wo_b = await production.create_work_order(
            s, number=f"WOB-{tag}", workflow_id=f"wf-b-{tag}", item=f"ASSY-{tag}", item_name=None, gtin=gtin_b,
            quantity=20, uom="EA", line="LINE-2", due_date=None, routing=[{"seq": 10, "name": "Pressing"}],
            sales_order="SO-1", customer="Customer X")
        for key, sup, item in (("M1", "ACME-STEEL", "BAR-42CRMO4"), ("M2", "ACME-STEEL", "BAR-42CRMO4"),
                               ("M3", "BOLT-CO", "BOLT-M8")):
            await production.receive_lot(
                s, work_order=wo_a if key != "M3" else wo_b, receipt=f"PR-{tag}", received_at=None, lot=lots[key],
                supplier=sup, item=item, supplier_lot=f"S-{key}-{tag}", heat_number=heats[key], quantity=50,
                uom="KG", certificate_ref=f"CERT-{heats[key]}", location="STORE-1", resolver=RESOLVER)
            await _release(s, lots[key], tag)
        t0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
        t1 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
        await production.record_operation(
            s, work_order=wo_a.number, output_lot=lots["A1"], operation_name="Turning", rework=False,
            report=OperationReport(report_id=f"RA-{tag}", seq=10, equipment="LATHE-01", operator="op-7", shift="A",
                                   started_at=t0, ended_at=t1, parameters={"spindle_rpm": 1200},
                                   consumed=[ConsumedLot(lot=lots["M1"], quantity=50),
                                             ConsumedLot(lot=lots["M2"], quantity=50)],
                                   good_quantity=40), resolver=RESOLVER)
        a1 = await production.get_lot(s, lots["A1"])
        await production.set_lot_status(s, a1, LotStatus.released, actor="test", why="final inspection passed")
        t2 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
        t3 = datetime(2026, 11, 21, 11, 0, tzinfo=UTC)
        await production.record_operation(
            s, work_order=wo_b.number, output_lot=lots["B1"], operation_name="Pressing", rework=False,
            report=OperationReport(report_id=f"RB-{tag}", seq=10, equipment="PRESS-09", operator="op-9", shift="B",
                                   started_at=t2, ended_at=t3, parameters={"force_kn": 80},
                                   consumed=[ConsumedLot(lot=lots["A1"], quantity=30),
                                             ConsumedLot(lot=lots["M3"], quantity=20)],
                                   good_quantity=20), resolver=RESOLVER)
        b1 = await production.get_lot(s, lots["B1"])
        await production.set_lot_status(s, b1, LotStatus.released, actor="test", why="final inspection passed")
        first = 1_000_000 + int(tag, 16) % 1_000_000 * 100
        s.add(CodeBlock(key=f"{wo_b.number}:{lots['B1']}:unit", item_id=b1.item_id, lot_id=b1.id, first_seq=first,
                        count=20))
        if ship:
            await shipping.ship_lot(s, work_order=wo_b.number, lot=lots["B1"], shipment=f"DN-{tag}",
                                    sales_order=f"SO-{tag}", customer=f"Customer X {tag}", carrier="DHL",
                                    tracking_number="TRK-1", resolver=RESOLVER)
    # the ERP has these lots as Batches (a recall blocks them there; tests.helpers.remember_batches)
    remember_batches({lots["M1"]: "BAR-42CRMO4", lots["M2"]: "BAR-42CRMO4", lots["M3"]: "BOLT-M8",
                      lots["A1"]: "SHAFT-25", lots["B1"]: f"ASSY-{tag}"})
    return Plant(tag=tag, heats=heats, lots=lots, gtin_b=gtin_b, first_serial=first)


async def lot_status(sessionmaker, number: str) -> str:
    async with sessionmaker() as s:
        return (await s.execute(select(Lot.status).where(Lot.number == number))).scalar_one()


@contextmanager
def served_hub(db_url: str) -> Iterator[str]:
    """The hub's API on a free port (uvicorn in a thread, the plant's resolver), for the CLI's tests: its URL."""
    import threading
    import time

    import uvicorn

    from api.main import create_app
    from core.settings import DatabaseSettings, Settings
    from tests.conftest import free_port

    port = free_port()
    app = create_app(Settings(database=DatabaseSettings(url=db_url), resolver_base_url=RESOLVER))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 10
        while not server.started and time.time() < deadline:
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
