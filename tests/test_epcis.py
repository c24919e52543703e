"""The GS1 EPCIS 2.0 REST interface: capture jobs (atomic, limits), queries, corrections, named queries, and
captured supplier events joining the genealogy. Runs on the suite's database with the API in-process."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio

from api.main import create_app
from core.settings import Settings
from domain import epcis_capture, gs1, production
from domain.epcis_hash import event_hash
from domain.epcis_validate import validate
from tests.helpers import SUPER_HEADERS
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio
CTX = ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld", {"acme": "https://ns.acme.example/epcis/"}]
ACME = {"acme": "https://ns.acme.example/epcis/"}


@pytest_asyncio.fixture(scope="session")
async def hub(settings: Settings, sessionmaker, client, worker) -> AsyncIterator[httpx.AsyncClient]:
    # the suite's Temporal and worker: documents of more than INLINE_MAX_EVENTS events are captured by a workflow
    app = create_app(settings.model_copy(update={"resolver_base_url": RESOLVER}), sessionmaker=sessionmaker,
                     temporal=client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as c:
        yield c


def document(*events: dict[str, Any]) -> dict[str, Any]:
    return {"@context": CTX, "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "2026-01-05T08:00:00Z",
            "epcisBody": {"eventList": list(events)}}


def shipping(serial: str, *, minute: int = 0, po: str = "PO-1", **extra: Any) -> dict[str, Any]:
    return {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": f"2026-01-05T08:{minute:02d}:00.000+01:00",
            "eventTimeZoneOffset": "+01:00", "bizStep": "shipping", "disposition": "in_transit",
            "epcList": [f"urn:epc:id:sgtin:4012345.011111.{serial}"],
            "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
            "bizTransactionList": [{"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:4012345000054:{po}"}],
            "recordTime": "2000-01-01T00:00:00Z", **extra}


async def finished(hub: httpx.AsyncClient, location: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll a capture job until it is no longer running."""
    deadline = time.monotonic() + timeout
    while True:
        job = (await hub.get(location)).json()
        if not job["running"]:
            return job
        assert time.monotonic() < deadline, f"capture job still running: {job}"
        await asyncio.sleep(0.05)


async def capture(hub: httpx.AsyncClient, doc: dict[str, Any], **headers: str) -> dict[str, Any]:
    r = await hub.post("/epcis/capture", json=doc, headers=headers)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/epcis/capture/{r.json()['captureID']}"
    job = await finished(hub, r.headers["Location"])
    if not r.json()["running"]:  # done in the request: the job says the same later
        assert job == r.json()
    return job


async def events(hub: httpx.AsyncClient, **params: Any) -> list[dict[str, Any]]:
    r = await hub.get("/epcis/events", params=params)
    assert r.status_code == 200, r.text
    return r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]


async def test_capture_stores_assigns_ids_and_record_time(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    job = await capture(hub, document(shipping(f"{tag}A"), shipping(f"{tag}B", minute=5, **{"acme:carrier": "DHL"})))
    assert job["success"] is True and job["running"] is False and job["storedCount"] == 2 and job["errors"] == []
    got = await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}A|urn:epc:id:sgtin:4012345.011111.{tag}B")
    assert len(got) == 2
    for ev in got:
        assert ev["eventID"].startswith("ni:///sha-256;") and ev["eventID"].endswith("?ver=CBV2.0")
        assert ev["recordTime"] > "2025"  # the server's own time, not the 2000 the client sent
    original = {k: v for k, v in shipping(f"{tag}A").items() if k != "recordTime"}
    assert got[0]["eventID"] == event_hash(original, ACME)
    # capturing the same document again stores nothing twice
    again = await capture(hub, document(shipping(f"{tag}A")))
    assert again["success"] is True and again["storedCount"] == 0
    assert len(await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}A")) == 1


async def test_capture_is_atomic_and_lists_every_violation(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    bad1 = {**shipping(f"{tag}B"), "action": "MOVE"}
    bad2 = {**shipping(f"{tag}C"), "eventTime": "2026-01-05T08:00:00", "acme:ok": 1, "bare": 2}
    job = await capture(hub, document(shipping(f"{tag}A"), bad1, bad2))
    assert job["success"] is False and job["storedCount"] == 0
    found = {(e["event"], e["field"]) for e in job["errors"]}
    assert {(1, "action"), (2, "eventTime"), (2, "bare")} <= found
    assert all(e["type"] == "epcisException:ValidationException" for e in job["errors"])
    assert await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}A") == []
    # with GS1-Capture-Error-Behaviour: proceed, the valid event is kept
    job = await capture(hub, document(shipping(f"{tag}A"), bad1), **{"GS1-Capture-Error-Behaviour": "proceed"})
    assert job["success"] is False and job["storedCount"] == 1
    assert len(await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}A")) == 1


