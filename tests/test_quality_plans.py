"""Inspection plans (versions, validation naming the field), SPC over recorded measurements, and CSV upload
of inspection results through the same path as the JSON results route."""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from fractions import Fraction

import httpx
import pytest
from sqlalchemy import func, select

from api.routes import quality as quality_routes
from domain.models import CharacteristicResult, Inspection, Item, Lot, Ncr
from tests.helpers import IN_SPEC_IQC, fast_release, role_headers, wait_status

pytestmark = pytest.mark.asyncio


def a_plan(item: str, operation: str = "final") -> dict:
    return {
        "item": item, "operation": operation, "note": "first article drawing rev C",
        "characteristics": [
            {"name": "outer diameter", "kind": "variable", "severity": "major", "nominal": 25.0,
             "lower": 24.95, "upper": 25.05, "unit": "mm", "gauge": "MIC-0-25-07"},
            {"name": "thread", "kind": "attribute", "severity": "critical", "defect_codes": ["GO-FAIL", "NOGO-PASS"]},
            {"name": "surface", "kind": "visual", "severity": "minor"},
        ],
        "sampling": {"critical": {"aql": 0.065, "level": "II"}, "major": {"aql": 1.0, "level": "II"},
                     "minor": {"aql": 4.0, "level": "I"}},
    }


def new_item() -> str:
    return f"PLAN-{uuid.uuid4().hex[:8].upper()}"


async def test_saving_a_plan_creates_a_version_and_lists_them_all(api: httpx.AsyncClient):
    item = new_item()
    qm = role_headers("quality_manager")
    r = await api.post("/api/quality/plans", json=a_plan(item), headers=qm)
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == 1 and v1["created_by"] == "t-quality_manager"
    assert [c["kind"] for c in v1["characteristics"]] == ["variable", "attribute", "visual"]
    assert v1["characteristics"][0] == {"name": "outer diameter", "kind": "variable", "severity": "major",
                                        "nominal": 25.0, "lower": 24.95, "upper": 25.05, "unit": "mm",
                                        "gauge": "MIC-0-25-07"}
    assert v1["characteristics"][2]["photo_required"] is True
    assert v1["sampling"] == {"critical": {"aql": "0.065", "level": "II"}, "major": {"aql": "1.0", "level": "II"},
                              "minor": {"aql": "4.0", "level": "I"}}

    changed = a_plan(item)
    changed["characteristics"][0]["upper"] = 25.04
    r = await api.post("/api/quality/plans", json=changed, headers=role_headers("qa_supervisor"))
    assert r.status_code == 201 and r.json()["version"] == 2
    # another operation of the same item has its own versions
    r = await api.post("/api/quality/plans", json=a_plan(item, "iqc"), headers=qm)
    assert r.json()["version"] == 1

    r = await api.get(f"/api/quality/plans/{item}/final", headers=role_headers("inspector"))
    assert r.status_code == 200
    versions = r.json()
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["characteristics"][0]["upper"] == 25.05  # version 1 is not changed by version 2
    assert versions[1]["characteristics"][0]["upper"] == 25.04
    r = await api.get(f"/api/quality/plans/{item}/op-none")
    assert r.status_code == 404 and "POST /api/quality/plans" in r.json()["detail"]
    r = await api.post("/api/quality/plans", json=a_plan(item), headers=role_headers("inspector"))
    assert r.status_code == 403


def _broken(mutate) -> dict:
    p = a_plan(new_item())
    mutate(p)
    return p


