"""MqttConnector against a real Mosquitto broker of the test's own (password file and ACL)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiomqtt
import pytest

from connectors.mqtt import MqttConnector
from tests.connectors.contract import ConnectorContract
from tests.connectors.peers import MosquittoBroker, free_port


def mqtt_config(port: int, **extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": port, "username": "hub", "password": "hub-secret", "timeout_s": 3,
            "topics": [{"name": "operation_reports", "filter": "plant/mes/+/operation-report"},
                       {"name": "equipment_states", "filter": "plant/mes/+/equipment-state"},
                       {"name": "line_status", "filter": "plant/line1/status"}],
            **extra}


async def publish(broker: MosquittoBroker, topic: str, payload: Any, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, username="mes", password="mes-secret") as c:
        await c.publish(topic, json.dumps(payload), qos=1, retain=retain)


class TestMqttContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self) -> type[MqttConnector]:
        return MqttConnector

    @pytest.fixture
    def config(self, broker: MosquittoBroker) -> dict[str, Any]:
        return mqtt_config(broker.port)

    @pytest.fixture
    def bad_config(self, broker: MosquittoBroker) -> dict[str, Any]:
        return mqtt_config(broker.port, password="not-the-password")

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return mqtt_config(free_port(), timeout_s=1)

    @pytest.fixture
    def rejection(self):
        return None

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {"operation_reports", "equipment_states", "line_status"}

    @pytest.fixture
    async def peer_holds(self, broker: MosquittoBroker) -> dict[str, Any]:
        status = {"line": "LINE-1", "state": "running", "at": uuid.uuid4().hex}
        await publish(broker, "plant/line1/status", status, retain=True)
        return {"line_status": status}

    @pytest.fixture
    def peer_port(self, broker: MosquittoBroker) -> int:
        return broker.port

    async def read_values(self, conn: MqttConnector, names: list[str]) -> dict[str, Any]:
        out = {}
        for name in names:
            msg = await conn.read(name)
            out[name] = msg.payload if msg else None
        return out

    async def test_a_rejection_is_not_retried(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        pytest.skip("an MQTT broker has no 'no' to observe here: Mosquitto 2 grants a denied subscription and "
                    "drops a denied publish silently; bad credentials are covered as a config error")


async def test_messages_arrive_decoded_with_their_topic_name(broker: MosquittoBroker):
    async with MqttConnector(mqtt_config(broker.port)) as conn:
        await conn.subscribe()
        await publish(broker, "plant/mes/LATHE-01/operation-report", {"report_id": "R-1", "seq": 10})
        stream = conn.messages()
        msg = await asyncio.wait_for(stream.__anext__(), 5)
        while msg.name != "operation_reports":  # a retained line status may come first
            msg = await asyncio.wait_for(stream.__anext__(), 5)
        await stream.aclose()
    assert msg.name == "operation_reports" and msg.topic == "plant/mes/LATHE-01/operation-report"
    assert msg.payload == {"report_id": "R-1", "seq": 10}


async def test_write_publishes_and_a_read_without_message_is_none(broker: MosquittoBroker):
    async with aiomqtt.Client("127.0.0.1", broker.port, username="mes", password="mes-secret") as listener:
        await listener.subscribe("plant/mes/FURNACE-02/equipment-state", qos=1)
        async with MqttConnector(mqtt_config(broker.port, timeout_s=0.5)) as conn:
            assert await conn.read("equipment_states") is None
            await conn.write("plant/mes/FURNACE-02/equipment-state", {"equipment": "FURNACE-02", "state": "idle"})
        got = await asyncio.wait_for(listener.messages.__anext__(), 5)
    assert json.loads(got.payload) == {"equipment": "FURNACE-02", "state": "idle"}


async def test_a_persistent_session_keeps_messages_while_the_hub_is_away(broker: MosquittoBroker):
    cfg = mqtt_config(broker.port, client_id=f"hub-{uuid.uuid4().hex[:6]}", clean_session=False)
    async with MqttConnector(cfg) as conn:
        await conn.subscribe(["operation_reports"])
    await publish(broker, "plant/mes/LATHE-01/operation-report", {"report_id": "R-while-away"})
    async with MqttConnector(cfg) as conn:
        msg = await conn.read("operation_reports")
    assert msg is not None and msg.payload == {"report_id": "R-while-away"}