async def test_capture_limits_are_advertised_and_enforced(hub: httpx.AsyncClient, monkeypatch):
    r = await hub.options("/epcis/capture")
    assert r.status_code == 204 and r.headers["GS1-EPCIS-Capture-Limit"] == str(epcis_capture.CAPTURE_LIMIT)
    assert int(r.headers["GS1-EPCIS-Capture-File-Size-Limit"]) == epcis_capture.CAPTURE_FILE_SIZE_LIMIT
    monkeypatch.setattr(epcis_capture, "CAPTURE_LIMIT", 2)
    r = await hub.post("/epcis/capture", json=document(shipping("L1"), shipping("L2"), shipping("L3")))
    assert r.status_code == 413 and r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "epcisException:CaptureLimitExceededException"
    monkeypatch.setattr(epcis_capture, "CAPTURE_FILE_SIZE_LIMIT", 100)
    r = await hub.post("/epcis/capture", json=document(shipping("L1")))
    assert r.status_code == 413
    r = await hub.post("/epcis/capture", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["type"] == "epcisException:ValidationException"


async def test_query_parameters(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    recv = {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-05T09:00:00Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": "receiving",
            "disposition": "in_progress", "epcList": [f"https://brand.example/01/04012345111118/21/{tag}R"],
            "bizLocation": {"id": "urn:epc:id:sgln:4012345.00005.0"}}
    make = {"type": "TransformationEvent", "eventTime": "2026-01-05T10:00:00Z", "eventTimeZoneOffset": "+00:00",
            "inputQuantityList": [{"epcClass": f"urn:epc:class:lgtin:4012345.012345.IN{tag}", "quantity": 5,
                                   "uom": "KGM"}],
            "outputQuantityList": [{"epcClass": f"urn:epc:class:lgtin:4012345.012346.OUT{tag}", "quantity": 4}],
            "bizStep": "commissioning", "ilmd": {"acme:heatNumber": f"HEAT{tag}"},
            "bizTransactionList": [{"type": "prodorder", "bizTransaction": f"urn:acme:wo:{tag}"}]}
    job = await capture(hub, document(shipping(f"{tag}A", po=f"PO{tag}"), recv, make))
    assert job["success"], job["errors"]
    epc_a = f"urn:epc:id:sgtin:4012345.011111.{tag}A"
    dl_a = f"https://id.gs1.org/01/04012345111118/21/{tag}A"
    assert len(await events(hub, MATCH_epc=dl_a)) == 1  # a DL matches what was captured as a URN
    assert len(await events(hub, MATCH_anyEPC=f"urn:epc:id:sgtin:4012345.011111.{tag}R")) == 1  # and the reverse
    by_pattern = await events(hub, MATCH_epc="urn:epc:idpat:sgtin:4012345.011111.*", EQ_bizTransaction_po=
                              f"urn:epcglobal:cbv:bt:4012345000054:PO{tag}")
    assert [e["epcList"] for e in by_pattern] == [[dl_a]]  # output in Digital Link by default
    assert [e["type"] for e in await events(hub, MATCH_outputEPCClass=f"urn:epc:class:lgtin:4012345.012346.OUT{tag}")] \
        == ["TransformationEvent"]
    assert len(await events(hub, MATCH_inputEPCClass=f"https://id.gs1.org/01/04012345123456/10/IN{tag}")) == 1
    # the prefix is known from the captured @context; a GS1-Extensions header overrides it
    assert len(await events(hub, **{"EQ_ILMD_acme:heatNumber": f"HEAT{tag}"})) == 1
    r = await hub.get("/epcis/events", params={"EQ_ILMD_acme:heatNumber": f"HEAT{tag}"},
                      headers={"GS1-Extensions": "acme=https://other.example/"})
    assert r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == []
    r = await hub.get("/epcis/events", params={"EXISTS_ILMD_zzz:heatNumber": ""})
    assert r.status_code == 400 and "zzz" in r.json()["detail"]
    assert len(await events(hub, EQ_bizTransaction_prodorder=f"urn:acme:wo:{tag}", eventType="TransformationEvent")) == 1
    assert len(await events(hub, EQ_bizStep="urn:epcglobal:cbv:bizstep:receiving", EQ_bizLocation="https://id.gs1.org/414/4012345000054",
                            MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}R")) == 1
    assert await events(hub, EQ_bizStep="shipping", MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}R") == []
    window = await events(hub, GE_eventTime="2026-01-05T09:30:00Z", LT_eventTime="2026-01-05T10:30:00Z",
                          MATCH_anyEPCClass=f"urn:epc:class:lgtin:4012345.012345.IN{tag}")
    assert len(window) == 1
    ev_id = window[0]["eventID"]
    # quantities (EPCIS 2.0: any quantityElement), with or without a unit
    wo = {"EQ_bizTransaction_prodorder": f"urn:acme:wo:{tag}"}
    for params, n in (({"EQ_quantity": "5"}, 1), ({"GT_quantity": "4.5"}, 1), ({"GT_quantity": "5"}, 0),
                      ({"LT_quantity": "4"}, 0), ({"LE_quantity": "4"}, 1), ({"EQ_quantity_KGM": "5"}, 1),
                      ({"EQ_quantity_KGM": "4"}, 0), ({"GE_quantity_KGM": "5", "LT_quantity_KGM": "6"}, 1)):
        assert len(await events(hub, **wo, **params)) == n, params
    r = await hub.get("/epcis/events", params={"GE_quantity": "lots"})
    assert r.status_code == 400 and "GE_quantity" in r.json()["detail"]
    assert [e["eventID"] for e in await events(hub, EQ_eventID=ev_id)] == [ev_id]
    urns = (await hub.get("/epcis/events", params={"MATCH_epc": epc_a},
                          headers={"GS1-EPC-Format": "Always_EPC_URN"}))
    assert urns.headers["GS1-EPC-Format"] == "Always_EPC_URN"
    assert urns.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]["epcList"] == [epc_a]
    r = await hub.get("/epcis/events", params={"EQ_nonsense": "x", "FOO": "1"})
    assert r.status_code == 400 and r.json()["type"] == "epcisException:QueryParameterException"
    r = await hub.get("/epcis/events", params={"GE_eventTime": "yesterday"})
    assert r.status_code == 400 and "GE_eventTime" in r.json()["detail"]


async def test_query_parameters_each_filter_keeps_one_event_and_drops_another(hub: httpx.AsyncClient):
    """Each case: within one tagged batch, one event that matches and one that does not (a filter that were
    ignored would return both)."""
    tag = uuid.uuid4().hex[:8]
    po = f"urn:epcglobal:cbv:bt:4012345000054:F{tag}"
    bt = [{"type": "po", "bizTransaction": po}]
    sgtin = "urn:epc:id:sgtin:4012345.011111."
    base = {"eventTime": "2026-01-05T09:00:00Z", "eventTimeZoneOffset": "+00:00", "bizTransactionList": bt}
    add = {**base, "type": "ObjectEvent", "action": "ADD", "bizStep": "commissioning", "epcList": [f"{sgtin}{tag}1"],
           "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.1"}, "acme:shift": "A"}
    observe = {**base, "type": "ObjectEvent", "action": "OBSERVE", "bizStep": "inspecting",
               "epcList": [f"{sgtin}{tag}2"], "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.2"}}
    pack1 = {**base, "type": "AggregationEvent", "action": "ADD", "bizStep": "packing",
             "parentID": f"urn:epc:id:sscc:4012345.1{int(tag, 16) % 10**8:08d}1",
             "childEPCs": [f"{sgtin}{tag}1"]}
    pack2 = {**pack1, "parentID": pack1["parentID"][:-1] + "2", "childEPCs": [f"{sgtin}{tag}2"]}
    make1 = {**base, "type": "TransformationEvent", "bizStep": "commissioning",
             "inputEPCList": [f"{sgtin}{tag}1"], "outputEPCList": [f"{sgtin}{tag}3"]}
    make2 = {**make1, "inputEPCList": [f"{sgtin}{tag}2"], "outputEPCList": [f"{sgtin}{tag}4"]}
    job = await capture(hub, document(add, observe, pack1, pack2, make1, make2))
    assert job["success"], job["errors"]

    async def one(**params: str) -> dict[str, Any]:
        got = await events(hub, EQ_bizTransaction_po=po, **params)
        assert len(got) == 1, (params, got)
        return got[0]

    assert len(await events(hub, EQ_bizTransaction_po=po)) == 6
    # EQ_action: of the ObjectEvents, only the ADD (and the Aggregation ADDs, which have an action too)
    assert (await one(EQ_action="OBSERVE"))["bizStep"] == "inspecting"
    assert {e["type"] for e in await events(hub, EQ_bizTransaction_po=po, EQ_action="ADD")} \
        == {"ObjectEvent", "AggregationEvent"}
    assert (await one(EQ_action="ADD", eventType="ObjectEvent"))["bizStep"] == "commissioning"
    # EQ_readPoint, in either identifier form
    assert (await one(EQ_readPoint="urn:epc:id:sgln:4012345.00005.2"))["bizStep"] == "inspecting"
    assert (await one(EQ_readPoint="https://id.gs1.org/414/4012345000054/254/1"))["bizStep"] == "commissioning"
    # MATCH_parentID, MATCH_inputEPC, MATCH_outputEPC: each only in its own role
    assert (await one(MATCH_parentID=pack2["parentID"]))["childEPCs"] == \
        [f"https://id.gs1.org/01/04012345111118/21/{tag}2"]
    assert (await one(MATCH_inputEPC=f"{sgtin}{tag}1"))["type"] == "TransformationEvent"
    assert (await one(MATCH_inputEPC=f"{sgtin}{tag}2"))["outputEPCList"] == \
        [f"https://id.gs1.org/01/04012345111118/21/{tag}4"]
    assert (await one(MATCH_outputEPC=f"{sgtin}{tag}3"))["inputEPCList"] == \
        [f"https://id.gs1.org/01/04012345111118/21/{tag}1"]
    assert await events(hub, EQ_bizTransaction_po=po, MATCH_outputEPC=f"{sgtin}{tag}1") == []  # an input only
    assert await events(hub, EQ_bizTransaction_po=po, MATCH_parentID=f"{sgtin}{tag}1") == []  # a child only
    # EXISTS_ on an extension field that one event has
    assert (await one(**{"EXISTS_acme:shift": ""}))["acme:shift"] == "A"
    # GE_recordTime / LT_recordTime: a second batch recorded later
    first_recorded = max(e["recordTime"] for e in await events(hub, EQ_bizTransaction_po=po))
    await asyncio.sleep(0.05)
    late = {**observe, "epcList": [f"{sgtin}{tag}5"], "bizStep": "shipping"}
    assert (await capture(hub, document(late)))["success"]
    got = await events(hub, EQ_bizTransaction_po=po)
    assert len(got) == 7
    boundary = min(e["recordTime"] for e in got if e["bizStep"] == "shipping")
    assert boundary > first_recorded
    assert (await one(GE_recordTime=boundary))["bizStep"] == "shipping"
    before = await events(hub, EQ_bizTransaction_po=po, LT_recordTime=boundary)
    assert len(before) == 6 and "shipping" not in {e["bizStep"] for e in before}


