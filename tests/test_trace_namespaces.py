"""A trace answer's captured events say what their ILMD and extension keys mean: each event lists the namespace IRI
of every prefix its `ilmd` and `extensions` keys use (`namespaces`), as its own document (or its own @context)
bound it, so two partners' `ex:` can be told apart; the keys stay as captured. The IRIs come with the error
declarations' one query, and only when a shown event has prefixed keys. Runs on the suite's database with the API
in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import event, text

from api.main import create_app
from core.db import engine_of
from core.settings import DatabaseSettings, Settings
from domain import trace
from domain.epcis_ids import canonical
from tests.helpers import SUPER_HEADERS
from tests.test_trace_plant import RESOLVER, Plant, build_plant

pytestmark = pytest.mark.asyncio
EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
CBVMDA = "urn:epcglobal:cbv:mda:"


@pytest_asyncio.fixture(scope="module")
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url), resolver_base_url=RESOLVER),
                     sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


def _doc(prefixes: dict[str, str], *events: dict[str, Any]) -> dict[str, Any]:
    return {"@context": [EPCIS_CONTEXT, prefixes], "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2026-01-05T08:00:00Z", "epcisBody": {"eventList": list(events)}}


def _observed(cls: str, minute: int, step: str, **extra: Any) -> dict[str, Any]:
    return {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": f"2026-01-02T06:{minute:02d}:00Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": step, "epcList": [],
            "quantityList": [{"epcClass": cls, "quantity": 50, "uom": "KGM"}], **extra}


async def _capture(hub: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    r = await hub.post("/epcis/capture", json=doc)
    assert r.status_code == 202 and r.json()["success"], r.text


@pytest_asyncio.fixture(scope="module")
async def partners(sessionmaker, hub: httpx.AsyncClient) -> dict[str, Any]:
    """The plant, and the supplier lots behind M1 and M2 known from two partners' captured events: both bind a
    prefix P of this module's own, partner 1 to ONE, partner 2 to TWO; one of partner 2's events binds P to THREE
    in its own @context. The events of M2's supplier lot have no prefixed keys."""
    plant = await build_plant(sessionmaker)
    tag = plant.tag.lower()
    p = f"t{tag}"
    one, two, three = (f"https://{n}.example/{tag}/ns/" for n in ("one", "two", "three"))
    s_m1 = f"urn:epc:class:lgtin:4012345.012346.S-M1-{plant.tag}"
    s_m2 = f"urn:epc:class:lgtin:4012345.012346.S-M2-{plant.tag}"
    billet = f"urn:epc:class:lgtin:4012345.012345.BILLET-{plant.tag}"
    melt = {"type": "TransformationEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
            "inputQuantityList": [{"epcClass": billet, "quantity": 900, "uom": "KGM"}],
            "outputQuantityList": [{"epcClass": s_m1, "quantity": 850, "uom": "KGM"}],
            "bizStep": "commissioning", "ilmd": {f"{p}:batch": "B1", "cbvmda:lotNumber": f"S-M1-{plant.tag}"},
            f"{p}:probe": {f"{p}:id": "P1"}}
    await _capture(hub, _doc({p: one}, melt))
    await _capture(hub, _doc({p: two},
                             _observed(s_m1, 1, "shipping", **{f"{p}:carrier": "DHL"}),
                             _observed(s_m1, 2, "inspecting", **{"@context": {p: three}, f"{p}:note": "ok"}),
                             _observed(s_m2, 3, "shipping")))
    return {"plant": plant, "p": p, "one": one, "two": two, "three": three, "s_m1": canonical(s_m1),
            "s_m2": canonical(s_m2)}


def _events_of(answer: dict[str, Any], uri: str) -> dict[str, dict[str, Any]]:
    [node] = [n for n in answer["nodes"] if n["node"] == "external" and n["id"] == uri]
    return {e["biz_step"]: e for e in node["events"]}


