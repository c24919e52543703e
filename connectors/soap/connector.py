"""Supplier and legacy SOAP services (zeep): the WSDL is read once per process, operations are called
over an async httpx transport with timeouts, and a SOAP Fault is a rejection (DeviceRejected)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, ClassVar

import httpx
import zeep
import zeep.exceptions
from lxml.etree import XMLSyntaxError
from pydantic import AnyHttpUrl, Field, SecretStr
from zeep.helpers import serialize_object
from zeep.proxy import AsyncServiceProxy
from zeep.transports import AsyncTransport
from zeep.wsdl import Document

from connectors.base import Connector, ConnectorConfig, Point
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)
from connectors.soap.values import _plain, flatten  # noqa: F401 - flatten: kept importable here


class SoapConfig(ConnectorConfig):
    wsdl_url: AnyHttpUrl = Field(title="WSDL URL", description="e.g. https://supplier.example.com/certs?wsdl")
    timeout_s: float = Field(default=10.0, gt=0, le=300, title="Timeout (s)",
                             description="for reading the WSDL and for each operation")
    service: str | None = Field(default=None, title="Service", description="WSDL service name; default: the first")
    port: str | None = Field(default=None, title="Port", description="WSDL port name; default: the first")
    address: AnyHttpUrl | None = Field(
        default=None, title="Service address",
        description="call the operations here instead of at the address the WSDL gives (WSDLs often name "
                    "an internal host)")
    username: str | None = Field(default=None, title="User name", description="HTTP basic auth, if required")
    password: SecretStr | None = Field(default=None, title="Password", description="HTTP basic auth, if required")
    certificate_operation: str | None = Field(
        default=None, title="Certificate operation",
        description="for a material-certificate service: the operation that returns the certificate of a heat")
    heat_number_parameter: str = Field(default="heat_number", title="Heat number parameter",
                                       description="the certificate operation's parameter that takes the heat number")


# url -> parsed WSDL. Reading and parsing a WSDL is slow and synchronous: do it once per process.
_WSDL_CACHE: dict[str, Document] = {}
_WSDL_LOCK = threading.Lock()


def _load_document(url: str, timeout: float, auth: tuple[str, str] | None) -> Document:
    with _WSDL_LOCK:
        if url in _WSDL_CACHE:
            return _WSDL_CACHE[url]
        with httpx.Client(timeout=timeout, auth=auth) as wsdl_client:
            transport = AsyncTransport(client=_NO_ASYNC, wsdl_client=wsdl_client)
            doc = Document(url, transport, settings=zeep.Settings(strict=True))
        _WSDL_CACHE[url] = doc
        return doc


class _NoAsync:
    """Placeholder async client while only the WSDL is read (zeep's transport wants one)."""

    headers: ClassVar[dict[str, str]] = {}


_NO_ASYNC: Any = _NoAsync()


def clear_wsdl_cache() -> None:
    with _WSDL_LOCK:
        _WSDL_CACHE.clear()


class SoapConnector(Connector):
    """A SOAP service. `read(operation, **params)` calls it and answers plain dicts and lists."""

    kind = "soap"
    title = "SOAP service"
    description = "A supplier or legacy SOAP service (WSDL): e.g. the material-certificate service"
    Config = SoapConfig
    config: SoapConfig

    def __init__(self, config: SoapConfig | dict[str, Any]) -> None:
        super().__init__(config)
        self._http: httpx.AsyncClient | None = None
        self._client: zeep.AsyncClient | None = None
        self._service: Any = None

    @property
    def url(self) -> str:
        return str(self.config.wsdl_url)

    def _auth(self) -> tuple[str, str] | None:
        c = self.config
        if c.username and c.password:
            return (c.username, c.password.get_secret_value())
        return None

    async def open(self) -> None:
        c = self.config
        doc = await asyncio.to_thread(_load_document, self.url, c.timeout_s, self._auth())
        self._http = httpx.AsyncClient(timeout=c.timeout_s, auth=self._auth())
        transport = AsyncTransport(client=self._http, wsdl_client=_NO_ASYNC)
        self._client = zeep.AsyncClient(doc, transport=transport)
        try:
            self._service = (self._client.bind(c.service, c.port) if c.service or c.port
                             else self._client.service)
            if c.address is not None:
                # zeep's AsyncClient.create_service builds a synchronous proxy: build the async one
                self._service = AsyncServiceProxy(self._client, self._service._binding, address=str(c.address))
        except (ValueError, KeyError, zeep.exceptions.Error) as exc:
            raise ConnectorConfigError(f"WSDL at {self.url} has no service/port {c.service}/{c.port}: {exc}",
                                       field="service") from exc

    async def close(self) -> None:
        http, self._http = self._http, None
        self._client = None
        if http is not None:
            await http.aclose()

    def _operations(self) -> dict[str, Any]:
        assert self._client is not None
        ops: dict[str, Any] = {}
        for service in self._client.wsdl.services.values():
            if self.config.service and service.name != self.config.service:
                continue
            for port in service.ports.values():
                if self.config.port and port.name != self.config.port:
                    continue
                ops.update(port.binding._operations)  # zeep keeps them here; there is no public accessor
        return ops

    async def _check(self) -> str:
        ops = self._operations()
        if not ops:
            raise ConnectorConfigError(f"WSDL at {self.url} offers no operation", field="wsdl_url")
        op = self.config.certificate_operation
        if op is not None and op not in ops:
            raise ConnectorConfigError(f"certificate_operation: the service has no operation {op!r}; it offers "
                                       f"{sorted(ops)}", field="certificate_operation")
        return f"WSDL read from {self.url}: {len(ops)} operation(s): {', '.join(sorted(ops))}"

    async def discover(self) -> list[Point]:
        return [Point(name=name, kind="operation", address=self.url,
                      description=f"({op.input.signature()}) -> {op.output.signature()}")
                for name, op in sorted(self._operations().items())]

    async def read(self, resource: str, **params: Any) -> Any:
        """Call operation `resource` with `params`; the answer as plain dicts and lists."""
        if resource not in self._operations():
            raise ConnectorConfigError(f"the service at {self.url} has no operation {resource!r}; it offers "
                                       f"{sorted(self._operations())}", field="certificate_operation")
        result = await self._guard(getattr(self._service, resource)(**params))
        return _plain(serialize_object(result, dict))

    async def write(self, resource: str, data: Any) -> Any:
        """Operations that change something are called the same way."""
        return await self.read(resource, **(data or {}))

    async def certificate(self, heat_number: str) -> dict[str, Any]:
        """The material certificate for a heat number (the configured certificate operation)."""
        c = self.config
        if c.certificate_operation is None:
            raise ConnectorConfigError("this SOAP endpoint has no certificate_operation: set it (e.g. "
                                       "GetCertificate) to fetch material certificates", field="certificate_operation")
        result = await self.read(c.certificate_operation, **{c.heat_number_parameter: heat_number})
        if not isinstance(result, dict):
            raise ProtocolError(f"the certificate service answered {type(result).__name__}, not a certificate")
        return result

    def _translate(self, exc: BaseException) -> ConnectorError:
        where = f"SOAP service {self.url}"
        if isinstance(exc, zeep.exceptions.Fault):
            return DeviceRejected(f"{where} answered a SOAP Fault: {exc.code}: {exc.message}")
        if isinstance(exc, zeep.exceptions.TransportError):
            if exc.status_code in (401, 403):
                return ConnectorConfigError(f"{where} refused the credentials ({exc.status_code})", field="password")
            if exc.status_code == 404:
                return ConnectorConfigError(f"{where}: no WSDL there (404): check wsdl_url", field="wsdl_url")
            if exc.status_code == 429 or exc.status_code >= 500:
                return ConnectorUnavailable(f"{where} answered {exc.status_code}; will retry")
            return DeviceRejected(f"{where} answered {exc.status_code}: {exc.message}")
        if isinstance(exc, (httpx.TransportError, OSError, asyncio.TimeoutError, TimeoutError)):
            return ConnectorUnavailable(f"{where} unreachable ({type(exc).__name__}: {exc}); will retry")
        if isinstance(exc, TypeError):  # zeep: a parameter the operation does not take
            return ConnectorConfigError(f"{where}: {exc}", field="heat_number_parameter")
        if isinstance(exc, (XMLSyntaxError, zeep.exceptions.XMLSyntaxError, zeep.exceptions.XMLParseError)):
            return ProtocolError(f"{where} answered something that is not SOAP XML: {exc}")
        return ProtocolError(f"{where}: {type(exc).__name__}: {exc}")
