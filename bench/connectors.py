"""Connector overhead: reads per second through the connector against plain pymodbus / asyncua, in the
same run, against the same in-process peers (erp_sim.plant). Prints JSON lines:

    modbus_reads_per_s, modbus_raw_reads_per_s, modbus_connector_vs_raw_ratio  (target >= 0.8)
    opcua_reads_per_s,  opcua_raw_reads_per_s,  opcua_connector_vs_raw_ratio   (target >= 0.8)

A "read" is one named value: a float32 over two holding registers (Modbus), one Double variable (OPC UA).
Each figure is the best of ROUNDS rounds, connector and raw alternating, so drift hits both alike.

    .venv/bin/python bench/connectors.py [--modbus-reads 3000] [--opcua-reads 1500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from asyncua import Client
from pymodbus.client import AsyncModbusTcpClient

from connectors.modbus import ModbusConnector
from connectors.opcua import OpcuaConnector
from erp_sim.plant import OvenSim, PlcSim


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


async def rate(n: int, read: Callable[[], Awaitable[object]]) -> float:
    for _ in range(min(100, n)):  # warm-up
        await read()
    start = time.perf_counter()
    for _ in range(n):
        await read()
    return n / (time.perf_counter() - start)


async def best(rounds: int, n: int, connector: Callable[[], Awaitable[object]],
               raw: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    c, r = 0.0, 0.0
    for _ in range(rounds):
        c = max(c, await rate(n, connector))
        r = max(r, await rate(n, raw))
    return c, r


async def modbus(n: int, rounds: int) -> None:
    plc = await PlcSim().start()
    try:
        reg = plc.map["press_force"]
        raw_client = AsyncModbusTcpClient("127.0.0.1", port=plc.port, timeout=3, retries=0, reconnect_delay=0)
        await raw_client.connect()
        datatype = AsyncModbusTcpClient.DATATYPE.FLOAT32

        async def raw() -> float:
            rr = await raw_client.read_holding_registers(reg.address, count=2, device_id=plc.unit_id)
            if rr.isError():
                raise RuntimeError(rr)
            return raw_client.convert_from_registers(rr.registers, datatype)  # type: ignore[return-value]

        async with ModbusConnector(plc.endpoint_config()) as conn:
            async def via_connector() -> object:
                return await conn.read("press_force")

            c, r = await best(rounds, n, via_connector, raw)
        raw_client.close()
    finally:
        await plc.stop()
    emit("modbus_reads_per_s", c, "reads/s")
    emit("modbus_raw_reads_per_s", r, "reads/s")
    emit("modbus_connector_vs_raw_ratio", c / r, "ratio")


async def opcua(n: int, rounds: int) -> None:
    oven = await OvenSim().start()
    try:
        raw_client = Client(oven.url, timeout=4)
        await raw_client.connect()
        node = raw_client.get_node(f"ns={oven.ns};s=Furnace.Temperature")

        async def raw() -> object:
            return await node.read_value()

        async with OpcuaConnector(oven.endpoint_config()) as conn:
            async def via_connector() -> object:
                return await conn.read("oven_temp")

            c, r = await best(rounds, n, via_connector, raw)
        await raw_client.disconnect()
    finally:
        await oven.stop()
    emit("opcua_reads_per_s", c, "reads/s")
    emit("opcua_raw_reads_per_s", r, "reads/s")
    emit("opcua_connector_vs_raw_ratio", c / r, "ratio")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--modbus-reads", type=int, default=3000)
    ap.add_argument("--opcua-reads", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    await modbus(args.modbus_reads, args.rounds)
    await opcua(args.opcua_reads, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