BAD_PLANS = [
    (lambda p: p["characteristics"][0].update(lower=25.1), "characteristics[0].lower",
     "lower limit 25.1 is above upper limit 25.05"),
    (lambda p: p["characteristics"][0].update(lower=None, upper=None), "characteristics[0].lower",
     "needs a lower or an upper spec limit"),
    (lambda p: p["characteristics"][0].update(nominal=26.0), "characteristics[0].nominal",
     "nominal 26.0 is outside the spec limits"),
    (lambda p: p["characteristics"][1].update(defect_codes=[]), "characteristics[1].defect_codes",
     "needs its defect codes"),
    (lambda p: p["characteristics"][1].update(upper=3.0), "characteristics[1].upper",
     "'thread' is attribute, judged pass/fail: it has no upper"),
    (lambda p: p["characteristics"][2].update(photo_required=False), "characteristics[2].photo_required",
     "always has a photo attached"),
    (lambda p: p["characteristics"][2].update(name="thread"), "characteristics[2].name",
     "'thread' is also characteristics[1]"),
    (lambda p: p["sampling"].pop("major"), "sampling.major", "major characteristics have no AQL"),
    (lambda p: p["sampling"]["minor"].update(aql=3.0), "sampling.minor.aql", "3.0 is not an AQL of ISO 2859-1"),
]


@pytest.mark.parametrize(("mutate", "field", "text"), BAD_PLANS)
async def test_a_bad_plan_is_refused_naming_the_field(api: httpx.AsyncClient, mutate, field, text):
    p = _broken(mutate)
    r = await api.post("/api/quality/plans", json=p)
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field and text in r.json()["detail"], r.json()
    assert (await api.get(f"/api/quality/plans/{p['item']}/final")).status_code == 404  # nothing was saved


async def test_a_plan_of_the_wrong_shape_is_refused_by_field(api: httpx.AsyncClient):
    p = _broken(lambda p: p["characteristics"][0].update(kind="measured"))
    r = await api.post("/api/quality/plans", json=p)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "characteristics.0.kind"
    p = _broken(lambda p: p.update(characteristics=[]))
    r = await api.post("/api/quality/plans", json=p)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "characteristics"


# --- SPC over recorded measurements ------------------------------------------------------------------------

async def record_samples(sessionmaker, item: str, name: str, samples: list[list[float]], *, lower: float = 24.95,
                  upper: float = 25.05, start: datetime | None = None) -> list[str]:
    """Recorded inspections of lots of `item`, one per sample, oldest first; returns the lot numbers."""
    start = start or datetime(2026, 11, 1, 8, 0, tzinfo=UTC)
    lots = []
    async with sessionmaker() as s, s.begin():
        it = (await s.execute(select(Item).where(Item.code == item))).scalar()
        if it is None:
            it = Item(code=item)
            s.add(it)
            await s.flush()
        for i, values in enumerate(samples):
            lot = Lot(number=f"{item}-L{uuid.uuid4().hex[:6]}", kind="output", item_id=it.id, quantity=10,
                      quantity_remaining=10, status="released")
            s.add(lot)
            await s.flush()
            ins = Inspection(number=f"INS-{lot.number}", kind="final", lot_id=lot.id, status="passed",
                             inspector="gauge-1", inspected_at=start + timedelta(hours=i))
            s.add(ins)
            await s.flush()
            s.add(CharacteristicResult(inspection_id=ins.id, name=name, nominal=25.0, lower=lower, upper=upper,
                                       unit="mm", sample_size=len(values), values=values, verdict="passed"))
            lots.append(lot.number)
    return lots


