"""The codes audit of issue 4: house codes unique across items, input checks on codes (line text, GTIN check
digits, lots of another item), unknown lot scans on record, and concurrent packing and uploads.

Runs on the suite's database (PostgreSQL or SQLite) with the API in-process.
"""

from __future__ import annotations

import asyncio
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import pytest_asyncio
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.engine import make_url

from activities.models import PurchaseReceipt, WorkOrderInput
from api.main import create_app
from core.errors import Conflict
from domain import code_pools, codes, gs1, packing
from domain.code_rules import RuleSpec
from domain.models import Lot, LotStatus
from domain.models_codes import CodeAlert, CodeCounter, CodeRule, CodeScan, SerialBlock, UsedCode
from domain.production import upsert_item
from tests.helpers import SUPER_HEADERS
from tests.test_codes import make_lot

DOMAIN = "https://id.tracehub.example"


def new_gtin() -> str:
    body = "0" + "951" + f"{secrets.randbelow(10**9):09d}"
    return body + str(gs1.mod10(body))


def wrong_check_digit(gtin: str) -> str:
    return gtin[:-1] + str((int(gtin[-1]) + 1) % 10)


@pytest_asyncio.fixture(scope="module")
async def codes_api(settings, sessionmaker, client, worker):
    app = create_app(settings, sessionmaker=sessionmaker, temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        c.app = app
        yield c
    await app.state.scan_recorder.close()


async def make_item(sessionmaker, *, gtin: str | None = "new") -> tuple[str, str | None]:
    code = f"IT-{uuid.uuid4().hex[:8].upper()}"
    g = new_gtin() if gtin == "new" else gtin
    async with sessionmaker() as s, s.begin():
        await upsert_item(s, code, name=f"Part {code}", gtin=g)
    return code, g


async def code_of(api, block: dict, i: int) -> dict:
    r = await api.get(f"/api/codes/blocks/{block['id']}/codes/{i}")
    assert r.status_code == 200, r.text
    return r.json()


# --- E1: house codes are unique across items ------------------------------------------------------------

async def test_default_house_codes_of_two_items_differ_and_each_resolves_to_its_own_item(codes_api, sessionmaker):
    a, _ = await make_item(sessionmaker, gtin=None)
    b, _ = await make_item(sessionmaker, gtin=None)
    la, lb = await make_lot(sessionmaker, a), await make_lot(sessionmaker, b)
    blocks = {}
    for item, lot in ((a, la), (b, lb)):
        r = await codes_api.post("/api/codes/blocks", json={"key": f"{item}-u", "item": item, "count": 3, "lot": lot})
        assert r.status_code == 201, r.text
        blocks[item] = r.json()
    texts = {item: [(await code_of(codes_api, blk, i))["code"] for i in range(3)] for item, blk in blocks.items()}
    assert not set(texts[a]) & set(texts[b]), texts
    for item, lot in ((a, la), (b, lb)):
        assert item in texts[item][0]  # the item's own part makes the text the item's
        for i, text in enumerate(texts[item]):
            info = (await codes_api.get("/api/codes/lookup", params={"code": text})).json()
            assert info["status"] == "issued" and info["block"] == blocks[item]["id"] and info["index"] == i
            assert info["lot"] == lot and info["state"] == "issued"
    # a unit of A packed (used) leaves B's units unused
    case_rule = {"segments": [{"kind": "literal", "text": f"C-{a}-"}, {"kind": "sequence", "width": 6}]}
    assert (await codes_api.post("/api/codes/rules", json={"item": a, "level": "case", "spec": case_rule})
            ).status_code == 201
    case = (await codes_api.post("/api/codes/blocks", json={"key": f"{a}-c", "item": a, "level": "case",
                                                            "count": 1})).json()
    r = await codes_api.post("/api/codes/pack", json={"parent": case["first"], "children": [texts[a][0]]})
    assert r.status_code == 200, r.text
    info_b = (await codes_api.get("/api/codes/lookup", params={"code": texts[b][0]})).json()
    assert info_b["state"] == "issued" and info_b["block"] == blocks[b]["id"]


@pytest.mark.parametrize("mine,other,clash", [
    ([{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 8}],
     [{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 8}], True),
    ([{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 8}],
     [{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 8, "charset": "alphanumeric"}], True),
    ([{"kind": "date"}, {"kind": "sequence", "width": 4}],
     [{"kind": "sequence", "width": 10}], True),
    ([{"kind": "literal", "text": "Q"}, {"kind": "lot"}, {"kind": "sequence", "width": 6}],
     [{"kind": "literal", "text": "Q"}, {"kind": "lot"}, {"kind": "sequence", "width": 6}], True),
    ([{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 8}],
     [{"kind": "literal", "text": "K"}, {"kind": "sequence", "width": 8}], False),
    ([{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 8}],
     [{"kind": "literal", "text": "H"}, {"kind": "sequence", "width": 9}], False),
    ([{"kind": "literal", "text": "Q"}, {"kind": "lot"}, {"kind": "sequence", "width": 6}],
     [{"kind": "literal", "text": "Q"}, {"kind": "lot"}, {"kind": "literal", "text": "-"},
      {"kind": "sequence", "width": 4}], False),
])
async def test_a_house_rule_whose_codes_could_equal_another_items_is_refused_naming_it(codes_api, sessionmaker,
                                                                                         mine, other, clash):
    tag = uuid.uuid4().hex[:6].upper()  # keeps this case's rules apart from every other test's

    def spec(segs):
        return {"segments": [{"kind": "literal", "text": tag}, *segs]}
    a, _ = await make_item(sessionmaker, gtin=None)
    b, _ = await make_item(sessionmaker, gtin=None)
    r = await codes_api.post("/api/codes/rules", json={"item": a, "level": "unit", "spec": spec(mine)})
    assert r.status_code == 201, r.text
    r = await codes_api.post("/api/codes/rules", json={"item": b, "level": "unit", "spec": spec(other)})
    if not clash:
        assert r.status_code == 201, r.text
        return
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["field"] == "spec"
    assert f"item {a!r}" in body["detail"] and "unit rule version 1" in body["detail"], body["detail"]
    # the same layout at another level of the same item would collide just as well
    r = await codes_api.post("/api/codes/rules", json={"item": a, "level": "case", "spec": spec(mine)})
    assert r.status_code == 409 and f"item {a!r}" in r.json()["detail"]


LEGACY = {"segments": [{"kind": "literal", "text": "U"}, {"kind": "sequence", "width": 12, "start": 1}]}


async def _legacy_house_rule(sessionmaker, item: str, *, first_seq: int, count: int) -> int:
    """What the hub wrote before the fix: the default house rule `U` + 12 digits, each item its own counter."""
    async with sessionmaker() as s, s.begin():
        it = await codes.get_item(s, item)
        ns = f"house:{it.code}:unit"
        rule = CodeRule(item_id=it.id, level="unit", version=1, spec=RuleSpec.model_validate(LEGACY).model_dump(
            exclude_none=True), namespace=ns, secret=secrets.token_hex(16), created_by="system")
        s.add(rule)
        s.add(CodeCounter(namespace=ns, next_seq=first_seq + count))
        await s.flush()
        block = SerialBlock(key=f"{item}-legacy", namespace=ns, rule_id=rule.id, first_seq=first_seq, count=count,
                            purpose="manual")
        s.add(block)
        await s.flush()
        return block.id


async def test_house_codes_that_already_collide_are_ambiguous_and_new_issuance_is_unique(codes_api, sessionmaker):
    a, _ = await make_item(sessionmaker, gtin=None)
    b, _ = await make_item(sessionmaker, gtin=None)
    base = secrets.randbelow(10**10) * 10  # far from anything else the suite issued
    block_a = await _legacy_house_rule(sessionmaker, a, first_seq=base, count=5)
    block_b = await _legacy_house_rule(sessionmaker, b, first_seq=base, count=3)
    both = f"U{base + 1 + 1:012d}"  # index 1 of both blocks: printed on a unit of A and on a unit of B
    only_a = f"U{base + 1 + 4:012d}"  # index 4: only A's block holds it
    info = (await codes_api.get("/api/codes/lookup", params={"code": both})).json()
    assert info["status"] == "ambiguous", info
    assert "more than one item" in info["reason"]
    assert sorted((c["item"], c["block"], c["index"]) for c in info["candidates"]) == sorted(
        [(a, block_a, 1), (b, block_b, 1)])
    # a code only one item's block holds keeps resolving as it did
    info = (await codes_api.get("/api/codes/lookup", params={"code": only_a})).json()
    assert info["status"] == "issued" and info["block"] == block_a and info["index"] == 4
    # packing or tracing an ambiguous code is refused, naming both items
    r = await codes_api.get(f"/api/trace/backward/{both}")
    assert r.status_code == 409 and a in r.json()["detail"] and b in r.json()["detail"], r.text
    # the next issuance moves each item to its own codes (a new rule version); the old blocks keep theirs
    la = await make_lot(sessionmaker, a)
    r = await codes_api.post("/api/codes/blocks", json={"key": f"{a}-new", "item": a, "count": 2, "lot": la})
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["rule_version"] == 2 and a in new["first"] and new["first"] != both
    info = (await codes_api.get("/api/codes/lookup", params={"code": new["first"]})).json()
    assert info["status"] == "issued" and info["block"] == new["id"]
    old = (await codes_api.get(f"/api/codes/blocks/{block_a}")).json()
    assert old["rule_version"] == 1 and old["first"] == f"U{base + 1:012d}"


async def test_custom_house_rules_saved_colliding_before_the_check_issue_nothing_more(codes_api, sessionmaker):
    tag = uuid.uuid4().hex[:6].upper()
    spec = {"segments": [{"kind": "literal", "text": f"K{tag}"}, {"kind": "sequence", "width": 6}]}
    a, _ = await make_item(sessionmaker, gtin=None)
    b, _ = await make_item(sessionmaker, gtin=None)
    async with sessionmaker() as s, s.begin():  # as rules were saved before the check existed
        for item in (a, b):
            it = await codes.get_item(s, item)
            s.add(CodeRule(item_id=it.id, level="unit", version=1, spec=RuleSpec.model_validate(spec).model_dump(
                exclude_none=True), namespace=f"house:{item}:unit", secret=secrets.token_hex(16), created_by="qa-1"))
    r = await codes_api.post("/api/codes/blocks", json={"key": f"{b}-k", "item": b, "count": 2})
    assert r.status_code == 409, r.text
    assert f"item {a!r} (unit rule version 1)" in r.json()["detail"] and "save a new version" in r.json()["detail"]
    fixed = {"segments": [{"kind": "literal", "text": f"K{tag}-{b}-"}, {"kind": "sequence", "width": 6}]}
    assert (await codes_api.post("/api/codes/rules", json={"item": b, "level": "unit", "spec": fixed})
            ).status_code == 201
    r = await codes_api.post("/api/codes/blocks", json={"key": f"{b}-k", "item": b, "count": 2})
    assert r.status_code == 201 and r.json()["first"] == f"K{tag}-{b}-000000", r.text


# --- E2: a line code GS1 does not allow in AI 21 / AI 10 --------------------------------------------------

@pytest.mark.parametrize("ai", ["21", "10"])
async def test_a_line_code_outside_gs1_character_set_82_is_refused_at_issue(codes_api, sessionmaker, ai):
    item, _ = await make_item(sessionmaker)
    if ai == "21":
        elements = [{"ai": "01"}, {"ai": "21", "segments": [{"kind": "line", "width": 3},
                                                           {"kind": "sequence", "width": 7}]}]
    else:
        elements = [{"ai": "01"}, {"ai": "10", "segments": [{"kind": "line", "width": 3}, {"kind": "lot"}]},
                    {"ai": "21", "segments": [{"kind": "sequence", "width": 7}]}]
    r = await codes_api.post("/api/codes/rules", json={"item": item, "level": "unit", "spec": {"elements": elements}})
    assert r.status_code == 201, r.text
    lot = await make_lot(sessionmaker, item)
    for bad in ("L 1", "L#1"):
        r = await codes_api.post("/api/codes/blocks", json={"key": f"{item}-{bad}", "item": item, "count": 5,
                                                            "lot": lot, "line": bad})
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["field"] == "line" and f"AI {ai}" in body["detail"] and "character set 82" in body["detail"]
    r = await codes_api.post("/api/codes/blocks", json={"key": f"{item}-ok", "item": item, "count": 5, "lot": lot,
                                                        "line": "L-1"})
    assert r.status_code == 201, r.text


# --- E3: GTINs from the ERP have their check digit checked ---------------------------------------------------

async def test_an_erp_gtin_with_a_wrong_check_digit_gets_422_naming_the_field(codes_api):
    bad = wrong_check_digit(new_gtin())
    number = f"WO-{uuid.uuid4().hex[:8].upper()}"
    ev = {"event_id": f"{number}-rel", "event_type": "work_order.released", "work_order": {
        "number": number, "item": "SHAFT-X", "gtin": bad, "quantity": 5, "routing": [{"seq": 10, "name": "Turn"}]}}
    r = await codes_api.post("/api/erp/events", json=ev)
    assert r.status_code == 422, r.text
    fields = {e["field"]: e["problem"] for e in r.json()["errors"]}
    assert "work_order.gtin" in fields and "check digit" in fields["work_order.gtin"], fields
    lot = {"lot": "L-1", "supplier": "ACME", "item": "BAR", "supplier_lot": "S-1", "quantity": 1}
    ev = {"event_id": f"{number}-pr", "event_type": "purchase_receipt.posted", "work_order": number,
          "receipt": {"receipt": "PR-1", "lots": [dict(lot), dict(lot, lot="L-2", gtin=bad)]}}
    r = await codes_api.post("/api/erp/events", json=ev)
    assert r.status_code == 422, r.text
    fields = {e["field"]: e["problem"] for e in r.json()["errors"]}
    assert "receipt.lots.1.gtin" in fields and "check digit" in fields["receipt.lots.1.gtin"], fields


def test_gtin_check_is_on_the_wire_models_but_recorded_histories_still_decode():
    bad = wrong_check_digit(new_gtin())
    wo = {"number": "WO-1", "item": "SHAFT", "gtin": bad, "quantity": 1, "routing": [{"seq": 10, "name": "Turn"}]}
    with pytest.raises(ValidationError, match="check digit"):
        WorkOrderInput.model_validate(wo)  # the ERP poll builds its input this way
    receipt = {"receipt": "PR-1", "lots": [{"lot": "L-1", "supplier": "A", "item": "B", "supplier_lot": "S",
                                            "quantity": 1, "gtin": bad}]}
    with pytest.raises(ValidationError, match="check digit"):
        PurchaseReceipt.model_validate(receipt)
    # Temporal decodes a running work order's input and signals from JSON: one accepted before the check replays
    import json
    assert TypeAdapter(WorkOrderInput).validate_json(json.dumps(wo)).gtin == bad
    assert TypeAdapter(PurchaseReceipt).validate_json(json.dumps(receipt)).lots[0].gtin == bad


# --- E4: a lot of another item -------------------------------------------------------------------------------

async def test_a_block_or_an_upload_with_a_lot_of_another_item_is_refused(codes_api, sessionmaker):
    a, _ = await make_item(sessionmaker)
    b, _ = await make_item(sessionmaker)
    lot_b = await make_lot(sessionmaker, b)
    r = await codes_api.post("/api/codes/blocks", json={"key": f"{a}-x", "item": a, "count": 3, "lot": lot_b})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "lot" and f"lot of item {b!r}" in r.json()["detail"]
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    pool = (await codes_api.post("/api/codes/pools", json={"number": number, "item": a, "count": 5,
                                                          "line": "LINE-3"})).json()
    lot_a = await make_lot(sessionmaker, a)
    t = datetime.now(UTC) - timedelta(minutes=5)
    used = [{"code": (await code_of(codes_api, pool["block"], 0))["digital_link"], "used_at": t.isoformat(),
             "lot": lot_a},
            {"code": (await code_of(codes_api, pool["block"], 1))["digital_link"], "used_at": t.isoformat(),
             "lot": lot_b}]
    r = await codes_api.post(f"/api/codes/pools/{number}/uploads", json={"upload_id": f"{number}-1", "used": used})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "used[1].lot" and f"lot of item {b!r}" in r.json()["detail"]
    info = (await codes_api.get("/api/codes/lookup", params={"code": used[0]["code"]})).json()
    assert info["state"] == "issued"  # the refused upload left nothing behind


# --- E5: an unknown lot scanned by its Digital Link --------------------------------------------------------------

async def test_an_unknown_lot_scan_is_recorded_as_suspicious_like_unit_scans(codes_api, sessionmaker):
    item, gtin = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    nope = f"NOPE-{uuid.uuid4().hex[:6]}"
    r = await codes_api.get(f"/01/{gtin}/10/{nope}", headers={"accept": "text/html"})
    assert r.status_code == 404 and "We did not issue this code" in r.text
    ok = await codes_api.get(f"/01/{gtin}/10/{lot}", params={"lat": 48.14, "lon": 11.58},
                             headers={"accept": "application/json"})
    assert ok.status_code == 200 and ok.json()["status"] == "genuine"
    await codes_api.app.state.scan_recorder.flush()
    async with sessionmaker() as s:
        scans = {x.code: x for x in (await s.execute(select(CodeScan).where(CodeScan.code.in_(
            [f"/01/{gtin}/10/{nope}", f"/01/{gtin}/10/{lot}"])))).scalars()}
        alerts = (await s.execute(select(CodeAlert).where(CodeAlert.code == f"/01/{gtin}/10/{nope}"))).scalars().all()
    unknown = scans[f"/01/{gtin}/10/{nope}"]
    assert unknown.outcome == "unknown" and unknown.suspicious and "never made" in unknown.reason
    assert [a.kind for a in alerts] == ["scan_unknown"]
    genuine = scans[f"/01/{gtin}/10/{lot}"]
    assert genuine.outcome == "genuine" and not genuine.suspicious and (genuine.lat, genuine.lon) == (48.1, 11.6)


# --- E6: concurrent packing and uploads ------------------------------------------------------------------------

def _postgres(db_url: str) -> bool:
    return make_url(db_url).get_backend_name() == "postgresql"


async def test_two_packers_of_one_unit_at_once_the_loser_gets_a_conflict(codes_api, sessionmaker, db_url):
    """The first packer's transaction is still open when the second packs the same unit into another case: the
    second must wait and then be refused ("already packed"), not fail on the unique index (a 500)."""
    if not _postgres(db_url):
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): two packers cannot interleave there")
    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    assert (await codes_api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": {
        "elements": [{"ai": "00", "extension": "5", "company_prefix": "4012345"}]}})).status_code == 201
    units = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-u", "item": item, "count": 2,
                                                             "lot": lot})).json()
    cases = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-c", "item": item, "level": "case",
                                                             "count": 2})).json()
    unit = (await code_of(codes_api, units, 0))["code"]
    c1, c2 = (await code_of(codes_api, cases, 0))["code"], (await code_of(codes_api, cases, 1))["code"]
    async with sessionmaker() as s1:
        await s1.begin()
        await packing.pack(s1, parent=c1, children=[unit], actor="t", resolver=DOMAIN)

        async def second() -> dict:
            async with sessionmaker() as s2, s2.begin():
                return await packing.pack(s2, parent=c2, children=[unit], actor="t", resolver=DOMAIN)
        task = asyncio.create_task(second())
        await asyncio.sleep(1.0)  # the second packer reaches the unit while the first has not committed
        await s1.commit()
    with pytest.raises(Conflict, match="already packed in"):
        await task
    contents = (await codes_api.get("/api/codes/contents", params={"code": c1})).json()
    assert unit in str(contents)


