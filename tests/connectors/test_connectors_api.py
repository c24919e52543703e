"""The endpoints API: connector kinds with their schema, CRUD on endpoints validated by each kind's
Config, check and discover against real peers, and secrets that never come back out."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator

import httpx
import jsonschema
import pytest_asyncio
from sqlalchemy import select, text

from api.main import create_app
from core.settings import DatabaseSettings, Settings
from domain.models import AuditLog, Endpoint
from erp_sim.plant import CertificateServiceSim, OvenSim, PlcSim
from tests.connectors.peers import SicsScaleSim, free_port
from tests.connectors.test_connectors_registry import ensure_sics_installed
from tests.helpers import SUPER_HEADERS


@pytest_asyncio.fixture
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url)), sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub", headers=SUPER_HEADERS) as c:
        yield c


def name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def test_connectors_lists_each_kind_with_its_config_schema(hub: httpx.AsyncClient):
    ensure_sics_installed()
    r = await hub.get("/api/connectors")
    assert r.status_code == 200
    kinds = {c["kind"]: c for c in r.json()}
    assert {"erpnext", "rest", "soap", "modbus", "opcua", "mqtt", "sics"} <= set(kinds)
    for c in kinds.values():
        jsonschema.Draft202012Validator.check_schema(c["config_schema"])
        assert c["title"] and c["description"]
    assert kinds["modbus"]["config_schema"]["properties"]["registers"]["title"] == "Register map"


async def test_endpoint_crud_with_secrets_never_returned(hub: httpx.AsyncClient, sessionmaker, erp_sim):
    ep = name("erp")
    cfg = {"base_url": erp_sim.url, "api_key": "tracehub", "api_secret": "simulator-secret",
           "webhook_secret": "hook-secret"}
    r = await hub.post("/api/endpoints", json={"name": ep, "kind": "erpnext", "config": cfg})
    assert r.status_code == 201, r.text
    assert r.json()["config"]["api_secret"] == "**********" and r.json()["config"]["webhook_secret"] == "**********"
    for resp in (await hub.get(f"/api/endpoints/{ep}"), await hub.get("/api/endpoints", params={"kind": "erpnext"})):
        assert resp.status_code == 200
        assert "simulator-secret" not in resp.text and "hook-secret" not in resp.text

    # a PUT of what GET returned keeps the secrets; a changed field is stored
    got = (await hub.get(f"/api/endpoints/{ep}")).json()["config"]
    r = await hub.put(f"/api/endpoints/{ep}", json={"config": {**got, "timeout_s": 7}})
    assert r.status_code == 200 and r.json()["config"]["timeout_s"] == 7
    async with sessionmaker() as s:
        row = (await s.execute(select(Endpoint).where(Endpoint.name == ep))).scalar_one()
        assert row.config["api_secret"] == "simulator-secret" and row.config["webhook_secret"] == "hook-secret"
        audit = (await s.execute(select(AuditLog).where(AuditLog.entity_key == ep)
                                 .order_by(AuditLog.seq))).scalars().all()
        # at rest the whole config is sealed with the installation's key (core/secrets.py)
        raw = (await s.execute(text("SELECT config FROM endpoint WHERE name = :n"), {"n": ep})).scalar_one()
    stored = raw if isinstance(raw, str) else json.dumps(raw)
    assert "enc:v1:" in stored and "simulator-secret" not in stored and "hook-secret" not in stored
    assert [a.action for a in audit] == ["endpoint.created", "endpoint.updated"]
    assert "simulator-secret" not in json.dumps([a.changes for a in audit])
    assert (await hub.post(f"/api/endpoints/{ep}/check")).json()["ok"] is True

    r = await hub.post("/api/endpoints", json={"name": ep, "kind": "erpnext", "config": cfg})
    assert r.status_code == 409
    assert (await hub.delete(f"/api/endpoints/{ep}")).status_code == 204
    assert (await hub.get(f"/api/endpoints/{ep}")).status_code == 404


async def test_a_bad_config_is_refused_naming_the_field(hub: httpx.AsyncClient):
    r = await hub.post("/api/endpoints", json={"name": name("plc"), "kind": "modbus",
                                               "config": {"host": "10.0.0.5", "registers": [{"name": "t",
                                                                                             "address": 99999}]}})
    assert r.status_code == 422
    assert r.json()["field"] == "config.registers.0.address" and "65535" in r.json()["detail"]
    r = await hub.post("/api/endpoints", json={"name": name("x"), "kind": "telepathy", "config": {}})
    assert r.status_code == 422 and r.json()["field"] == "kind" and "modbus" in r.json()["detail"]
    r = await hub.post("/api/endpoints", json={"name": name("oven"), "kind": "opcua",
                                               "config": {"url": "http://oven:4840"}})
    assert r.status_code == 422 and r.json()["field"] == "config.url"


async def test_check_discover_and_read_against_real_peers(hub: httpx.AsyncClient, plc: PlcSim, oven: OvenSim,
                                                          soap_peer: CertificateServiceSim, scale: SicsScaleSim):
    ensure_sics_installed()
    endpoints = {
        name("plc"): ("modbus", plc.endpoint_config(), "press_force"),
        name("oven"): ("opcua", oven.endpoint_config(), "oven_setpoint"),
        name("certs"): ("soap", soap_peer.endpoint_config(certificate_operation="GetCertificate"), "GetCertificate"),
        name("scale"): ("sics", scale.endpoint_config(), "weight"),
    }
    for ep, (kind, cfg, point) in endpoints.items():
        assert (await hub.post("/api/endpoints", json={"name": ep, "kind": kind, "config": cfg})).status_code == 201
        check = (await hub.post(f"/api/endpoints/{ep}/check")).json()
        assert check["ok"] is True, check
        disc = await hub.get(f"/api/endpoints/{ep}/discover")
        assert disc.status_code == 200 and point in {p["name"] for p in disc.json()["points"]}
    await plc.set("press_force", 40.75)
    plc_ep = next(ep for ep, v in endpoints.items() if v[0] == "modbus")
    r = await hub.get(f"/api/endpoints/{plc_ep}/read", params=[("point", "press_force"), ("point", "spindle_rpm")])
    assert r.status_code == 200
    assert next((x["name"], x["value"], x["unit"]) for x in r.json()["readings"]) == ("press_force", 40.75, "kN")
    scale.weight = 3.5
    scale_ep = next(ep for ep, v in endpoints.items() if v[0] == "sics")
    r = await hub.get(f"/api/endpoints/{scale_ep}/read", params={"point": "weight"})
    assert r.json()["readings"][0]["value"] == 3.5


async def test_check_of_an_unreachable_or_refusing_peer_says_what_to_do(hub: httpx.AsyncClient, erp_sim,
                                                                      plc: PlcSim):
    down, wrong = name("erp-down"), name("erp-wrong")
    await hub.post("/api/endpoints", json={"name": down, "kind": "erpnext", "config": {
        "base_url": f"http://127.0.0.1:{free_port()}", "api_key": "k", "api_secret": "s", "timeout_s": 1}})
    await hub.post("/api/endpoints", json={"name": wrong, "kind": "erpnext", "config": {
        "base_url": erp_sim.url, "api_key": "tracehub", "api_secret": "nope"}})
    r = (await hub.post(f"/api/endpoints/{down}/check")).json()
    assert r["ok"] is False and r["error"] == "ConnectorUnavailable" and "unreachable" in r["message"]
    r = (await hub.post(f"/api/endpoints/{wrong}/check")).json()
    assert r["ok"] is False and r["error"] == "ConnectorConfigError" and r["field"] == "api_secret"
    # errors of discover and read go through api/errors.py: outage 503, config 422, refusal 502
    assert (await hub.get(f"/api/endpoints/{down}/discover")).status_code == 503
    assert (await hub.get(f"/api/endpoints/{wrong}/discover")).status_code == 422
    plc_ep = name("plc")
    await hub.post("/api/endpoints", json={"name": plc_ep, "kind": "modbus", "config": plc.endpoint_config()})
    r = await hub.get(f"/api/endpoints/{plc_ep}/read", params={"point": "nope"})
    assert r.status_code == 422 and r.json()["field"] == "registers"
