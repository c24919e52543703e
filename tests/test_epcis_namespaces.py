"""EPCIS extension prefixes mean what each captured document bound them to: two partners that both write `ex:`
for different namespaces get their fields back under their own IRI (JSON-LD and XML answers, single events),
`EQ_`/`EXISTS_` filters match by IRI + local name through the GS1-Extensions header, a prefix bound to two IRIs
without the header is a 400, an event's own @context binds prefixes for that event (over its document's), and
data stored before migration 0023 reads as it did. Runs on the suite's database
with the API in-process; the migration test builds a database of its own."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from lxml import etree
from sqlalchemy import JSON, column, create_engine, table, text
from sqlalchemy.engine import make_url

from api.main import create_app
from core.db import make_engine, make_sessionmaker
from core.settings import DatabaseSettings, Settings
from domain import epcis_capture, epcis_query, epcis_validate
from domain.epcis_hash import event_hash
from domain.epcis_query import QueryParameterException
from domain.models import UTCDateTime
from migrations import upgrade
from tests.helpers import SUPER_HEADERS

pytestmark = pytest.mark.asyncio
EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"


@pytest_asyncio.fixture(scope="module")
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url)), sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


def document(prefixes: dict[str, str], *events: dict[str, Any]) -> dict[str, Any]:
    return {"@context": [EPCIS_CONTEXT, prefixes], "type": "EPCISDocument", "schemaVersion": "2.0",
            "creationDate": "2026-01-05T08:00:00Z", "epcisBody": {"eventList": list(events)}}


def observed(serial: str, minute: int, po: str, **extra: Any) -> dict[str, Any]:
    return {"type": "ObjectEvent", "action": "ADD", "eventTime": f"2026-01-05T08:{minute:02d}:00Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": "commissioning",
            "epcList": [f"urn:epc:id:sgtin:4012345.011111.{serial}"],
            "bizTransactionList": [{"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:4012345000054:{po}"}],
            **extra}


def expanded(answer: dict[str, Any]) -> list[dict[str, Any]]:
    """Each event's extension and ILMD fields with their keys expanded by the answer's own @context, as a
    JSON-LD processor reads them: {full IRI: value}; ILMD members under `ilmd/`."""
    ctx: dict[str, str] = {}
    for item in answer["@context"]:
        if isinstance(item, dict):
            ctx.update(item)

    def full(key: str) -> str | None:
        if ":" not in key or key.startswith(("http", "urn:", "@")):
            return None
        prefix, local = key.split(":", 1)
        assert prefix in ctx, f"the answer uses prefix {prefix!r} without declaring it: {answer['@context']}"
        return ctx[prefix] + local

    out = []
    for ev in answer["epcisBody"]["queryResults"]["resultsBody"]["eventList"]:
        fields = {f: v for k, v in ev.items() if (f := full(k))}
        fields.update({f"ilmd/{f}": v for k, v in (ev.get("ilmd") or {}).items() if (f := full(k))})
        out.append(fields)
    return out


async def query(hub: httpx.AsyncClient, params: dict[str, str], **headers: str) -> httpx.Response:
    return await hub.get("/epcis/events", params=params, headers=headers)


async def answer(hub: httpx.AsyncClient, params: dict[str, str], **headers: str) -> dict[str, Any]:
    r = await query(hub, params, **headers)
    assert r.status_code == 200, r.text
    return r.json()


async def capture(hub: httpx.AsyncClient, doc: dict[str, Any]) -> None:
    r = await hub.post("/epcis/capture", json=doc)
    assert r.status_code == 202, r.text
    assert r.json()["success"], r.json()["errors"]


@pytest_asyncio.fixture(scope="module")
async def two_partners(hub: httpx.AsyncClient) -> dict[str, Any]:
    """Partner 1 binds prefix P to ONE, then partner 2 binds the same P to TWO (a prefix of this module's own, so
    the rest of the suite's prefixes stay unambiguous)."""
    tag = uuid.uuid4().hex[:8]
    p = f"x{tag}"
    one, two = f"https://one.example/{tag}/ns/", f"https://two.example/{tag}/ns/"
    po = f"PO-NS-{tag}"
    e1 = observed(f"{tag}1", 1, po, **{f"{p}:temp": "20", f"{p}:probe": {f"{p}:id": "P1"}},
                  ilmd={f"{p}:batch": "B1"})
    await capture(hub, document({p: one}, e1))
    # while only partner 1 bound it, the prefix needs no header (as before)
    assert len((await answer(hub, {f"EXISTS_{p}:temp": ""}))["epcisBody"]["queryResults"]["resultsBody"][
        "eventList"]) == 1
    e2 = observed(f"{tag}2", 2, po, **{f"{p}:temp": "30", f"{p}:probe": {f"{p}:id": "P2"}},
                  ilmd={f"{p}:batch": "B2"})
    await capture(hub, document({p: two}, e2))
    return {"p": p, "one": one, "two": two, "po": f"urn:epcglobal:cbv:bt:4012345000054:{po}", "tag": tag}


async def test_each_partner_gets_its_fields_back_under_its_own_iri(hub: httpx.AsyncClient,
                                                                   two_partners: dict[str, Any]):
    t = two_partners
    p, one, two = t["p"], t["one"], t["two"]
    both = await answer(hub, {"EQ_bizTransaction_po": t["po"]})
    # one answer, two bindings of one prefix: still correct JSON-LD, each key expands to its partner's IRI
    assert expanded(both) == [
        {f"{one}temp": "20", f"{one}probe": {f"{p}:id": "P1"}, f"ilmd/{one}batch": "B1"},
        {f"{two}temp": "30", f"{two}probe": {f"{p}-1:id": "P2"}, f"ilmd/{two}batch": "B2"},
    ]
    ctx = both["@context"][1]
    assert ctx[p] == one and ctx[f"{p}-1"] == two  # the first keeps the prefix, the second gets its own
    second = both["epcisBody"]["queryResults"]["resultsBody"]["eventList"][1]
    assert second[f"{p}-1:temp"] == "30" and f"{p}:temp" not in second
    assert epcis_validate.validate(both) == []  # the renamed keys are URIs still (no `_` in a scheme)
    # the usual case is unchanged: an answer with one binding per prefix keeps the captured prefix
    for serial, iri, value in ((f"{t['tag']}1", one, "20"), (f"{t['tag']}2", two, "30")):
        alone = await answer(hub, {"MATCH_epc": f"urn:epc:id:sgtin:4012345.011111.{serial}"})
        ev = alone["epcisBody"]["queryResults"]["resultsBody"]["eventList"][0]
        assert ev[f"{p}:temp"] == value and ev["ilmd"] == {f"{p}:batch": value.replace("20", "B1").replace("30", "B2")}
        assert alone["@context"][1][p] == iri
        assert f"{p}-1" not in alone["@context"][1]


async def test_extension_filters_match_by_iri_through_the_header(hub: httpx.AsyncClient,
                                                                 two_partners: dict[str, Any]):
    t = two_partners
    p, one, two = t["p"], t["one"], t["two"]

    async def temps(params: dict[str, str], ns: str) -> list[str]:
        doc = await answer(hub, {**params, "EQ_bizTransaction_po": t["po"]}, **{"GS1-Extensions": f"{p}={ns}"})
        return sorted(v for fields in expanded(doc) for k, v in fields.items() if k.endswith("temp"))

    assert await temps({f"EXISTS_{p}:temp": ""}, two) == ["30"]
    assert await temps({f"EXISTS_{p}:temp": ""}, one) == ["20"]
    assert await temps({f"EQ_{p}:temp": "30"}, two) == ["30"]
    assert await temps({f"EQ_{p}:temp": "30"}, one) == []  # partner 1 has no 30
    assert await temps({f"EQ_ILMD_{p}:batch": "B2"}, two) == ["30"]
    assert await temps({f"EQ_ILMD_{p}:batch": "B2"}, one) == []
    # a full IRI needs no prefix at all
    doc = await answer(hub, {f"EQ_{two}temp": "30", "EQ_bizTransaction_po": t["po"]})
    assert [f[f"{two}temp"] for f in expanded(doc)] == ["30"]


async def test_an_undeclared_ambiguous_prefix_is_a_400(hub: httpx.AsyncClient, two_partners: dict[str, Any]):
    t = two_partners
    p = t["p"]
    for name in (f"EXISTS_{p}:temp", f"EQ_{p}:temp", f"EQ_ILMD_{p}:batch", "HASATTR_readPoint"):
        value = f"{p}:site" if name.startswith("HASATTR") else "30"
        r = await query(hub, {name: value})
        assert r.status_code == 400, (name, r.text)
        problem = r.json()
        assert problem["type"] == "epcisException:QueryParameterException"
        assert "ambiguous" in problem["detail"] and "GS1-Extensions" in problem["detail"]
        assert t["one"] in problem["detail"] and t["two"] in problem["detail"]
    # a named query over it cannot be created without the header either; with it, the binding is fixed with the
    # query's other parameters: its runs (and subscriptions, which send no header) match partner 2's fields
    named = {f"EXISTS_{p}:temp": "", "EQ_bizTransaction_po": t["po"]}
    r = await hub.post("/epcis/queries", json={"name": f"ns-{t['tag']}", "query": named})
    assert r.status_code == 400 and "ambiguous" in r.json()["detail"]
    r = await hub.post("/epcis/queries", json={"name": f"ns-{t['tag']}", "query": named},
                       headers={"GS1-Extensions": f"{p}={t['two']}"})
    assert r.status_code == 201, r.text
    for headers in ({}, {"GS1-Extensions": f"{p}={t['one']}"}):
        r = await hub.get(f"/epcis/queries/ns-{t['tag']}/events", headers=headers)
        assert r.status_code == 200, r.text
        assert expanded(r.json()) == [{f"{t['two']}temp": "30", f"{t['two']}probe": {f"{p}:id": "P2"},
                                       f"ilmd/{t['two']}batch": "B2"}]


async def test_a_single_event_and_the_xml_answer_keep_the_partners_iri(hub: httpx.AsyncClient,
                                                                      two_partners: dict[str, Any]):
    t = two_partners
    p, one, two = t["p"], t["one"], t["two"]
    both = await answer(hub, {"EQ_bizTransaction_po": t["po"]})
    second_id = both["epcisBody"]["queryResults"]["resultsBody"]["eventList"][1]["eventID"]
    r = await hub.get(f"/epcis/events/{quote(second_id, safe='')}")
    assert r.status_code == 200, r.text
    assert r.json()["@context"][1][p] == two
    assert expanded(r.json()) == [{f"{two}temp": "30", f"{two}probe": {f"{p}:id": "P2"}, f"ilmd/{two}batch": "B2"}]
    # XML: the elements are in each partner's namespace
    r = await hub.get("/epcis/events", params={"EQ_bizTransaction_po": t["po"]}, headers={"Accept": "application/xml"})
    assert r.status_code == 200, r.text
    root = etree.fromstring(r.content)
    temps = {(etree.QName(el).namespace, el.text) for el in root.iter() if isinstance(el.tag, str)
             and etree.QName(el).localname == "temp"}
    assert temps == {(one, "20"), (two, "30")}
    ids = {(etree.QName(el).namespace, el.text) for el in root.iter() if isinstance(el.tag, str)
           and etree.QName(el).localname == "id" and etree.QName(el).namespace in (one, two)}
    assert ids == {(one, "P1"), (two, "P2")}


# --- an event's own @context -------------------------------------------------------------------------------


def _events(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"]


async def test_an_events_own_context_binds_a_prefix_the_document_does_not(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    q, iri = f"q{tag}", f"https://own.example/{tag}/ns/"
    po = f"PO-EVCTX-{tag}"
    ev = observed(f"{tag}Q", 3, po, **{"@context": {q: iri}, f"{q}:temp": "21", f"{q}:probe": {f"{q}:id": "Q1"}},
                  ilmd={f"{q}:batch": "QB"})
    await capture(hub, document({}, ev))  # the document declares no prefix of its own
    doc = await answer(hub, {"EQ_bizTransaction_po": f"urn:epcglobal:cbv:bt:4012345000054:{po}"})
    assert expanded(doc) == [{f"{iri}temp": "21", f"{iri}probe": {f"{q}:id": "Q1"}, f"ilmd/{iri}batch": "QB"}]
    assert epcis_validate.validate(doc) == []  # the answer is a valid EPCISQueryDocument, its prefixes declared
    [got] = _events(doc)
    assert "@context" not in got  # the answer's own @context declares it
    # the fields are indexed under the event's IRI, and its id is the hash with its own bindings
    assert [e["eventID"] for e in _events(await answer(hub, {f"EQ_{iri}temp": "21"}))] == [got["eventID"]]
    assert [e["eventID"] for e in _events(await answer(hub, {f"EQ_ILMD_{q}:batch": "QB"}))] == [got["eventID"]]
    own = {k: v for k, v in ev.items() if k != "@context"}
    assert got["eventID"] == event_hash(own, {q: iri}) != event_hash(own, {})
    r = await hub.get(f"/epcis/events/{quote(got['eventID'], safe='')}")
    assert r.status_code == 200 and r.json()["@context"][1][q] == iri


async def test_an_events_own_context_overrides_the_documents_binding(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    p, one, two = f"o{tag}", f"https://one.example/{tag}/doc/", f"https://two.example/{tag}/event/"
    po = f"PO-OVR-{tag}"
    po_urn = f"urn:epcglobal:cbv:bt:4012345000054:{po}"
    e1 = observed(f"{tag}O1", 1, po, **{f"{p}:temp": "20"}, ilmd={f"{p}:batch": "B1"})
    e2 = observed(f"{tag}O2", 2, po, **{"@context": [{p: two}], f"{p}:temp": "30"}, ilmd={f"{p}:batch": "B2"})
    await capture(hub, document({p: one}, e1, e2))
    both = await answer(hub, {"EQ_bizTransaction_po": po_urn})
    # one answer, two bindings of one prefix: the event's own binding holds for it (the document's for the other)
    assert expanded(both) == [{f"{one}temp": "20", f"ilmd/{one}batch": "B1"},
                              {f"{two}temp": "30", f"ilmd/{two}batch": "B2"}]
    assert epcis_validate.validate(both) == []
    for ns, temp in ((one, "20"), (two, "30")):
        doc = await answer(hub, {f"EXISTS_{p}:temp": "", "EQ_bizTransaction_po": po_urn},
                           **{"GS1-Extensions": f"{p}={ns}"})
        assert [f[f"{ns}temp"] for f in expanded(doc)] == [temp]
    # XML: each event's element in its own namespace
    r = await hub.get("/epcis/events", params={"EQ_bizTransaction_po": po_urn}, headers={"Accept": "application/xml"})
    assert r.status_code == 200, r.text
    temps = {(etree.QName(el).namespace, el.text) for el in etree.fromstring(r.content).iter()
             if isinstance(el.tag, str) and etree.QName(el).localname == "temp"}
    assert temps == {(one, "20"), (two, "30")}
    # an error declaration repeats the event as its own context reads it: in a document binding the prefix to
    # `one`, only with the event's own @context (two) is it the same event
    eid = _events(both)[1]["eventID"]
    decl = {**e2, "eventID": eid, "errorDeclaration": {"declarationTime": "2026-01-06T08:00:00Z",
                                                       "reason": "incorrect_data"}}
    bare = {k: v for k, v in decl.items() if k != "@context"}
    r = await hub.post("/epcis/capture", json=document({p: one}, bare))
    assert r.status_code == 202 and not r.json()["success"], r.text
    [err] = r.json()["errors"]
    assert err["field"] == "errorDeclaration" and "repeat the retracted event" in err["detail"]
    await capture(hub, document({p: one}, decl))


async def test_an_undeclared_prefix_is_refused_with_or_without_an_events_context(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:8]
    ev = observed(f"{tag}U", 4, f"PO-U-{tag}", **{"@context": {f"a{tag}": "https://a.example/ns/"},
                                                   f"u{tag}:temp": "1"})
    r = await hub.post("/epcis/capture", json=document({}, ev))
    assert r.status_code == 202 and not r.json()["success"]
    [err] = r.json()["errors"]
    assert f"u{tag}:temp" in err["detail"] and "the event's own" in err["detail"]


# --- migration 0023: data stored before it reads as it did --------------------------------------------------


def _fresh_database(tmp: Path) -> str:
    if os.environ.get("HUB_TEST_DB", "postgresql") == "sqlite":
        return f"sqlite+aiosqlite:///{tmp / 'ns-migration.db'}"
    url = make_url(os.environ.get("HUB_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/tracehub_test"))
    url = url.set(drivername="postgresql+psycopg", database=f"{url.database}_ns0023_{os.getpid()}")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{url.database}" WITH (FORCE)'))
        c.execute(text(f'CREATE DATABASE "{url.database}"'))
    admin.dispose()
    return url.render_as_string(hide_password=False)


def _drop(url: str) -> None:
    u = make_url(url)
    if u.get_backend_name() == "postgresql":
        admin = create_engine(u.set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{u.database}" WITH (FORCE)'))
        admin.dispose()


def _sync(url: str) -> str:
    return url.replace("sqlite+aiosqlite", "sqlite")


async def test_events_stored_before_the_migration_keep_their_namespace(tmp_path: Path):
    url = _fresh_database(tmp_path)
    try:
        upgrade(url, "0003_trace")  # the schema as it was: one IRI per prefix
        legacy_doc = {"type": "ObjectEvent", "eventID": "urn:uuid:legacy-ns-1", "action": "OBSERVE",
                      "eventTime": "2026-01-05T08:00:00Z", "eventTimeZoneOffset": "+00:00",
                      "epcList": ["urn:epc:id:sgtin:4012345.011111.L1"], "ex:temp": "20"}
        # the rows a capture wrote then: the event as captured, its index row, the one binding of its prefix
        event = table("epcis_event", column("event_id"), column("event_type"), column("event_time", UTCDateTime()),
                      column("record_time", UTCDateTime()), column("action"), column("document", JSON()))
        engine = create_engine(_sync(url))
        with engine.begin() as c:
            c.execute(text("INSERT INTO epcis_namespace (prefix, iri) VALUES ('ex', 'https://one.example/ns/')"))
            c.execute(event.insert().values(event_id="urn:uuid:legacy-ns-1", event_type="ObjectEvent",
                                            event_time=datetime(2026, 1, 5, 8, tzinfo=UTC),
                                            record_time=datetime(2026, 1, 5, 9, tzinfo=UTC), action="OBSERVE",
                                            document=legacy_doc))
            pk = c.execute(text("SELECT id FROM epcis_event WHERE event_id = 'urn:uuid:legacy-ns-1'")).scalar()
            c.execute(text("INSERT INTO epcis_event_field (event_pk, name, value) "
                           "VALUES (:pk, 'ext:https://one.example/ns/temp', '20')"), {"pk": pk})
        engine.dispose()
        upgrade(url)
        aengine = make_engine(url)
        sm = make_sessionmaker(aengine)
        try:
            async with sm() as s, s.begin():
                doc, _ = await epcis_query.run(s, {"EXISTS_ex:temp": ""})
                assert doc["@context"][1]["ex"] == "https://one.example/ns/"
                assert [e["ex:temp"] for e in doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"]] == ["20"]
                # a second partner's binding of the same prefix
                job = await epcis_capture.capture(s, document({"ex": "https://two.example/ns/"}, {
                    "type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-05T08:05:00Z",
                    "eventTimeZoneOffset": "+00:00", "epcList": ["urn:epc:id:sgtin:4012345.011111.L2"],
                    "ex:temp": "30"}))
                assert job.success, job.errors
            async with sm() as s, s.begin():
                doc, _ = await epcis_query.run(s, {}, epc_format="Never_Translates")  # all (both) events
                assert expanded(doc) == [{"https://one.example/ns/temp": "20"}, {"https://two.example/ns/temp": "30"}]
                with pytest.raises(QueryParameterException, match="ambiguous"):
                    await epcis_query.run(s, {"EXISTS_ex:temp": ""})
                doc, _ = await epcis_query.run(s, {"EXISTS_ex:temp": ""}, declared_ns={"ex": "https://one.example/ns/"})
                assert [e["eventID"] for e in doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"]] \
                    == ["urn:uuid:legacy-ns-1"]
        finally:
            await aengine.dispose()
    finally:
        _drop(url)
