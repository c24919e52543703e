"""The EPCIS 2.0 XML binding: XML capture gives the events (and eventIDs) of the equivalent JSON, query answers
come back as XML EPCISQueryDocuments on `Accept: application/xml`, and bad or hostile XML is refused with a 400
that names what is wrong. Runs on the suite's database with the API in-process."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from lxml import etree

from api.main import create_app
from core.settings import DatabaseSettings, Settings
from domain import epcis_capture
from domain.epcis_hash import event_hash
from tests.helpers import SUPER_HEADERS

pytestmark = pytest.mark.asyncio
EPCIS = "urn:epcglobal:epcis:xsd:2"
QUERY = "urn:epcglobal:epcis-query:xsd:2"
ACME_NS = "https://ns.acme.example/epcis/"
XML = {"content-type": "application/xml"}
ASK_XML = {"Accept": "application/xml"}

# the children each event type may have, in the order of the EPCIS 2.0 XSD (EPCglobal-epcis-2_0.xsd); written
# out here rather than taken from domain/epcis_xml.py, so that a wrong order there fails this test
_BASE = ["eventTime", "recordTime", "eventTimeZoneOffset", "eventID", "errorDeclaration", "certificationInfo"]
_LOC = ["readPoint", "bizLocation"]
XSD_ORDER = {
    "ObjectEvent": _BASE + ["epcList", "action", "bizStep", "disposition", *_LOC, "bizTransactionList",
                            "quantityList", "sourceList", "destinationList", "sensorElementList",
                            "persistentDisposition", "ilmd"],
    "AggregationEvent": _BASE + ["parentID", "childEPCs", "action", "bizStep", "disposition", *_LOC,
                                 "bizTransactionList", "childQuantityList", "sourceList", "destinationList",
                                 "sensorElementList", "persistentDisposition"],
    "TransactionEvent": _BASE + ["bizTransactionList", "parentID", "epcList", "action", "bizStep", "disposition",
                                 *_LOC, "quantityList", "sourceList", "destinationList", "sensorElementList",
                                 "persistentDisposition"],
    "TransformationEvent": _BASE + ["inputEPCList", "inputQuantityList", "outputEPCList", "outputQuantityList",
                                    "transformationID", "bizStep", "disposition", *_LOC, "bizTransactionList",
                                    "sourceList", "destinationList", "sensorElementList", "persistentDisposition",
                                    "ilmd"],
    "AssociationEvent": _BASE + ["parentID", "childEPCs", "childQuantityList", "action", "bizStep", "disposition",
                                 *_LOC, "bizTransactionList", "sourceList", "destinationList",
                                 "sensorElementList", "persistentDisposition"],
}
REQUIRED = {"ObjectEvent": ["eventTime", "eventTimeZoneOffset", "epcList", "action"],
            "AggregationEvent": ["eventTime", "eventTimeZoneOffset", "childEPCs", "action"],
            "TransactionEvent": ["eventTime", "eventTimeZoneOffset", "bizTransactionList", "epcList", "action"],
            "TransformationEvent": ["eventTime", "eventTimeZoneOffset"],
            "AssociationEvent": ["eventTime", "eventTimeZoneOffset", "parentID", "action"]}


@pytest_asyncio.fixture(scope="session")
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url)), sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


def xml_document(tag: str) -> bytes:
    """All five event types, with extensions, ILMD, sensors, certificationInfo, sources and destinations."""
    sg = f"urn:epc:id:sgtin:4012345.011111.{tag}"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<epcis:EPCISDocument xmlns:epcis="{EPCIS}" xmlns:acme="{ACME_NS}" xmlns:cbvmda="urn:epcglobal:cbv:mda"
    xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:xsd="http://www.w3.org/2001/XMLSchema"
    schemaVersion="2.0" creationDate="2026-01-05T08:00:00Z">
  <EPCISBody>
    <EventList>
      <ObjectEvent>
        <eventTime>2026-01-05T08:00:00.000+01:00</eventTime>
        <recordTime>2000-01-01T00:00:00Z</recordTime>
        <eventTimeZoneOffset>+01:00</eventTimeZoneOffset>
        <certificationInfo>https://cert.example/coa/{tag}</certificationInfo>
        <epcList><epc>{sg}A</epc><epc>{sg}B</epc></epcList>
        <action>ADD</action>
        <bizStep>urn:epcglobal:cbv:bizstep:commissioning</bizStep>
        <disposition>urn:epcglobal:cbv:disp:active</disposition>
        <readPoint><id>urn:epc:id:sgln:4012345.00005.0</id></readPoint>
        <bizLocation><id>urn:epc:id:sgln:4012345.00005.0</id><acme:bay>7</acme:bay></bizLocation>
        <bizTransactionList>
          <bizTransaction type="urn:epcglobal:cbv:btt:po">urn:epcglobal:cbv:bt:4012345000054:PO-{tag}</bizTransaction>
        </bizTransactionList>
        <quantityList>
          <quantityElement><epcClass>urn:epc:class:lgtin:4012345.012345.{tag}</epcClass>
            <quantity>12.5</quantity><uom>KGM</uom></quantityElement>
        </quantityList>
        <sourceList><source type="urn:epcglobal:cbv:sdt:owning_party">urn:epc:id:pgln:4012345.00000</source></sourceList>
        <destinationList>
          <destination type="urn:epcglobal:cbv:sdt:location">urn:epc:id:sgln:4012345.00006.0</destination>
        </destinationList>
        <sensorElementList>
          <sensorElement>
            <sensorMetadata time="2026-01-05T07:59:00Z" deviceID="urn:epc:id:giai:4012345.T1" acme:probe="p1"/>
            <sensorReport type="gs1:Temperature" value="21.5" uom="CEL"/>
            <sensorReport type="gs1:RelativeHumidity" value="40" uom="A93" minValue="38" maxValue="42"/>
          </sensorElement>
        </sensorElementList>
        <persistentDisposition><set>urn:epcglobal:cbv:disp:completeness_verified</set></persistentDisposition>
        <ilmd>
          <cbvmda:lotNumber>{tag}</cbvmda:lotNumber>
          <acme:heat>H-{tag}</acme:heat>
        </ilmd>
        <acme:carrier>DHL</acme:carrier>
        <acme:grade xsi:type="xsd:integer">3</acme:grade>
        <acme:seal><acme:id>S1</acme:id><acme:id>S2</acme:id></acme:seal>
      </ObjectEvent>
      <AggregationEvent>
        <eventTime>2026-01-05T08:05:00Z</eventTime>
        <eventTimeZoneOffset>+00:00</eventTimeZoneOffset>
        <parentID>urn:epc:id:sscc:4012345.0{tag[:6].translate(HEX_TO_DIGITS)}000</parentID>
        <childEPCs><epc>{sg}A</epc></childEPCs>
        <action>ADD</action>
        <bizStep>urn:epcglobal:cbv:bizstep:packing</bizStep>
      </AggregationEvent>
      <TransactionEvent>
        <eventTime>2026-01-05T08:06:00Z</eventTime>
        <eventTimeZoneOffset>+00:00</eventTimeZoneOffset>
        <bizTransactionList>
          <bizTransaction type="urn:epcglobal:cbv:btt:desadv">urn:epcglobal:cbv:bt:4012345000054:D-{tag}</bizTransaction>
        </bizTransactionList>
        <epcList><epc>{sg}B</epc></epcList>
        <action>ADD</action>
      </TransactionEvent>
      <TransformationEvent>
        <eventTime>2026-01-05T08:10:00Z</eventTime>
        <eventTimeZoneOffset>+00:00</eventTimeZoneOffset>
        <inputQuantityList>
          <quantityElement><epcClass>urn:epc:class:lgtin:4012345.012345.{tag}</epcClass>
            <quantity>5</quantity><uom>KGM</uom></quantityElement>
        </inputQuantityList>
        <outputEPCList><epc>{sg}C</epc></outputEPCList>
        <bizStep>urn:epcglobal:cbv:bizstep:commissioning</bizStep>
        <ilmd><cbvmda:lotNumber>OUT-{tag}</cbvmda:lotNumber></ilmd>
      </TransformationEvent>
      <AssociationEvent>
        <eventTime>2026-01-05T08:20:00Z</eventTime>
        <eventTimeZoneOffset>+00:00</eventTimeZoneOffset>
        <parentID>urn:epc:id:grai:4012345.55555.{tag}</parentID>
        <childEPCs><epc>urn:epc:id:giai:4012345.{tag}</epc></childEPCs>
        <action>ADD</action>
        <bizStep>urn:epcglobal:cbv:bizstep:assembling</bizStep>
      </AssociationEvent>
    </EventList>
  </EPCISBody>
</epcis:EPCISDocument>""".encode()


