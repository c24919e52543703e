"""PLCs over Modbus TCP (pymodbus): a register map turns registers into typed, named readings.

A Modbus exception response is a rejection (DeviceRejected), except the ones that say "not now" (5
acknowledge, 6 server device busy, 10 gateway path unavailable, 11 gateway target failed to respond):
those, a refused or dropped connection and a timeout are transient (ConnectorUnavailable).
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Literal

from pydantic import Field, model_validator
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ExceptionResponse

from connectors.base import Connector, ConnectorConfig, Point, Reading
from connectors.errors import (
    ConnectorConfigError,
    ConnectorError,
    ConnectorUnavailable,
    DeviceRejected,
    ProtocolError,
)

# Modbus exception codes (Modbus Application Protocol v1.1b3, section 7)
EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value", 4: "server device failure",
    5: "acknowledge", 6: "server device busy", 8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# exception codes that mean "not now", not "no": the same request succeeds later (the device finished a long
# command, is no longer busy, or the gateway reaches it again)
TRANSIENT_EXCEPTIONS = frozenset({5, 6, 10, 11})
MAX_REGISTERS_PER_READ = 125  # the protocol's limit for function codes 3 and 4


# Literals, not Enums: the JSON Schema then keeps each field's own title beside its choices
DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
Order = Literal["big", "little"]
Table = Literal["holding", "input"]

_FORMAT = {"int16": "h", "uint16": "H", "int32": "i", "uint32": "I", "float32": "f"}
_WIDTH = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}


class Register(ConnectorConfig):
    name: str = Field(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.-]+$", title="Name",
                      description="the reading's name, e.g. furnace_temp")
    address: int = Field(ge=0, le=65535, title="Address", description="first register, 0-based as on the wire")
    count: int | None = Field(default=None, ge=1, le=2, title="Count",
                              description="registers it spans; implied by the data type when left out")
    table: Table = Field(default="holding", title="Table",
                         description="holding registers (function 3) or input registers (function 4)")
    data_type: DataType = Field(default="uint16", title="Data type",
                                description="int16, uint16, int32, uint32 or float32")
    byte_order: Order = Field(default="big", title="Byte order",
                              description="order of the two bytes inside each register (big = Modbus standard)")
    word_order: Order = Field(default="big", title="Word order",
                              description="for 32-bit values: big = high word first, little = low word first")
    scale: float = Field(default=1.0, title="Scale", description="engineering value = raw * scale + offset")
    offset: float = Field(default=0.0, title="Offset", description="engineering value = raw * scale + offset")
    unit: str | None = Field(default=None, max_length=20, title="Unit", description="engineering unit, e.g. °C")
    writable: bool = Field(default=False, title="Writable", description="may the hub write it (holding only)")

    @model_validator(mode="after")
    def _consistent(self) -> Register:
        width = _WIDTH[self.data_type]
        if self.count is not None and self.count != width:
            raise ValueError(f"count {self.count} does not fit data type {self.data_type} ({width} register(s))")
        if self.writable and self.table == "input":
            raise ValueError("input registers are read-only: set writable false or table holding")
        return self

    @property
    def width(self) -> int:
        return _WIDTH[self.data_type]


class ModbusConfig(ConnectorConfig):
    host: str = Field(min_length=1, max_length=253, title="Host", description="PLC address, e.g. 10.0.3.15")
    port: int = Field(default=502, ge=1, le=65535, title="Port", description="Modbus TCP port")
    unit_id: int = Field(default=1, ge=0, le=255, title="Unit id", description="Modbus unit (device) id")
    timeout_s: float = Field(default=3.0, gt=0, le=60, title="Timeout (s)", description="per request")
    retries: int = Field(default=1, ge=0, le=5, title="Retries",
                         description="immediate retries inside one call; outages are retried by the workflow")
    registers: list[Register] = Field(default_factory=list, title="Register map",
                                      description="the named, typed readings this PLC offers")

    @model_validator(mode="after")
    def _unique(self) -> ModbusConfig:
        names = [r.name for r in self.registers]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"register names must be unique: {sorted(dup)} appear twice")
        return self


def decode(regs: list[int], r: Register) -> float | int:
    """Registers to the engineering value, honouring byte and word order, scale and offset."""
    words = list(regs)
    if r.word_order == "little":
        words.reverse()
    raw = b"".join(w.to_bytes(2, "big") for w in words)
    if r.byte_order == "little":
        raw = b"".join(raw[i:i + 2][::-1] for i in range(0, len(raw), 2))
    value = struct.unpack(">" + _FORMAT[r.data_type], raw)[0]
    if r.scale == 1.0 and r.offset == 0.0 and r.data_type != "float32":
        return int(value)
    return value * r.scale + r.offset


def encode(value: float, r: Register) -> list[int]:
    """The engineering value to registers (the inverse of `decode`)."""
    raw_value: float | int = (value - r.offset) / r.scale
    if r.data_type != "float32":
        raw_value = round(raw_value)
    try:
        raw = struct.pack(">" + _FORMAT[r.data_type], raw_value)
    except struct.error as exc:
        raise DeviceRejected(f"value {value} does not fit register {r.name} ({r.data_type}): {exc}") from exc
    if r.byte_order == "little":
        raw = b"".join(raw[i:i + 2][::-1] for i in range(0, len(raw), 2))
    words = [int.from_bytes(raw[i:i + 2], "big") for i in range(0, len(raw), 2)]
    if r.word_order == "little":
        words.reverse()
    return words


class ModbusConnector(Connector):
    """A PLC over Modbus TCP. `read_many` batches contiguous registers into as few requests as it can."""

    kind = "modbus"
    title = "PLC over Modbus TCP"
    description = "Holding and input registers decoded by a register map (type, byte and word order, scale, unit)"
    Config = ModbusConfig
    config: ModbusConfig

    def __init__(self, config: ModbusConfig | dict[str, Any]) -> None:
        super().__init__(config)
        self._client: AsyncModbusTcpClient | None = None
        self._by_name = {r.name: r for r in self.config.registers}
        self._plans: dict[tuple[str, ...], list[tuple[Table, int, int, list[Register]]]] = {}

    @property
    def where(self) -> str:
        return f"PLC {self.config.host}:{self.config.port} unit {self.config.unit_id}"

    async def open(self) -> None:
        c = self.config
        # reconnect_delay=0: no background reconnect task; an outage is the workflow's retry to make
        self._client = AsyncModbusTcpClient(c.host, port=c.port, timeout=c.timeout_s, retries=c.retries,
                                            reconnect_delay=0, reconnect_delay_max=0)
        if not await self._client.connect():
            raise ConnectorUnavailable(f"{self.where} refused or did not answer the connection: "
                                       "check that it is on and reachable; will retry")

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def client(self) -> AsyncModbusTcpClient:
        if self._client is None:
            raise RuntimeError("use the connector as an async context manager")
        return self._client

    async def _check(self) -> str:
        if not self.config.registers:
            # no map yet: any answer, even an exception response, proves a Modbus server is there
            rr = await self._guard(self.client.read_holding_registers(0, count=1, device_id=self.config.unit_id))
            return f"{self.where} answers ({'exception ' + str(rr.exception_code) if rr.isError() else 'ok'})"
        for i, r in enumerate(self.config.registers):
            try:
                await self._read_block(r.table, r.address, r.width)
            except DeviceRejected as exc:
                # the map names a register the PLC does not have: that is the config's fault
                raise ConnectorConfigError(f"registers.{i}.address: {r.name} at {r.table} {r.address} "
                                           f"is refused by the PLC ({exc.message})",
                                           field=f"registers.{i}.address") from None
        return f"{self.where} answers; all {len(self.config.registers)} registers of the map read"

    async def discover(self) -> list[Point]:
        return [Point(name=r.name, kind="register", address=f"{r.table}:{r.address}",
                      data_type=r.data_type, unit=r.unit, writable=r.writable,
                      description=f"{r.width} register(s), byte order {r.byte_order}, word order {r.word_order}"
                                  f", scale {r.scale}")
                for r in self.config.registers]

    def _register(self, name: str) -> Register:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConnectorConfigError(f"{self.where} has no register named {name!r} in its map; known: "
                                       f"{sorted(self._by_name)}", field="registers") from None

    def _plan(self, names: list[str]) -> list[tuple[Table, int, int, list[Register]]]:
        key = tuple(names)
        if key not in self._plans:
            regs = sorted((self._register(n) for n in names), key=lambda r: (r.table, r.address))
            blocks: list[tuple[Table, int, int, list[Register]]] = []
            for r in regs:
                if blocks:
                    table, start, count, members = blocks[-1]
                    end = r.address + r.width
                    if table == r.table and r.address <= start + count and end - start <= MAX_REGISTERS_PER_READ:
                        blocks[-1] = (table, start, max(count, end - start), [*members, r])
                        continue
                blocks.append((r.table, r.address, r.width, [r]))
            self._plans[key] = blocks
        return self._plans[key]

    async def _read_block(self, table: Table, address: int, count: int) -> list[int]:
        fn = self.client.read_holding_registers if table == "holding" else self.client.read_input_registers
        rr = await self._guard(fn(address, count=count, device_id=self.config.unit_id))
        if rr.isError():
            raise self._translate(rr)
        if len(rr.registers) != count:
            raise ProtocolError(f"{self.where} answered {len(rr.registers)} registers for {count} asked")
        return list(rr.registers)

    async def read_many(self, names: list[str]) -> list[Reading]:
        by_name: dict[str, Reading] = {}
        for table, start, count, members in self._plan(names):
            regs = await self._read_block(table, start, count)
            for r in members:
                i = r.address - start
                by_name[r.name] = Reading(name=r.name, value=decode(regs[i:i + r.width], r), unit=r.unit,
                                          address=f"{r.table}:{r.address}")
        return [by_name[n] for n in names]

    async def read(self, resource: str, **params: Any) -> Reading:
        return (await self.read_many([resource]))[0]

    async def write(self, resource: str, data: Any) -> Reading:
        r = self._register(resource)
        if not r.writable:
            raise ConnectorConfigError(f"register {r.name} is not writable in the map: set writable true",
                                       field="registers")
        words = encode(float(data), r)
        rr = await self._guard(self.client.write_registers(r.address, words, device_id=self.config.unit_id))
        if rr.isError():
            raise self._translate(rr)
        return await self.read(resource)

    def _translate(self, exc: BaseException | Any) -> ConnectorError:
        if isinstance(exc, ExceptionResponse):
            name = EXCEPTION_NAMES.get(exc.exception_code, "unknown exception")
            if exc.exception_code in TRANSIENT_EXCEPTIONS:
                return ConnectorUnavailable(f"{self.where} answered Modbus exception {exc.exception_code} ({name}) "
                                            f"to function {exc.function_code & 0x7F}: the device or gateway is not "
                                            "ready; will retry")
            return DeviceRejected(f"{self.where} answered Modbus exception {exc.exception_code} ({name}) to "
                                  f"function {exc.function_code & 0x7F}: check the register map's addresses")
        if isinstance(exc, (ConnectionException, ModbusIOException, OSError, asyncio.TimeoutError, TimeoutError)):
            return ConnectorUnavailable(f"{self.where} unreachable or the connection dropped "
                                        f"({type(exc).__name__}: {exc}); will retry")
        if isinstance(exc, ModbusException):
            return ProtocolError(f"{self.where}: {exc}")
        return ProtocolError(f"{self.where}: unexpected {type(exc).__name__}: {exc}")
