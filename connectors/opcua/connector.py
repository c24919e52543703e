"""Machines over OPC UA (asyncua): nodes by NodeId or browse path, read, write and data-change
subscriptions; security mode None, or Basic256Sha256 (Sign / SignAndEncrypt) with certificates.

With Sign or SignAndEncrypt the hub talks only to a server whose certificate it trusts: the certificate
is the one in `trusted_server_certificates` (files or directories of PEM/DER certificates), or was issued
by a CA there, is within its validity and not revoked by a CRL in `server_certificate_crls`. asyncua checks
it with its CertificateValidator and TrustStore when the session is created, before the hub signs in or
sends anything but its own certificate. An untrusted server is a configuration error (not retried): the
message names the certificate (subject and SHA-256 fingerprint) and the field to add it to."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from asyncua import Client, Node, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.uacrypto import load_certificate
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import hashes
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
# the server or its device cannot answer now; the same request succeeds later: retried, never a rejection
_TRANSIENT = {"BadTimeout", "BadServerNotConnected", "BadConnectionClosed", "BadSecureChannelClosed",
              "BadCommunicationError", "BadTooManySessions", "BadServerHalted", "BadNotConnected",
              "BadNoCommunication", "BadWaitingForInitialData", "BadServerTooBusy", "BadResourceUnavailable",
              "BadSessionIdInvalid", "BadSessionClosed", "BadShutdown", "BadRequestTimeout"}


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
        description="path to the server's certificate, pinned: the server must present exactly this one (it "
                    "counts as trusted); when unset, the one the server presents is used if it is trusted")
    trusted_server_certificates: list[str] = Field(
        default_factory=list, title="Trusted server certificates",
        description="for Sign and SignAndEncrypt: paths of certificates (PEM or DER) or of directories holding "
                    "them; a server is trusted when its certificate, or the CA that issued it, is among them. "
                    "Required with security unless server_certificate pins the server's")
    server_certificate_crls: list[str] = Field(
        default_factory=list, title="Certificate revocation lists",
        description="paths of CRLs (PEM or DER) or of directories holding them: a server certificate they "
                    "revoke is not trusted")
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
        if self.security_mode != "None" and not (self.trusted_server_certificates or self.server_certificate):
            raise ValueError(f"trusted_server_certificates: security mode {self.security_mode} talks only to a "
                             "trusted server: give the server's certificate (or its CA's), or pin it with "
                             "server_certificate")
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
        self._untrusted: str | None = None  # why the server's certificate was not trusted, when it was not

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
            client.certificate_validator = await self._validator()
            await client.set_security(
                security_policies.SecurityPolicyBasic256Sha256, c.certificate, c.private_key.get_secret_value(),
                server_certificate=c.server_certificate, mode=getattr(ua.MessageSecurityMode, c.security_mode),
            )
        self._client = client
        self._untrusted = None
        try:
            await client.connect()
        except Exception as exc:
            if self._untrusted is not None:
                raise ConnectorConfigError(self._untrusted, field="trusted_server_certificates") from exc
            if isinstance(exc, UaError) and "certificate mismatch" in str(exc).lower():
                raise ConnectorConfigError(
                    f"OPC UA server {c.url} presented another certificate than the pinned server_certificate "
                    f"{c.server_certificate!r}: check which server answers, or update the pinned file",
                    field="server_certificate") from exc
            raise

    async def _validator(self) -> Any:
        """asyncua's CertificateValidator over a TrustStore of the configured certificates (and the pinned
        one), wrapped so an untrusted server is told apart from a server refusing the hub's certificate."""
        c = self.config
        locations = [Path(p) for p in c.trusted_server_certificates]
        if c.server_certificate:
            locations.append(Path(c.server_certificate))
        for fld, paths in (("trusted_server_certificates", c.trusted_server_certificates),
                           ("server_certificate_crls", c.server_certificate_crls)):
            for i, p in enumerate(paths):
                if not Path(p).exists():
                    raise ConnectorConfigError(f"{fld}.{i}: no file or directory at {p!r}", field=f"{fld}.{i}")
        store = _TrustStore(locations, [Path(p) for p in c.server_certificate_crls])
        try:
            await store.load()
        except (ValueError, OSError) as exc:
            if not store.count:  # x509 refuses an empty store
                raise ConnectorConfigError("trusted_server_certificates: no certificate (*.der, *.pem) found in "
                                           f"{c.trusted_server_certificates}",
                                           field="trusted_server_certificates") from exc
            raise ConnectorConfigError(f"trusted_server_certificates: a file there is not a certificate or CRL "
                                       f"(PEM or DER): {exc}", field="trusted_server_certificates") from exc
        if not store.count:
            raise ConnectorConfigError("trusted_server_certificates: no certificate (*.der, *.pem) found in "
                                       f"{c.trusted_server_certificates}", field="trusted_server_certificates")
        options = (CertificateValidatorOptions.TIME_RANGE | CertificateValidatorOptions.TRUSTED
                   | CertificateValidatorOptions.REVOKED | CertificateValidatorOptions.PEER_SERVER)
        validator = CertificateValidator(options, store)

        async def validate(cert: x509.Certificate, app: ua.ApplicationDescription) -> None:
            try:
                await validator.validate(cert, app)
            except ServiceError as exc:
                status = ua.StatusCode(exc.code).name
                fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
                self._untrusted = (
                    f"OPC UA server {c.url} presented a certificate the hub does not trust ({status}): subject "
                    f"{cert.subject.rfc4514_string()}, SHA-256 {fingerprint}, valid until "
                    f"{cert.not_valid_after_utc:%Y-%m-%d}. If it is the machine's, add the certificate (or its "
                    "CA's) to trusted_server_certificates")
                raise

        return validate

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
        results = await self._guard(self.client.read_attributes(nodes, ua.AttributeIds.Value))
        now = datetime.now(UTC)
        for dv in results:
            # a value of bad quality (no communication with the device, no value yet) is not a reading: its status
            # code is the error (transient ones are retried), never a None stored as if it were read
            if dv.StatusCode is not None and dv.StatusCode.is_bad():
                try:
                    dv.StatusCode.check()  # raises the UaStatusCodeError named after the code
                except UaStatusCodeError as exc:
                    raise self._translate(exc) from exc
        return [Reading(name=n, value=_scalar(dv.Value.Value if dv.Value is not None else None),
                        unit=self._specs[n][1].unit, at=now, address=node.nodeid.to_string())
                for n, node, dv in zip(names, nodes, results, strict=True)]

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
            if type(exc).__name__ in _TRANSIENT:
                raise self._translate(exc) from exc
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
            if name in _TRANSIENT:
                return ConnectorUnavailable(f"{where}: {name}; will retry")
            return DeviceRejected(f"{where} refused: {name}: {exc}")
        if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError, ConnectionError)):
            return ConnectorUnavailable(f"{where} unreachable ({type(exc).__name__}: {exc}); will retry")
        if isinstance(exc, UaError):
            return ProtocolError(f"{where}: {type(exc).__name__}: {exc}")
        if isinstance(exc, (ValueError, FileNotFoundError)):
            return ConnectorConfigError(f"{where}: {exc}", field="certificate")
        return ProtocolError(f"{where}: unexpected {type(exc).__name__}: {exc}")


class _TrustStore(TrustStore):
    """asyncua's TrustStore, taking single certificate files as well as directories."""

    count = 0

    async def _load_trust_location(self, location: Path) -> list[x509.Certificate]:
        if location.is_file():
            certs = [await load_certificate(location)]
        else:  # a PKI directory may hold the private keys beside the certificates: those are not trust
            certs = []
            for f in sorted(location.iterdir()):
                if f.suffix.lower() in (".der", ".pem", ".crt", ".cer") and b"PRIVATE KEY" not in f.read_bytes():
                    certs.append(await load_certificate(f))
        self.count += len(certs)
        return certs

    async def _load_crl_location(self, location: Path) -> list[x509.RevokedCertificate]:
        if location.is_file():
            return list(await self._load_crl(location))
        return await super()._load_crl_location(location)


def _scalar(v: Any) -> Any:
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if isinstance(v, datetime):
        return v.isoformat()
    return str(v)