HEX_TO_DIGITS = str.maketrans("abcdef", "123456")


def json_document(tag: str) -> dict[str, Any]:
    """The same document in the JSON-LD binding."""
    sg = f"urn:epc:id:sgtin:4012345.011111.{tag}"
    return {
        "@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld", {"acme": ACME_NS}],
        "type": "EPCISDocument", "schemaVersion": "2.0", "creationDate": "2026-01-05T08:00:00Z",
        "epcisBody": {"eventList": [
            {"type": "ObjectEvent", "eventTime": "2026-01-05T08:00:00.000+01:00", "eventTimeZoneOffset": "+01:00",
             "certificationInfo": f"https://cert.example/coa/{tag}",
             "epcList": [f"{sg}A", f"{sg}B"], "action": "ADD", "bizStep": "commissioning", "disposition": "active",
             "readPoint": {"id": "urn:epc:id:sgln:4012345.00005.0"},
             "bizLocation": {"id": "urn:epc:id:sgln:4012345.00005.0", "acme:bay": "7"},
             "bizTransactionList": [{"type": "po", "bizTransaction": f"urn:epcglobal:cbv:bt:4012345000054:PO-{tag}"}],
             "quantityList": [{"epcClass": f"urn:epc:class:lgtin:4012345.012345.{tag}", "quantity": 12.5,
                               "uom": "KGM"}],
             "sourceList": [{"type": "owning_party", "source": "urn:epc:id:pgln:4012345.00000"}],
             "destinationList": [{"type": "location", "destination": "urn:epc:id:sgln:4012345.00006.0"}],
             "sensorElementList": [{
                 "sensorMetadata": {"time": "2026-01-05T07:59:00Z", "deviceID": "urn:epc:id:giai:4012345.T1",
                                    "acme:probe": "p1"},
                 "sensorReport": [{"type": "gs1:Temperature", "value": 21.5, "uom": "CEL"},
                                  {"type": "gs1:RelativeHumidity", "value": 40, "uom": "A93", "minValue": 38,
                                   "maxValue": 42}]}],
             "persistentDisposition": {"set": ["completeness_verified"]},
             "ilmd": {"cbvmda:lotNumber": tag, "acme:heat": f"H-{tag}"},
             "acme:carrier": "DHL", "acme:grade": 3, "acme:seal": {"acme:id": ["S1", "S2"]}},
            {"type": "AggregationEvent", "eventTime": "2026-01-05T08:05:00Z", "eventTimeZoneOffset": "+00:00",
             "parentID": f"urn:epc:id:sscc:4012345.0{tag[:6].translate(HEX_TO_DIGITS)}000",
             "childEPCs": [f"{sg}A"], "action": "ADD", "bizStep": "packing"},
            {"type": "TransactionEvent", "eventTime": "2026-01-05T08:06:00Z", "eventTimeZoneOffset": "+00:00",
             "bizTransactionList": [{"type": "desadv",
                                     "bizTransaction": f"urn:epcglobal:cbv:bt:4012345000054:D-{tag}"}],
             "epcList": [f"{sg}B"], "action": "ADD"},
            {"type": "TransformationEvent", "eventTime": "2026-01-05T08:10:00Z", "eventTimeZoneOffset": "+00:00",
             "inputQuantityList": [{"epcClass": f"urn:epc:class:lgtin:4012345.012345.{tag}", "quantity": 5,
                                    "uom": "KGM"}],
             "outputEPCList": [f"{sg}C"], "bizStep": "commissioning", "ilmd": {"cbvmda:lotNumber": f"OUT-{tag}"}},
            {"type": "AssociationEvent", "eventTime": "2026-01-05T08:20:00Z", "eventTimeZoneOffset": "+00:00",
             "parentID": f"urn:epc:id:grai:4012345.55555.{tag}", "childEPCs": [f"urn:epc:id:giai:4012345.{tag}"],
             "action": "ADD", "bizStep": "assembling"},
        ]},
    }


