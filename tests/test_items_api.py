"""Items API: read item master data and correct it (a wrong GTIN), losing nothing.

Runs on the suite's database (PostgreSQL or SQLite) with the API in-process, as tests/test_codes.py does: a unit
serial issued under the old GTIN still resolves (scan page, JSON) and traces backward by its old Digital Link URI
after the correction, and new codes carry the new GTIN.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from api.main import create_app
from core.settings import Settings
from domain import codes, gs1
from domain.events import hub_uri, lot_class_uri, record_event
from domain.models import AuditLog, CodeBlock, ItemGtin, Lot
from domain.production import upsert_item
from tests.helpers import SUPER_HEADERS, role_headers
from tests.test_codes import make_item, make_lot, new_gtin

JSON = {"Accept": "application/json"}
DOMAIN = "https://id.tracehub.example"


@pytest_asyncio.fixture(scope="module")
async def items_api(settings: Settings, sessionmaker, client):
    app = create_app(settings, sessionmaker=sessionmaker, temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c
    await app.state.scan_recorder.close()


def _wrong_check_digit(gtin: str) -> str:
    return gtin[:-1] + str((int(gtin[-1]) + 1) % 10)


def _by_gtin(view: dict) -> dict[str, dict]:
    return {g["gtin"]: g for g in view["gtins"]}


@pytest.mark.asyncio
async def test_read_one_and_list_filtered_by_code_and_gtin(items_api: httpx.AsyncClient, sessionmaker):
    code, gtin = await make_item(sessionmaker, name="Flange 40 mm")
    other, _ = await make_item(sessionmaker)
    r = await items_api.get(f"/api/items/{code}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["code"], body["name"], body["gtin"], body["uom"]) == (code, "Flange 40 mm", gtin, "EA")
    assert body["gtins"] == [{"gtin": gtin, "current": True, "retired_at": None, "replaced_by": None,
                              "retired_by": None, "code_blocks": 0, "codes": 0, "batch_codes": 0}]

    by_code = (await items_api.get("/api/items", params={"code": code})).json()
    assert by_code["total"] == 1 and [i["code"] for i in by_code["items"]] == [code]
    by_gtin = (await items_api.get("/api/items", params={"gtin": gtin})).json()
    assert [i["code"] for i in by_gtin["items"]] == [code]
    page = (await items_api.get("/api/items", params={"code": "IT-", "limit": 1, "offset": 1})).json()
    assert page["total"] >= 2 and len(page["items"]) == 1 and page["limit"] == 1 and page["offset"] == 1
    assert other != code

    missing = await items_api.get("/api/items/NO-SUCH-ITEM")
    assert missing.status_code == 404 and missing.json()["field"] == "code"
    assert "NO-SUCH-ITEM" in missing.json()["detail"]


@pytest.mark.asyncio
async def test_correct_name_and_gtin_is_audited_with_who_and_before_after(items_api: httpx.AsyncClient,
                                                                          sessionmaker):
    code, old = await make_item(sessionmaker, name="Shaft 25")
    new = new_gtin()
    r = await items_api.patch(f"/api/items/{code}", json={"gtin": new, "name": "Shaft 25 mm, hardened"},
                              headers=role_headers("quality_manager"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["gtin"] == new and body["name"] == "Shaft 25 mm, hardened"
    gtins = _by_gtin(body)
    assert gtins[old]["current"] is False and gtins[old]["replaced_by"] == new
    assert gtins[old]["retired_by"] == "t-quality_manager" and gtins[new]["current"] is True
    # read back, and the old GTIN still finds the item
    assert (await items_api.get(f"/api/items/{code}")).json()["gtin"] == new
    assert [i["code"] for i in (await items_api.get("/api/items", params={"gtin": old})).json()["items"]] == [code]

    async with sessionmaker() as s:
        entries = (await s.execute(select(AuditLog).where(AuditLog.action == "item.corrected",
                                                          AuditLog.entity_key == code))).scalars().all()
    assert len(entries) == 1
    e = entries[0]
    assert e.actor == "t-quality_manager" and e.entity == "item" and e.at is not None
    assert e.changes["before"] == {"gtin": old, "name": "Shaft 25"}
    assert e.changes["after"] == {"gtin": new, "name": "Shaft 25 mm, hardened"}

    # the same values again change nothing and write no second entry
    again = await items_api.patch(f"/api/items/{code}", json={"gtin": new}, headers=role_headers("admin"))
    assert again.status_code == 200 and again.json()["gtin"] == new
    async with sessionmaker() as s:
        assert len((await s.execute(select(AuditLog).where(AuditLog.action == "item.corrected",
                                                           AuditLog.entity_key == code))).scalars().all()) == 1


@pytest.mark.asyncio
async def test_a_bad_gtin_is_refused_naming_the_field_and_the_fix(items_api: httpx.AsyncClient, sessionmaker):
    code, gtin = await make_item(sessionmaker)
    good = new_gtin()
    wrong = _wrong_check_digit(good)
    r = await items_api.patch(f"/api/items/{code}", json={"gtin": wrong})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "gtin"
    assert f"should be {good[-1]}" in r.json()["detail"] and wrong in r.json()["detail"]

    short = await items_api.patch(f"/api/items/{code}", json={"gtin": good[:10]})
    assert short.status_code == 422 and short.json()["field"] == "gtin"
    assert "10 digits" in short.json()["detail"] and "GTIN-14" in short.json()["detail"]

    letters = await items_api.patch(f"/api/items/{code}", json={"gtin": good[:-2] + "AB"})
    assert letters.status_code == 422 and letters.json()["field"] == "gtin"
    assert "digits only" in letters.json()["detail"]

    removed = await items_api.patch(f"/api/items/{code}", json={"gtin": None})
    assert removed.status_code == 422 and removed.json()["field"] == "gtin"

    blank = await items_api.patch(f"/api/items/{code}", json={"name": "  "})
    assert blank.status_code == 422 and blank.json()["field"] == "name"

    unknown_field = await items_api.patch(f"/api/items/{code}", json={"gtn": good})
    assert unknown_field.status_code == 422

    # a GTIN-13 is taken as its GTIN-14 (left-padded): the check digit is the same
    gtin13 = good[1:] if good[0] == "0" else None
    assert gtin13 is not None
    ok = await items_api.patch(f"/api/items/{code}", json={"gtin": gtin13})
    assert ok.status_code == 200 and ok.json()["gtin"] == good

    still = (await items_api.get(f"/api/items/{code}")).json()
    assert still["gtin"] == good and gs1.check_digit_problem(still["gtin"]) is None
    assert gtin in _by_gtin(still)


@pytest.mark.asyncio
async def test_a_gtin_another_item_holds_or_held_is_refused_with_409_naming_it(items_api: httpx.AsyncClient,
                                                                              sessionmaker):
    a, a_gtin = await make_item(sessionmaker)
    b, b_gtin = await make_item(sessionmaker)
    r = await items_api.patch(f"/api/items/{a}", json={"gtin": b_gtin})
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "gtin" and repr(b) in r.json()["detail"]

    # a's old GTIN, once corrected away, still names a (its printed codes do): nobody else may take it
    assert (await items_api.patch(f"/api/items/{a}", json={"gtin": new_gtin()})).status_code == 200
    taken = await items_api.patch(f"/api/items/{b}", json={"gtin": a_gtin})
    assert taken.status_code == 409 and repr(a) in taken.json()["detail"]
    # nor may the ERP give it to a new item
    async with sessionmaker() as s, s.begin():
        from core.errors import Conflict
        with pytest.raises(Conflict, match=repr(a)):
            await upsert_item(s, f"IT-{uuid.uuid4().hex[:8]}", gtin=a_gtin)
    # nor may another item issue its cases under it
    case = await items_api.post("/api/codes/rules", json={"item": b, "level": "case", "spec": {"elements": [
        {"ai": "01", "value": a_gtin}, {"ai": "21", "segments": [{"kind": "sequence", "width": 8}]}]}})
    assert case.status_code == 409 and repr(a) in case.json()["detail"], case.text
    # a itself may go back to it (a correction undone): it is current again and no longer history
    back = await items_api.patch(f"/api/items/{a}", json={"gtin": a_gtin})
    assert back.status_code == 200 and back.json()["gtin"] == a_gtin
    assert _by_gtin(back.json())[a_gtin]["current"] is True
    async with sessionmaker() as s:
        assert (await s.execute(select(ItemGtin).where(ItemGtin.gtin == a_gtin))).scalar() is None


@pytest.mark.asyncio
async def test_only_admin_and_quality_manager_correct_items(items_api: httpx.AsyncClient, sessionmaker):
    code, _ = await make_item(sessionmaker)
    for role in ("inspector", "qa_supervisor", "operator", "integrator", "auditor", "erp", "printer"):
        r = await items_api.patch(f"/api/items/{code}", json={"name": "changed"}, headers=role_headers(role))
        assert r.status_code == 403, (role, r.text)
    assert (await items_api.get(f"/api/items/{code}", headers=role_headers("inspector"))).status_code == 200
    assert (await items_api.get(f"/api/items/{code}")).json()["name"] != "changed"
    for role in ("admin", "quality_manager"):
        r = await items_api.patch(f"/api/items/{code}", json={"name": f"by {role}"}, headers=role_headers(role))
        assert r.status_code == 200 and r.json()["name"] == f"by {role}"


async def _scan(api: httpx.AsyncClient, uri: str) -> httpx.Response:
    path = "/" + uri.split("/", 3)[3]  # the resolver's path of a Digital Link URI
    return await api.get(path, headers={**JSON, "Authorization": ""})


# the hub's default unit rule (the GTIN written into the rule), and a saved rule whose AI 01 is "the item's GTIN"
IMPLIED_GTIN_RULE = {"elements": [{"ai": "01"}, {"ai": "21", "segments": [
    {"kind": "literal", "text": "PL-"}, {"kind": "sequence", "width": 8, "charset": "alphanumeric"}]}]}


@pytest.mark.parametrize("rule", [None, IMPLIED_GTIN_RULE], ids=["default-rule", "implied-gtin-rule"])
@pytest.mark.asyncio
async def test_codes_printed_under_the_old_gtin_still_resolve_and_trace_new_codes_use_the_new(
        items_api: httpx.AsyncClient, sessionmaker, rule):
    code, old = await make_item(sessionmaker, name="Bearing 6204")
    lot = await make_lot(sessionmaker, code)
    versions = 1
    if rule is not None:
        saved = await items_api.post("/api/codes/rules", json={"item": code, "level": "unit", "spec": rule})
        assert saved.status_code == 201, saved.text
        versions = saved.json()["version"]
    r = await items_api.post("/api/codes/blocks", json={"key": f"items-{uuid.uuid4().hex}", "item": code,
                                                         "lot": lot, "count": 5})
    assert r.status_code == 201, r.text
    first_old = r.json()["first_digital_link"]
    assert f"/01/{old}/21/" in first_old and (rule is None or "/21/PL-" in first_old)
    before = await _scan(items_api, first_old)  # fills the resolver's caches with the old binding
    assert before.status_code == 200 and before.json()["status"] == "genuine"
    assert (before.json()["item"], before.json()["lot"], before.json()["gtin"]) == (code, lot, old)
    lot_scan = await items_api.get(f"/01/{old}/10/{lot}", headers=JSON)
    assert lot_scan.status_code == 200 and lot_scan.json()["lot"] == lot

    new = new_gtin()
    fixed = await items_api.patch(f"/api/items/{code}", json={"gtin": new}, headers=role_headers("admin"))
    assert fixed.status_code == 200, fixed.text

    # the unit printed under the old GTIN: same item and lot, as printed: with this process's caches (twice: the
    # second answered from them), and as a restarted API finds it (every code cache empty)
    for restart in (False, False, True):
        if restart:
            codes.clear_caches()
            codes._compiled.clear()
        after = await _scan(items_api, first_old)
        assert after.status_code == 200, after.text
        assert after.json()["status"] == "genuine" and not after.json()["suspicious"]
        assert (after.json()["item"], after.json()["lot"], after.json()["gtin"]) == (code, lot, old)
    looked = await items_api.get("/api/codes/lookup", params={"code": first_old})
    assert looked.status_code == 200 and looked.json()["status"] == "issued", looked.text
    trace = await items_api.get(f"/api/trace/backward/{first_old}")
    assert trace.status_code == 200, trace.text
    assert trace.json()["lot"] == lot and trace.json()["unit"] is not None
    # the lot made under the old GTIN: its batch code resolves under the old GTIN
    lot_scan = await items_api.get(f"/01/{old}/10/{lot}", headers=JSON)
    assert lot_scan.status_code == 200 and lot_scan.json()["item"] == code

    # new codes carry the new GTIN, and resolve to the same item
    r2 = await items_api.post("/api/codes/blocks", json={"key": f"items-{uuid.uuid4().hex}", "item": code,
                                                          "lot": lot, "count": 3})
    assert r2.status_code == 201, r2.text
    first_new = r2.json()["first_digital_link"]
    assert f"/01/{new}/21/" in first_new and r2.json()["rule_version"] == versions + 1
    scanned = await _scan(items_api, first_new)
    assert scanned.status_code == 200 and (scanned.json()["item"], scanned.json()["gtin"]) == (code, new)
    assert (await items_api.get(f"/api/trace/backward/{first_new}")).json()["lot"] == lot

    # the item says how many codes were issued under each GTIN
    view = _by_gtin((await items_api.get(f"/api/items/{code}")).json())
    assert (view[old]["code_blocks"], view[old]["codes"]) == (1, 5)
    assert (view[new]["code_blocks"], view[new]["codes"]) == (1, 3)

    # a lot made after the correction was never made under the old GTIN
    later = await make_lot(sessionmaker, code)
    refused = await items_api.get(f"/01/{old}/10/{later}", headers=JSON)
    assert refused.status_code == 404 and refused.json()["status"] == "unknown"


@pytest.mark.asyncio
async def test_legacy_serials_under_the_old_gtin_still_trace(items_api: httpx.AsyncClient, sessionmaker):
    # serials of the blocks from before code rules (table code_block: the serial is the sequence number)
    code, old = await make_item(sessionmaker)
    lot = await make_lot(sessionmaker, code)
    async with sessionmaker() as s, s.begin():
        lot_row = (await s.execute(select(Lot).where(Lot.number == lot))).scalar_one()
        s.add(CodeBlock(key=f"legacy-{uuid.uuid4().hex}", item_id=lot_row.item_id, lot_id=lot_row.id,
                        first_seq=1000, count=10))
    uri = f"https://id.example/01/{old}/21/000000001004"
    assert (await items_api.get(f"/api/trace/backward/{uri}")).json()["lot"] == lot
    assert (await items_api.patch(f"/api/items/{code}", json={"gtin": new_gtin()})).status_code == 200
    r = await items_api.get(f"/api/trace/backward/{uri}")
    assert r.status_code == 200, r.text
    assert r.json()["lot"] == lot


async def _transform(sessionmaker, inputs: list[str], output: str) -> None:
    """A hub TransformationEvent consuming `inputs` into `output`, as production records it (lot classes under
    the items' GTINs of the moment)."""
    async with sessionmaker() as s, s.begin():
        lots = {n: (await s.execute(select(Lot).where(Lot.number == n))).scalar_one() for n in [*inputs, output]}
        out = lots[output]
        await record_event(
            s, key=f"items-test:{uuid.uuid4().hex}", event_type="TransformationEvent", biz_step="commissioning",
            input_quantity_list=[{"epcClass": lot_class_uri(lots[n], DOMAIN), "quantity": 1} for n in inputs],
            output_quantity_list=[{"epcClass": lot_class_uri(out, DOMAIN), "quantity": 1}],
            transformation_id=hub_uri("transformation", output), lot=out, work_order_id=None)


def _lots_of(trace: dict) -> set[str]:
    return {n["id"] for n in trace["nodes"] if n.get("node") == "lot"}


@pytest.mark.asyncio
async def test_lineage_recorded_before_and_after_a_correction_meets_at_the_same_lot(
        items_api: httpx.AsyncClient, sessionmaker):
    material, _ = await make_item(sessionmaker, name="Steel bar")
    product, _ = await make_item(sessionmaker, name="Shaft")
    bar = await make_lot(sessionmaker, material)
    first, second = await make_lot(sessionmaker, product), await make_lot(sessionmaker, product)
    await _transform(sessionmaker, [bar], first)
    assert bar in _lots_of((await items_api.get(f"/api/trace/backward/{first}")).json())

    # the material's GTIN is corrected; the same bar lot is then consumed again (events name it by the new GTIN)
    assert (await items_api.patch(f"/api/items/{material}", json={"gtin": new_gtin()})).status_code == 200
    await _transform(sessionmaker, [bar], second)
    for out in (first, second):
        r = await items_api.get(f"/api/trace/backward/{out}")
        assert r.status_code == 200, r.text
        assert bar in _lots_of(r.json()), (out, r.json()["nodes"])
    fwd = await items_api.get("/api/trace/forward", params={"kind": "lot", "value": bar})
    assert fwd.status_code == 200, fwd.text
    assert {first, second} <= _lots_of(fwd.json())


@pytest.mark.asyncio
async def test_two_items_corrected_to_one_gtin_at_once_one_gets_409(items_api: httpx.AsyncClient, sessionmaker):
    a, _ = await make_item(sessionmaker)
    b, _ = await make_item(sessionmaker)
    target = new_gtin()
    for _ in range(3):
        ra, rb = await asyncio.gather(items_api.patch(f"/api/items/{a}", json={"gtin": target}),
                                      items_api.patch(f"/api/items/{b}", json={"gtin": target}))
        assert sorted([ra.status_code, rb.status_code]) == [200, 409], (ra.text, rb.text)
        holders = (await items_api.get("/api/items", params={"gtin": target})).json()["items"]
        assert len(holders) == 1
        target = new_gtin()