async def test_gs1_epc_format_no_preference_never_translates_and_a_urn_that_cannot_be_given(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    urn = f"urn:epc:id:sgtin:4012345.011111.{tag}U"  # its company prefix (4012345) becomes known on capture
    brand_dl = f"https://brand.example/01/04012345111118/21/{tag}D"
    # a GTIN whose company prefix the hub has never seen: no URN can be written for it (its length is unknown)
    body = "08" + f"{int(tag, 16) % 10**11:011d}"
    unknown = f"https://brand.example/01/{body}{gs1.mod10(body)}/21/{tag}X"
    known = shipping(f"{tag}U", po=f"G{tag}")
    known["epcList"] = [urn, brand_dl]
    odd = shipping(f"{tag}X", po=f"G{tag}", minute=1)
    odd["epcList"] = [unknown]
    assert (await capture(hub, document(known, odd)))["success"]
    params = {"EQ_bizTransaction_po": f"urn:epcglobal:cbv:bt:4012345000054:G{tag}", "orderBy": "eventTime"}

    async def ask(fmt: str, **extra: str) -> httpx.Response:
        return await hub.get("/epcis/events", params={**params, **extra}, headers={"GS1-EPC-Format": fmt})

    def epcs(r: httpx.Response) -> list[list[str]]:
        return [e["epcList"] for e in r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]

    # Never_Translates: every identifier as it was captured, URN and Digital Link on its own domain
    r = await ask("Never_Translates")
    assert r.status_code == 200 and r.headers["GS1-EPC-Format"] == "Never_Translates"
    assert epcs(r) == [[urn, brand_dl], [unknown]]
    # No_Preference: any form is acceptable, the server answers without translating
    r = await ask("No_Preference")
    assert r.status_code == 200 and epcs(r) == [[urn, brand_dl], [unknown]]
    # the default translates the URN to a Digital Link (a Digital Link stays one)
    assert epcs(await hub.get("/epcis/events", params=params))[0] == [
        f"https://id.gs1.org/01/04012345111118/21/{tag}U", brand_dl]
    # Always_EPC_URN: the event whose identifiers all translate comes as URNs...
    r = await ask("Always_EPC_URN", MATCH_epc=urn)
    assert r.status_code == 200 and r.headers["GS1-EPC-Format"] == "Always_EPC_URN"
    assert epcs(r) == [[urn, f"urn:epc:id:sgtin:4012345.011111.{tag}D"]]
    # ...and an answer holding one that cannot be written as a URN is refused with 406, naming it, not sent mixed
    odd_id = (await ask("Never_Translates")).json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"][1]
    one = await hub.get(f"/epcis/events/{quote(odd_id['eventID'], safe='')}",
                        headers={"GS1-EPC-Format": "Always_EPC_URN"})
    for r in (await ask("Always_EPC_URN"), one):
        assert r.status_code == 406 and r.headers["content-type"] == "application/problem+json", r.text
        problem = r.json()
        assert problem["type"] == "epcisException:NotAcceptableException" and problem["status"] == 406
        assert unknown in problem["detail"] and "company prefix" in problem["detail"]
        assert problem["field"] == "GS1-EPC-Format"
    # a value outside the binding's four is refused, naming the header, not answered in the default format
    for r in (await ask("Always_URN"), await hub.get(f"/epcis/events/{quote(odd_id['eventID'], safe='')}",
                                                     headers={"GS1-EPC-Format": "bogus"})):
        assert r.status_code == 400 and r.headers["content-type"] == "application/problem+json", r.text
        assert r.json()["field"] == "GS1-EPC-Format" and "Always_EPC_URN" in r.json()["detail"]


async def test_answers_are_valid_epcis_query_documents_and_page(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    await capture(hub, document(*[shipping(f"{tag}{i}", minute=i, po=f"P{tag}") for i in range(5)]))
    params = {"EQ_bizTransaction_po": f"urn:epcglobal:cbv:bt:4012345000054:P{tag}", "orderBy": "eventTime",
              "orderDirection": "DESC", "perPage": "2"}
    r = await hub.get("/epcis/events", params=params)
    doc = r.json()
    assert doc["type"] == "EPCISQueryDocument" and validate(doc) == []
    first = doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert [e["eventTime"] for e in first] == ["2026-01-05T08:04:00.000+01:00", "2026-01-05T08:03:00.000+01:00"]
    seen = [e["eventID"] for e in first]
    while "Link" in r.headers:
        nxt = r.headers["Link"].split(";")[0].strip("<>")
        r = await hub.get(nxt)
        seen += [e["eventID"] for e in r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]
    assert len(seen) == len(set(seen)) == 5
    r = await hub.get("/epcis/events", params={**params, "eventCountLimit": "3", "perPage": "10"})
    assert len(r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 3
    r = await hub.get("/epcis/events", params={**params, "maxEventCount": "4"})
    assert r.status_code == 413 and r.json()["type"] == "epcisException:QueryTooLargeException"
    token = (await hub.get("/epcis/events", params=params)).headers["GS1-Next-Page-Token"]
    r = await hub.get("/epcis/events", params={"eventType": "ObjectEvent", "nextPageToken": token})
    assert r.status_code == 400 and r.json()["field"] == "nextPageToken"


async def test_error_declarations_are_kept_beside_the_original(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    ev = shipping(f"{tag}X")
    await capture(hub, document(ev))
    eid = (await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}X"))[0]["eventID"]
    decl = {**{k: v for k, v in ev.items() if k != "recordTime"}, "eventID": eid,
            "errorDeclaration": {"declarationTime": "2026-01-06T00:00:00Z", "reason": "incorrect_data",
                                 "correctiveEventIDs": [f"urn:uuid:{uuid.uuid4()}"]}}
    job = await capture(hub, document(decl))
    assert job["success"] is True and job["storedCount"] == 1
    r = await hub.get(f"/epcis/events/{quote(eid, safe='')}")
    assert r.status_code == 200
    both = r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert [e["eventID"] for e in both] == [eid, eid] and "errorDeclaration" in both[1]
    declared = await events(hub, EXISTS_errorDeclaration="", MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}X")
    assert len(declared) == 1 and declared[0]["errorDeclaration"]["reason"] == "incorrect_data"
    assert len(await events(hub, EQ_errorReason="incorrect_data", EQ_eventID=eid)) == 1
    # a later declaration with another time is a correction too, not a duplicate
    later = {**decl, "errorDeclaration": {**decl["errorDeclaration"], "declarationTime": "2026-01-07T00:00:00Z"}}
    assert (await capture(hub, document(later)))["storedCount"] == 1
    # a "declaration" that is not the same event is refused
    wrong = {**decl, "disposition": "damaged",
             "errorDeclaration": {**decl["errorDeclaration"], "declarationTime": "2026-01-08T00:00:00Z"}}
    job = await capture(hub, document(wrong))
    assert job["success"] is False and job["errors"][0]["field"] == "errorDeclaration"
    assert (await hub.get(f"/epcis/events/{quote('ni:///sha-256;nope?ver=CBV2.0', safe='')}")).status_code == 404


async def test_single_event_capture_and_named_queries(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    r = await hub.post("/epcis/events", json={**shipping(f"{tag}S"), "@context": CTX})
    assert r.status_code == 201, r.text
    r = await hub.post("/epcis/events", json=shipping(f"{tag}T"))  # no @context
    assert r.status_code == 400 and "@context" in r.json()["detail"]
    q = {"name": f"q-{tag}", "query": {"MATCH_epc": [f"urn:epc:id:sgtin:4012345.011111.{tag}S"]}}
    r = await hub.post("/epcis/queries", json=q)
    assert r.status_code == 201 and r.headers["Location"] == f"/epcis/queries/q-{tag}"
    assert (await hub.post("/epcis/queries", json=q)).status_code == 409
    r = await hub.get(f"/epcis/queries/q-{tag}/events")
    body = r.json()["epcisBody"]["queryResults"]
    assert body["queryName"] == f"q-{tag}" and len(body["resultsBody"]["eventList"]) == 1
    assert (await hub.post("/epcis/queries", json={"name": f"bad-{tag}", "query": {"NOPE": "1"}})).status_code == 400
    # a filter added when running a named query would be ignored: refused, naming it
    r = await hub.get(f"/epcis/queries/q-{tag}/events", params={"EQ_bizStep": "receiving"})
    assert r.status_code == 400 and r.json()["field"] == "EQ_bizStep", r.text
    assert "MATCH_epc" in r.json()["detail"] and "perPage" in r.json()["detail"]
    assert (await hub.get(f"/epcis/queries/q-{tag}/events", params={"perPage": "1"})).status_code == 200
    assert (await hub.delete(f"/epcis/queries/q-{tag}")).status_code == 204
    r = await hub.get(f"/epcis/queries/q-{tag}/events")
    assert r.status_code == 404 and r.json()["type"] == "epcisException:NoSuchNameException"


async def test_hub_events_are_queryable_by_business_transaction(hub: httpx.AsyncClient, sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    got = await events(hub, EQ_bizTransaction_prodorder=f"urn:tracehub:workorder:WOA-{plant.tag}",
                       eventType="TransformationEvent")
    assert len(got) == 1 and got[0]["inputQuantityList"][0]["epcClass"] == f"urn:tracehub:lot:{plant.lots['M1']}"
    recv = await events(hub, EQ_bizStep="receiving", MATCH_epcClass=f"urn:tracehub:lot:{plant.lots['M2']}")
    assert recv[0]["hub:heatNumber"] == plant.heats["M2"]


async def test_a_supplier_document_extends_the_genealogy_past_our_dock(hub: httpx.AsyncClient, sessionmaker):
    plant = await build_plant(sessionmaker)
    tag = plant.tag
    supplier_lot = f"urn:epc:class:lgtin:4012345.012346.S-M1-{tag}"  # our M1 was received as this supplier lot
    billet = f"urn:epc:class:lgtin:4012345.012345.BILLET-{tag}"
    melt = {"type": "TransformationEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
            "inputQuantityList": [{"epcClass": billet, "quantity": 900, "uom": "KGM"}],
            "outputQuantityList": [{"epcClass": supplier_lot, "quantity": 850, "uom": "KGM"}],
            "bizStep": "commissioning", "ilmd": {"acme:heatNumber": f"SUPHEAT-{tag}"},
            "certificationInfo": f"https://acme.example/certs/{tag}"}
    ship = {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-02T06:00:00Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": "shipping", "disposition": "in_transit", "epcList": [],
            "quantityList": [{"epcClass": supplier_lot, "quantity": 50, "uom": "KGM"}],
            "sourceList": [{"type": "owning_party", "source": "urn:epc:id:pgln:4012345.00000"}]}
    assert (await capture(hub, document(melt, ship)))["success"] is True
    back = (await hub.get(f"/api/trace/backward/{plant.unit(0)}")).json()
    ext = {n["id"]: n for n in back["nodes"] if n["node"] == "external"}
    sup_dl, billet_dl = "https://id.gs1.org/01/04012345123463/10/S-M1-" + tag, \
        "https://id.gs1.org/01/04012345123456/10/BILLET-" + tag
    assert set(ext) == {sup_dl, billet_dl}
    assert {"from": sup_dl, "to": plant.lots["M1"], "via": "receipt"} in back["edges"]
    assert {"from": billet_dl, "to": sup_dl, "via": "transformation"} in back["edges"]
    assert ext[sup_dl]["level"] == 3 and ext[billet_dl]["level"] == 4
    assert {e["biz_step"] for e in ext[sup_dl]["events"]} == {"commissioning", "shipping"}
    # forward from the supplier's heat (named in its ILMD) reaches our lots and the customer
    fwd = (await hub.get("/api/trace/forward", params={"kind": "heat", "value": f"SUPHEAT-{tag}"})).json()
    assert {plant.lots["M1"], plant.lots["A1"], plant.lots["B1"]} <= {n["id"] for n in fwd["nodes"]}
    assert fwd["customers"] == [f"Customer X {tag}"]
    # the other order: the supplier's event first, our receipt after
    early = f"urn:epc:class:lgtin:4012345.012346.S-LATE-{tag}"
    await capture(hub, document({**ship, "quantityList": [{"epcClass": early, "quantity": 5}]}))
    async with sessionmaker() as s, s.begin():
        await production.receive_lot(s, work_order=None, receipt=f"PR2-{tag}", received_at=None, lot=f"LATE-{tag}",
                                     supplier="ACME-STEEL", item="BAR-42CRMO4", supplier_lot=f"S-LATE-{tag}",
                                     heat_number=None, quantity=5, uom="KG", certificate_ref=None, location=None,
                                     resolver=RESOLVER)
    back = (await hub.get(f"/api/trace/backward/LATE-{tag}")).json()
    assert "https://id.gs1.org/01/04012345123463/10/S-LATE-" + tag in {n["id"] for n in back["nodes"]}


# --- asynchronous capture jobs -------------------------------------------------------------------------------

async def _count(sessionmaker, model: Any, *conds: Any) -> int:
    from sqlalchemy import func, select

    async with sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(model).where(*conds))).scalar_one()


async def test_a_large_document_is_captured_by_a_workflow_with_every_violation(hub: httpx.AsyncClient, sessionmaker,
                                                                                monkeypatch):
    from domain.models_epcis_master import EpcisCaptureDocument

    tag = uuid.uuid4().hex[:8]
    # the default: a document above INLINE_MAX_EVENTS does not hold the request, the 202 says running
    big = [shipping(f"{tag}N{i}", minute=i % 60) for i in range(epcis_capture.INLINE_MAX_EVENTS + 1)]
    r = await hub.post("/epcis/capture", json=document(*big))
    assert r.status_code == 202 and r.json()["running"] is True and r.json()["success"] is None, r.text
    job = await finished(hub, r.headers["Location"])
    assert job["success"] is True and job["storedCount"] == len(big) and "finishedAt" in job
    assert await _count(sessionmaker, EpcisCaptureDocument, EpcisCaptureDocument.job_id == job["captureID"]) == 0
    assert len(await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}N7")) == 1
    # rollback: one bad event, nothing stored, every violation in the job
    monkeypatch.setattr(epcis_capture, "INLINE_MAX_EVENTS", 1)
    bad1 = {**shipping(f"{tag}B"), "action": "MOVE"}
    bad2 = {**shipping(f"{tag}C"), "eventTime": "2026-01-05T08:00:00"}
    r = await hub.post("/epcis/capture", json=document(shipping(f"{tag}A"), bad1, bad2))
    assert r.status_code == 202 and r.json()["running"] is True
    job = await finished(hub, r.headers["Location"])
    assert job["success"] is False and job["storedCount"] == 0
    assert {(1, "action"), (2, "eventTime")} <= {(e["event"], e["field"]) for e in job["errors"]}
    assert await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}A") == []
    # proceed: the valid event is kept, the job still fails with the others' violations
    job = await capture(hub, document(shipping(f"{tag}A"), bad1), **{"GS1-Capture-Error-Behaviour": "proceed"})
    assert job["success"] is False and job["storedCount"] == 1 and job["captureErrorBehaviour"] == "proceed"
    assert len(await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}A")) == 1
    listed = (await hub.get("/epcis/capture")).json()
    assert job["captureID"] in {j["captureID"] for j in listed}


async def test_a_capture_killed_half_way_is_retried_and_stores_each_event_once(hub: httpx.AsyncClient, sessionmaker,
                                                                               client, monkeypatch):
    from domain.models import EpcisEvent
    from workflows.epcis_capture import CaptureEpcisDocumentWorkflow, capture_workflow_id

    tag = uuid.uuid4().hex[:8]
    monkeypatch.setattr(epcis_capture, "INLINE_MAX_EVENTS", 1)
    real, attempts = epcis_capture.store_events, []

    async def dies_after_storing(session, evs, prefixes):
        out = await real(session, evs, prefixes)
        attempts.append(out)
        if len(attempts) == 1:  # the worker dies after writing the events, before the commit
            raise RuntimeError("worker killed")
        return out

    monkeypatch.setattr(epcis_capture, "store_events", dies_after_storing)
    r = await hub.post("/epcis/capture", json=document(*[shipping(f"{tag}K{i}", minute=i) for i in range(3)]))
    assert r.status_code == 202 and r.json()["running"] is True
    job = await finished(hub, r.headers["Location"])
    assert job["success"] is True and job["storedCount"] == 3 and len(attempts) == 2
    for i in range(3):
        assert len(await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}K{i}")) == 1
    result = await client.get_workflow_handle_for(CaptureEpcisDocumentWorkflow.run,
                                                  capture_workflow_id(job["captureID"])).result()
    assert result.success is True and result.stored_count == 3
    from tests.test_lifecycle import record_history
    await record_history(client, capture_workflow_id(job["captureID"]), "epcis_capture_retried")
    # a late duplicate attempt (a zombie worker) finds the job finished and stores nothing again
    async with sessionmaker() as s, s.begin():
        again = await epcis_capture.run_job(s, job["captureID"])
    assert again.stored_count == 3 and len(attempts) == 2
    pks = [e["eventID"] for i in range(3)
           for e in await events(hub, MATCH_epc=f"urn:epc:id:sgtin:4012345.011111.{tag}K{i}")]
    assert await _count(sessionmaker, EpcisEvent, EpcisEvent.event_id.in_(pks)) == 3


async def test_a_capture_that_cannot_start_ends_failed_not_running(settings: Settings, sessionmaker, monkeypatch):
    from tests.conftest import free_port

    monkeypatch.setattr(epcis_capture, "INLINE_MAX_EVENTS", 0)
    down = settings.model_copy(update={"temporal": settings.temporal.model_copy(
        update={"address": f"127.0.0.1:{free_port()}"})})
    app = create_app(down, sessionmaker=sessionmaker)  # no Temporal client, and none reachable
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        r = await c.post("/epcis/capture", json=document(shipping(uuid.uuid4().hex[:8])))
        assert r.status_code == 503 and r.json()["type"] == "epcisException:ImplementationException", r.text
        job = (await c.get(f"/epcis/capture/{r.json()['captureID']}")).json()
    assert job["running"] is False and job["success"] is False and job["storedCount"] == 0
    assert "could not be started" in job["errors"][0]["detail"]