async def test_two_uploads_of_one_code_at_once_the_loser_gets_a_duplicate_alert(codes_api, sessionmaker, db_url):
    if not _postgres(db_url):
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): two uploads cannot interleave there")
    item, _ = await make_item(sessionmaker)
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    pool = (await codes_api.post("/api/codes/pools", json={"number": number, "item": item, "count": 5,
                                                          "line": "LINE-3"})).json()
    code = (await code_of(codes_api, pool["block"], 0))["digital_link"]
    at = datetime.now(UTC) - timedelta(minutes=5)
    async with sessionmaker() as s1:
        await s1.begin()
        first = await code_pools.upload(s1, number=number, upload_id=f"{number}-a", resolver=DOMAIN,
                                        used=[{"code": code, "used_at": at}])

        async def second() -> dict:
            async with sessionmaker() as s2, s2.begin():
                return await code_pools.upload(s2, number=number, upload_id=f"{number}-b", resolver=DOMAIN,
                                               used=[{"code": code, "used_at": at + timedelta(seconds=1)}])
        task = asyncio.create_task(second())
        await asyncio.sleep(1.0)
        await s1.commit()
    out = await task
    assert first["accepted"] == 1
    assert out["accepted"] == 0 and [a["kind"] for a in out["alerts"]] == ["duplicate"], out
    async with sessionmaker() as s:
        used = (await s.execute(select(UsedCode).where(UsedCode.value == codes.canonical(
            gs1.parse_digital_link(code))))).scalars().all()
    assert len(used) == 1