async def capture_xml(hub: httpx.AsyncClient, body: bytes, content_type: str = "application/xml") -> dict[str, Any]:
    r = await hub.post("/epcis/capture", content=body, headers={"content-type": content_type})
    assert r.status_code == 202, r.text
    return r.json()


def tag_params(tag: str) -> dict[str, str]:
    sg = f"urn:epc:id:sgtin:4012345.011111.{tag}"
    return {"MATCH_anyEPC": f"{sg}A|{sg}B|{sg}C|urn:epc:id:grai:4012345.55555.{tag}", "orderBy": "eventTime",
            "orderDirection": "ASC"}


def structural_problems(root: Any) -> list[str]:
    """What makes an XML answer not an EPCIS 2.0 EPCISQueryDocument (names, namespaces, order, required)."""
    bad = []
    if root.tag != f"{{{QUERY}}}EPCISQueryDocument":
        bad.append(f"root is {root.tag}")
    for attr in ("schemaVersion", "creationDate"):
        if not root.get(attr):
            bad.append(f"root has no {attr}")
    body = root.find("EPCISBody")
    results = body.find(f"{{{QUERY}}}QueryResults") if body is not None else None
    if results is None or results.find("queryName") is None:
        return [*bad, "no EPCISBody/epcisq:QueryResults/queryName"]
    events = results.find("resultsBody/EventList")
    if events is None:
        return [*bad, "no resultsBody/EventList"]
    for ev in events:
        order = XSD_ORDER.get(ev.tag)
        if order is None:
            bad.append(f"{ev.tag} is not an EPCIS 2.0 event element")
            continue
        pos = -1
        for c in ev:
            q = etree.QName(c)
            if q.namespace:  # an extension element: after the standard fields (the XSD's ##other wildcard)
                if q.namespace in (EPCIS, QUERY):
                    bad.append(f"{ev.tag}/{c.tag}: standard fields are unqualified")
                pos = len(order)
                continue
            if q.localname not in order:
                bad.append(f"{ev.tag}/{q.localname} is not a field of {ev.tag}")
            elif order.index(q.localname) < pos:
                bad.append(f"{ev.tag}/{q.localname} is out of the XSD's order")
            else:
                pos = order.index(q.localname)
        for req in REQUIRED[ev.tag]:
            if ev.find(req) is None:
                bad.append(f"{ev.tag} lacks {req}")
    return bad


