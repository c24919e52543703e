"""The ERP connectors against real HTTP peers: ErpnextConnector against the ERPNext-shaped simulator,
RestConnector against another ERP whose API looks nothing like ERPNext's."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from connectors.erpnext import ErpnextConnector, verify_webhook, webhook_signature
from connectors.errors import ConnectorConfigError, ConnectorUnavailable, DeviceRejected
from connectors.rest import RestConnector
from tests.connectors.contract import ConnectorContract
from tests.connectors.peers import ThreadedServer, free_port

AUTH = {"Authorization": "token tracehub:simulator-secret"}


def erp_config(url: str, **extra: Any) -> dict[str, Any]:
    return {"base_url": url, "api_key": "tracehub", "api_secret": "simulator-secret", "timeout_s": 5, **extra}


class TestErpnextContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self) -> type[ErpnextConnector]:
        return ErpnextConnector

    @pytest.fixture
    def config(self, erp_sim) -> dict[str, Any]:
        return erp_config(erp_sim.url, webhook_secret="whsec")

    @pytest.fixture
    def bad_config(self, erp_sim) -> dict[str, Any]:
        return erp_config(erp_sim.url, api_secret="wrong-secret")

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return erp_config(f"http://127.0.0.1:{free_port()}", timeout_s=1)

    @pytest.fixture
    def rejection(self):
        async def delivery_note_without_customer(conn: ErpnextConnector) -> None:
            await conn.write("Delivery Note", {"name": f"DN-{uuid.uuid4().hex[:6]}", "items": []})
        return delivery_note_without_customer

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {"Work Order", "Purchase Receipt", "Batch", "Stock Entry", "Delivery Note"}

    @pytest.fixture
    def peer_holds(self, erp_sim) -> dict[str, Any]:
        held = {}
        for i in range(2):
            doc = {"batch_id": f"B-{uuid.uuid4().hex[:8]}", "item": "BAR-42CRMO4", "custom_heat_number": f"H{i}"}
            r = httpx.post(f"{erp_sim.url}/api/resource/Batch", json=doc, headers=AUTH)
            assert r.status_code == 200, r.text
            assert r.json()["data"]["name"] == doc["batch_id"]  # a Batch is named by its batch_id
            held[doc["batch_id"]] = doc
        return held

    @pytest.fixture
    def peer_port(self, erp_sim) -> int:
        return erp_sim.port

    async def read_values(self, conn: ErpnextConnector, names: list[str]) -> dict[str, Any]:
        return {n: await conn.read("Batch", name=n) for n in names}

    def assert_same(self, got: dict[str, Any], expected: dict[str, Any]) -> None:
        for name, doc in expected.items():
            assert {k: got[name][k] for k in doc} == doc


async def test_paged_list_reads_every_document_once(erp_sim):
    tag = uuid.uuid4().hex[:6]
    async with httpx.AsyncClient(base_url=erp_sim.url, headers=AUTH) as raw:
        for i in range(23):
            (await raw.post("/api/resource/Batch", json={"batch_id": f"P-{tag}-{i:02d}", "item": tag})).raise_for_status()
    async with ErpnextConnector(erp_config(erp_sim.url, page_length=5)) as conn:
        docs = await conn.read_all("Batch", filters=[["item", "=", tag]], fields=["name", "item"],
                                   order_by="name asc")
    assert [d["name"] for d in docs] == [f"P-{tag}-{i:02d}" for i in range(23)]
    assert all(set(d) == {"name", "item"} for d in docs)


async def test_a_keyed_write_counts_a_second_copy_as_done(erp_sim):
    key = f"SE-{uuid.uuid4().hex[:6]}"
    async with ErpnextConnector(erp_config(erp_sim.url)) as conn:
        first = await conn.write_once("Stock Entry", {"stock_entry_type": "Manufacture"}, key)
        again = await conn.write_once("Stock Entry", {"stock_entry_type": "Manufacture"}, key)
        # the key in the hub key field goes the same way through write
        third = await conn.write("Stock Entry", {"stock_entry_type": "Manufacture", "custom_hub_key": key})
    assert first["name"] == again["name"] == third["name"] and first["name"].startswith("MAT-STE-")
    assert first["custom_hub_key"] == key and len(erp_sim.keyed("Stock Entry", key)) == 1


async def test_503_is_transient_and_the_call_succeeds_after(erp_sim):
    async with httpx.AsyncClient() as raw:
        (await raw.post(f"{erp_sim.url}/sim/faults", json={"status": 503, "count": 2})).raise_for_status()
    async with ErpnextConnector(erp_config(erp_sim.url)) as conn:
        for _ in range(2):
            with pytest.raises(ConnectorUnavailable) as info:
                await conn.read("Batch", limit_page_length=1)
            assert "503" in info.value.message
        assert isinstance(await conn.read("Batch", limit_page_length=1), list)


async def test_rejection_carries_the_erp_message(erp_sim):
    async with ErpnextConnector(erp_config(erp_sim.url)) as conn:
        with pytest.raises(DeviceRejected) as info:
            await conn.write("Delivery Note", {"name": "DN-X"})
    assert "417" in info.value.message and "customer" in info.value.message


def test_webhook_signature_is_erpnexts():
    body = b'{"event_id": "1"}'
    # HMAC-SHA256 of the body with the secret, base64: computed independently of the connector
    import base64
    import hashlib
    import hmac
    expected = base64.b64encode(hmac.new(b"s3cret", body, hashlib.sha256).digest()).decode()
    assert webhook_signature("s3cret", body) == expected
    assert verify_webhook("s3cret", body, expected)
    assert not verify_webhook("s3cret", body + b" ", expected)
    assert not verify_webhook("other", body, expected)
    assert not verify_webhook("s3cret", body, None)


# --- another ERP over generic REST ---------------------------------------------------------------------

def rest_config(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "base_url": url, "auth": "bearer", "token": "other-erp-token", "health_path": "/api/v2/ping", "timeout_s": 5,
        "resources": [
            {"name": "work_orders", "path": "/api/v2/manufacturing-orders", "paging": "page",
             "items_key": "results", "item_key": "order", "page_size": 10,
             "fields": {"number": "ref", "item": "product.code", "gtin": "product.gtin", "quantity": "planned.qty",
                        "erp_id": "id"}},
            {"name": "goods_receipts", "path": "/api/v2/goods-receipts", "item_key": "receipt", "paging": "none",
             "writable": True, "fields": {"receipt": "number", "lines": "lines"}},
        ],
        **extra,
    }


class TestRestContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self) -> type[RestConnector]:
        return RestConnector

    @pytest.fixture
    def config(self, other_erp: ThreadedServer) -> dict[str, Any]:
        return rest_config(other_erp.url)

    @pytest.fixture
    def bad_config(self, other_erp: ThreadedServer) -> dict[str, Any]:
        return rest_config(other_erp.url, token="expired-token")

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return rest_config(f"http://127.0.0.1:{free_port()}", timeout_s=1)

    @pytest.fixture
    def rejection(self):
        async def receipt_without_lines(conn: RestConnector) -> None:
            await conn.write("goods_receipts", {"receipt": "GR-1", "lines": []})
        return receipt_without_lines

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {"work_orders", "goods_receipts"}

    @pytest.fixture
    def peer_holds(self, other_erp: ThreadedServer) -> dict[str, Any]:
        orders = other_erp.app.state.orders
        return {str(o["id"]): {"number": o["ref"], "item": o["product"]["code"], "quantity": o["planned"]["qty"]}
                for o in (orders[0], orders[17])}

    @pytest.fixture
    def peer_port(self, other_erp: ThreadedServer) -> int:
        return other_erp.port

    async def read_values(self, conn: RestConnector, names: list[str]) -> dict[str, Any]:
        return {n: await conn.read("work_orders", id=n) for n in names}

    def assert_same(self, got: dict[str, Any], expected: dict[str, Any]) -> None:
        for key, doc in expected.items():
            assert {k: got[key][k] for k in doc} == doc


async def test_rest_pages_through_every_document_mapped(other_erp: ThreadedServer):
    async with RestConnector(rest_config(other_erp.url)) as conn:
        orders = await conn.read("work_orders")
    assert len(orders) == 23 and len({o["number"] for o in orders}) == 23
    assert orders[0] == {"number": "MO-0001", "item": "SHAFT-25", "gtin": "09506000134352", "quantity": 11,
                         "erp_id": 5001}


async def test_rest_write_places_mapped_fields_and_counts_a_duplicate_as_done(other_erp: ThreadedServer):
    number = f"GR-{uuid.uuid4().hex[:6]}"
    async with RestConnector(rest_config(other_erp.url)) as conn:
        created = await conn.write("goods_receipts", {"receipt": number, "lines": [{"lot": "L1", "qty": 5}]})
        again = await conn.write("goods_receipts", {"receipt": number, "lines": [{"lot": "L1", "qty": 5}]})
    assert created == {"receipt": number, "lines": [{"lot": "L1", "qty": 5}]} and again is None
    assert [r["number"] for r in other_erp.app.state.receipts].count(number) == 1


def test_rest_config_names_missing_auth_secret():
    with pytest.raises(ConnectorConfigError) as info:
        RestConnector({"base_url": "http://x", "auth": "bearer"})
    assert "token" in info.value.message