async def test_a_pool_code_packed_while_its_upload_runs_becomes_a_duplicate_not_an_error(codes_api, sessionmaker,
                                                                                          db_url):
    if not _postgres(db_url):
        pytest.skip("SQLite serialises writers (BEGIN IMMEDIATE): a packer and an upload cannot interleave there")
    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    assert (await codes_api.post("/api/codes/rules", json={"item": item, "level": "case", "spec": {
        "elements": [{"ai": "00", "extension": "6", "company_prefix": "4012345"}]}})).status_code == 201
    number = f"POOL-{uuid.uuid4().hex[:6]}"
    pool = (await codes_api.post("/api/codes/pools", json={"number": number, "item": item, "count": 5,
                                                          "line": "LINE-3"})).json()
    case = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-c", "item": item, "level": "case",
                                                            "count": 1})).json()
    unit = (await code_of(codes_api, pool["block"], 2))["code"]
    async with sessionmaker() as s1:
        await s1.begin()
        await packing.pack(s1, parent=case["first"], children=[unit], actor="t", resolver=DOMAIN)
        task = asyncio.create_task(codes_api.post(f"/api/codes/pools/{number}/uploads", json={
            "upload_id": f"{number}-1", "used": [{"code": unit, "used_at": datetime.now(UTC).isoformat(),
                                                  "lot": lot}]}))
        await asyncio.sleep(1.0)  # the upload reaches the code while the packer has not committed
        await s1.commit()
    r = await task
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 0 and [a["kind"] for a in r.json()["alerts"]] == ["duplicate"]