async def test_a_trace_says_which_namespace_each_events_keys_are_in(hub: httpx.AsyncClient,
                                                                    partners: dict[str, Any]):
    t = partners
    plant: Plant = t["plant"]
    p = t["p"]
    r = await hub.get(f"/api/trace/backward/{plant.lots['M1']}")
    assert r.status_code == 200, r.text
    events = _events_of(r.json(), t["s_m1"])
    # each event's prefix with the IRI its own document (or its own @context) bound it to; the keys as captured
    melt, ship, check = events["commissioning"], events["shipping"], events["inspecting"]
    assert melt["namespaces"] == {p: t["one"], "cbvmda": CBVMDA}
    assert melt["ilmd"] == {f"{p}:batch": "B1", "cbvmda:lotNumber": f"S-M1-{plant.tag}"}
    assert melt["extensions"] == {f"{p}:probe": {f"{p}:id": "P1"}}
    assert ship["namespaces"] == {p: t["two"]} and ship["extensions"] == {f"{p}:carrier": "DHL"}
    assert check["namespaces"] == {p: t["three"]} and check["extensions"] == {f"{p}:note": "ok"}
    # a forward answer shows them the same way (from the supplier lot: its captured node is a start)
    r = await hub.get("/api/trace/forward", params={"kind": "supplier_lot", "value": f"S-M1-{plant.tag}"})
    assert r.status_code == 200, r.text
    assert {k: e["namespaces"] for k, e in _events_of(r.json(), t["s_m1"]).items()} == {
        "commissioning": {p: t["one"], "cbvmda": CBVMDA}, "shipping": {p: t["two"]}, "inspecting": {p: t["three"]}}
    # events without prefixed keys list none
    r = await hub.get(f"/api/trace/backward/{plant.lots['M2']}")
    assert r.status_code == 200, r.text
    assert _events_of(r.json(), t["s_m2"])["shipping"]["namespaces"] == {}
    # CSV and PDF render the same answer as before
    for fmt in ("csv", "pdf"):
        r = await hub.get(f"/api/trace/backward/{plant.lots['M1']}", params={"format": fmt})
        assert r.status_code == 200, (fmt, r.text[:200])


@contextmanager
def _statements(sessionmaker) -> Iterator[list[str]]:
    engine = engine_of(sessionmaker).sync_engine
    seen: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_the_iris_come_with_the_declarations_query(sessionmaker, partners: dict[str, Any]):
    t = partners
    plant: Plant = t["plant"]
    async with sessionmaker() as s:
        with _statements(sessionmaker) as seen:
            answer = await trace.backward(s, plant.lots["M1"], resolver=RESOLVER)
        assert _events_of(answer, t["s_m1"])["shipping"]["namespaces"] == {t["p"]: t["two"]}
        # one statement reads the events' bindings and their declarations together: no query per event or node
        touching = [q for q in seen if "epcis_error_declaration" in q or "namespace" in q]
        assert len(touching) == 1 and "epcis_event.namespaces" in touching[0], touching
        # no prefixed keys among the shown events: the bindings are not read at all
        with _statements(sessionmaker) as seen:
            answer = await trace.backward(s, plant.lots["M2"], resolver=RESOLVER)
        assert _events_of(answer, t["s_m2"])["shipping"]["namespaces"] == {}
        assert not [q for q in seen if "namespace" in q], seen


async def test_an_event_stored_before_0023_reads_with_the_legacy_binding(sessionmaker, partners: dict[str, Any]):
    t = partners
    plant: Plant = t["plant"]
    async with sessionmaker() as s, s.begin():
        # the shipping event as migration 0023 left an older one: no bindings of its own, its prefix's one binding
        # marked legacy (this module's prefix: nothing else reads it)
        await s.execute(text("UPDATE epcis_event SET namespaces = NULL WHERE event_id IN (SELECT e.event_id FROM "
                             "epcis_event e JOIN epcis_event_epc x ON x.event_pk = e.id WHERE x.uri = :u "
                             "AND e.biz_step = 'shipping')"), {"u": t["s_m1"]})
        await s.execute(text("UPDATE epcis_namespace SET legacy = :y WHERE prefix = :p AND iri = :i"),
                        {"y": True, "p": t["p"], "i": t["two"]})
    async with sessionmaker() as s:
        events = _events_of(await trace.backward(s, plant.lots["M1"], resolver=RESOLVER), t["s_m1"])
    assert events["shipping"]["namespaces"] == {t["p"]: t["two"]}
    assert events["commissioning"]["namespaces"] == {t["p"]: t["one"], "cbvmda": CBVMDA}
