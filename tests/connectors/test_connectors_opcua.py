"""OpcuaConnector against an in-process asyncua server (erp_sim.plant.OvenSim), security None and
Basic256Sha256."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

import pytest

from connectors.errors import ConnectorConfigError, DeviceRejected
from connectors.opcua import OpcuaConnector
from erp_sim.plant import OvenSim, make_certificate
from tests.connectors.contract import ConnectorContract
from tests.connectors.peers import free_port


class TestOpcuaContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self) -> type[OpcuaConnector]:
        return OpcuaConnector

    @pytest.fixture
    def config(self, oven: OvenSim) -> dict[str, Any]:
        cfg = oven.endpoint_config()
        cfg["nodes"].append({"name": "temp_as_writable", "node_id": f"ns={oven.ns};s=Furnace.Temperature",
                             "writable": True})  # the hub may try; the machine says no
        return cfg

    @pytest.fixture
    def bad_config(self, oven: OvenSim) -> dict[str, Any]:
        cfg = oven.endpoint_config()
        cfg["nodes"][0]["node_id"] = f"ns={oven.ns};s=Furnace.NoSuchNode"
        return cfg

    @pytest.fixture
    def unreachable_config(self, oven: OvenSim) -> dict[str, Any]:
        return oven.endpoint_config(url=f"opc.tcp://127.0.0.1:{free_port()}/tracehub/oven", timeout_s=1)

    @pytest.fixture
    def rejection(self):
        async def write_read_only(conn: OpcuaConnector) -> None:
            await conn.write("temp_as_writable", 999.0)
        return write_read_only

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {"oven_temp", "oven_setpoint", "door_closed", "program"}

    @pytest.fixture
    async def peer_holds(self, oven: OvenSim) -> dict[str, Any]:
        values = {"Temperature": 861.25, "Setpoint": 870.0, "DoorClosed": False, "Program": "TEMPER-550"}
        for name, value in values.items():
            await oven.set(name, value)
        return {"oven_temp": 861.25, "oven_setpoint": 870.0, "door_closed": False, "program": "TEMPER-550"}

    @pytest.fixture
    def peer_port(self, oven: OvenSim) -> int:
        return oven.port


async def test_discover_browses_the_address_space(oven: OvenSim):
    cfg = oven.endpoint_config()
    cfg["nodes"] = cfg["nodes"][:1]
    async with OpcuaConnector(cfg) as conn:
        points = {p.name: p for p in await conn.discover()}
    assert points["oven_temp"].data_type == "Double" and points["oven_temp"].unit == "°C"
    # what is not configured yet is found by browsing, with the browse path an endpoint can use
    browsed = f"{oven.ns}:Furnace/{oven.ns}:DoorClosed"
    assert points[browsed].address == f"ns={oven.ns};s=Furnace.DoorClosed"
    assert points[browsed].data_type == "Boolean"
    assert f"{oven.ns}:Furnace/{oven.ns}:Temperature" not in points  # listed once, under its configured name


async def test_unknown_browse_path_fails_fast_naming_the_field(oven: OvenSim):
    cfg = oven.endpoint_config()
    cfg["nodes"][1]["browse_path"] = "Furnace/Setpont"
    result = await OpcuaConnector(cfg).check()
    assert not result.ok and result.field == "nodes.1.browse_path" and "Setpont" in result.message


def test_bad_node_id_and_url_fail_at_validation():
    with pytest.raises(ConnectorConfigError) as info:
        OpcuaConnector({"url": "opc.tcp://h:4840", "nodes": [{"name": "x", "node_id": "not a node id"}]})
    assert info.value.field == "nodes.0" and "not a NodeId" in info.value.message
    with pytest.raises(ConnectorConfigError) as info:
        OpcuaConnector({"url": "http://h:4840"})
    assert info.value.field == "url"
    with pytest.raises(ConnectorConfigError) as info:
        OpcuaConnector({"url": "opc.tcp://h:4840", "security_mode": "SignAndEncrypt"})
    assert "certificate and private_key" in info.value.message


async def test_write_reaches_the_machine(oven: OvenSim):
    async with OpcuaConnector(oven.endpoint_config()) as conn:
        after = await conn.write("oven_setpoint", 845.0)
        assert after.value == 845.0
        with pytest.raises(ConnectorConfigError):
            await conn.write("oven_temp", 1.0)  # not writable in the endpoint's config
    assert await oven.get("Setpoint") == 845.0


async def test_data_change_subscription_delivers_new_values(oven: OvenSim):
    async with OpcuaConnector(oven.endpoint_config()) as conn:
        changes = conn.subscribe(["oven_temp"], period_ms=50)
        first = await asyncio.wait_for(changes.__anext__(), 5)
        await oven.set("Temperature", first.value + 12.5)
        second = await asyncio.wait_for(changes.__anext__(), 5)
        await changes.aclose()
    assert second.name == "oven_temp" and second.value == pytest.approx(first.value + 12.5)


@pytest.mark.parametrize("mode", ["Sign", "SignAndEncrypt"])
async def test_basic256sha256_with_certificates(oven: OvenSim, opcua_client_cert: tuple[str, str], mode: str,
                                                opcua_certs: Path):
    cert, key = opcua_client_cert
    cfg = oven.endpoint_config(security_mode=mode, certificate=cert, private_key=key,
                               trusted_server_certificates=[str(opcua_certs / "server-cert.der")])
    result = await OpcuaConnector(cfg).check()
    assert result.ok, result.message
    assert f"security {mode}" in result.message
    await oven.set("Program", "SECURE-1")
    async with OpcuaConnector(cfg) as conn:
        assert (await conn.read("program")).value == "SECURE-1"


async def test_missing_certificate_file_names_the_field(oven: OvenSim, tmp_path):
    cfg = oven.endpoint_config(security_mode="SignAndEncrypt", certificate=str(tmp_path / "nope.der"),
                               private_key=str(tmp_path / "nope.pem"), trusted_server_certificates=[str(tmp_path)])
    result = await OpcuaConnector(cfg).check()
    assert not result.ok and result.field == "certificate"


async def test_rejected_write_keeps_the_value(oven: OvenSim):
    await oven.set("Temperature", 500.0)
    cfg = oven.endpoint_config()
    cfg["nodes"][0]["writable"] = True
    async with OpcuaConnector(cfg) as conn:
        with pytest.raises(DeviceRejected) as info:
            await conn.write("oven_temp", 20.0)
    assert "BadUserAccessDenied" in info.value.message
    assert await oven.get("Temperature") == 500.0


# --- the server's certificate must be trusted ---------------------------------------------------------------

async def test_an_untrusted_server_certificate_is_refused_with_a_clear_message(
        oven: OvenSim, opcua_client_cert: tuple[str, str], tmp_path: Path):
    cert, key = opcua_client_cert
    stranger, _ = await make_certificate(tmp_path / "other", "other-server", "urn:somewhere:else")
    cfg = oven.endpoint_config(security_mode="SignAndEncrypt", certificate=cert, private_key=key,
                               trusted_server_certificates=[str(stranger)])
    result = await OpcuaConnector(cfg).check()
    assert not result.ok and result.error == "ConnectorConfigError"
    assert result.field == "trusted_server_certificates"
    assert "does not trust" in result.message and "BadCertificateUntrusted" in result.message
    assert "SHA-256" in result.message and "urn:tracehub:demo:oven-server" in result.message
    with pytest.raises(ConnectorConfigError) as info:  # not ConnectorUnavailable: never retried
        async with OpcuaConnector(cfg) as conn:
            await conn.read("oven_temp")
    assert not info.value.retryable and info.value.field == "trusted_server_certificates"


async def test_a_directory_of_trusted_certificates(oven: OvenSim, opcua_client_cert: tuple[str, str],
                                                   opcua_certs: Path, tmp_path: Path):
    cert, key = opcua_client_cert
    trust = tmp_path / "trusted"
    await make_certificate(trust, "another-machine", "urn:another")
    shutil.copy(opcua_certs / "server-cert.der", trust / "oven.der")
    cfg = oven.endpoint_config(security_mode="Sign", certificate=cert, private_key=key,
                               trusted_server_certificates=[str(trust)])
    async with OpcuaConnector(cfg) as conn:
        assert (await conn.read("door_closed")).value in (True, False)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = await OpcuaConnector({**cfg, "trusted_server_certificates": [str(empty)]}).check()
    assert not result.ok and result.field == "trusted_server_certificates" and "no certificate" in result.message
    result = await OpcuaConnector({**cfg, "trusted_server_certificates": [str(tmp_path / "nope")]}).check()
    assert not result.ok and result.field == "trusted_server_certificates.0"


def test_security_without_a_trusted_server_is_a_config_error(opcua_client_cert: tuple[str, str]):
    cert, key = opcua_client_cert
    with pytest.raises(ConnectorConfigError) as info:
        OpcuaConnector({"url": "opc.tcp://h:4840", "security_mode": "Sign", "certificate": cert, "private_key": key})
    assert "trusted_server_certificates" in info.value.message
    schema = OpcuaConnector.config_schema()["properties"]["trusted_server_certificates"]
    assert schema["title"] and schema["description"]


async def test_a_pinned_server_certificate_counts_as_trusted(oven: OvenSim, opcua_client_cert: tuple[str, str],
                                                            opcua_certs: Path):
    cert, key = opcua_client_cert
    cfg = oven.endpoint_config(security_mode="SignAndEncrypt", certificate=cert, private_key=key,
                               server_certificate=str(opcua_certs / "server-cert.der"))
    result = await OpcuaConnector(cfg).check()
    assert result.ok, result.message
