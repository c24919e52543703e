"""The connector contract every integration implements.

A connector is one kind of peer (an ERP over REST, a PLC over Modbus TCP, a machine over OPC UA ...).
Its pydantic `Config` is the shape of an endpoint row; every field has a title and a description, and
secrets are `SecretStr`. A connector is used as an async context manager:

    async with ModbusConnector(config) as plc:
        readings = await plc.read_many(["furnace_temp", "door_closed"])

`check()` never raises for an unreachable peer or bad credentials: it answers ok or a message a person
can act on. Every library error goes through the connector's one `_translate(exc)` onto the taxonomy in
`connectors.errors`; activities turn that into retry decisions in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from enum import Enum
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import to_jsonable_python

from connectors.errors import ConnectorConfigError, ConnectorError, ProtocolError

Scalar = float | int | bool | str


class ConnectorConfig(BaseModel):
    """Base of every connector's Config: unknown fields are refused, so a typo names itself."""

    model_config = ConfigDict(extra="forbid")


class CheckResult(BaseModel):
    ok: bool = Field(description="true when the peer answered as configured")
    message: str = Field(description="what was found, or what is wrong and what to do")
    error: str | None = Field(default=None, description="the error kind of the taxonomy, when not ok")
    field: str | None = Field(default=None, description="the config field at fault, when known")


class Point(BaseModel):
    """Something a connector offers: a register, a node, a resource, an operation or a topic."""

    name: str
    kind: str = Field(description="register | node | resource | operation | topic | ...")
    address: str | None = Field(default=None, description="where the peer keeps it (address, NodeId, path)")
    data_type: str | None = None
    unit: str | None = None
    writable: bool = False
    description: str = ""


class Reading(BaseModel):
    """One typed, named value read from a peer."""

    name: str
    value: Scalar | None
    unit: str | None = None
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    address: str | None = None


class Connector:
    """Base connector: use as `async with Kind(config) as c: await c.read(...)`."""

    kind: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type[ConnectorConfig]] = ConnectorConfig

    def __init__(self, config: ConnectorConfig | dict[str, Any]) -> None:
        self.config = config if isinstance(config, self.Config) else self.validate_config(config)
        self._opened = False

    # --- configuration ---------------------------------------------------------------------------

    @classmethod
    def validate_config(cls, data: Any) -> ConnectorConfig:
        """The Config from stored or posted data; a bad field raises ConnectorConfigError naming it."""
        try:
            return cls.Config.model_validate(data)
        except ValidationError as exc:
            problems = []
            for e in exc.errors():
                where = ".".join(str(p) for p in e["loc"]) or "config"
                problems.append((where, e["msg"]))
            detail = "; ".join(f"{w}: {m}" for w, m in problems)
            raise ConnectorConfigError(f"{cls.kind} endpoint config is invalid: {detail}",
                                       field=problems[0][0]) from None

    @classmethod
    def config_schema(cls) -> dict[str, Any]:
        """The JSON Schema of the Config (what `GET /api/connectors` shows an integrator)."""
        return cls.Config.model_json_schema()

    @staticmethod
    def stored_config(config: ConnectorConfig) -> dict[str, Any]:
        """The config as a JSON-able dict with secrets revealed: for the endpoint row only."""
        return _jsonable(config, reveal=True)

    @staticmethod
    def public_config(config: ConnectorConfig) -> dict[str, Any]:
        """The config as a JSON-able dict with every secret masked: what the API may show."""
        return _jsonable(config, reveal=False)

    # --- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self._guard(self.open())
        except BaseException:
            await self._close_quietly()
            raise
        self._opened = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._opened = False
        await self.close()

    async def open(self) -> None:
        """Connect (or prepare a client). Library errors are translated by `__aenter__`."""

    async def close(self) -> None:
        """Release every socket and task this connector holds; safe to call twice."""

    async def _close_quietly(self) -> None:
        # closing after a failed open must not hide the first error
        with contextlib.suppress(Exception):
            await self.close()

    # --- the contract ----------------------------------------------------------------------------

    async def check(self) -> CheckResult:
        """Ok, or a message a person can act on. Never raises for an unreachable peer or bad credentials.

        Works inside `async with` (uses the open connection) and on its own (opens and closes)."""
        opened_here = not self._opened
        try:
            if opened_here:
                await self.__aenter__()
            message = await self._guard(self._check())
        except ConnectorError as exc:
            return CheckResult(ok=False, message=exc.message, error=type(exc).__name__, field=exc.field)
        finally:
            if opened_here and self._opened:
                self._opened = False
                await self._close_quietly()
        return CheckResult(ok=True, message=message)

    async def _check(self) -> str:
        """Probe the peer; return what was found (raise a ConnectorError when it is not right)."""
        raise NotImplementedError

    async def discover(self) -> list[Point]:
        """The points, resources or operations the peer offers."""
        raise NotImplementedError

    async def read(self, resource: str, **params: Any) -> Any:
        raise NotImplementedError

    async def write(self, resource: str, data: Any) -> Any:
        raise NotImplementedError

    async def read_many(self, names: list[str]) -> list[Reading]:
        """Typed readings of named points (device connectors override this to batch)."""
        out = []
        for name in names:
            value = await self.read(name)
            out.append(value if isinstance(value, Reading) else Reading(name=name, value=value))
        return out

    def _translate(self, exc: BaseException) -> ConnectorError:
        """Map one library error onto the taxonomy. Every connector implements exactly one."""
        return ProtocolError(f"{self.kind}: unexpected {type(exc).__name__}: {exc}")

    async def _guard(self, awaitable: Any) -> Any:
        """Await a library call; anything but a ConnectorError goes through `_translate`."""
        try:
            return await awaitable
        except (ConnectorError, asyncio.CancelledError):
            raise
        except Exception as exc:
            raise self._translate(exc) from exc


def _jsonable(config: BaseModel, *, reveal: bool) -> dict[str, Any]:
    def walk(v: Any) -> Any:
        if isinstance(v, SecretStr):
            return v.get_secret_value() if reveal else "**********"
        if isinstance(v, BaseModel):
            return {k: walk(getattr(v, k)) for k in type(v).model_fields}
        if isinstance(v, dict):
            return {str(k): walk(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [walk(x) for x in v]
        if isinstance(v, Enum):
            return v.value
        if v is None or isinstance(v, str | int | float | bool):
            return v
        return to_jsonable_python(v)

    return walk(config)
