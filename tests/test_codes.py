"""Codes: rules, GS1 identifiers, block issuance, export, QR and labels, packing, offline pools, resolver.

Runs on the suite's database (PostgreSQL or SQLite) with the API in-process; no Temporal needed here
(tests/test_codes_workflow.py drives the child workflow). Independent checkers: zxing-cpp decodes every
QR, biip parses every element string and Digital Link URI, pypdfium2 renders the PDF.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import random
import secrets
import uuid
from datetime import UTC, date, datetime, timedelta

import httpx
import numpy as np
import pytest
import pytest_asyncio
import zxingcpp
from biip.gs1_messages import GS1Message
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image
from sqlalchemy import func, select

from api.main import create_app
from core.db import make_engine, make_sessionmaker
from core.settings import Settings
from domain import code_pools, codes, gs1, packing, qr
from domain.models import Lot, LotStatus
from domain.models_codes import CodeCounter, CodeRule, CodeScan, SerialBlock
from domain.production import upsert_item
from tests.helpers import SUPER_HEADERS

DOMAIN = "https://id.tracehub.example"


def new_gtin() -> str:
    body = "0" + "950" + f"{secrets.randbelow(10**9):09d}"  # not `random`: hypothesis seeds it per example
    return body + str(gs1.mod10(body))


@pytest.fixture(scope="module")
def hub_settings(settings: Settings) -> Settings:
    return settings  # the suite's: its database, and the worker's task queue (a duplicate code's NCR runs there)


@pytest_asyncio.fixture(scope="module")
async def codes_api(hub_settings: Settings, sessionmaker, client, worker):
    app = create_app(hub_settings, sessionmaker=sessionmaker, temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as c:
        c.app = app  # scans are written in batches: `await c.app.state.scan_recorder.flush()` before reading them
        yield c
    await app.state.scan_recorder.close()


async def make_item(sessionmaker, *, gtin: str | None = "new", name: str = "Shaft 25 mm") -> tuple[str, str | None]:
    code = f"IT-{uuid.uuid4().hex[:8]}"
    g = new_gtin() if gtin == "new" else gtin
    async with sessionmaker() as s, s.begin():
        await upsert_item(s, code, name=name, gtin=g)
    return code, g


async def make_lot(sessionmaker, item: str, status: str = LotStatus.released) -> str:
    number = f"L-{uuid.uuid4().hex[:6].upper()}"
    async with sessionmaker() as s, s.begin():
        it = await codes.get_item(s, item)
        s.add(Lot(number=number, kind="output", item_id=it.id, quantity=10, quantity_remaining=10,
                  status=status, location="LINE-3"))
    return number


def sscc_rule(prefix: str = "4012345", ext: str = "3") -> dict:
    return {"elements": [{"ai": "00", "extension": ext, "company_prefix": prefix}]}


# --- GS1 primitives ---------------------------------------------------------------------------------

def test_gs1_check_digits_sscc_and_digital_link_match_the_published_vectors():
    assert gs1.mod10("1061414107346") == 4
    assert gs1.mod10("400638133393") == 1 and gs1.mod10("952123454321") == 3
    assert gs1.sscc("1", "0614141", 234567890) == "106141412345678908"
    assert gs1.sscc("3", "4012345", 111111111) == "340123451111111111"
    assert gs1.sscc("0", "123456", 6663868985) == "012345666638689852"
    assert gs1.digital_link("https://id.gs1.org", [("01", "80614141123458"), ("21", "6789/&%\"!?()")]) == \
        "https://id.gs1.org/01/80614141123458/21/6789%2F%26%25%22%21%3F%28%29"
    assert gs1.iso7064_mod37_36("A12425GABC1234002") == "M"  # the GRid example
    assert gs1.iso7064_mod37_36_valid("A12425GABC1234002M") and not gs1.iso7064_mod37_36_valid("A12425GABC1234003M")
    assert gs1.check_digit_problem("09506000134353") == \
        "GTIN 09506000134353 has check digit 3, but it should be 2: correct the GTIN"


# --- rules ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec,expected", [
    ({"elements": [{"ai": "01", "value": "09506000134353"}, {"ai": "21", "segments": [
        {"kind": "sequence", "width": 10}]}]}, ["part 1 (AI 01 GTIN)", "should be 2"]),
    ({"elements": [{"ai": "01"}, {"ai": "21", "segments": [{"kind": "literal", "text": "PLANT-A-"},
                                                          {"kind": "sequence", "width": 14}]}]},
     ["part 2 (AI 21 serial)", "at most 20 characters", "make 22"]),
    ({"elements": [{"ai": "01"}, {"ai": "21", "segments": [{"kind": "literal", "text": "A#"},
                                                          {"kind": "sequence", "width": 8}]}]},
     ["part 2 (AI 21 serial) segment 1 (literal)", "'#'", "character set 82"]),
    ({"elements": [{"ai": "01"}, {"ai": "21", "segments": [{"kind": "sequence", "width": 4}]}],
      "largest_order": 50000}, ["holds 10,000 codes", "largest order of 50,000", "widen the sequence"]),
    ({"elements": [{"ai": "01"}, {"ai": "21", "segments": [{"kind": "sequence", "width": 8, "order": "random"}]}],
      "largest_order": 1000000}, ["guess a valid serial", "at least 9 characters"]),
    ({"segments": [{"kind": "sequence", "width": 6, "charset": "alphanumeric"}, {"kind": "check"}]},
     ["segment 2 (check)", "use iso7064_mod37_36"]),
    ({"elements": [{"ai": "00", "extension": "3", "company_prefix": "4012345"}]}, ["not a unit"]),
    ({"elements": [{"ai": "01"}]}, ["add an AI 21 serial part"]),
])
async def test_a_bad_rule_is_refused_with_a_message_naming_the_part_and_the_fix(codes_api, sessionmaker, spec,
                                                                                  expected):
    item, _ = await make_item(sessionmaker)
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": spec})
    assert r.status_code == 422, r.text
    for text in expected:
        assert text in r.json()["detail"], r.json()["detail"]


async def test_rule_versions_keep_the_codes_issued_under_them(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    v1 = {"elements": [{"ai": "01"}, {"ai": "21", "segments": [{"kind": "sequence", "width": 10}]}]}
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": v1})
    assert r.status_code == 201 and r.json()["version"] == 1
    b1 = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-b1", "item": item, "count": 5})).json()
    # a same-length serial with another structure could repeat an issued code: refused
    clash = {"elements": [{"ai": "01"}, {"ai": "21", "segments": [
        {"kind": "literal", "text": "9"}, {"kind": "sequence", "width": 9}]}]}
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": clash})
    assert r.status_code == 422 and "could repeat an issued one" in r.json()["detail"]
    v2 = {"elements": [{"ai": "01"}, {"ai": "21", "segments": [
        {"kind": "literal", "text": "P1"}, {"kind": "date", "format": "YYMMDD"}, {"kind": "sequence", "width": 6},
        {"kind": "check", "algorithm": "iso7064_mod37_36"}]}]}
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": v2})
    assert r.status_code == 201 and r.json()["version"] == 2
    b2 = (await codes_api.post("/api/codes/blocks", json={
        "key": f"{item}-b2", "item": item, "count": 5, "production_date": "2026-11-21"})).json()
    assert b2["rule_version"] == 2 and b2["first_seq"] == b1["first_seq"] + 5  # one counter, no reuse
    # the old block still renders under version 1, the new one under version 2, and both resolve
    again = (await codes_api.get(f"/api/codes/blocks/{b1['id']}")).json()
    assert again["rule_version"] == 1 and again["first"] == b1["first"]
    assert again["first"] == f"/01/{gtin}/21/{0:010d}"
    serial2 = b2["first"].split("/21/")[1]
    assert serial2.startswith("P1261121") and len(serial2) == 15 and gs1.iso7064_mod37_36_valid(serial2)
    for blk, idx in ((b1, 0), (b2, 4)):
        code = (await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/{idx}")).json()
        info = (await codes_api.get("/api/codes/lookup", params={"code": code["digital_link"]})).json()
        assert info["status"] == "issued" and info["block"] == blk["id"] and info["index"] == idx
        assert info["rule_version"] == blk["rule_version"]


# --- blocks -----------------------------------------------------------------------------------------

async def test_100_million_serials_are_one_row_and_any_of_them_resolves(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    async with sessionmaker() as s:
        before = (await s.execute(select(func.count()).select_from(SerialBlock))).scalar_one()
    r = await codes_api.post("/api/codes/blocks", json={"key": f"{item}-big", "item": item, "count": 100_000_000})
    assert r.status_code == 201, r.text
    blk = r.json()
    assert blk["count"] == 100_000_000 and blk["last"] == f"/01/{gtin}/21/{100_000_000:012d}"
    async with sessionmaker() as s:
        after = (await s.execute(select(func.count()).select_from(SerialBlock))).scalar_one()
    assert after - before == 1
    code = (await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/99999999")).json()
    info = (await codes_api.get("/api/codes/lookup", params={"code": code["digital_link"]})).json()
    assert info["status"] == "issued" and info["index"] == 99_999_999
    # the same key again is the same block (a retried activity), not a second one
    again = await codes_api.post("/api/codes/blocks", json={"key": f"{item}-big", "item": item,
                                                            "count": 100_000_000})
    assert again.json()["id"] == blk["id"]
    nope = (await codes_api.get("/api/codes/lookup", params={"code": f"{DOMAIN}/01/{gtin}/21/{200_000_001:012d}"}))
    assert nope.json()["status"] == "unknown"


@given(sizes=st.lists(st.integers(min_value=1, max_value=10**7), min_size=2, max_size=8),
       retries=st.lists(st.integers(min_value=0, max_value=7), max_size=4),
       crash=st.lists(st.integers(min_value=0, max_value=7), max_size=3))
@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_concurrent_issuers_never_get_overlapping_blocks(db_url, sizes, retries, crash):
    """Issuers run at once, each in its own transaction: some retry a key (a retried activity), some crash
    after allocating (rolled back). Committed blocks never overlap and the counter never goes back."""

    async def run() -> None:
        engine = make_engine(db_url)
        sm = make_sessionmaker(engine)
        item, _ = await make_item(sm)
        async with sm() as s, s.begin():
            rule = await codes.current_rule(s, await codes.get_item(s, item), "unit")
        keys = [f"{item}-{i}" for i in range(len(sizes))] + [f"{item}-{r % len(sizes)}" for r in retries]
        counts = sizes + [sizes[r % len(sizes)] for r in retries]

        async def issue(i: int) -> tuple[str, int, int] | None:
            for _attempt in range(20):
                try:
                    async with sm() as s, s.begin():
                        b = await codes.issue_block(s, rule=rule, count=counts[i], key=keys[i], purpose="test")
                        if i in crash:
                            raise RuntimeError("worker died")
                        return b.key, b.first_seq, b.count
                except RuntimeError:
                    return None
                except Exception:  # noqa: BLE001 - a racing duplicate key: the retry finds the committed block
                    await asyncio.sleep(0.01)
            raise AssertionError("never issued")

        results = [r for r in await asyncio.gather(*(issue(i) for i in range(len(keys)))) if r]
        async with sm() as s:
            rows = (await s.execute(select(SerialBlock).where(SerialBlock.key.like(f"{item}-%")))).scalars().all()
            nxt = (await s.execute(select(CodeCounter.next_seq).where(CodeCounter.namespace == rule.namespace))
                   ).scalar()  # None when every issuer crashed before committing
        await engine.dispose()
        by_key = {b.key: (b.first_seq, b.count) for b in rows}
        for key, first, count in results:  # a retry got exactly the committed block
            assert by_key[key] == (first, count)
        spans = sorted(by_key.values())
        for (f1, c1), (f2, _) in itertools.pairwise(spans):
            assert f1 + c1 <= f2, f"overlap: {spans}"
        assert not spans or nxt >= max(f + c for f, c in spans)
        assert len(rows) == len({k for k in keys if keys.index(k) not in crash or
                                 any(j not in crash for j, kk in enumerate(keys) if kk == k)})

    asyncio.run(run())


async def test_random_serials_are_unique_unguessable_and_map_back_to_their_block(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    spec = {"elements": [{"ai": "01"}, {"ai": "21", "segments": [
        {"kind": "sequence", "width": 12, "charset": "alphanumeric", "order": "random"},
        {"kind": "check", "algorithm": "iso7064_mod37_36"}]}], "largest_order": 1_000_000}
    assert (await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": spec})
            ).status_code == 201
    blk = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-r", "item": item, "count": 20000})).json()
    async with sessionmaker() as s:
        view = await codes.block_view(s, blk["id"])
        serials = [dict(r.elements)["21"] for r in view.render(0, 20000, DOMAIN)]
        assert len(set(serials)) == 20000
        assert all(gs1.iso7064_mod37_36_valid(x) for x in serials)
        # in no order one could guess: about half the neighbours ascend (a counter: all; 3 values: 1 in 6 by chance)
        ascending = sum(a < b for a, b in itertools.pairwise(serials)) / (len(serials) - 1)
        assert 0.45 < ascending < 0.55, ascending
        for i in (0, 1, 777, 19999):
            info = await codes.lookup(s, f"{DOMAIN}/01/{gtin}/21/{serials[i]}")
            assert (info.status, info.index) == ("issued", i)
        # a guessed serial with a valid check character is not one the hub issued
        body = "".join(random.choice(gs1.ALNUM36) for _ in range(12))
        guess = body + gs1.iso7064_mod37_36(body)
        assert guess not in serials
        assert (await codes.lookup(s, f"/01/{gtin}/21/{guess}")).status == "unknown"


# --- export -----------------------------------------------------------------------------------------

async def test_export_streams_csv_and_ndjson_that_an_independent_gs1_parser_accepts(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    spec = {"elements": [{"ai": "01"}, {"ai": "10"}, {"ai": "21", "segments": [
        {"kind": "sequence", "width": 9}, {"kind": "check"}]}, {"ai": "11"}, {"ai": "17"}]}
    assert (await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": spec})
            ).status_code == 201
    blk = (await codes_api.post("/api/codes/blocks", json={
        "key": f"{item}-x", "item": item, "count": 3000, "lot": lot, "production_date": "2026-11-21",
        "expiry_date": "2028-11-30"})).json()
    r = await codes_api.get(f"/api/codes/blocks/{blk['id']}/export", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert len(rows) == 3000
    import biip
    for i, row in enumerate(rows):
        msg = GS1Message.parse_hri(row["element_string"])
        es = {e.ai.ai: e for e in msg.element_strings}
        assert es["01"].gtin is not None and es["01"].gtin.value == gtin and es["01"].gtin_error is None
        assert es["10"].value == lot
        assert es["11"].date == date(2026, 11, 21) and es["17"].date == date(2028, 11, 30)
        serial = es["21"].value
        assert serial[:9] == f"{i:09d}" and int(serial[9]) == gs1.mod10(serial[:9])
        dl = biip.parse(row["digital_link"]).gs1_digital_link_uri
        assert dl is not None and [(e.ai.ai, e.value) for e in dl.element_strings] == \
            [("01", gtin), ("10", lot), ("21", serial), ("11", "261121"), ("17", "281130")]
        assert row["code"] == f"/01/{gtin}/21/{serial}"
    nd = await codes_api.get(f"/api/codes/blocks/{blk['id']}/export",
                             params={"format": "ndjson", "first": 2990, "count": 50})
    lines = [json.loads(x) for x in nd.text.splitlines()]
    assert len(lines) == 10 and lines[-1] == {k: rows[-1][k] for k in ("code", "element_string", "digital_link")}


# --- QR, labels -------------------------------------------------------------------------------------

def _decode(png: bytes) -> list[str]:
    return [b.text for b in zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))]


def test_fast_qr_matrices_equal_the_qrcode_package_and_every_png_decodes_to_its_uri():
    rng = random.Random(7)
    texts = [f"{DOMAIN}/01/09506000134352/10/L-{rng.randrange(999)}/21/{rng.randrange(10**12):012d}"
             for _ in range(60)]
    texts += ["https://id.gs1.org/00/340123451111111111", "A" * 200, "1234567890" * 40, "x", "ÄÖÜ ünïcode",
              f"{DOMAIN}/01/09506000134352/21/6789%2F%26%25%22%21%3F%28%29?17=281130"]
    for t in texts:
        assert np.array_equal(qr.matrix(t), qr.reference_matrix(t)), t
        assert _decode(qr.qr_png(t)) == [t]


async def test_qr_endpoints_and_pdf_sheet_decode_to_exactly_their_uris(codes_api, sessionmaker):
    import pypdfium2
    item, gtin = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    blk = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-l", "item": item, "count": 12,
                                                           "lot": lot})).json()
    want = [(await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/{i}")).json()["digital_link"]
            for i in range(12)]
    png = await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/3/qr.png")
    assert png.headers["content-type"] == "image/png" and _decode(png.content) == [want[3]]
    svg = await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/3/qr.svg")
    assert svg.text.startswith("<svg") and svg.headers["content-type"].startswith("image/svg+xml")
    pdf = await codes_api.get(f"/api/codes/blocks/{blk['id']}/labels.pdf", params={"count": 12})
    assert pdf.headers["content-type"] == "application/pdf"
    doc = pypdfium2.PdfDocument(pdf.content)
    page = doc[0]
    img = page.render(scale=300 / 72).to_pil()
    decoded = sorted(b.text for b in zxingcpp.read_barcodes(img))
    assert decoded == sorted(want)
    text = page.get_textpage().get_text_range()
    assert f"(01) {gtin}" in text and "(21) 0000000000" in text and "Shaft 25 mm" in text
    page.close()
    doc.close()
    zpl = (await codes_api.get(f"/api/codes/blocks/{blk['id']}/labels.zpl", params={"count": 2})).text
    labels = zpl.strip().split("^XZ")[:-1]
    assert len(labels) == 2
    assert f"^BQN,2,4^FH_^FDMA,{want[0]}^FS" in labels[0] and f"^BQN,2,4^FH_^FDMA,{want[1]}^FS" in labels[1]
    assert labels[0].lstrip().startswith("^XA")


# --- packing ----------------------------------------------------------------------------------------

async def _packing_setup(codes_api, sessionmaker, *, units: int = 6):
    item, gtin = await make_item(sessionmaker)
    ok_lot = await make_lot(sessionmaker, item)
    for level, ext in (("case", "1"), ("pallet", "2")):
        r = await codes_api.post("/api/codes/rules", json={"item": item, "level": level,
                                                           "spec": sscc_rule("4012345", ext)})
        assert r.status_code == 201, r.text
    u = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-u", "item": item, "count": units,
                                                         "lot": ok_lot})).json()
    c = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-c", "item": item, "level": "case",
                                                         "count": 3})).json()
    p = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-p", "item": item, "level": "pallet",
                                                         "count": 2})).json()

    async def code(b, i):
        return (await codes_api.get(f"/api/codes/blocks/{b['id']}/codes/{i}")).json()["digital_link"]
    units_ = [await code(u, i) for i in range(units)]
    cases = [await code(c, i) for i in range(3)]
    pallets = [await code(p, i) for i in range(2)]
    return item, gtin, units_, cases, pallets, ok_lot


async def test_packing_units_cases_pallets_with_refusals_history_and_aggregation_events(codes_api, sessionmaker):
    item, gtin, units, cases, pallets, lot_of_units = await _packing_setup(codes_api, sessionmaker)
    for c in cases + pallets:
        s = gs1.parse_digital_link(c)["00"]
        assert len(s) == 18 and gs1.check_digit_problem(s, "SSCC") is None and s[1:8] == "4012345"
    t0 = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
    r = await codes_api.post("/api/codes/pack", json={"parent": cases[0], "children": units[:3], "actor": "packer-1",
                                                      "at": t0.isoformat()})
    assert r.status_code == 200, r.text
    assert len(r.json()["packed"]) == 3
    await codes_api.post("/api/codes/pack", json={"parent": cases[1], "children": units[3:5], "actor": "packer-1",
                                                  "at": t0.isoformat()})
    r = await codes_api.post("/api/codes/pack", json={"parent": pallets[0], "children": cases[:2], "actor": "fork-1",
                                                      "at": (t0 + timedelta(minutes=5)).isoformat()})
    assert r.status_code == 200, r.text
    # scanning the pallet lists everything down to units
    inside = (await codes_api.get("/api/codes/contents", params={"code": pallets[0]})).json()
    assert inside["unit_count"] == 5
    assert {n["code"] for n in inside["tree"]["children"]} == {f"/00/{gs1.parse_digital_link(c)['00']}"
                                                                for c in cases[:2]}
    # refusals, each saying why
    r = await codes_api.post("/api/codes/pack", json={"parent": cases[2], "children": [units[0]], "actor": "p"})
    assert r.status_code == 409 and "already packed in" in r.json()["detail"] and "unpack it first" in r.json()["detail"]
    held_lot = await make_lot(sessionmaker, item, status=LotStatus.on_hold)
    hb = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-h", "item": item, "count": 1,
                                                          "lot": held_lot})).json()
    held = (await codes_api.get(f"/api/codes/blocks/{hb['id']}/codes/0")).json()["digital_link"]
    r = await codes_api.post("/api/codes/pack", json={"parent": cases[2], "children": [held], "actor": "p"})
    assert r.status_code == 409 and f"lot {held_lot}" in r.json()["detail"] and "on hold" in r.json()["detail"]
    r = await codes_api.post("/api/codes/pack", json={"parent": cases[2], "children": [f"/01/{gtin}/21/999999999999"],
                                                      "actor": "p"})
    assert r.status_code == 404 and "never issued" in r.json()["detail"]
    r = await codes_api.post("/api/codes/pack", json={"parent": units[5], "children": [units[4]], "actor": "p"})
    assert r.status_code == 422 and "unit code" in r.json()["detail"]
    # repack: unit 0 moves from case 0 to case 2; the history keeps both
    t1 = t0 + timedelta(hours=1)
    r = await codes_api.post("/api/codes/unpack", json={"parent": cases[0], "children": [units[0]], "actor": "p",
                                                        "at": t1.isoformat()})
    assert r.json()["unpacked"] == [f"/01/{gtin}/21/{gs1.parse_digital_link(units[0])['21']}"]
    r = await codes_api.post("/api/codes/pack", json={"parent": cases[2], "children": [units[0]], "actor": "p",
                                                      "at": (t1 + timedelta(minutes=1)).isoformat()})
    assert r.status_code == 200, r.text
    hist = (await codes_api.get("/api/codes/history", params={"code": units[0]})).json()
    assert [h["parent"].split("/")[-1] for h in hist] == [gs1.parse_digital_link(cases[0])["00"],
                                                         gs1.parse_digital_link(cases[2])["00"]]
    assert hist[0]["unpacked_at"] is not None and hist[1]["unpacked_at"] is None
    then = (await codes_api.get("/api/codes/contents", params={"code": pallets[0],
                                                                "at": (t0 + timedelta(minutes=30)).isoformat()})).json()
    now = (await codes_api.get("/api/codes/contents", params={"code": pallets[0]})).json()
    assert then["unit_count"] == 5 and now["unit_count"] == 4
    # a pallet leaves on a known shipment of the lots inside it, its cases with it, and takes nothing more
    dn = f"DN-{uuid.uuid4().hex[:6]}"
    r = await codes_api.post("/api/codes/containers/ship", params={"code": pallets[0]},
                             json={"shipment": dn, "actor": "shipper"})
    assert r.status_code == 404 and f"shipment {dn!r} is not known" in r.json()["detail"]
    from domain.models import Shipment, ShipmentLine
    other_lot = await make_lot(sessionmaker, item)
    async with sessionmaker() as s, s.begin():
        lots = {n: i for n, i in (await s.execute(select(Lot.number, Lot.id).where(
            Lot.number.in_([lot_of_units, other_lot])))).all()}
        sh = Shipment(number=dn, sales_order="SO-1", customer="ACME Pumps")
        wrong = Shipment(number=dn + "-X", sales_order="SO-2", customer="Other")
        s.add_all([sh, wrong])
        await s.flush()
        s.add_all([ShipmentLine(shipment_id=sh.id, lot_id=lots[lot_of_units], quantity=10),
                   ShipmentLine(shipment_id=wrong.id, lot_id=lots[other_lot], quantity=10)])
    r = await codes_api.post("/api/codes/containers/ship", params={"code": pallets[0]},
                             json={"shipment": dn + "-X", "actor": "shipper"})
    assert r.status_code == 409 and f"lots not on shipment {dn}-X ({lot_of_units}" in r.json()["detail"]
    r = await codes_api.post("/api/codes/containers/ship", params={"code": pallets[0]},
                             json={"shipment": dn, "actor": "shipper"})
    assert r.status_code == 200, r.text
    assert sorted(r.json()["cases"]) == sorted(f"/00/{gs1.parse_digital_link(c)['00']}" for c in cases[:2])
    r = await codes_api.post("/api/codes/containers/ship", params={"code": pallets[0]},
                             json={"shipment": dn + "-X", "actor": "shipper"})
    assert r.status_code == 409 and f"already shipped on {dn}" in r.json()["detail"]
    r = await codes_api.post("/api/codes/pack", json={"parent": pallets[0], "children": [cases[2]], "actor": "p"})
    assert r.status_code == 409 and f"was shipped ({dn})" in r.json()["detail"]
    r = await codes_api.post("/api/codes/pack", json={"parent": cases[0], "children": [units[5]], "actor": "p"})
    assert r.status_code == 409 and "shipped" in r.json()["detail"]  # a case that left on the pallet
    # the packing was recorded as EPCIS AggregationEvents
    from domain.models import EpcisEvent
    async with sessionmaker() as s:
        evs = (await s.execute(select(EpcisEvent).where(EpcisEvent.event_type == "AggregationEvent",
                                                        EpcisEvent.event_time >= t0)
                               .order_by(EpcisEvent.id))).scalars().all()
    mine = [e.document for e in evs if e.document.get("parentID") in (cases[0].split("?")[0], pallets[0])]
    assert any(d["action"] == "ADD" and d["bizStep"] == "packing" and sorted(d["childEPCs"]) == sorted(units[:3])
               for d in mine)
    assert any(d["action"] == "DELETE" and d["bizStep"] == "unpacking" and d["childEPCs"] == [units[0]]
               for d in mine)


async def test_case_level_gtin_rules_are_their_own_trade_item_and_pack_resolve_and_parse(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    other, other_gtin = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    case_body = "1" + gtin[1:13]  # indicator digit 1: the case of this item
    case_gtin = case_body + str(gs1.mod10(case_body))

    def rule(g: str) -> dict:
        return {"elements": [{"ai": "01", "value": g}, {"ai": "21", "segments": [{"kind": "sequence", "width": 9}]}]}
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": rule(gtin)})
    assert r.status_code == 422 and "is the unit GTIN" in r.json()["detail"] and "part 1 (AI 01 GTIN)" in r.json()["detail"]
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": rule(other_gtin)})
    assert r.status_code == 409 and f"already identifies item {other!r}" in r.json()["detail"], r.text
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": rule(case_gtin)})
    assert r.status_code == 201, r.text
    # the case GTIN now belongs to this item: another item cannot take it as its own GTIN
    async with sessionmaker() as s, s.begin():
        with pytest.raises(Exception, match="already belongs to item"):
            await upsert_item(s, f"IT-{uuid.uuid4().hex[:8]}", gtin=case_gtin)
    u = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-u", "item": item, "count": 4,
                                                         "lot": lot})).json()
    c = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-c", "item": item, "level": "case",
                                                         "count": 2})).json()
    units = [(await codes_api.get(f"/api/codes/blocks/{u['id']}/codes/{i}")).json()["digital_link"] for i in range(4)]
    case = (await codes_api.get(f"/api/codes/blocks/{c['id']}/codes/1")).json()
    es = {e.ai.ai: e for e in GS1Message.parse_hri(case["element_string"]).element_strings}
    assert es["01"].gtin.value == case_gtin and es["01"].gtin_error is None
    assert es["21"].value == gs1.parse_digital_link(case["digital_link"])["21"]
    r = await codes_api.post("/api/codes/pack", json={"parent": case["digital_link"], "children": units[:3],
                                                      "actor": "packer-1"})
    assert r.status_code == 200, r.text
    assert (await codes_api.get("/api/codes/contents", params={"code": case["digital_link"]})).json()["unit_count"] == 3
    path = case["digital_link"].removeprefix(DOMAIN)
    j = (await codes_api.get(path, headers={"accept": "application/json"})).json()
    assert j["status"] == "genuine" and j["level"] == "case" and j["contains"] == 3 and j["gtin"] == case_gtin
    # a unit code cannot be packed into a unit of this item, nor a case into a unit
    r = await codes_api.post("/api/codes/pack", json={"parent": units[3], "children": [case["digital_link"]],
                                                      "actor": "p"})
    assert r.status_code == 422


# --- offline pools ----------------------------------------------------------------------------------

async def test_offline_pool_upload_and_reconciliation_flag_duplicates_strays_and_late_use(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    r = await codes_api.post("/api/codes/pools", json={"number": number, "item": item, "count": 100,
                                                       "line": "LINE-3", "printer": "ZT-1"})
    assert r.status_code == 201, r.text
    block = r.json()["block"]
    other = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-o", "item": item, "count": 2})).json()

    async def code(b, i):
        return (await codes_api.get(f"/api/codes/blocks/{b['id']}/codes/{i}")).json()["digital_link"]
    t = datetime.now(UTC) - timedelta(hours=2)
    used = [{"code": await code(block, i), "used_at": (t + timedelta(seconds=i)).isoformat(), "lot": lot}
            for i in range(10)]
    used.append(dict(used[3]))  # printed twice
    used.append({"code": await code(other, 0), "used_at": t.isoformat(), "lot": lot})  # not this pool's
    r = await codes_api.post(f"/api/codes/pools/{number}/uploads", json={"upload_id": f"{number}-u1", "used": used})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 10
    assert sorted(a["kind"] for a in body["alerts"]) == ["duplicate", "outside_pool"]
    dup = next(a for a in body["alerts"] if a["kind"] == "duplicate")
    assert dup["details"]["first_line"] == "LINE-3" and dup["details"]["lot"] == lot
    # and an NCR holds the lot that got the second copy, for the reviewers to decide (relabel, scrap...)
    assert dup["ncr"] == f"NCR-DUP-{dup['id']}"
    for _ in range(100):
        r = await codes_api.get(f"/api/ncrs/{dup['ncr']}")
        if r.status_code == 200:
            break
        await asyncio.sleep(0.2)
    assert r.status_code == 200 and r.json()["lot"] == lot and "used twice" in r.json()["description"]
    async with sessionmaker() as s:
        assert (await s.execute(select(Lot.status).where(Lot.number == lot))).scalar_one() == "on_hold"
    # the same upload again changes nothing
    again = (await codes_api.post(f"/api/codes/pools/{number}/uploads",
                                  json={"upload_id": f"{number}-u1", "used": used})).json()
    assert again["duplicate_upload"] is True and again["accepted"] == 10
    assert (await codes_api.post(f"/api/codes/pools/{number}/revoke")).json()["state"] == "revoked"
    late = [{"code": await code(block, 50), "used_at": (datetime.now(UTC) + timedelta(minutes=5)).isoformat()},
            {"code": await code(block, 51), "used_at": t.isoformat(), "lot": lot}]
    body = (await codes_api.post(f"/api/codes/pools/{number}/uploads",
                                 json={"upload_id": f"{number}-u2", "used": late})).json()
    assert body["accepted"] == 1 and [a["kind"] for a in body["alerts"]] == ["after_revocation"]
    r = await codes_api.post(f"/api/codes/pools/{number}/reconcile", json={"action": "void", "actor": "qa-1"})
    assert r.json() == {"pool": number, "state": "reconciled", "used": 11, "unused": 89, "ranges": 2}
    # a used code resolves to its lot; an unused one is now void, and a scan of it says so
    info = (await codes_api.get("/api/codes/lookup", params={"code": used[0]["code"]})).json()
    assert info["status"] == "issued" and info["lot"] == lot and info["state"] == "commissioned"
    void = await code(block, 60)
    assert (await codes_api.get("/api/codes/lookup", params={"code": void})).json()["status"] == "voided"
    page = await codes_api.get(void.removeprefix(DOMAIN))
    assert page.status_code == 410 and "withdrawn" in page.text
    alerts = (await codes_api.get("/api/codes/alerts", params={"kind": "duplicate"})).json()
    assert any(a["code"] == f"/01/{gtin}/21/{gs1.parse_digital_link(used[3]['code'])['21']}" for a in alerts)


# --- resolver ---------------------------------------------------------------------------------------

async def test_resolver_page_json_unknown_codes_and_implausible_travel(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker, name="Drive shaft 25")
    lot = await make_lot(sessionmaker, item)
    async with sessionmaker() as s, s.begin():
        from domain.models import Inspection, Ncr
        lot_row = (await s.execute(select(Lot).where(Lot.number == lot))).scalar_one()
        s.add(Inspection(number=f"FIN-{lot}", kind="final", lot_id=lot_row.id, status="passed",
                         inspector="Jane Inspector"))
        s.add(Ncr(number=f"NCR-{lot}", workflow_id=f"ncr-{lot}", lot_id=lot_row.id, state="closed",
                  description="SECRET burr on shoulder"))
    spec = {"elements": [{"ai": "01"}, {"ai": "10"}, {"ai": "21", "segments": [{"kind": "sequence", "width": 12}]}]}
    assert (await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": spec})
            ).status_code == 201
    blk = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-s", "item": item, "count": 3,
                                                           "lot": lot, "production_date": "2026-11-20"})).json()
    dl = (await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/1")).json()["digital_link"]
    path = dl.removeprefix(DOMAIN)
    assert path.startswith(f"/01/{gtin}/10/{lot}/21/")
    page = await codes_api.get(path, headers={"accept": "text/html"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for text in ("Drive shaft 25", lot, "2026-11-20", "LINE-3", "Passed its inspections", "Genuine product"):
        assert text in page.text
    for secret in ("Jane Inspector", "SECRET", "NCR-"):
        assert secret not in page.text
    js = await codes_api.get(path, headers={"accept": "application/json"})
    assert js.json()["status"] == "genuine" and js.json()["lot"] == lot and js.json()["inspections"]["passed"]
    assert "Jane" not in js.text
    assert (await codes_api.get(path + "?linkType=all")).json()["gtin"] == gtin
    short = await codes_api.get(f"/01/{gtin}/21/{gs1.parse_digital_link(dl)['21']}", headers={"accept": "application/json"})
    assert short.json()["lot"] == lot
    lot_page = await codes_api.get(f"/01/{gtin}/10/{lot}", headers={"accept": "application/json"})
    assert lot_page.json()["level"] == "lot" and lot_page.json()["inspections"]["passed"] is True
    # never issued: a plain page, and a suspicious scan on record
    bogus = f"/01/{gtin}/21/888888888888"
    r = await codes_api.get(bogus)
    assert r.status_code == 404 and "We did not issue this code" in r.text
    # the same unit in Hamburg and, ten minutes later, in Sydney
    await codes_api.get(path, params={"lat": 53.55, "lon": 9.99})
    far = await codes_api.get(path, params={"lat": -33.87, "lon": 151.21}, headers={"accept": "application/json"})
    assert far.json()["suspicious"] is True and "two copies" in far.json()["reason"]
    await codes_api.app.state.scan_recorder.flush()
    async with sessionmaker() as s:
        scans = (await s.execute(select(CodeScan).where(CodeScan.code.in_(
            [bogus, f"/01/{gtin}/21/{gs1.parse_digital_link(dl)['21']}"])).order_by(CodeScan.id))).scalars().all()
    assert [(x.outcome, x.suspicious) for x in scans] == [
        ("genuine", False), ("genuine", False), ("genuine", False), ("genuine", False), ("unknown", True),
        ("genuine", False), ("genuine", True)]
    assert scans[-1].lat == -33.9  # kept coarse


async def test_the_resolver_fast_path_answers_as_the_routes_do_and_steps_aside_when_it_must(
        codes_api, sessionmaker, hub_settings, monkeypatch):
    import api.routes.resolver as resolver_routes
    from domain.models import Inspection
    from domain.models_codes import CodeRange
    served: list[bool] = []
    real = resolver_routes.scan_cached

    async def counted(*a, **k):
        res = await real(*a, **k)
        served.append(res is not None)
        return res
    monkeypatch.setattr(resolver_routes, "scan_cached", counted)
    slow_app = create_app(hub_settings.model_copy(update={"api": hub_settings.api.model_copy(
        update={"resolver_fast_path": False})}), sessionmaker=sessionmaker)
    assert slow_app.state.fast_reader is None
    slow = httpx.AsyncClient(transport=httpx.ASGITransport(app=slow_app), base_url="http://hub")
    item, gtin = await make_item(sessionmaker, name="Pump housing")
    lot = await make_lot(sessionmaker, item)
    async with sessionmaker() as s, s.begin():
        lot_id = (await s.execute(select(Lot.id).where(Lot.number == lot))).scalar_one()
        s.add(Inspection(number=f"FIN-{lot}", kind="final", lot_id=lot_id, status="passed", inspector="x"))
    blk = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-f", "item": item, "count": 4, "lot": lot,
                                                           "production_date": "2026-11-02"})).json()
    paths = [(await codes_api.get(f"/api/codes/blocks/{blk['id']}/codes/{i}")).json()["digital_link"]
             .removeprefix(DOMAIN) for i in range(4)]
    serials = [gs1.parse_digital_link(p)["21"] for p in paths]
    await codes_api.get(paths[0], headers={"accept": "application/json"})  # the first scan reads rule and block
    served.clear()
    for path in (paths[1], f"/01/{gtin}/10/{lot}/21/{serials[2]}"):
        for accept in ("application/json", "text/html"):
            fast_r = await codes_api.get(path, headers={"accept": accept})
            slow_r = await slow.get(path, headers={"accept": accept})
            assert (fast_r.status_code, fast_r.headers["content-type"], fast_r.content) == \
                   (slow_r.status_code, slow_r.headers["content-type"], slow_r.content)
    assert served == [True] * 4
    assert (await codes_api.get(paths[1], headers={"accept": "application/json"})).json()["inspections"] == \
        {"count": 1, "passed": True}
    # what changes is read at every scan: a new failed inspection shows at once
    async with sessionmaker() as s, s.begin():
        s.add(Inspection(number=f"FIN2-{lot}", kind="final", lot_id=lot_id, status="failed", inspector="x"))
    assert (await codes_api.get(paths[1], headers={"accept": "application/json"})).json()["inspections"] == \
        {"count": 2, "passed": False}
    # a voided code, a wrong lot in the URI and a located scan go the ordinary way, with its answers
    async with sessionmaker() as s, s.begin():
        s.add(CodeRange(block_id=blk["id"], first_seq=blk["first_seq"] + 3, count=1, state="voided",
                        reason="label misprint"))
    served.clear()
    r = await codes_api.get(paths[3], headers={"accept": "application/json"})
    assert r.status_code == 410 and r.json()["status"] == "voided"
    r = await codes_api.get(f"/01/{gtin}/10/WRONG-LOT/21/{serials[2]}", headers={"accept": "application/json"})
    assert r.status_code == 404 and "not the lot it was issued for" in r.json()["reason"]
    assert served == [False, False]
    r = await codes_api.get(paths[1], params={"lat": 48.1, "lon": 11.6}, headers={"accept": "application/json"})
    assert r.status_code == 200 and served == [False, False]  # located scans never take the fast path
    # every scan is on record, fast or not
    await codes_api.app.state.scan_recorder.flush()
    await slow_app.state.scan_recorder.flush()
    async with sessionmaker() as s:
        n = (await s.execute(select(func.count()).select_from(CodeScan).where(
            CodeScan.code == f"/01/{gtin}/21/{serials[1]}"))).scalar_one()
    assert n == 2 + 2 + 2 + 1  # fast: JSON and HTML, two inspection reads, the located scan; slow: JSON and HTML
    await slow.aclose()
    await slow_app.state.scan_recorder.close()


async def test_issue_for_lot_keeps_the_work_order_contract(sessionmaker):
    item, gtin = await make_item(sessionmaker)
    lot_no = await make_lot(sessionmaker, item)
    async with sessionmaker() as s, s.begin():
        lot = (await s.execute(select(Lot).where(Lot.number == lot_no))).scalar_one()
        await s.refresh(lot, ["item"])
        issued = await codes.issue_for_lot(s, work_order="WO-T", lot=lot, quantity=25, resolver=DOMAIN)
        again = await codes.issue_for_lot(s, work_order="WO-T", lot=lot, quantity=25, resolver=DOMAIN)
        assert again.block.id == issued.block.id
        assert issued.batch_code == f"{DOMAIN}/01/{gtin}/10/{lot_no}"
        found, unit = await codes.resolve(s, f"{DOMAIN}/01/{gtin}/21/{issued.last_serial}")
        assert found.number == lot_no and unit is not None
        units = await codes.units_of_lot(s, lot, DOMAIN, limit=3)
        assert units["count"] == 25 and len(units["first_units"]) == 3
        rules = (await s.execute(select(CodeRule).where(CodeRule.item_id == lot.item_id))).scalars().all()
        assert [r.version for r in rules] == [1]  # the default rule was saved as version 1
    assert issued.first_serial == f"{issued.block.first_seq + 1:012d}"
    assert (await _pool_state(sessionmaker)) is None


async def _pool_state(sessionmaker):
    async with sessionmaker() as s:
        return await code_pools.alerts(s, kind="no-such-kind") or None


def test_packing_epc_is_the_constrained_digital_link():
    assert packing.epc("/00/340123451111111111", DOMAIN + "/") == f"{DOMAIN}/00/340123451111111111"
