"""Another ERP as the hub's ERP: the generic REST connector receives the hub's ERP notices (ERPNext-shaped
documents named by doctype) on configured resources, renamed by its field map, and creates each one once: the hub's
key is looked up before creating, so a retry after a lost answer finds the first document. The peer is a small
REST service on loopback that names its documents itself, as real ERPs do."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from activities.hub import HubActivities
from activities.models import ErpNotice
from connectors.errors import ConnectorConfigError, ConnectorUnavailable, DeviceRejected
from connectors.rest import RestConnector
from domain.endpoints import create_endpoint
from tests.connectors.peers import ThreadedServer


def other_erp_app() -> Starlette:
    docs: list[dict[str, Any]] = []
    ids = itertools.count(1)
    state: dict[str, Any] = {"fail_after_create": 0, "headers": []}

    async def deliveries(request: Request) -> JSONResponse:
        if request.method == "GET":
            ref = request.query_params.get("external_ref")
            if ref and ref.startswith("SLOW"):
                await asyncio.sleep(1.0)  # a slow lookup: the call is in flight meanwhile
            return JSONResponse({"data": [d for d in docs if ref is None or d.get("external_ref") == ref]})
        body = await request.json()
        if body.get("ship_to") == "DOWN":
            return JSONResponse({"error": "service unavailable"}, status_code=503)
        state["headers"].append(request.headers.get("idempotency-key"))
        if not body.get("lines"):
            return JSONResponse({"error": "a delivery needs lines"}, status_code=422)
        doc = {**body, "id": f"DLV-{next(ids):05d}"}  # the ERP names its documents itself
        docs.append(doc)
        if state["fail_after_create"]:
            state["fail_after_create"] -= 1
            return JSONResponse({"error": "gateway timeout"}, status_code=504)  # created, but the answer is lost
        return JSONResponse({"data": doc}, status_code=201)

    app = Starlette(routes=[Route("/api/v2/deliveries", deliveries, methods=["GET", "POST"]),
                            Route("/health", lambda r: JSONResponse({"ok": True}))])
    app.state.docs, app.state.state = docs, state
    return app


@pytest.fixture(scope="module")
def other_erp() -> Any:
    server = ThreadedServer(other_erp_app()).start()
    yield server
    server.stop()


def config(port: int, **resource: Any) -> dict[str, Any]:
    return {"base_url": f"http://127.0.0.1:{port}", "health_path": "/health", "resources": [{
        "name": "deliveries", "path": "/api/v2/deliveries", "doctype": "Delivery Note", "writable": True,
        "items_key": "data", "item_key": "data", "paging": "none", "key_field": "external_ref",
        "fields": {"customer": "ship_to", "items": "lines"}, **resource}]}


def delivery(key: str) -> dict[str, Any]:
    return {"customer": "Customer A", "items": [{"item_code": "SHAFT-25", "qty": 20, "batch_no": key + "-L1"}]}


async def test_a_notice_goes_to_the_resource_of_its_doctype_renamed_and_once(other_erp: ThreadedServer):
    key = f"DN-{uuid.uuid4().hex[:8]}"
    async with RestConnector(config(other_erp.port)) as conn:
        first = await conn.write_once("Delivery Note", delivery(key), key)
        again = await conn.write_once("Delivery Note", delivery(key), key)
    assert first == again == {"customer": "Customer A", "items": delivery(key)["items"]}  # mapped back
    stored = [d for d in other_erp.app.state.docs if d.get("external_ref") == key]
    assert len(stored) == 1 and stored[0]["ship_to"] == "Customer A" and stored[0]["lines"][0]["qty"] == 20
    assert "name" not in stored[0]  # the hub's key travels in the key field, not as a name the ERP would drop
    assert other_erp.app.state.state["headers"][-1] == key  # and in the idempotency header


async def test_a_retry_after_a_lost_answer_finds_the_first_document(other_erp: ThreadedServer):
    key = f"DN-{uuid.uuid4().hex[:8]}"
    other_erp.app.state.state["fail_after_create"] = 1
    async with RestConnector(config(other_erp.port)) as conn:
        with pytest.raises(ConnectorUnavailable):
            await conn.write_once("Delivery Note", delivery(key), key)  # created; the answer was a 504
        found = await conn.write_once("Delivery Note", delivery(key), key)  # the activity's retry
    assert len([d for d in other_erp.app.state.docs if d.get("external_ref") == key]) == 1
    assert found["customer"] == "Customer A"


async def test_refusals_and_missing_resources_say_what_to_fix(other_erp: ThreadedServer):
    async with RestConnector(config(other_erp.port)) as conn:
        with pytest.raises(DeviceRejected, match="a delivery needs lines"):
            await conn.write_once("Delivery Note", {"customer": "C"}, f"DN-{uuid.uuid4().hex[:8]}")
        with pytest.raises(ConnectorConfigError, match="doctype is 'Stock Entry'") as e:
            await conn.write_once("Stock Entry", {"items": []}, "WO-1-MFG")
        assert e.value.field == "resources"
    async with RestConnector(config(other_erp.port, writable=False)) as conn:
        with pytest.raises(ConnectorConfigError, match="not writable"):
            await conn.write_once("Delivery Note", delivery("x"), "DN-x")


async def test_the_hubs_erp_notice_activity_uses_a_rest_endpoint_once(other_erp: ThreadedServer, sessionmaker,
                                                                     settings):
    name = f"erp-rest-{uuid.uuid4().hex[:6]}"
    async with sessionmaker() as s, s.begin():
        await create_endpoint(s, name=name, kind="rest", config=config(other_erp.port), actor="test")
    acts = HubActivities(sessionmaker, resolver=settings.resolver_base_url, erp_endpoint=name)
    key = f"DN-{uuid.uuid4().hex[:8]}"
    notice = ErpNotice(doctype="Delivery Note", name=key, doc=delivery(key))
    other_erp.app.state.state["fail_after_create"] = 1
    with pytest.raises(Exception):  # noqa: B017 - the lost answer: ConnectorUnavailable, as the activity raises it
        await acts.notify_erp(notice)
    await acts.notify_erp(notice)  # Temporal's retry of the activity
    await acts.notify_erp(notice)  # and a workflow replaying a notice it already sent
    assert len([d for d in other_erp.app.state.docs if d.get("external_ref") == key]) == 1


async def test_one_call_failing_does_not_close_the_connection_under_the_others(other_erp: ThreadedServer,
                                                                               sessionmaker, settings):
    """The worker's ERP connector is shared by the notices in flight. One call failing on the connection (a 503)
    makes the next attempt connect afresh, but the calls still using the old connection finish on it: closing it
    under them failed them with "the client has been closed", which the work order took as a refusal."""
    name = f"erp-rest-{uuid.uuid4().hex[:6]}"
    async with sessionmaker() as s, s.begin():
        await create_endpoint(s, name=name, kind="rest", config=config(other_erp.port), actor="test")
    acts = HubActivities(sessionmaker, resolver=settings.resolver_base_url, erp_endpoint=name)
    slow = f"SLOW-{uuid.uuid4().hex[:8]}"
    in_flight = asyncio.create_task(acts.notify_erp(ErpNotice(doctype="Delivery Note", name=slow,
                                                              doc=delivery(slow))))
    await asyncio.sleep(0.3)  # its lookup is under way
    with pytest.raises(Exception, match="503"):
        await acts.notify_erp(ErpNotice(doctype="Delivery Note", name="DN-down",
                                        doc={**delivery("DN-down"), "customer": "DOWN"}))
    await in_flight  # finishes on its own connection
    assert len([d for d in other_erp.app.state.docs if d.get("external_ref") == slow]) == 1
    # a refusal is no connection problem: the connection stays, and the next notice goes out on it
    ok = f"DN-{uuid.uuid4().hex[:8]}"
    await acts.notify_erp(ErpNotice(doctype="Delivery Note", name=ok, doc=delivery(ok)))  # connects afresh
    assert acts._erp is not None
    conn = acts._erp[1]
    with pytest.raises(Exception, match="a delivery needs lines"):
        await acts.notify_erp(ErpNotice(doctype="Delivery Note", name="DN-nolines", doc={"customer": "C"}))
    assert acts._erp is not None and acts._erp[1] is conn