async def test_spc_from_recorded_measurements(api: httpx.AsyncClient, sessionmaker):
    item = new_item()
    rng = random.Random(7)
    samples = [[round(rng.gauss(25.0, 0.008), 4) for _ in range(4)] for _ in range(27)]
    samples[-1] = [25.04, 25.045, 25.042, 25.041]  # the newest lot is far off centre
    lots = await record_samples(sessionmaker, item, "outer diameter", samples)
    # a pending inspection (no verdict yet) of the same characteristic does not count
    async with sessionmaker() as s, s.begin():
        lot = (await s.execute(select(Lot).where(Lot.number == lots[0]))).scalar_one()
        pending = Inspection(number=f"INS-PENDING-{item}", kind="final", lot_id=lot.id, status="pending")
        s.add(pending)
        await s.flush()
        s.add(CharacteristicResult(inspection_id=pending.id, name="outer diameter", lower=24.95, upper=25.05,
                                   values=[30.0], verdict=None))

    r = await api.get("/api/quality/spc", params={"item": item, "characteristic": "outer diameter",
                                                  "subgroup": 5, "last": 100})
    assert r.status_code == 200, r.text
    body = r.json()

    # computed here: the newest 100 values oldest first, in subgroups of 5 ending with the newest value
    flat = [Fraction(str(v)) for sample in samples for v in sample][-100:]
    groups = [flat[i:i + 5] for i in range(0, 100, 5)]
    means = [sum(g) / 5 for g in groups]
    ranges = [max(g) - min(g) for g in groups]
    grand, r_bar = sum(means) / 20, sum(ranges) / 20
    a2, d4, d2 = Fraction("0.577"), Fraction("2.114"), Fraction("2.326")
    assert body["values_used"] == 100 and len(body["subgroups"]) == 20
    assert [g["mean"] for g in body["subgroups"]] == pytest.approx([float(m) for m in means], abs=1e-9)
    assert [g["range"] for g in body["subgroups"]] == pytest.approx([float(x) for x in ranges], abs=1e-9)
    assert body["xbar_chart"]["centre"] == pytest.approx(float(grand), abs=1e-9)
    assert body["xbar_chart"]["ucl"] == pytest.approx(float(grand + a2 * r_bar), abs=1e-9)
    assert body["xbar_chart"]["lcl"] == pytest.approx(float(grand - a2 * r_bar), abs=1e-9)
    assert body["r_chart"] == pytest.approx({"centre": float(r_bar), "ucl": float(d4 * r_bar), "lcl": 0.0})
    sigma = r_bar / d2
    assert body["sigma"]["value"] == pytest.approx(float(sigma)) and "R-bar / d2" in body["sigma"]["method"]
    cap = body["capability"]
    assert cap["cp"] == pytest.approx(float(Fraction("0.10") / (6 * sigma)), rel=1e-6)
    usl, lsl = Fraction("25.05"), Fraction("24.95")
    assert cap["cpk"] == pytest.approx(float(min(usl - grand, grand - lsl) / (3 * sigma)), rel=1e-6)

    # the shifted newest values break rule 1 in the last subgroup: a warning, not an NCR
    last = body["subgroups"][-1]["index"]
    assert any(v["rule"] == 1 and v["subgroup"] == last and v["side"] == "above" for v in body["violations"])
    assert any(f"subgroup {last}: Western Electric rule 1" in w for w in body["warnings"])
    async with sessionmaker() as s:
        lot_ids = (await s.execute(select(Lot.id).where(Lot.number.in_(lots)))).scalars().all()
        assert (await s.execute(select(func.count()).select_from(Ncr).where(Ncr.lot_id.in_(lot_ids)))).scalar() == 0
        assert set((await s.execute(select(Lot.status).where(Lot.id.in_(lot_ids)))).scalars()) == {"released"}


async def test_spc_window_and_refusals(api: httpx.AsyncClient, sessionmaker):
    item = new_item()
    await record_samples(sessionmaker, item, "bore", [[10.0, 10.1, 10.2]] * 4, lower=9.0, upper=11.0)
    q = {"item": item, "characteristic": "bore", "subgroup": 4, "last": 10}
    r = await api.get("/api/quality/spc", params=q)
    assert r.status_code == 200, r.text
    assert r.json()["values_used"] == 8 and r.json()["values_dropped"] == 2  # the 2 oldest of the last 10
    assert any("provisional" in w for w in r.json()["warnings"])
    r = await api.get("/api/quality/spc", params={**q, "characteristic": "nothing"})
    assert r.status_code == 404
    r = await api.get("/api/quality/spc", params={**q, "subgroup": 11})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "query.subgroup"
    r = await api.get("/api/quality/spc", params={**q, "last": 5})
    assert r.status_code == 422 and r.json()["field"] == "subgroup"  # 5 values make 1 subgroup of 4


# --- CSV upload ----------------------------------------------------------------------------------------------

