"""Machines over OPC UA (asyncua): nodes by NodeId or browse path, read, write and data-change
subscriptions; security mode None, or Basic256Sha256 (Sign / SignAndEncrypt) with certificates."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from asyncua import Client, Node, ua
from asyncua.crypto import security_policies
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from pydantic import Field, SecretStr, field_validator, model_validator

from connectors.base import Connector, ConnectorConfig, Point, Reading
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)

# status codes that mean "the configuration names something that is not there" (OPC 10000-4, 7.34)
_UNKNOWN = {"BadNodeIdUnknown", "BadNodeIdInvalid", "BadNoMatch", "BadBrowseNameInvalid", "BadAttributeIdInvalid"}
_REFUSED_CREDENTIALS = {"BadUserAccessDenied", "BadIdentityTokenInvalid", "BadIdentityTokenRejected",
                        "BadSecurityChecksFailed", "BadCertificateInvalid", "BadCertificateUntrusted",
                        "BadSecurityPolicyRejected", "BadSecurityModeRejected", "BadCertificateUriInvalid"}


SecurityMode = Literal["None", "Sign", "SignAndEncrypt"]


class NodeSpec(ConnectorConfig):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$", title="Name",
                      description="the reading's name, e.g. oven_temp")
    node_id: str | None = Field(default=None, title="NodeId",
                                description="e.g. ns=2;s=Oven.Temperature (give this or a browse path)")
    browse_path: str | None = Field(
        default=None, title="Browse path",
        description="from the Objects folder, '/'-separated browse names, e.g. 2:Oven/2:Temperature; a name "
                    "without a namespace index uses the config's namespace_uri")
    unit: str | None = Field(default=None, max_length=20, title="Unit", description="engineering unit")
    writable: bool = Field(default=False, title="Writable", description="may the hub write it")

    @model_validator(mode="after")
    def _one_address(self) -> NodeSpec:
        if (self.node_id is None) == (self.browse_path is None):
            raise ValueError(f"node {self.name!r}: give exactly one of node_id or browse_path")
        if self.node_id is not None:
            try:
                ua.NodeId.from_string(self.node_id)
            except Exception as exc:
                raise ValueError(f"node {self.name!r}: node_id {self.node_id!r} is not a NodeId "
                                 "(e.g. ns=2;s=Oven.Temperature or ns=2;i=1001)") from exc
        return self


class OpcuaConfig(ConnectorConfig):
    url: str = Field(title="Endpoint URL", description="e.g. opc.tcp://10.0.3.20:4840/oven")
    timeout_s: float = Field(default=4.0, gt=0, le=120, title="Timeout (s)", description="per request")
    security_mode: SecurityMode = Field(default="None", title="Security mode",
                                        description="None, Sign or SignAndEncrypt (policy Basic256Sha256)")
    certificate: str | None = Field(default=None, title="Client certificate",
                                    description="path to the client's certificate (PEM or DER), for Sign modes")
    private_key: SecretStr | None = Field(default=None, title="Client private key",
                                          description="path to the client's private key (PEM), for Sign modes")
    server_certificate: str | None = Field(
        default=None, title="Server certificate",
        description="path to the server's certificate; when unset, the one the server presents is used")
    application_uri: str = Field(default="urn:tracehub:client", title="Application URI",
                                 description="must match the URI in the client certificate")
    username: str | None = Field(default=None, title="User name", description="for user/password sign-in")
    password: SecretStr | None = Field(default=None, title="Password", description="for user/password sign-in")
    namespace_uri: str | None = Field(default=None, title="Namespace URI",
                                      description="namespace of browse names given without an index")
    nodes: list[NodeSpec] = Field(default_factory=list, title="Nodes",
                                  description="the named readings this machine offers")

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith("opc.tcp://") or len(v) <= len("opc.tcp://"):
            raise ValueError("use an opc.tcp:// URL, e.g. opc.tcp://10.0.3.20:4840")
        return v

    @model_validator(mode="after")
    def _security(self) -> OpcuaConfig:
        if self.security_mode != "None" and not (self.certificate and self.private_key):
            raise ValueError(f"security mode {self.security_mode}: give certificate and private_key")
        names = [n.name for n in self.nodes]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"node names must be unique: {sorted(dup)} appear twice")
        return self


class OpcuaConnector(Connector):
    """A machine over OPC UA. NodeIds of browse paths are resolved once per connection."""

    kind = "opcua"
    title = "Machine over OPC UA"
    description = "Variables by NodeId or browse path: read, write, data-change subscriptions; None or Basic256Sha256"
    Config = OpcuaConfig
    config: OpcuaConfig

    def __init__(self, config: OpcuaConfig | dict[str, Any]) -> None:
        super().__init__(config)
        self._client: Client | None = None
        self._nodes: dict[str, Node] = {}
        self._specs = {n.name: (i, n) for i, n in enumerate(self.config.nodes)}

    async def open(self) -> None:
        c = self.config
        client = Client(c.url, timeout=c.timeout_s)
        client.application_uri = c.application_uri
        if c.username:
            client.set_user(c.username)
        if c.password:
            client.set_password(c.password.get_secret_value())
        if c.security_mode != "None":
            assert c.certificate and c.private_key
            for fld, path in (("certificate", c.certificate), ("private_key", c.private_key.get_secret_value()),
                              ("server_certificate", c.server_certificate)):
                if path is not None and not Path(path).is_file():
                    raise ConnectorConfigError(f"{fld}: no file at {path!r}", field=fld)
            await client.set_security(
                security_policies.SecurityPolicyBasic256Sha256, c.certificate, c.private_key.get_secret_value(),
                server_certificate=c.server_certificate, mode=getattr(ua.MessageSecurityMode, c.security_mode),
            )
        self._client = client
        await client.connect()

    async def close(self) -> None:
        client, self._client = self._client, None
        self._nodes.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await client.disconnect()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("use the connector as an async context manager")
        return self._client

    async def _node(self, name: str) -> Node:
        if name in self._nodes:
            return self._nodes[name]
        if name not in self._specs:
            raise ConnectorConfigError(f"OPC UA endpoint has no node named {name!r}; known: {sorted(self._specs)}",
                                       field="nodes")
        i, spec = self._specs[name]
        if spec.node_id is not None:
            node = self.client.get_node(spec.node_id)
            # a NodeId is only a name until the server confirms it exists
            await self._guard_node(node.read_browse_name(), i, "node_id", spec.node_id)
        else:
            assert spec.browse_path is not None
            path = await self._path(spec.browse_path)
            node = await self._guard_node(self.client.nodes.objects.get_child(path), i, "browse_path",
                                          spec.browse_path)
        self._nodes[name] = node
        return node

    async def _path(self, browse_path: str) -> list[str]:
        parts = [p for p in browse_path.strip("/").split("/") if p]
        if any(":" not in p for p in parts):
            if not self.config.namespace_uri:
                raise ConnectorConfigError("browse path names without a namespace index need namespace_uri",
                                           field="namespace_uri")
            ns = await self._guard(self.client.get_namespace_index(self.config.namespace_uri))
            parts = [p if ":" in p else f"{ns}:{p}" for p in parts]
        return parts

    async def _guard_node(self, awaitable: Any, i: int, fld: str, value: str) -> Any:
        try:
            return await self._guard(awaitable)
        except ConnectorConfigError as exc:
            raise ConnectorConfigError(f"nodes.{i}.{fld}: {value!r} is not in the server's address space "
                                       f"({exc.message})", field=f"nodes.{i}.{fld}") from None

    async def _check(self) -> str:
        state = await self._guard(self.client.get_node(ua.ObjectIds.Server_ServerStatus_State).read_value())
        for spec in self.config.nodes:
            await self._node(spec.name)
        try:
            state_name = ua.ServerState(state).name
        except ValueError:
            state_name = str(state)
        return (f"connected to {self.config.url} (security {self.config.security_mode}), server state "
                f"{state_name}; {len(self.config.nodes)} configured nodes found")

    async def discover(self) -> list[Point]:
        """The configured nodes, then the variables under the Objects folder (4 levels, 500 at most)."""
        points = []
        for spec in self.config.nodes:
            node = await self._node(spec.name)
            vtype = await self._guard(node.read_data_type_as_variant_type())
            points.append(Point(name=spec.name, kind="node", address=node.nodeid.to_string(),
                                data_type=vtype.name, unit=spec.unit, writable=spec.writable))
        seen = {p.address for p in points}
        stack: list[tuple[Node, str, int]] = [(self.client.nodes.objects, "", 0)]
        while stack and len(points) < 500:
            parent, prefix, depth = stack.pop()
            children = await self._guard(parent.get_children())
            for child in children:
                if child.nodeid.NamespaceIndex == 0:
                    continue  # the server's own diagnostics
                bname = await self._guard(child.read_browse_name())
                path = f"{prefix}/{bname.NamespaceIndex}:{bname.Name}".lstrip("/")
                cls = await self._guard(child.read_node_class())
                if cls == ua.NodeClass.Variable and child.nodeid.to_string() not in seen:
                    vtype = await self._guard(child.read_data_type_as_variant_type())
                    points.append(Point(name=path, kind="node", address=child.nodeid.to_string(),
                                        data_type=vtype.name, description=f"browse path {path}"))
                elif cls == ua.NodeClass.Object and depth < 4:
                    stack.append((child, path, depth + 1))
        return points

    async def read_many(self, names: list[str]) -> list[Reading]:
        nodes = [await self._node(n) for n in names]
        values = await self._guard(self.client.read_values(nodes))
        now = datetime.now(UTC)
        return [Reading(name=n, value=_scalar(v), unit=self._specs[n][1].unit, at=now,
                        address=node.nodeid.to_string()) for n, node, v in zip(names, nodes, values, strict=True)]

    async def read(self, resource: str, **params: Any) -> Reading:
        return (await self.read_many([resource]))[0]

    async def write(self, resource: str, data: Any) -> Reading:
        _i, spec = self._specs.get(resource, (None, None))
        if spec is None or not spec.writable:
            raise ConnectorConfigError(f"node {resource!r} is not a writable node of this endpoint: "
                                       "set writable true in its config", field="nodes")
        node = await self._node(resource)
        vtype = await self._guard(node.read_data_type_as_variant_type())
        try:
            await node.write_value(ua.DataValue(ua.Variant(data, vtype)))
        except UaStatusCodeError as exc:
            # on a write, "access denied" is the machine refusing this value or node, not bad credentials
            raise DeviceRejected(f"OPC UA server {self.config.url} refused writing {data!r} to {resource}: "
                                 f"{type(exc).__name__}") from exc
        except Exception as exc:
            raise self._translate(exc) from exc
        return await self.read(resource)

    async def subscribe(self, names: list[str], period_ms: float = 100.0) -> AsyncIterator[Reading]:
        """Data changes of the named nodes as Readings, until the caller stops iterating."""
        nodes = {}
        for n in names:
            nodes[(await self._node(n)).nodeid] = n
        queue: asyncio.Queue[Reading] = asyncio.Queue()
        specs = self._specs

        class _Handler:
            def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
                name = nodes.get(node.nodeid, node.nodeid.to_string())
                queue.put_nowait(Reading(name=name, value=_scalar(val), unit=specs[name][1].unit,
                                         address=node.nodeid.to_string()))

        sub = await self._guard(self.client.create_subscription(period_ms, _Handler()))
        try:
            await self._guard(sub.subscribe_data_change([self._nodes[n] for n in names]))
            while True:
                yield await queue.get()
        finally:
            with contextlib.suppress(Exception):
                await sub.delete()

    def _translate(self, exc: BaseException) -> ConnectorError:
        where = f"OPC UA server {self.config.url}"
        if isinstance(exc, UaStatusCodeError):
            name = type(exc).__name__
            if name in _UNKNOWN:
                return ConnectorConfigError(f"{where}: {name}: {exc}", field="nodes")
            if name in _REFUSED_CREDENTIALS:
                return ConnectorConfigError(f"{where} refused the client's identity or certificate ({name}): "
                                            "check security_mode, certificate, private_key, username and password",
                                            field="security_mode")
            if name in ("BadTimeout", "BadServerNotConnected", "BadConnectionClosed", "BadSecureChannelClosed",
                        "BadCommunicationError", "BadTooManySessions", "BadServerHalted"):
                return ConnectorUnavailable(f"{where}: {name}; will retry")
            return DeviceRejected(f"{where} refused: {name}: {exc}")
        if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError, ConnectionError)):
            return ConnectorUnavailable(f"{where} unreachable ({type(exc).__name__}: {exc}); will retry")
        if isinstance(exc, UaError):
            return ProtocolError(f"{where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, (ValueError, FileNotFoundError)):
            return ConnectorConfigError(f"{where}: {exc}", field="certificate")
        return ProtocolError(f"{where}: unexpected {type(exc).__name__}: {exc}")


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)
