"""ModbusConnector against an in-process pymodbus server (erp_sim.plant.PlcSim)."""

from __future__ import annotations

from typing import Any

import pytest
from pymodbus.client.mixin import ModbusClientMixin

from connectors.errors import ConnectorConfigError, ConnectorUnavailable, DeviceRejected
from connectors.modbus import ModbusConnector, Register, decode, encode
from erp_sim.plant import PLC_MAP, SPINDLE_MAX_RPM, PlcSim
from tests.connectors.contract import ConnectorContract
from tests.connectors.peers import free_port


class TestModbusContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self) -> type[ModbusConnector]:
        return ModbusConnector

    @pytest.fixture
    def config(self, plc: PlcSim) -> dict[str, Any]:
        return plc.endpoint_config()

    @pytest.fixture
    def bad_config(self, plc: PlcSim) -> dict[str, Any]:
        cfg = plc.endpoint_config()
        cfg["registers"] = [*PLC_MAP, {"name": "ghost", "address": 4000, "data_type": "uint16"}]
        return cfg

    @pytest.fixture
    def unreachable_config(self, plc: PlcSim) -> dict[str, Any]:
        return plc.endpoint_config(port=free_port(), timeout_s=1)

    @pytest.fixture
    def rejection(self):
        async def write_out_of_range(conn: ModbusConnector) -> None:
            await conn.write("spindle_rpm", SPINDLE_MAX_RPM + 500)
        return write_out_of_range

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {r["name"] for r in PLC_MAP}

    @pytest.fixture
    async def peer_holds(self, plc: PlcSim) -> dict[str, Any]:
        values = {"spindle_rpm": 1432, "press_force": 37.25, "part_count": 123456789, "coolant_temp": -4.3,
                  "axis_offset": -1.5, "status_word": 0xBEEF, "feed_rate": 512.5, "oil_pressure": 6.78}
        for name, value in values.items():
            await plc.set(name, value)
        return values

    @pytest.fixture
    def peer_port(self, plc: PlcSim) -> int:
        return plc.port


async def test_bad_register_is_named_by_field(plc: PlcSim):
    cfg = plc.endpoint_config()
    cfg["registers"] = [*PLC_MAP, {"name": "ghost", "address": 4000}]
    result = await ModbusConnector(cfg).check()
    assert not result.ok and result.field == f"registers.{len(PLC_MAP)}.address"
    assert "ghost" in result.message and "illegal data address" in result.message


async def test_a_write_reaches_the_plc_and_reads_back(plc: PlcSim):
    async with ModbusConnector(plc.endpoint_config()) as conn:
        after = await conn.write("feed_rate", 275.75)
    assert after.value == pytest.approx(275.75)
    assert await plc.get("feed_rate") == pytest.approx(275.75)


async def test_modbus_exception_names_the_peer_and_code(plc: PlcSim):
    before = await plc.get("spindle_rpm")
    async with ModbusConnector(plc.endpoint_config()) as conn:
        with pytest.raises(DeviceRejected) as info:
            await conn.write("spindle_rpm", 9000)
    assert "exception 3 (illegal data value)" in info.value.message and str(plc.port) in info.value.message
    assert await plc.get("spindle_rpm") == before  # refused, not stored


async def test_unknown_point_and_read_only_write_are_config_errors(plc: PlcSim):
    async with ModbusConnector(plc.endpoint_config()) as conn:
        with pytest.raises(ConnectorConfigError) as info:
            await conn.read("nope")
        assert info.value.field == "registers"
        with pytest.raises(ConnectorConfigError):
            await conn.write("coolant_temp", 20)


async def test_a_dropped_connection_is_transient():
    sim = await PlcSim().start()
    conn = ModbusConnector(sim.endpoint_config(timeout_s=1, retries=0))
    try:
        async with conn:
            assert (await conn.read("spindle_rpm")).value == 1200
            await sim.stop()
            with pytest.raises(ConnectorUnavailable):
                await conn.read("spindle_rpm")
    finally:
        await sim.stop()


def test_config_errors_name_the_field():
    with pytest.raises(ConnectorConfigError) as info:
        ModbusConnector({"host": "10.0.0.1", "registers": [{"name": "x", "address": 70000}]})
    assert info.value.field == "registers.0.address"
    with pytest.raises(ConnectorConfigError) as info:
        ModbusConnector({"host": "10.0.0.1", "registers": [{"name": "x", "address": 1, "data_type": "float32",
                                                            "count": 1}]})
    assert "count 1 does not fit data type float32" in info.value.message
    with pytest.raises(ConnectorConfigError) as info:
        ModbusConnector({"host": "10.0.0.1", "registers": [{"name": "x", "address": 1}, {"name": "x", "address": 2}]})
    assert "unique" in info.value.message


@pytest.mark.parametrize("data_type", ["int16", "uint16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("word_order", ["big", "little"])
def test_decoding_agrees_with_pymodbus(data_type: str, word_order: str):
    dt = getattr(ModbusClientMixin.DATATYPE, data_type.upper())
    value = {"int16": -1234, "uint16": 54321, "int32": -123456789, "uint32": 3123456789, "float32": 1234.5}[data_type]
    regs = ModbusClientMixin.convert_to_registers(value, dt, word_order=word_order)
    reg = Register(name="x", address=0, data_type=data_type, word_order=word_order)
    assert decode(regs, reg) == pytest.approx(value)
    assert encode(value, reg) == regs


def test_byte_order_scale_and_offset():
    reg = Register(name="x", address=0, data_type="uint16", byte_order="little", scale=0.5, offset=-10)
    assert encode(100.0, reg) == [0xDC00]  # raw (100 + 10) / 0.5 = 220 = 0x00DC, bytes swapped
    assert decode(encode(100.0, reg), reg) == pytest.approx(100.0)
    assert decode([0x3412], Register(name="y", address=0, byte_order="little")) == 0x1234
