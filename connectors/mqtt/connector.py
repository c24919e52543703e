"""An MQTT broker (aiomqtt): MES events and equipment states arrive as JSON messages on topics.

`read(topic)` waits for the next message on a configured topic; `write(topic, payload)` publishes;
`messages()` iterates over every configured topic (what the MES bridge uses). With a fixed client id,
`clean_session false` and QoS 1, the broker keeps messages for the hub while it is away.

With `manual_ack=True` a QoS 1 message is acknowledged (PUBACK) only when the caller calls `ack(message)`,
after it has taken the message over: a message not acknowledged when the connection ends is delivered
again by the broker (to the same client id, with a persistent session). aiomqtt has no public switch for
this yet (empicano/aiomqtt#345), so the paho client underneath is asked directly (paho-mqtt >= 2.0).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
from pydantic import BaseModel, Field, SecretStr

from connectors.base import Connector, ConnectorConfig, Point
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)

# MQTT 3.1.1 CONNACK return codes 4 and 5: bad user name or password, not authorised
_AUTH_CODES = {4, 5, 134, 135}


class Topic(ConnectorConfig):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$", title="Name",
                      description="what the hub calls this topic, e.g. operation_reports")
    filter: str = Field(min_length=1, max_length=512, title="Topic filter",
                        description="MQTT topic filter, wildcards allowed, e.g. plant1/mes/+/operation-report")
    qos: int = Field(default=1, ge=0, le=2, title="QoS", description="0, 1 (at least once) or 2")


class MqttConfig(ConnectorConfig):
    host: str = Field(min_length=1, max_length=253, title="Broker host", description="e.g. 127.0.0.1")
    port: int = Field(default=1883, ge=1, le=65535, title="Broker port", description="1883, or 8883 with TLS")
    username: str | None = Field(default=None, title="User name", description="if the broker requires one")
    password: SecretStr | None = Field(default=None, title="Password", description="if the broker requires one")
    client_id: str | None = Field(default=None, max_length=128, title="Client id",
                                  description="fixed id, so the broker keeps a session (needs clean_session false)")
    clean_session: bool = Field(default=True, title="Clean session",
                                description="false: the broker keeps subscriptions and QoS 1 messages while away")
    timeout_s: float = Field(default=5.0, gt=0, le=120, title="Timeout (s)", description="connect and publish")
    topics: list[Topic] = Field(default_factory=list, title="Topics", description="the topics the hub listens to")


class Message(BaseModel):
    topic: str
    name: str | None = Field(description="the configured topic it arrived on")
    payload: Any
    raw: str | None = Field(default=None, description="the body as text, when it was not JSON")
    mid: int = Field(default=0, description="the MQTT packet id (what `ack` acknowledges)")
    qos: int = Field(default=0, description="the QoS it was delivered with")


class MqttConnector(Connector):
    kind = "mqtt"
    title = "MQTT broker"
    description = "Messages on topics (JSON): MES operation reports and equipment states"
    Config = MqttConfig
    config: MqttConfig

    def __init__(self, config: MqttConfig | dict[str, Any], *, manual_ack: bool = False) -> None:
        super().__init__(config)
        self.manual_ack = manual_ack
        self._client: aiomqtt.Client | None = None
        self._subscribed: set[str] = set()

    @property
    def where(self) -> str:
        return f"MQTT broker {self.config.host}:{self.config.port}"

    async def open(self) -> None:
        c = self.config
        client = aiomqtt.Client(
            c.host, c.port, username=c.username, password=c.password.get_secret_value() if c.password else None,
            identifier=c.client_id, clean_session=c.clean_session if c.client_id else True, timeout=c.timeout_s,
        )
        if self.manual_ack:
            client._client.manual_ack_set(True)  # private: see the module docstring
        await client.__aenter__()
        self._client = client

    async def close(self) -> None:
        client, self._client = self._client, None
        self._subscribed.clear()
        if client is not None:
            try:
                await client.__aexit__(None, None, None)
            except aiomqtt.MqttError:
                pass  # already disconnected

    @property
    def client(self) -> aiomqtt.Client:
        if self._client is None:
            raise RuntimeError("use the connector as an async context manager")
        return self._client

    def _topic(self, name: str) -> Topic:
        for t in self.config.topics:
            if t.name == name or t.filter == name:
                return t
        raise ConnectorConfigError(f"no topic named {name!r} in this endpoint; known: "
                                   f"{[t.name for t in self.config.topics]}", field="topics")

    async def _check(self) -> str:
        return f"connected to {self.where}; {len(self.config.topics)} topic(s) configured"

    async def discover(self) -> list[Point]:
        return [Point(name=t.name, kind="topic", address=t.filter, data_type="json",
                      description=f"QoS {t.qos}") for t in self.config.topics]

    async def subscribe(self, names: list[str] | None = None) -> None:
        for t in self.config.topics if names is None else [self._topic(n) for n in names]:
            if t.filter not in self._subscribed:
                granted = await self._guard(self.client.subscribe(t.filter, qos=t.qos))
                codes = granted if isinstance(granted, list | tuple) else [granted]
                refused = [c for c in codes if int(getattr(c, "value", c)) >= 0x80]
                if refused:  # SUBACK failure (MQTT 3.1.1 0x80, MQTT 5 reason codes >= 0x80)
                    raise DeviceRejected(f"{self.where} refused the subscription to {t.filter}: {refused[0]}")
                self._subscribed.add(t.filter)

    async def messages(self) -> AsyncIterator[Message]:
        """Every message on the configured topics, decoded from JSON, until the caller stops."""
        await self.subscribe()
        iterator = self.client.messages.__aiter__()
        while True:
            msg = await self._guard(iterator.__anext__())
            yield self._decode(msg)

    def _decode(self, msg: aiomqtt.Message) -> Message:
        name = next((t.name for t in self.config.topics if msg.topic.matches(t.filter)), None)
        raw = msg.payload
        text = None
        try:
            payload = json.loads(raw) if isinstance(raw, bytes | bytearray | str) else raw
        except ValueError:
            payload = raw.decode(errors="replace") if isinstance(raw, bytes | bytearray) else raw
            text = payload if isinstance(payload, str) else None
        return Message(topic=msg.topic.value, name=name, payload=payload, raw=text, mid=msg.mid, qos=msg.qos)

    async def ack(self, message: Message) -> None:
        """Acknowledge a message taken over (only with `manual_ack`; QoS 0 needs none). Raises
        ConnectorUnavailable when the connection is gone: the broker will deliver the message again."""
        if not self.manual_ack or message.qos == 0:
            return
        rc = self.client._client.ack(message.mid, message.qos)  # private: see the module docstring
        if rc != 0:
            raise ConnectorUnavailable(f"{self.where}: acknowledging message {message.mid} on {message.topic} "
                                       f"failed (rc {rc}); the broker will deliver it again")

    async def read(self, resource: str, **params: Any) -> Message | None:
        """The next message on topic `resource` (a retained one first); None when none arrives within
        `timeout_s` (default: the config's)."""
        t = self._topic(resource)
        await self.subscribe([t.name])
        timeout = float(params.get("timeout_s", self.config.timeout_s))
        iterator = self.client.messages.__aiter__()

        async def next_match() -> Message:
            while True:
                msg = await iterator.__anext__()
                if msg.topic.matches(t.filter):
                    return self._decode(msg)

        try:
            return await asyncio.wait_for(self._guard(next_match()), timeout)
        except TimeoutError:
            return None

    async def write(self, resource: str, data: Any) -> None:
        payload = data if isinstance(data, bytes | str) else json.dumps(data)
        qos = next((t.qos for t in self.config.topics if t.filter == resource or t.name == resource), 1)
        topic = next((t.filter for t in self.config.topics if t.name == resource), resource)
        if any(ch in topic for ch in "+#"):
            raise ConnectorConfigError(f"cannot publish to the filter {topic!r}: give a concrete topic",
                                       field="topics")
        await self._guard(self.client.publish(topic, payload, qos=qos))

    def _translate(self, exc: BaseException) -> ConnectorError:
        if isinstance(exc, aiomqtt.MqttCodeError) and exc.rc is not None:
            rc = int(exc.rc.value) if hasattr(exc.rc, "value") else int(exc.rc)
            if rc in _AUTH_CODES:
                return ConnectorConfigError(f"{self.where} refused the credentials ({exc}): check username and "
                                            "password", field="password")
            if isinstance(exc, aiomqtt.MqttConnectError):
                return ConnectorUnavailable(f"{self.where} refused the connection ({exc}); will retry")
            return DeviceRejected(f"{self.where} refused: {exc}")
        if isinstance(exc, (aiomqtt.MqttError, OSError, socket.gaierror, asyncio.TimeoutError, TimeoutError)):
            return ConnectorUnavailable(f"{self.where} unreachable ({type(exc).__name__}: {exc}); will retry")
        return ProtocolError(f"{self.where}: {type(exc).__name__}: {exc}")