async def test_xml_and_json_captures_of_one_document_give_the_same_event_ids(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:10]
    job = await capture_xml(hub, xml_document(tag))
    assert job["success"] is True and job["storedCount"] == 5, job
    r = await hub.get("/epcis/events", params=tag_params(tag))
    got = r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert [e["type"] for e in got] == ["ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent",
                                        "AssociationEvent"]
    doc = json_document(tag)
    expected = [event_hash(e, {"acme": ACME_NS}) for e in doc["epcisBody"]["eventList"]]
    assert [e["eventID"] for e in got] == expected
    # the JSON capture of the same document finds every event stored already: same ids, nothing doubled
    r = await hub.post("/epcis/capture", json=doc)
    assert r.status_code == 202 and r.json()["success"] is True and r.json()["storedCount"] == 0, r.text
    obj = got[0]
    assert obj["acme:carrier"] == "DHL" and obj["acme:grade"] == 3 and obj["acme:seal"] == {"acme:id": ["S1", "S2"]}
    assert obj["ilmd"] == {"cbvmda:lotNumber": tag, "acme:heat": f"H-{tag}"}
    assert obj["bizStep"] == "commissioning" and obj["persistentDisposition"] == {"set": ["completeness_verified"]}
    assert obj["sensorElementList"][0]["sensorReport"][1]["maxValue"] == 42
    assert obj["recordTime"] > "2025"  # the server's own time, not the 2000 the document carried


