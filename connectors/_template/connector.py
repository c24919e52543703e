"""TEMPLATE: a connector for <protocol>. Copy this package, rename `Template*`, fill in each TODO.

The contract (connectors/base.py): a pydantic Config (every field titled and described, secrets as
SecretStr), open/close, `_check`, `discover`, `read`/`read_many`, `write`, and ONE `_translate` that
maps the library's errors onto the taxonomy (connectors/errors.py). Never import the hub's other
packages: a connector depends on `connectors` only.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import Field, SecretStr

from connectors.base import Connector, ConnectorConfig, Point, Reading
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)


class TemplatePoint(ConnectorConfig):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$", title="Name",
                      description="the reading's name in the hub, e.g. line_speed")
    address: str = Field(min_length=1, title="Address", description="TODO: where the peer keeps it")
    unit: str | None = Field(default=None, max_length=20, title="Unit", description="engineering unit")


class TemplateConfig(ConnectorConfig):
    host: str = Field(min_length=1, title="Host", description="TODO: the peer's address")
    port: int = Field(default=1234, ge=1, le=65535, title="Port", description="TODO: the peer's port")
    password: SecretStr | None = Field(default=None, title="Password", description="TODO: if the peer needs one")
    timeout_s: float = Field(default=5.0, gt=0, le=120, title="Timeout (s)", description="per request")
    points: list[TemplatePoint] = Field(default_factory=list, title="Points", description="what the hub reads")


class TemplateConnector(Connector):
    kind = "template"  # TODO: the protocol's name; for an entry point, the entry point's name too
    title = "TODO: what it is, for a person"
    description = "TODO: one sentence"
    Config = TemplateConfig
    config: TemplateConfig

    def __init__(self, config: TemplateConfig | dict[str, Any]) -> None:
        super().__init__(config)
        self._points = {p.name: p for p in self.config.points}
        self._client: Any = None

    async def open(self) -> None:
        # TODO: connect. Library errors raised here go through _translate (in __aenter__).
        self._client = object()

    async def close(self) -> None:
        # TODO: close every socket and cancel every task this connector started; safe to call twice
        self._client = None

    async def _check(self) -> str:
        # TODO: a cheap request that proves the peer answers and the credentials are good
        readings = await self.read_many(list(self._points))
        return f"{self.config.host}:{self.config.port} answers; read {len(readings)} point(s)"

    async def discover(self) -> list[Point]:
        return [Point(name=p.name, kind="point", address=p.address, unit=p.unit) for p in self.config.points]

    async def read(self, resource: str, **params: Any) -> Reading:
        point = self._points.get(resource)
        if point is None:
            raise ConnectorConfigError(f"no point named {resource!r}; known: {sorted(self._points)}",
                                       field="points")
        value = await self._guard(self._read_raw(point.address))  # _guard: errors through _translate
        return Reading(name=point.name, value=value, unit=point.unit, address=point.address)

    async def _read_raw(self, address: str) -> float:
        raise NotImplementedError("TODO: ask the peer")

    async def write(self, resource: str, data: Any) -> Any:
        raise ConnectorConfigError("nothing is writable on this peer", field="points")

    def _translate(self, exc: BaseException) -> ConnectorError:
        # TODO: map the library's own exception classes; keep the peer's message in ours
        if isinstance(exc, PermissionError):
            return ConnectorConfigError("the peer refused the credentials: check password", field="password")
        if isinstance(exc, (OSError, asyncio.TimeoutError, TimeoutError)):
            return ConnectorUnavailable(f"{self.config.host}:{self.config.port} unreachable ({exc}); will retry")
        if isinstance(exc, ValueError):
            return DeviceRejected(f"the peer refused: {exc}")
        return ProtocolError(f"{type(exc).__name__}: {exc}")