async def test_csv_results_go_the_way_of_json_results(api: httpx.AsyncClient, wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    st = await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    iqc = st["status"]["pending_inspections"][0]["number"]
    url = f"/api/inspections/{iqc}/results/csv"

    # the JSON route's checks answer for the CSV too: a characteristic not in the plan, one missing
    r = await api.post(url, content=b"characteristic,value\nhardnes,30.1\n", headers=role_headers("inspector"))
    assert r.status_code == 422
    assert "'hardnes' is not in the plan" in r.json()["detail"] and "'hardness' is missing" in r.json()["detail"]

    csv_body = "\ufeffCharacteristic,Value\r\nhardness,30.1\r\n".encode()  # a spreadsheet's UTF-8 with BOM
    r = await api.post(url, content=csv_body, headers={**role_headers("gauge"), "content-type": "text/csv"})
    assert r.status_code == 202, r.text
    assert r.json()["verdict"] == "passed" and r.json()["status_url"] == f"/api/work-orders/{wo_number}"
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="IQC recorded")
    ins = (await api.get(f"/api/inspections/{iqc}")).json()
    assert ins["status"] == "passed" and ins["characteristics"][0]["values"] == [30.1]
    assert ins["inspector"] == "t-gauge"  # no ?inspector=: who sent it
    # the same results again, as JSON: already recorded
    r = await api.post(f"/api/inspections/{iqc}/results", json={"inspector": "i1", "measurements": IN_SPEC_IQC})
    assert r.status_code == 200 and "already recorded" in r.json()["message"]


async def test_csv_problems_are_named_by_line(api: httpx.AsyncClient):
    url = "/api/inspections/INS-NONE/results/csv"
    body = b"characteristic,value\nhardness,30.1\nhardness,abc\n,31\n\nhardness,1,2\nhardness,inf\n"
    r = await api.post(url, content=body)
    assert r.status_code == 422 and r.json()["field"] == "csv"
    detail = r.json()["detail"]
    for expected in ["line 3: value 'abc' is not a number", "line 4: the characteristic is empty",
                     "line 6: 3 cells", "line 7: value 'inf' is not a number"]:
        assert expected in detail, detail
    assert "line 2" not in detail
    for bad, text in [(b"", "the upload is empty"), (b"name,value\nx,1\n", "line 1: the header"),
                      (b"characteristic,value\n", "no values after the header"),
                      (b"characteristic,value\nhardness,\xff\n", "not UTF-8")]:
        r = await api.post(url, content=bad)
        assert r.status_code == 422 and text in r.json()["detail"], (bad, r.text)
    # a good CSV for an inspection that does not exist gets the JSON route's 404
    r = await api.post(url, content=b"characteristic,value\nhardness,30\n")
    assert r.status_code == 404
    assert (await api.post(url, content=b"characteristic,value\nhardness,30\n",
                           headers=role_headers("operator"))).status_code == 403


async def test_a_csv_over_the_limit_is_refused_after_reading_at_most_the_limit(api: httpx.AsyncClient,
                                                                               monkeypatch):
    limit = 4096
    monkeypatch.setattr(quality_routes, "CSV_LIMIT_BYTES", limit)
    url = "/api/inspections/INS-NONE/results/csv"
    row = b"hardness,30.1234567\n"
    big = b"characteristic,value\n" + row * (limit // len(row) + 10)

    r = await api.post(url, content=big)  # declared length over the limit: refused unread
    assert r.status_code == 413 and r.json()["limit"] == limit and "split it" in r.json()["detail"]

    sent = 0

    async def endless() -> AsyncIterator[bytes]:  # a chunked upload that would never end
        nonlocal sent
        yield b"characteristic,value\n"
        while True:
            sent += len(row) * 50
            yield row * 50

    r = await api.post(url, content=endless())
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
    assert sent <= limit + len(row) * 50  # it stopped reading once past the limit

    r = await api.post(url, content=big[:limit - 100])  # within the limit: read whole, then the route answers
    assert r.status_code == 404
