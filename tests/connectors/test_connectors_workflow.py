"""Device data and certificates in the work order, against real peers: the supplier's SOAP service at
intake, the PLC (Modbus) and the oven (OPC UA) during operations, an out-of-tree scale, and faults."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.main import create_app
from core.settings import DatabaseSettings, Settings, TemporalSettings
from domain.models import Inspection, Lot, OperationRecord, WorkOrder
from domain.models_connectors import CertificateCheck, MaterialCertificate, ProcessReading
from erp_sim.plant import CertificateServiceSim, OvenSim, PlcSim
from tests.conftest import ROOT
from tests.connectors.peers import SicsScaleSim
from tests.connectors.test_connectors_registry import ensure_sics_installed
from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    SUPER_HEADERS,
    decide,
    fast_release,
    post_results,
    report_operation,
    wait_done,
    wait_ncr,
    wait_status,
)

SPEC = {"item": "BAR-42CRMO4", "grade": "42CrMo4",
        "limits": [{"name": "chemistry.C", "lower": 0.38, "upper": 0.45, "unit": "%"},
                   {"name": "mechanical.yield_mpa", "lower": 700, "unit": "MPa"}]}


async def endpoint(api: httpx.AsyncClient, kind: str, config: dict[str, Any]) -> str:
    name = f"{kind}-{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/endpoints", json={"name": name, "kind": kind, "config": config})
    assert r.status_code == 201, r.text
    return name


async def lot_status(sessionmaker, lot: str) -> str:
    async with sessionmaker() as s:
        return (await s.execute(select(Lot.status).where(Lot.number == lot))).scalar_one()


def release_with(number: str, *, heat: str | None = None, specs: list[dict] | None = None,
                 process: dict[int, list[dict]] | None = None) -> dict[str, Any]:
    ev = fast_release(number)
    wo = ev["work_order"]
    if heat is not None:
        wo["receipts"][0]["lots"][0]["heat_number"] = heat
    if specs:
        wo["material_specs"] = specs
    for op in wo["routing"]:
        op["process_data"] = (process or {}).get(op["seq"], [])
    return ev


# --- material certificates at intake ---------------------------------------------------------------------

async def test_certificate_in_spec_is_recorded_and_intake_goes_on(api: httpx.AsyncClient, soap_peer: CertificateServiceSim,
                                                                sessionmaker, wo_number):
    certs = await endpoint(api, "soap", soap_peer.endpoint_config(certificate_operation="GetCertificate"))
    heat = f"H{uuid.uuid4().hex[:6]}"
    r = await api.post("/api/erp/events", json=release_with(wo_number, heat=heat,
                                                            specs=[{**SPEC, "certificate_endpoint": certs}]))
    assert r.status_code == 202, r.text
    st = await wait_status(api, wo_number, lambda s: bool(s["certificates"]), what="the certificate verdict")
    lot = f"{wo_number}-M1"
    assert st["status"]["certificates"][lot].startswith("passed: certificate 3.1-")
    assert not st["status"]["open_ncrs"]
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await wait_status(api, wo_number, lambda s: s["stage"] == "production", what="production")
    async with sessionmaker() as s:
        cert = (await s.execute(select(MaterialCertificate).where(MaterialCertificate.heat_number == heat))).scalar_one()
        check = (await s.execute(select(CertificateCheck).join(Lot, Lot.id == CertificateCheck.lot_id)
                                 .where(Lot.number == lot))).scalar_one()
        lot_row = (await s.execute(select(Lot).where(Lot.number == lot))).scalar_one()
    assert cert.grade == "42CrMo4" and 0.38 <= cert.values["chemistry.C"] <= 0.45
    assert check.verdict == "passed" and check.certificate_id == cert.id
    assert lot_row.certificate_ref == f"CERT-H{wo_number}" or lot_row.certificate_ref == cert.certificate_no


async def test_certificate_out_of_spec_opens_an_ncr_and_rejects_the_lot(api: httpx.AsyncClient,
                                                                       soap_peer: CertificateServiceSim,
                                                                       sessionmaker, wo_number):
    certs = await endpoint(api, "soap", soap_peer.endpoint_config(certificate_operation="GetCertificate"))
    heat = f"HX{uuid.uuid4().hex[:6]}"  # the demo supplier's out-of-spec heats: C 0.52 %, yield 640 MPa
    await api.post("/api/erp/events", json=release_with(wo_number, heat=heat,
                                                        specs=[{**SPEC, "certificate_endpoint": certs}]))
    ncr = await wait_ncr(api, wo_number)
    n = (await api.get(f"/api/ncrs/{ncr}")).json()
    assert "chemistry.C 0.52 % outside 0.38..0.45" in n["description"]
    assert "mechanical.yield_mpa 640.0 MPa outside 700.." in n["description"]
    lot = f"{wo_number}-M1"
    assert await lot_status(sessionmaker, lot) == "on_hold"
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="C too high")).status_code == 200
    r = await decide(api, ncr, "return_to_supplier", "mrb_engineering", reason="certificate out of spec")
    assert r.status_code == 200, r.text
    st = await wait_status(api, wo_number, lambda s: s["material_lots"].get(lot) == "rejected", what="rejection")
    assert any("every lot received so far was rejected" in w for w in st["status"]["waiting_for"])
    async with sessionmaker() as s:
        ins = (await s.execute(select(Inspection).where(Inspection.number == f"IQC-{lot}"))).scalar_one()
    assert ins.status == "skipped"  # not left pending for an inspector

    # the ERP sends a replacement receipt with a good heat: the work order goes on
    good = {"event_id": f"pr2-{wo_number}", "event_type": "purchase_receipt.posted", "work_order": wo_number,
            "receipt": {"receipt": f"PR2-{wo_number}", "lots": [{
                "lot": f"{wo_number}-M2", "supplier": "ACME-STEEL", "item": "BAR-42CRMO4", "supplier_lot": "S2",
                "heat_number": f"H{uuid.uuid4().hex[:6]}", "quantity": 30, "uom": "KG"}]}}
    assert (await api.post("/api/erp/events", json=good)).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    st = await wait_status(api, wo_number, lambda s: s["stage"] == "production", what="production")
    assert st["status"]["certificates"][f"{wo_number}-M2"].startswith("passed")


async def test_a_soap_fault_fails_the_step_once_with_the_suppliers_message(api: httpx.AsyncClient, client,
                                                                          soap_peer: CertificateServiceSim,
                                                                          wo_number):
    certs = await endpoint(api, "soap", soap_peer.endpoint_config(certificate_operation="GetCertificate"))
    heat = f"HNONE{uuid.uuid4().hex[:6]}"
    await api.post("/api/erp/events", json=release_with(wo_number, heat=heat,
                                                        specs=[{**SPEC, "certificate_endpoint": certs}]))
    ncr = await wait_ncr(api, wo_number)
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert f"no certificate on file for heat {heat}" in st["last_error"]
    assert st["certificates"][f"{wo_number}-M1"].startswith("unavailable")
    assert "certificate unavailable" in (await api.get(f"/api/ncrs/{ncr}")).json()["description"]
    events = (await api.get(f"/api/work-orders/{wo_number}/history")).json()["events"]
    fetches = [e for e in events if e.get("activity") == "fetch_certificate"]
    assert [e["attempt"] for e in fetches if "attempt" in e] == [1]  # one attempt: a Fault is not retried
    assert any("no certificate on file" in e.get("failure", "") for e in fetches)


# --- process data during operations -----------------------------------------------------------------------

async def test_process_values_at_start_end_and_a_sampled_soak(api: httpx.AsyncClient, plc: PlcSim, oven: OvenSim,
                                                              sessionmaker, wo_number):
    plc_ep = await endpoint(api, "modbus", plc.endpoint_config())
    oven_ep = await endpoint(api, "opcua", oven.endpoint_config())
    await plc.set("spindle_rpm", 1250)
    await oven.set("Temperature", 858.5)
    process = {
        10: [{"name": "spindle", "endpoint": plc_ep, "point": "spindle_rpm", "when": "end", "lower": 1000,
              "upper": 1500}],
        20: [{"name": "furnace_temp", "endpoint": oven_ep, "point": "oven_temp", "when": "start"},
             {"name": "furnace_temp", "endpoint": oven_ep, "point": "oven_temp", "when": "during", "every_s": 0.2,
              "for_s": 1.0, "lower": 840, "upper": 880, "unit": "°C"},
             {"name": "furnace_temp", "endpoint": oven_ep, "point": "oven_temp", "when": "end", "lower": 840,
              "upper": 880}],
    }
    assert (await api.post("/api/erp/events", json=release_with(wo_number, process=process))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    st = await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    assert st["status"]["process_values"]["10.spindle.end"] == 1250
    # the soak is sampled while the furnace runs; the status says so
    st = await wait_status(api, wo_number, lambda s: any("sampling furnace_temp" in w for w in s["waiting_for"]),
                           what="sampling")
    # short sessions only: on SQLite an open transaction holds the write lock the worker needs
    async with sessionmaker() as s:
        wo_id = (await s.execute(select(WorkOrder.id).where(WorkOrder.number == wo_number))).scalar_one()

    async def samples() -> int:
        async with sessionmaker() as s:
            return (await s.execute(select(func.count()).select_from(ProcessReading).where(
                ProcessReading.work_order_id == wo_id, ProcessReading.phase == "during"))).scalar_one()

    for _ in range(100):
        if await samples() >= 6:
            break
        await asyncio.sleep(0.1)
    await report_operation(api, wo_number, 20, [])
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, wo_number)
    async with sessionmaker() as s:
        rows = (await s.execute(select(ProcessReading).where(ProcessReading.work_order_id == wo_id)
                                .order_by(ProcessReading.seq, ProcessReading.phase, ProcessReading.sample))).scalars().all()
    assert done["status"]["result"] == "completed" and not done["status"]["deviations"]
    curve = [r for r in rows if r.phase == "during"]
    assert [r.sample for r in curve] == list(range(6))  # every 0.2 s for 1 s: samples 0..5, each once
    assert all(r.value == pytest.approx(858.5) and r.in_window and r.unit == "°C" for r in curve)
    assert {(r.seq, r.parameter, r.phase) for r in rows if r.phase != "during"} == {
        (10, "spindle", "end"), (20, "furnace_temp", "start"), (20, "furnace_temp", "end")}
    # the operation records carry what the equipment said beside the MES's parameters (the trace shows them)
    async with sessionmaker() as s:
        ops = {o.seq: o.parameters for o in (await s.execute(
            select(OperationRecord).where(OperationRecord.work_order_id == wo_id))).scalars()}
    assert ops[10]["spindle.end"] == 1250 and ops[10]["spindle_rpm"] == 1200  # device beside MES
    assert ops[20]["furnace_temp.start"] == pytest.approx(858.5)
    assert ops[20]["furnace_temp.samples"] == 6
    assert ops[20]["furnace_temp.min"] == ops[20]["furnace_temp.max"] == pytest.approx(858.5)


async def test_a_value_outside_its_window_holds_the_lot_with_an_ncr(api: httpx.AsyncClient, oven: OvenSim,
                                                                   sessionmaker, wo_number):
    oven_ep = await endpoint(api, "opcua", oven.endpoint_config())
    await oven.set("Temperature", 951.0)
    process = {20: [{"name": "furnace_temp", "endpoint": oven_ep, "point": "oven_temp", "when": "during",
                     "every_s": 0.2, "lower": 840, "upper": 880, "unit": "°C"}]}
    await api.post("/api/erp/events", json=release_with(wo_number, process=process))
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    await asyncio.sleep(0.5)
    await oven.set("Temperature", 860.0)
    await report_operation(api, wo_number, 20, [])
    ncr = await wait_ncr(api, wo_number)
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()["status"]
    assert st["stage"] == "nonconformance_review"
    assert st["deviations"] and "furnace_temp 951.0 °C outside 840..880 during operation 20" in st["deviations"][0]
    assert await lot_status(sessionmaker, f"{wo_number}-L1") == "on_hold"
    assert "process deviation in operation 20" in (await api.get(f"/api/ncrs/{ncr}")).json()["description"]
    # rework: the operation runs again (its values are read again), then the work order goes on
    assert (await decide(api, ncr, "confirm", "qa_supervisor", reason="overtemperature")).status_code == 200
    assert (await decide(api, ncr, "rework", "mrb_engineering", reason="re-harden", rework_operation=20)).status_code == 200
    await report_operation(api, wo_number, 20, [], report_id=f"{wo_number}-op20-rework")
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    done = await wait_done(api, wo_number)
    assert done["status"]["result"] == "completed" and len(done["status"]["deviations"]) == 1


async def test_a_modbus_exception_is_a_visible_failure_not_retried(api: httpx.AsyncClient, plc: PlcSim,
                                                                  wo_number):
    cfg = plc.endpoint_config()
    cfg["registers"] = [*cfg["registers"], {"name": "ghost", "address": 4000}]  # the PLC has no such register
    plc_ep = await endpoint(api, "modbus", cfg)
    process = {10: [{"name": "ghost", "endpoint": plc_ep, "point": "ghost", "when": "end", "lower": 0}]}
    await api.post("/api/erp/events", json=release_with(wo_number, process=process))
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    ncr = await wait_ncr(api, wo_number)
    st = (await api.get(f"/api/work-orders/{wo_number}")).json()
    assert "Modbus exception 2 (illegal data address)" in st["status"]["deviations"][0]
    assert not [a for a in st["pending_activities"] if a["activity"] == "read_process"]
    assert "not read at the end of operation 10" in (await api.get(f"/api/ncrs/{ncr}")).json()["description"]


async def test_an_out_of_tree_connector_feeds_a_work_order(api: httpx.AsyncClient, scale: SicsScaleSim,
                                                          sessionmaker, wo_number):
    """The SICS scale (tests/fixtures/tracehub-sics) is used by an endpoint and a work order: no workflow,
    activity or API code knows it."""
    ensure_sics_installed()
    scale_ep = await endpoint(api, "sics", scale.endpoint_config())
    scale.weight = 19.875
    process = {10: [{"name": "batch_weight", "endpoint": scale_ep, "point": "weight", "when": "end",
                     "lower": 15, "upper": 25}]}
    await api.post("/api/erp/events", json=release_with(wo_number, process=process))
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await report_operation(api, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])
    st = await wait_status(api, wo_number, lambda s: s["expected_operation"] == 20, what="operation 20")
    assert st["status"]["process_values"]["10.batch_weight.end"] == 19.875
    async with sessionmaker() as s:
        row = (await s.execute(select(ProcessReading).join(WorkOrder).where(
            WorkOrder.number == wo_number, ProcessReading.parameter == "batch_weight"))).scalar_one()
    assert row.value == 19.875 and row.unit == "kg" and row.in_window is True and row.endpoint == scale_ep


@pytest.mark.timeout(180)
async def test_sampling_resumes_where_it_was_after_a_worker_restart(db_url, client, sessionmaker, oven: OvenSim,
                                                                   seeded, wo_number):
    """kill -9 the worker in the middle of a soak: Temporal retries the sampler on a new worker after its
    heartbeat timeout, and it goes on from the sample it had reached (no sample twice, none from 0 again)."""
    queue = f"sample-kill-{uuid.uuid4().hex[:6]}"
    settings = Settings(database=DatabaseSettings(url=db_url),
                        temporal=TemporalSettings(address=client.service_client.config.target_host, task_queue=queue))
    env = {**os.environ, "HUB_DATABASE__URL": db_url, "HUB_TEMPORAL__ADDRESS": settings.temporal.address,
           "HUB_TEMPORAL__TASK_QUEUE": queue}

    def start_worker() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, str(ROOT / "worker.py")], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    await oven.set("Temperature", 861.0)
    app = create_app(settings, sessionmaker=sessionmaker, temporal=client)
    proc = start_worker()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as hub:
            oven_ep = await endpoint(hub, "opcua", oven.endpoint_config())
            process = {20: [{"name": "furnace_temp", "endpoint": oven_ep, "point": "oven_temp", "when": "during",
                             "every_s": 0.5, "for_s": 12.0, "lower": 840, "upper": 880}]}
            assert (await hub.post("/api/erp/events", json=release_with(wo_number, process=process))).status_code == 202
            await post_results(hub, wo_number, "iqc", IN_SPEC_IQC)
            await report_operation(hub, wo_number, 10, [{"lot": f"{wo_number}-M1", "quantity": 10.0}])

            async def stored() -> list[int]:
                async with sessionmaker() as s:
                    return list((await s.execute(
                        select(ProcessReading.sample).join(WorkOrder).where(
                            WorkOrder.number == wo_number, ProcessReading.phase == "during")
                        .order_by(ProcessReading.sample))).scalars())

            for _ in range(200):
                if len(await stored()) >= 4:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"the sampler never stored 4 samples: {await stored()}")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            before = await stored()
            # the kill hit the sampler in flight: its first attempt is still running, or (2 s without a heartbeat
            # already) timed out and waits for a worker
            pending = (await hub.get(f"/api/work-orders/{wo_number}/history")).json()["pending"]
            assert [(p["activity"], p["attempt"], p["state"]) for p in pending] in (
                [("sample_process", 1, "started")], [("sample_process", 2, "scheduled")]), pending
            assert pending[0]["attempt"] == 1 or "Heartbeat timeout" in pending[0].get("last_failure", ""), pending
            # no worker for 3 s: longer than the sampler catches up (a lag up to 2 s), so slots are lost for sure
            await asyncio.sleep(3.0)
            proc = start_worker()
            for _ in range(300):
                samples = await stored()
                if samples and samples[-1] == 24:  # 12 s every 0.5 s: samples 0..24
                    break
                await asyncio.sleep(0.1)
            await report_operation(hub, wo_number, 20, [])
            await post_results(hub, wo_number, "final", IN_SPEC_FINAL)
            done = await wait_done(hub, wo_number, timeout=60)
            events = (await hub.get(f"/api/work-orders/{wo_number}/history")).json()["events"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert done["status"]["result"] == "completed"
    assert samples == sorted(set(samples)) and samples[-1] == 24
    resumed = [n for n in samples if n > before[-1]]
    assert before[:4] == [0, 1, 2, 3] and resumed, (before, samples)
    assert len(samples) < 25  # the slots that passed while no worker ran are gone, not invented
    attempts = [e["attempt"] for e in events if e.get("activity") == "sample_process" and "attempt" in e]
    assert max(attempts) >= 2, attempts  # retried on the new worker, with the last heartbeat
    assert done["status"]["process_values"]["20.furnace_temp.max"] == pytest.approx(861.0)