def test_a_sequence_start_fits_in_its_own_characters():
    """An alphanumeric sequence holds 36^width values: its start was checked against 10^width (and a start below
    the width was never checked at all)."""
    from core.errors import InvalidInput
    from domain import code_rules

    def spec(charset: str, start: int) -> code_rules.RuleSpec:
        return code_rules.parse_spec({"segments": [{"kind": "literal", "text": "Q"}, {
            "kind": "sequence", "width": 3, "charset": charset, "start": start}]})

    code_rules.validate_spec(spec("alphanumeric", 1000), level="unit", gtin=None)  # "0RS": fits in 3 of 0-9A-Z
    code_rules.validate_spec(spec("alphanumeric", 36 ** 3 - 1), level="unit", gtin=None)
    code_rules.validate_spec(spec("numeric", 999), level="unit", gtin=None)
    for charset, start in (("alphanumeric", 36 ** 3), ("numeric", 1000)):
        with pytest.raises(InvalidInput) as e:
            code_rules.validate_spec(spec(charset, start), level="unit", gtin=None)
        assert f"start {start} does not fit in 3 {charset} characters" in str(e.value)


async def test_a_case_holding_units_of_a_lot_now_on_hold_is_not_packed_onto_a_pallet(codes_api, sessionmaker):
    """Units checked when they went into the case; their lot went on hold afterwards: the case stays off pallets
    until the lot is released (or the units are unpacked)."""
    item, _ = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, item)
    for level, ext in (("case", "5"), ("pallet", "6")):
        assert (await codes_api.post("/api/codes/rules", json={"item": item, "level": level, "spec": {
            "elements": [{"ai": "00", "extension": ext, "company_prefix": "4012345"}]}})).status_code == 201
    units = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-u", "item": item, "count": 2,
                                                             "lot": lot})).json()
    case = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-c", "item": item, "level": "case",
                                                            "count": 1})).json()
    pallet = (await codes_api.post("/api/codes/blocks", json={"key": f"{item}-p", "item": item, "level": "pallet",
                                                              "count": 1})).json()
    u0 = (await code_of(codes_api, units, 0))["code"]
    c0, p0 = (await code_of(codes_api, case, 0))["code"], (await code_of(codes_api, pallet, 0))["code"]
    assert (await codes_api.post("/api/codes/pack", json={"parent": c0, "children": [u0], "actor": "p"})).status_code \
        == 200
    async with sessionmaker() as s, s.begin():
        (await s.execute(select(Lot).where(Lot.number == lot))).scalar_one().status = LotStatus.on_hold
    r = await codes_api.post("/api/codes/pack", json={"parent": p0, "children": [c0], "actor": "fork"})
    assert r.status_code == 409 and f"lot {lot}" in r.json()["detail"] and "on hold" in r.json()["detail"], r.text
    assert r.json()["field"] == "children"
    async with sessionmaker() as s, s.begin():
        (await s.execute(select(Lot).where(Lot.number == lot))).scalar_one().status = LotStatus.released
    r = await codes_api.post("/api/codes/pack", json={"parent": p0, "children": [c0], "actor": "fork"})
    assert r.status_code == 200, r.text
