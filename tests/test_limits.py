"""Request limits (api/limits.py): a body over its route's limit gets 413 naming the limit, whether the
client declared its length or streams it chunked; a body within the limit reaches the route whole. And the
inputs tests/test_fuzz.py found answered with a 500, now refused with a 422 naming the field."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from api.main import create_app
from core.settings import ApiSettings, DatabaseSettings, Settings
from domain import epcis_capture
from tests.helpers import SUPER_HEADERS

LIMIT, CAPTURE_LIMIT = 1_000, 5_000  # small, so the tests send kilobytes, not megabytes


@pytest_asyncio.fixture(scope="module")
async def small(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(database=DatabaseSettings(url=db_url),
                        api=ApiSettings(max_body_bytes=LIMIT, max_capture_body_bytes=CAPTURE_LIMIT))
    app = create_app(settings, sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


def epcis_document(size: int) -> bytes:
    """A valid EPCIS document of exactly `size` bytes (JSON allows trailing whitespace)."""
    doc = {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"], "type": "EPCISDocument",
           "schemaVersion": "2.0", "creationDate": "2026-01-05T08:00:00Z", "epcisBody": {"eventList": [
               {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": "2026-01-05T08:00:00.000+01:00",
                "eventTimeZoneOffset": "+01:00", "bizStep": "shipping",
                "epcList": [f"urn:epc:id:sgtin:4012345.011111.LIM{uuid.uuid4().hex[:10]}"]}]}}
    raw = json.dumps(doc).encode()
    assert len(raw) <= size
    return raw + b" " * (size - len(raw))


async def chunks(data: bytes, size: int = 100) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def assert_refused(r: httpx.Response, limit: int) -> dict:
    assert r.status_code == 413, r.text
    body = r.json()
    assert body["error"] == "PayloadTooLarge" and body["limit"] == limit
    assert f"limit is {limit} bytes" in body["detail"], body
    return body


def test_defaults_match_what_the_epcis_interface_advertises():
    api = ApiSettings()
    assert api.max_body_bytes == 10 * 1024 * 1024
    # OPTIONS /epcis/capture advertises GS1-EPCIS-Capture-File-Size-Limit: the middleware lets exactly that in
    assert api.max_capture_body_bytes == epcis_capture.CAPTURE_FILE_SIZE_LIMIT > api.max_body_bytes


async def test_a_declared_content_length_over_the_limit_is_refused_unread(small: httpx.AsyncClient):
    body = json.dumps({"item": "X", "level": "unit", "spec": {"pad": "x" * LIMIT}}).encode()
    r = await small.post("/api/codes/rules", content=body, headers={"content-type": "application/json"})
    assert r.headers["content-length"] and len(body) > LIMIT
    detail = assert_refused(r, LIMIT)["detail"]
    assert f"Content-Length says {len(body)} bytes" in detail and "POST /api/codes/rules" in detail
    # refused before authentication: no token needed to be told the body is too large
    r = await small.post("/api/codes/rules", content=body, headers={"authorization": ""})
    assert_refused(r, LIMIT)
    # within the limit the route answers as usual (here: an unknown rule spec is named field by field)
    r = await small.post("/api/codes/rules", json={"item": "X", "level": "unit"})
    assert r.status_code == 422 and "spec" in r.json()["detail"]


async def test_a_chunked_body_is_cut_off_once_it_passes_the_limit(small: httpx.AsyncClient):
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"item": "X", "level": "unit", "spec": {"pad": "'
        while True:  # never ends: only a reader that stops counting would hang or run out of memory
            sent += 1
            yield b"x" * 100

    r = await small.post("/api/codes/rules", content=endless(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert f"more than {LIMIT} bytes were sent" in assert_refused(r, LIMIT)["detail"]
    assert sent <= LIMIT // 100 + 1  # reading stopped at the limit


async def test_the_capture_route_has_its_larger_limit_and_epcis_problem_shape(small: httpx.AsyncClient):
    doc = epcis_document(3_000)  # over the default limit, within the capture limit
    ctype = {"content-type": "application/json"}
    for content in (doc, chunks(doc)):
        r = await small.post("/epcis/capture", content=content, headers=ctype)
        assert r.status_code == 202, r.text  # the whole document reached the route and was captured
    # the same bytes to a route with the default limit, declared and chunked
    for content in (doc, chunks(doc)):
        assert_refused(await small.post("/epcis/events", content=content, headers=ctype), LIMIT)
    # over the capture limit: refused, and in the shape EPCIS clients read
    big = epcis_document(CAPTURE_LIMIT + 1)
    for content in (big, chunks(big)):
        r = await small.post("/epcis/capture", content=content, headers=ctype)
        body = assert_refused(r, CAPTURE_LIMIT)
        assert r.headers["content-type"] == "application/problem+json"
        assert body["type"] == "epcisException:CaptureLimitExceededException" and body["status"] == 413


async def test_a_content_length_that_is_not_a_number_is_refused(small: httpx.AsyncClient):
    r = await small.post("/epcis/capture", content=b"{}", headers={"content-length": "lots",
                                                                    "content-type": "application/json"})
    assert r.status_code == 400 and "Content-Length" in r.json()["detail"]


# --- what the fuzzer found (tests/test_fuzz.py) -------------------------------------------------------------


def assert_names(r: httpx.Response, field: str) -> None:
    assert r.status_code == 422, r.text
    body = r.json()
    assert field in body["detail"] and (body.get("field") == field or field in str(body.get("errors"))), body


async def test_the_nul_character_is_refused_wherever_it_is_sent(small: httpx.AsyncClient):
    # PostgreSQL text cannot hold U+0000: the driver's error used to come back as a 500
    assert_names(await small.get("/api/work-orders", params={"status": "open\x00"}), "status")
    assert_names(await small.get("/api/inspections", params={"status": "\x00"}), "status")
    assert_names(await small.get("/api/ncrs/NCR%00-1"), "number")
    assert_names(await small.post("/api/auth/login", json={"username": "\x00", "password": "x"}), "username")
    r = await small.post("/api/codes/pack", json={"parent": "P", "children": ["ok", "bad\x00"], "actor": "a"})
    assert_names(r, "children.1")
    r = await small.get("/api/work-orders", params={"": "\x00"})  # even a parameter without a name
    assert r.status_code == 422 and r.json()["field"] == "query"
    # the text "\\u0000" (a backslash, then u0000) is no NUL character: it reaches the route
    r = await small.get("/api/work-orders", params={"status": "\\u0000"})
    assert r.status_code == 200 and r.json()["total"] == 0


async def test_numbers_past_what_the_database_holds_are_refused_as_input(small: httpx.AsyncClient):
    # block ids are 32-bit in the database; limits and offsets go into LIMIT / OFFSET
    for path in ("/api/codes/blocks/9223372036854775806", "/api/codes/blocks/2147483648/codes/0",
                 "/api/codes/blocks/9223372036854775808/labels.zpl"):
        assert_names(await small.get(path), "block_id")
    assert (await small.get("/api/codes/blocks/2147483647")).status_code == 404  # the largest id: not found
    assert_names(await small.get("/api/erp/events", params={"limit": -9223372036854775809}), "limit")
    assert_names(await small.get("/api/work-orders", params={"offset": 2**64}), "offset")


async def test_the_resolver_says_why_in_json_too(small: httpx.AsyncClient):
    r = await small.get("/01/09506000134352/21/NEVER-ISSUED", headers={"accept": "application/json"})
    assert r.status_code == 404 and r.json()["status"] == "unknown" and r.json()["detail"]


async def test_nan_and_infinity_are_refused_naming_the_field(small: httpx.AsyncClient):
    # Python's JSON parser reads NaN / Infinity as numbers; JSON has none, and Temporal's payloads cannot carry them:
    # a receipt or a measurement sent so was accepted with a 202, then dropped on its way to the workflow
    ctype = {"content-type": "application/json"}
    body = (b'{"event_id": "E-NAN-1", "type": "purchase_receipt.submitted", "purchase_receipt": {"number": "PR-NAN",'
            b' "supplier": "S", "lots": [{"lot": "M-NAN", "item": "STEEL", "quantity": Infinity, "uom": "KG"}]}}')
    assert_names(await small.post("/api/erp/events", content=body, headers=ctype), "purchase_receipt.lots.0.quantity")
    r = await small.post("/api/inspections/IQC-1/results", headers=ctype,
                         content=b'{"results": [{"name": "od", "values": [1.0, -Infinity]}]}')
    assert_names(r, "results.0.values.1")
    r = await small.post("/api/inspections/IQC-1/results", headers=ctype,
                         content=b'{"results": [{"name": "od", "values": [NaN]}]}')
    assert_names(r, "results.0.values.0")
    # the words inside a string are text, not numbers: the body reaches the route (which answers for itself)
    r = await small.post("/api/codes/pack", headers=ctype,
                         content=b'{"parent": "NaN-Infinity", "children": ["Infinity"], "actor": "a"}')
    assert r.status_code != 422 or "NaN and Infinity" not in r.text, r.text


async def test_the_mes_bridge_refuses_nan_naming_the_field():
    from activities.mes import MesIntake, Rejected

    intake = MesIntake(None, None)  # type: ignore[arg-type]  # refused before any database or Temporal call
    with pytest.raises(Rejected) as e:
        await intake.operation_report({"work_order": "WO-1", "report_id": "R-1", "seq": 10,
                                       "parameters": {"temperature_c": float("nan")}})
    assert e.value.field == "parameters.temperature_c" and "NaN" in str(e.value)
    with pytest.raises(Rejected) as e:
        await intake.equipment_state({"event_id": "E-1", "work_order": "WO-1", "readings": [float("inf")]})
    assert e.value.field == "readings.0"
