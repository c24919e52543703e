"""EPCIS corrections: an error declaration reaches clients polling by recordTime and subscribers, a
`did_not_occur` declaration takes the event out of the genealogy, and the hub's own identifiers can be
answered as EPC URNs (GS1-EPC-Format: Always_EPC_URN). Runs on the suite's database with the API in-process."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from api.main import create_app
from core.settings import EpcisSettings, Gs1Settings, Settings
from domain import codes, gs1, production
from tests.helpers import SUPER_HEADERS
from tests.test_epcis import capture, document, events, shipping
from tests.test_epcis_subscriptions import hub, receiver, until  # noqa: F401 (fixtures)
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def api(settings: Settings, sessionmaker, client, worker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings.model_copy(update={"resolver_base_url": RESOLVER}), sessionmaker=sessionmaker,
                     temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def _tick() -> None:
    await asyncio.sleep(0.05)  # recordTimes on either side of a poll differ


def _declaration(ev: dict[str, Any], eid: str, reason: str, at: str = "2026-01-06T00:00:00Z",
                 corrective: list[str] | None = None) -> dict[str, Any]:
    decl: dict[str, Any] = {"declarationTime": at, "reason": reason}
    if corrective:
        decl["correctiveEventIDs"] = corrective
    return {**{k: v for k, v in ev.items() if k != "recordTime"}, "eventID": eid, "errorDeclaration": decl}


# --- corrections reach pollers and subscribers -------------------------------------------------------------

async def test_a_declaration_captured_later_is_in_the_record_time_window_it_was_captured_in(api):
    tag = uuid.uuid4().hex[:8]
    po = f"urn:epcglobal:cbv:bt:4012345000054:C{tag}"
    ev = shipping(f"{tag}A", po=f"C{tag}")
    start = _now()
    await _tick()
    assert (await capture(api, document(ev)))["success"]
    first = await events(api, EQ_bizTransaction_po=po, GE_recordTime=start)
    assert len(first) == 1 and "errorDeclaration" not in first[0]
    eid = first[0]["eventID"]
    await _tick()
    polled = _now()  # the client's next poll starts here
    await _tick()
    assert await events(api, EQ_bizTransaction_po=po, GE_recordTime=polled) == []
    job = await capture(api, document(_declaration(ev, eid, "https://ref.gs1.org/cbv/ER-incorrect_data")))
    assert job["success"], job["errors"]
    # the next poll has the correction: the event with its errorDeclaration, and its own (later) recordTime
    later = await events(api, EQ_bizTransaction_po=po, GE_recordTime=polled)
    assert [e["eventID"] for e in later] == [eid]
    assert later[0]["errorDeclaration"]["reason"].endswith("incorrect_data") and later[0]["recordTime"] > polled
    assert later[0]["recordTime"] > first[0]["recordTime"]
    # a window before the declaration has the original only; no window has both, the original first
    assert [("errorDeclaration" in e) for e in await events(api, EQ_bizTransaction_po=po, LT_recordTime=polled)] \
        == [False]
    both = await events(api, EQ_bizTransaction_po=po)
    assert [("errorDeclaration" in e) for e in both] == [False, True]
    by_record = await events(api, EQ_bizTransaction_po=po, orderBy="recordTime", orderDirection="DESC")
    assert [("errorDeclaration" in e) for e in by_record] == [True, False]
    # the correction queries select it by its own recordTime too
    assert len(await events(api, EQ_bizTransaction_po=po, EXISTS_errorDeclaration="", GE_recordTime=polled)) == 1
    assert await events(api, EQ_bizTransaction_po=po, EXISTS_errorDeclaration="", LT_recordTime=polled) == []
    # pages count entries: one a page, each once, in order
    r = await api.get("/epcis/events", params={"EQ_bizTransaction_po": po, "perPage": "1"})
    seen = [e.get("errorDeclaration") is not None for e in
            r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]
    token = r.headers["GS1-Next-Page-Token"]
    r = await api.get("/epcis/events", params={"EQ_bizTransaction_po": po, "perPage": "1", "nextPageToken": token})
    seen += [e.get("errorDeclaration") is not None for e in
             r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]
    assert seen == [False, True] and "GS1-Next-Page-Token" not in r.headers
    r = await api.get("/epcis/events", params={"EQ_bizTransaction_po": po, "maxEventCount": "1"})
    assert r.status_code == 413


async def test_a_subscription_delivers_a_declaration_on_its_next_run(hub, receiver):  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    name = f"corr-{tag}"
    po = f"urn:epcglobal:cbv:bt:4012345000054:S{tag}"
    assert (await hub.post("/epcis/queries", json={"name": name, "query": {"EQ_bizTransaction_po": po}})
            ).status_code == 201
    r = await hub.post(f"/epcis/queries/{name}/subscriptions", json={"dest": receiver.url, "stream": True})
    assert r.status_code == 201, r.text
    sub = r.json()["subscriptionID"]

    def delivered() -> list[dict[str, Any]]:
        return [e for x in receiver.received if x["doc"]["epcisBody"]["queryResults"].get("subscriptionID") == sub
                for e in x["doc"]["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]

    ev = shipping(f"{tag}B", po=f"S{tag}")
    assert (await capture(hub, document(ev)))["success"]
    await until(lambda: len(delivered()) >= 1)
    eid = delivered()[0]["eventID"]
    assert (await capture(hub, document(_declaration(ev, eid, "did_not_occur"))))["success"]
    await until(lambda: len(delivered()) >= 2, what="the declaration")
    await asyncio.sleep(2.5)  # two more runs: nothing is sent twice
    got = delivered()
    assert [e["eventID"] for e in got] == [eid, eid]
    assert "errorDeclaration" not in got[0] and got[1]["errorDeclaration"]["reason"] == "did_not_occur"
    assert (await hub.delete(f"/epcis/queries/{name}")).status_code == 204


# --- a retracted event leaves the genealogy ----------------------------------------------------------------

async def _trace_edges(api: httpx.AsyncClient, start: str) -> tuple[set[str], list[dict[str, Any]]]:
    back = (await api.get(f"/api/trace/backward/{start}")).json()
    return {n["id"] for n in back["nodes"] if n["node"] == "external"}, back["edges"]


async def test_a_supplier_event_that_did_not_occur_leaves_the_trace_and_a_corrective_event_joins(api, sessionmaker):
    plant = await build_plant(sessionmaker)
    tag = plant.tag
    supplier_lot = f"urn:epc:class:lgtin:4012345.012346.S-M1-{tag}"  # our M1 was received as this supplier lot
    billet = f"urn:epc:class:lgtin:4012345.012345.BILLET-{tag}"
    right = f"urn:epc:class:lgtin:4012345.012345.RIGHT-{tag}"
    melt = {"type": "TransformationEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
            "inputQuantityList": [{"epcClass": billet, "quantity": 900, "uom": "KGM"}],
            "outputQuantityList": [{"epcClass": supplier_lot, "quantity": 850, "uom": "KGM"}],
            "bizStep": "commissioning", "ilmd": {"acme:heatNumber": f"SUPHEAT-{tag}"}}
    ship = {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-02T06:00:00Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": "shipping", "disposition": "in_transit", "epcList": [],
            "quantityList": [{"epcClass": supplier_lot, "quantity": 50, "uom": "KGM"}]}
    assert (await capture(api, document(melt, ship)))["success"] is True
    sup_dl = "https://id.gs1.org/01/04012345123463/10/S-M1-" + tag
    billet_dl = "https://id.gs1.org/01/04012345123456/10/BILLET-" + tag
    right_dl = "https://id.gs1.org/01/04012345123456/10/RIGHT-" + tag
    ext, edges = await _trace_edges(api, plant.unit(0))
    assert ext == {sup_dl, billet_dl}  # the continuation into the supplier's lots
    assert {"from": billet_dl, "to": sup_dl, "via": "transformation"} in edges
    fwd = await api.get("/api/trace/forward", params={"kind": "heat", "value": f"SUPHEAT-{tag}"})
    assert plant.lots["M1"] in {n["id"] for n in fwd.json()["nodes"]}
    eid = (await events(api, MATCH_outputEPCClass=supplier_lot))[0]["eventID"]
    # an incorrect_data declaration keeps the lineage (nothing replaces it yet)
    assert (await capture(api, document(_declaration(melt, eid, "incorrect_data", at="2026-01-03T00:00:00Z"))))[
        "success"]
    assert (await _trace_edges(api, plant.unit(0)))[0] == {sup_dl, billet_dl}
    # the supplier says the melt did not happen (the CBV Web URI form of the reason)
    decl = _declaration(melt, eid, "https://ref.gs1.org/cbv/ER-did_not_occur", at="2026-01-04T00:00:00Z")
    assert (await capture(api, document(decl)))["success"] is True
    ext, edges = await _trace_edges(api, plant.unit(0))
    assert ext == {sup_dl}  # the supplier lot is still what we received (its shipping event names it)
    assert {"from": sup_dl, "to": plant.lots["M1"], "via": "receipt"} in edges
    assert not [e for e in edges if e["via"] == "transformation" and e["to"] == sup_dl]
    # nor does its heat lead forward to our lots any more: the hub knows no lot of that heat now
    fwd = await api.get("/api/trace/forward", params={"kind": "heat", "value": f"SUPHEAT-{tag}"})
    assert fwd.status_code == 404, fwd.text
    # the retracted event and its declarations stay queryable
    assert len(await events(api, EQ_eventID=eid)) == 3
    # the corrective event, captured later, joins the genealogy as usual
    fixed = {**melt, "eventTime": "2026-01-01T07:00:00Z",
             "inputQuantityList": [{"epcClass": right, "quantity": 900, "uom": "KGM"}]}
    assert (await capture(api, document(fixed)))["success"] is True
    ext, edges = await _trace_edges(api, plant.unit(0))
    assert ext == {sup_dl, right_dl}
    assert {"from": right_dl, "to": sup_dl, "via": "transformation"} in edges


async def test_a_declaration_that_arrives_before_its_event_keeps_the_event_out_of_the_trace(api, sessionmaker):
    plant = await build_plant(sessionmaker)
    tag = plant.tag
    supplier_lot = f"urn:epc:class:lgtin:4012345.012346.S-M2-{tag}"
    scrap = f"urn:epc:class:lgtin:4012345.012345.SCRAP-{tag}"
    melt = {"type": "TransformationEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
            "inputQuantityList": [{"epcClass": scrap, "quantity": 900, "uom": "KGM"}],
            "outputQuantityList": [{"epcClass": supplier_lot, "quantity": 850, "uom": "KGM"}],
            "bizStep": "commissioning"}
    from domain.epcis_hash import event_hash
    eid = event_hash(melt, {"acme": "https://ns.acme.example/epcis/"})
    assert (await capture(api, document(_declaration(melt, eid, "did_not_occur"))))["success"] is True
    assert (await capture(api, document({**melt, "eventID": eid})))["success"] is True
    ext, edges = await _trace_edges(api, plant.lots["M2"])
    scrap_dl = "https://id.gs1.org/01/04012345123456/10/SCRAP-" + tag
    assert scrap_dl not in ext and not [e for e in edges if e["via"] == "transformation"]
    # in one document, the event and its declaration
    other = {**melt, "eventTime": "2026-01-01T08:00:00Z"}
    oid = event_hash(other, {"acme": "https://ns.acme.example/epcis/"})
    assert (await capture(api, document({**other, "eventID": oid}, _declaration(other, oid, "did_not_occur"))))[
        "success"]
    assert scrap_dl not in (await _trace_edges(api, plant.lots["M2"]))[0]


async def test_an_incorrect_event_stays_until_its_corrective_event_replaces_it(api, sessionmaker):
    plant = await build_plant(sessionmaker)
    tag = plant.tag
    supplier_lot = f"urn:epc:class:lgtin:4012345.012346.S-M3-{tag}"  # our M3 was received as this supplier lot

    def cls(name: str) -> str:
        return f"urn:epc:class:lgtin:4012345.012345.{name}-{tag}"

    def dl(name: str) -> str:
        return f"https://id.gs1.org/01/04012345123456/10/{name}-{tag}"

    def melt(*inputs: str, **extra: Any) -> dict[str, Any]:
        return {"type": "TransformationEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
                "inputQuantityList": [{"epcClass": cls(i), "quantity": 10, "uom": "KGM"} for i in inputs],
                "outputQuantityList": [{"epcClass": supplier_lot, "quantity": 20, "uom": "KGM"}],
                "bizStep": "commissioning", **extra}

    wrong = melt("WIRE", "BAD")
    assert (await capture(api, document(wrong)))["success"]
    eid = (await events(api, MATCH_outputEPCClass=supplier_lot))[0]["eventID"]
    sup_dl = "https://id.gs1.org/01/04012345123463/10/S-M3-" + tag
    assert (await _trace_edges(api, plant.lots["M3"]))[0] == {sup_dl, dl("WIRE"), dl("BAD")}
    fix_id = f"urn:uuid:{uuid.uuid4()}"
    decl = _declaration(wrong, eid, "incorrect_data", corrective=[fix_id])
    assert (await capture(api, document(decl)))["success"]
    # declared incorrect, but nothing replaces it yet: the trace still follows it, and its node says so
    assert (await _trace_edges(api, plant.lots["M3"]))[0] == {sup_dl, dl("WIRE"), dl("BAD")}
    back = (await api.get(f"/api/trace/backward/{plant.lots['M3']}")).json()
    (shown,) = [e for n in back["nodes"] if n["id"] == dl("BAD") for e in n["events"]]
    assert shown["event_id"] == eid
    assert [(d["reason"], d["corrective_event_ids"]) for d in shown["error_declarations"]] == \
        [("incorrect_data", [fix_id])]
    # the corrective event arrives: it replaces the incorrect one (the link they share stays, as the new one's)
    assert (await capture(api, document(melt("WIRE", "GOOD", eventID=fix_id, eventTime="2026-01-01T06:05:00Z"))))[
        "success"]
    ext, edges = await _trace_edges(api, plant.lots["M3"])
    assert ext == {sup_dl, dl("WIRE"), dl("GOOD")}
    assert {"from": dl("WIRE"), "to": sup_dl, "via": "transformation"} in edges
    # the other order: the corrective event first, the declaration naming it after
    other_lot = f"urn:epc:class:lgtin:4012345.012346.S-M2-{tag}"
    wrong2 = {**melt("OLD2"), "outputQuantityList": [{"epcClass": other_lot, "quantity": 20, "uom": "KGM"}]}
    fix2 = {**melt("NEW2", eventID=f"urn:uuid:{uuid.uuid4()}", eventTime="2026-01-01T06:05:00Z"),
            "outputQuantityList": wrong2["outputQuantityList"]}
    assert (await capture(api, document(wrong2, fix2)))["success"]
    eid2 = next(e["eventID"] for e in await events(api, MATCH_outputEPCClass=other_lot)
                if e["eventID"] != fix2["eventID"])
    assert {dl("NEW2"), dl("OLD2")} <= (await _trace_edges(api, plant.lots["M2"]))[0]
    assert (await capture(api, document(_declaration(wrong2, eid2, "incorrect_data",
                                                     corrective=[fix2["eventID"]]))))["success"]
    ext = (await _trace_edges(api, plant.lots["M2"]))[0]
    assert dl("NEW2") in ext and dl("OLD2") not in ext


# --- Always_EPC_URN for the hub's own events -----------------------------------------------------------------

def _own_gtin() -> tuple[str, str]:
    """A company prefix nobody else in the suite uses (9 digits) and a GTIN of it."""
    gcp = "78" + f"{uuid.uuid4().int % 10**7:07d}"
    body = "0" + gcp + "123"
    return gcp, body + str(gs1.mod10(body))


async def _received(sessionmaker, gtin: str) -> tuple[str, str]:
    item, lot = f"PART-{uuid.uuid4().hex[:8]}", f"L-{uuid.uuid4().hex[:8].upper()}"
    async with sessionmaker() as s, s.begin():
        await production.upsert_item(s, item, gtin=gtin)
        await production.receive_lot(s, work_order=None, receipt=f"PR-{lot}", received_at=None, lot=lot,
                                     supplier="ACME-STEEL", item=item, supplier_lot=f"S-{lot}", heat_number=None,
                                     quantity=5, uom="EA", certificate_ref=None, location=None, resolver=RESOLVER)
    return item, lot


async def test_hub_events_are_answered_as_epc_urns_with_the_code_rules_company_prefix(api, sessionmaker):
    gcp, gtin = _own_gtin()
    item, lot = await _received(sessionmaker, gtin)
    dl = f"{RESOLVER}/01/{gtin}/10/{lot}"
    params = {"EQ_bizStep": "receiving", "MATCH_epcClass": dl}
    r = await api.get("/epcis/events", params=params, headers={"GS1-EPC-Format": "Always_EPC_URN"})
    assert r.status_code == 406 and "HUB_GS1__COMPANY_PREFIXES" in r.json()["detail"], r.text
    # the plant's code rule names its company prefix (the SSCC of its cases): the hub knows its GTINs' too
    async with sessionmaker() as s, s.begin():
        await codes.save_rule(s, item=item, level="case",
                              spec={"elements": [{"ai": "00", "extension": "1", "company_prefix": gcp}]})
    for r in (await api.get("/epcis/events", params=params, headers={"GS1-EPC-Format": "Always_EPC_URN"}),):
        assert r.status_code == 200, r.text
        ev = r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]
        assert ev["quantityList"][0]["epcClass"] == f"urn:epc:class:lgtin:{gcp}.0123.{lot}"
    one = await api.get(f"/epcis/events/{quote(ev['eventID'], safe='')}", headers={"GS1-EPC-Format": "Always_EPC_URN"})
    assert one.status_code == 200, one.text
    assert one.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]["quantityList"][0]["epcClass"] \
        == f"urn:epc:class:lgtin:{gcp}.0123.{lot}"


async def test_the_plants_configured_company_prefixes_make_its_gtins_epc_urns(settings, sessionmaker, client,
                                                                              worker, receiver):  # noqa: F811
    gcp, gtin = _own_gtin()
    _, lot = await _received(sessionmaker, gtin)
    params = {"EQ_bizStep": "receiving", "MATCH_epcClass": f"{RESOLVER}/01/{gtin}/10/{lot}"}
    configured = settings.model_copy(update={"resolver_base_url": RESOLVER,
                                             "gs1": Gs1Settings(company_prefixes=[gcp]),
                                             "epcis": EpcisSettings(stream_every_seconds=1, record_lag_seconds=0)})
    for cfg, status in ((settings.model_copy(update={"resolver_base_url": RESOLVER}), 406), (configured, 200)):
        app = create_app(cfg, sessionmaker=sessionmaker, temporal=client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                     headers=SUPER_HEADERS) as c:
            r = await c.get("/epcis/events", params=params, headers={"GS1-EPC-Format": "Always_EPC_URN"})
            assert r.status_code == status, r.text
            if status == 200:
                ev = r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]
                assert ev["quantityList"][0]["epcClass"] == f"urn:epc:class:lgtin:{gcp}.0123.{lot}"
                # a subscriber asking for URNs gets them from the worker too: the prefixes go with it
                name = f"urn-{uuid.uuid4().hex[:8]}"
                assert (await c.post("/epcis/queries", json={"name": name, "query": params})).status_code == 201
                r = await c.post(f"/epcis/queries/{name}/subscriptions", headers={"GS1-EPC-Format": "Always_EPC_URN"},
                                 json={"dest": receiver.url, "stream": True, "initialRecordTime": "2000-01-01T00:00:00Z"})
                assert r.status_code == 201, r.text
                await until(lambda: len(receiver.received) >= 1)
                got = receiver.received[0]["doc"]["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
                assert got[0]["quantityList"][0]["epcClass"] == f"urn:epc:class:lgtin:{gcp}.0123.{lot}"
                assert (await c.delete(f"/epcis/queries/{name}")).status_code == 204