async def test_one_xml_event_is_captured_synchronously_with_its_json_id(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:10]
    body = f"""<ObjectEvent xmlns:acme="{ACME_NS}"><eventTime>2026-01-06T08:00:00Z</eventTime>
      <eventTimeZoneOffset>+00:00</eventTimeZoneOffset>
      <epcList><epc>urn:epc:id:sgtin:4012345.011111.{tag}</epc></epcList><action>OBSERVE</action>
      <bizStep>urn:epcglobal:cbv:bizstep:shipping</bizStep><acme:carrier>UPS</acme:carrier></ObjectEvent>"""
    r = await hub.post("/epcis/events", content=body.encode(), headers={"content-type": "text/xml"})
    assert r.status_code == 201, r.text
    same = {"type": "ObjectEvent", "eventTime": "2026-01-06T08:00:00Z", "eventTimeZoneOffset": "+00:00",
            "epcList": [f"urn:epc:id:sgtin:4012345.011111.{tag}"], "action": "OBSERVE", "bizStep": "shipping",
            "acme:carrier": "UPS"}
    assert r.json()["eventID"] == event_hash(same, {"acme": ACME_NS})


async def test_capture_as_xml_query_as_xml_round_trip(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:10]
    assert (await capture_xml(hub, xml_document(tag), "text/xml"))["storedCount"] == 5
    params = tag_params(tag)
    as_json = (await hub.get("/epcis/events", params=params)).json()
    ids = [e["eventID"] for e in as_json["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]
    r = await hub.get("/epcis/events", params=params, headers=ASK_XML)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml"), r.text
    assert r.headers["GS1-EPC-Format"] == "Always_GS1_Digital_Link"
    root = etree.fromstring(r.content)
    assert structural_problems(root) == []
    events = root.find(f"EPCISBody/{{{QUERY}}}QueryResults/resultsBody/EventList")
    assert [e.tag for e in events] == ["ObjectEvent", "AggregationEvent", "TransactionEvent", "TransformationEvent",
                                       "AssociationEvent"]
    assert [e.findtext("eventID") for e in events] == ids
    obj = events[0]
    assert obj.findtext("recordTime") > "2025"
    assert obj.findtext("bizStep") == "urn:epcglobal:cbv:bizstep:commissioning"
    assert obj.findtext("certificationInfo") == f"https://cert.example/coa/{tag}"
    # identifiers as Digital Links by default; extension elements in their own namespace
    assert obj.findtext("epcList/epc").startswith("https://id.gs1.org/01/")
    assert obj.findtext(f"{{{ACME_NS}}}carrier") == "DHL"
    grade = obj.find(f"{{{ACME_NS}}}grade")
    assert grade.text == "3" and grade.get("{http://www.w3.org/2001/XMLSchema-instance}type") == "xsd:integer"
    assert [s.text for s in obj.findall(f"{{{ACME_NS}}}seal/{{{ACME_NS}}}id")] == ["S1", "S2"]
    assert obj.findtext(f"bizLocation/{{{ACME_NS}}}bay") == "7"
    assert obj.findtext("ilmd/{urn:epcglobal:cbv:mda}lotNumber") == tag
    assert obj.findtext(f"ilmd/{{{ACME_NS}}}heat") == f"H-{tag}"
    reports = obj.findall("sensorElementList/sensorElement/sensorReport")
    assert [(x.get("type"), x.get("uom")) for x in reports] == [("gs1:Temperature", "CEL"),
                                                                ("gs1:RelativeHumidity", "A93")]
    assert obj.find("sensorElementList/sensorElement/sensorMetadata").get(f"{{{ACME_NS}}}probe") == "p1"
    assert obj.find("sourceList/source").get("type") == "urn:epcglobal:cbv:sdt:owning_party"
    # the XML answer captures again as the same events: nothing new is stored
    again = await capture_xml(hub, r.content)
    assert again["success"] is True and again["storedCount"] == 0, again
    # GS1-EPC-Format still applies
    r = await hub.get("/epcis/events", params=params, headers={**ASK_XML, "GS1-EPC-Format": "Always_EPC_URN"})
    assert etree.fromstring(r.content).findtext(".//ObjectEvent/epcList/epc").startswith("urn:epc:id:sgtin:")
    # paging: the same headers as JSON
    r = await hub.get("/epcis/events", params={**params, "perPage": "2"}, headers=ASK_XML)
    assert len(etree.fromstring(r.content).find(f"EPCISBody/{{{QUERY}}}QueryResults/resultsBody/EventList")) == 2
    assert r.headers["GS1-Next-Page-Token"] and 'rel="next"' in r.headers["Link"]
    # one event, and a named query, as XML
    r = await hub.get(f"/epcis/events/{quote(ids[0], safe='')}", headers=ASK_XML)
    assert r.status_code == 200 and structural_problems(etree.fromstring(r.content)) == []
    assert etree.fromstring(r.content).findtext(".//ObjectEvent/eventID") == ids[0]
    name = f"xml-{tag}"
    assert (await hub.post("/epcis/queries", json={"name": name, "query": params})).status_code == 201
    r = await hub.get(f"/epcis/queries/{name}/events", headers=ASK_XML)
    root = etree.fromstring(r.content)
    assert root.findtext(f"EPCISBody/{{{QUERY}}}QueryResults/queryName") == name
    assert len(root.find(f"EPCISBody/{{{QUERY}}}QueryResults/resultsBody/EventList")) == 5
    # JSON stays the default, and wins a tie
    r = await hub.get("/epcis/events", params=params, headers={"Accept": "application/json, application/xml"})
    assert r.headers["content-type"].startswith("application/ld+json")


async def test_structural_check_can_fail():
    root = etree.fromstring(f"""<q:EPCISQueryDocument xmlns:q="{QUERY}" schemaVersion="2.0" creationDate="x">
      <EPCISBody><q:QueryResults><queryName>q</queryName><resultsBody><EventList><ObjectEvent>
      <action>ADD</action><epcList/><eventTime>t</eventTime><foo/></ObjectEvent></EventList></resultsBody>
      </q:QueryResults></EPCISBody></q:EPCISQueryDocument>""".encode())
    problems = structural_problems(root)
    assert "ObjectEvent/epcList is out of the XSD's order" in problems
    assert "ObjectEvent/foo is not a field of ObjectEvent" in problems
    assert "ObjectEvent lacks eventTimeZoneOffset" in problems


@pytest.mark.parametrize(("body", "says"), [
    (b"<epcis:EPCISDocument xmlns:epcis='urn:epcglobal:epcis:xsd:2'>\n<EPCISBody>\n<EventList>\n</EPCISBody>",
     "line 4"),
    (b"<EPCISDocument schemaVersion='2.0'/>", "the root element is {}EPCISDocument"),
    (f"""<epcis:EPCISDocument xmlns:epcis="{EPCIS}" schemaVersion="2.0" creationDate="2026-01-05T08:00:00Z">
<EPCISBody><EventList><ObjectEvent><eventTime>2026-01-05T08:00:00Z</eventTime>
<eventTimeZoneOffset>+00:00</eventTimeZoneOffset><epcList/><action>ADD</action>
<carrier>DHL</carrier></ObjectEvent></EventList></EPCISBody></epcis:EPCISDocument>""".encode(),
     "ObjectEvent/carrier (line 4)"),
    (f"""<epcis:EPCISDocument xmlns:epcis="{EPCIS}" schemaVersion="2.0" creationDate="2026-01-05T08:00:00Z">
<EPCISBody><EventList><QuantityEvent/></EventList></EPCISBody></epcis:EPCISDocument>""".encode(),
     "QuantityEvent was removed"),
    (f"""<epcis:EPCISDocument xmlns:epcis="{EPCIS}" schemaVersion="2.0" creationDate="2026-01-05T08:00:00Z">
<EPCISBody><EventList><ObjectEvent><eventTime>2026-01-05T08:00:00Z</eventTime>
<eventTimeZoneOffset>+00:00</eventTimeZoneOffset><epcList/><action>ADD</action>
<quantityList><quantityElement><epcClass>urn:epc:class:lgtin:4012345.012345.X</epcClass>
<quantity>many</quantity></quantityElement></quantityList></ObjectEvent></EventList></EPCISBody>
</epcis:EPCISDocument>""".encode(), "quantity (line 5): 'many' is not a number"),
])
async def test_bad_xml_is_a_400_naming_the_element_and_line(hub: httpx.AsyncClient, body: bytes, says: str):
    r = await hub.post("/epcis/capture", content=body, headers=XML)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["type"] == "epcisException:ValidationException"
    assert says in r.json()["detail"], r.json()


async def test_schema_invalid_xml_events_are_refused_whole_like_json(hub: httpx.AsyncClient):
    tag = uuid.uuid4().hex[:10]
    body = xml_document(tag).replace(b"<action>ADD</action>\n        <bizStep>urn:epcglobal:cbv:bizstep:packing",
                                     b"<action>MOVE</action>\n        <bizStep>urn:epcglobal:cbv:bizstep:packing")
    job = await capture_xml(hub, body)
    assert job["success"] is False and job["storedCount"] == 0
    assert {(e["event"], e["field"]) for e in job["errors"]} >= {(1, "action")}
    r = await hub.get("/epcis/events", params=tag_params(tag))
    assert r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == []


async def test_entities_and_external_dtds_are_refused_safely(hub: httpx.AsyncClient, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    tag = uuid.uuid4().hex[:10]
    event = (f"<ObjectEvent><eventTime>2026-01-05T08:00:00Z</eventTime><eventTimeZoneOffset>+00:00"
             f"</eventTimeZoneOffset><epcList><epc>urn:epc:id:sgtin:4012345.011111.{tag}&xxe;</epc></epcList>"
             "<action>OBSERVE</action></ObjectEvent>")
    doc = (f'<epcis:EPCISDocument xmlns:epcis="{EPCIS}" schemaVersion="2.0" creationDate="2026-01-05T08:00:00Z">'
           f"<EPCISBody><EventList>{event}</EventList></EPCISBody></epcis:EPCISDocument>")
    xxe = f'<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY xxe SYSTEM "file://{secret}">]>\n{doc}'
    laughs = ('<?xml version="1.0"?>\n<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa">'
              + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi"))
              + f"]>\n{doc.replace('&xxe;', '&i;')}")
    external = f'<?xml version="1.0"?>\n<!DOCTYPE d SYSTEM "http://127.0.0.1:9/evil.dtd">\n{doc.replace("&xxe;", "")}'
    for body in (xxe, laughs, external):
        started = time.monotonic()
        r = await hub.post("/epcis/capture", content=body.encode(), headers=XML)
        assert time.monotonic() - started < 2
        assert r.status_code == 400, r.text
        assert "TOP-SECRET" not in r.text and "aaaaaaaaaa" not in r.text
        assert "DOCTYPE" in r.json()["detail"] or "entity" in r.json()["detail"], r.json()
    # an entity reference with no declaration at all is not well-formed
    r = await hub.post("/epcis/capture", content=doc.encode(), headers=XML)
    assert r.status_code == 400 and "xxe" in r.json()["detail"]
    # and nothing was stored by any of them
    r = await hub.get("/epcis/events", params={"MATCH_epc": f"urn:epc:id:sgtin:4012345.011111.{tag}"})
    assert r.json()["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == []


async def test_xml_capture_limits_and_media_types(hub: httpx.AsyncClient, monkeypatch):
    tag = uuid.uuid4().hex[:10]
    monkeypatch.setattr(epcis_capture, "CAPTURE_FILE_SIZE_LIMIT", 200)
    r = await hub.post("/epcis/capture", content=xml_document(tag), headers=XML)
    assert r.status_code == 413 and r.json()["type"] == "epcisException:CaptureLimitExceededException"
    monkeypatch.undo()
    r = await hub.post("/epcis/capture", content=b"a,b\n", headers={"content-type": "text/csv"})
    assert r.status_code == 415 and "application/xml" in r.json()["detail"]
