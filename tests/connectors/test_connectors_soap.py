"""SoapConnector (zeep) against a real SOAP service served by spyne (erp_sim.plant.CertificateServiceSim)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from connectors.errors import ConnectorConfigError, ConnectorUnavailable, DeviceRejected
from connectors.soap import SoapConnector, clear_wsdl_cache, flatten
from connectors.soap import connector as soap_module
from erp_sim.plant import CertificateServiceSim
from tests.connectors.contract import ConnectorContract
from tests.connectors.peers import free_port

CERT = {
    "certificate_no": "3.1-4711", "supplier": "ACME-STEEL", "grade": "42CrMo4", "issued": "2026-10-01",
    "chemistry": {"C": 0.41, "Mn": 0.72, "Cr": 1.02, "Mo": 0.21},
    "mechanical": {"tensile_mpa": 1010.0, "yield_mpa": 815.0, "elongation_pct": 13.5, "hardness_hb": 298.0},
}


class TestSoapContract(ConnectorContract):
    @pytest.fixture
    def connector_cls(self) -> type[SoapConnector]:
        return SoapConnector

    @pytest.fixture
    def config(self, soap_peer: CertificateServiceSim) -> dict[str, Any]:
        return soap_peer.endpoint_config(certificate_operation="GetCertificate")

    @pytest.fixture
    def bad_config(self, soap_peer: CertificateServiceSim) -> dict[str, Any]:
        return soap_peer.endpoint_config(certificate_operation="GetCertficate")

    @pytest.fixture
    def unreachable_config(self) -> dict[str, Any]:
        return {"wsdl_url": f"http://127.0.0.1:{free_port()}/?wsdl", "timeout_s": 1}

    @pytest.fixture
    def rejection(self):
        async def unknown_heat(conn: SoapConnector) -> None:
            await conn.certificate("HNONE-404")
        return unknown_heat

    @pytest.fixture
    def expected_points(self) -> set[str]:
        return {"GetCertificate"}

    @pytest.fixture
    def peer_holds(self, soap_peer: CertificateServiceSim) -> dict[str, Any]:
        soap_peer.certificates["H4711"] = CERT
        soap_peer.certificates["H4712"] = {**CERT, "certificate_no": "3.1-4712", "grade": "42CrMo4+QT"}
        return {"H4711": CERT, "H4712": soap_peer.certificates["H4712"]}

    @pytest.fixture
    def peer_port(self, soap_peer: CertificateServiceSim) -> int:
        return soap_peer.port

    async def read_values(self, conn: SoapConnector, names: list[str]) -> dict[str, Any]:
        return {heat: await conn.certificate(heat) for heat in names}

    def assert_same(self, got: dict[str, Any], expected: dict[str, Any]) -> None:
        for heat, cert in expected.items():
            flat = flatten(got[heat])
            assert flat["heat_number"] == heat
            for key in ("certificate_no", "supplier", "grade", "issued"):
                assert flat[key] == cert[key]
            for symbol, percent in cert["chemistry"].items():
                assert flat[f"chemistry.{symbol}"] == pytest.approx(percent)
            for prop, value in cert["mechanical"].items():
                assert flat[f"mechanical.{prop}"] == pytest.approx(value)


async def test_soap_fault_becomes_a_rejection_with_the_peer_message(soap_peer: CertificateServiceSim):
    async with SoapConnector(soap_peer.endpoint_config(certificate_operation="GetCertificate")) as conn:
        with pytest.raises(DeviceRejected) as info:
            await conn.certificate("HNONE-77")
    assert "SOAP Fault" in info.value.message and "no certificate on file for heat HNONE-77" in info.value.message


async def test_wsdl_is_read_once_per_process(soap_peer: CertificateServiceSim, monkeypatch: pytest.MonkeyPatch):
    clear_wsdl_cache()
    loads = []
    real = soap_module.Document

    def counting(*args: Any, **kw: Any) -> Any:
        loads.append(args[0])
        return real(*args, **kw)

    monkeypatch.setattr(soap_module, "Document", counting)
    cfg = soap_peer.endpoint_config(certificate_operation="GetCertificate")
    for _ in range(3):
        async with SoapConnector(cfg) as conn:
            await conn.certificate("H1")
    assert loads == [soap_peer.wsdl_url]


async def test_a_wrong_parameter_name_is_a_config_error(soap_peer: CertificateServiceSim):
    cfg = soap_peer.endpoint_config(certificate_operation="GetCertificate", heat_number_parameter="heat")
    async with SoapConnector(cfg) as conn:
        with pytest.raises(ConnectorConfigError) as info:
            await conn.certificate("H1")
    assert info.value.field == "heat_number_parameter"


async def test_operation_timeout_is_transient(soap_peer: CertificateServiceSim):
    """A service that accepts the connection but does not answer in time: the call is retried later."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    port = silent.getsockname()[1]
    try:
        cfg = soap_peer.endpoint_config(certificate_operation="GetCertificate", timeout_s=0.5,
                                        address=f"http://127.0.0.1:{port}/")
        started = time.monotonic()
        async with SoapConnector(cfg) as conn:
            with pytest.raises(ConnectorUnavailable) as info:
                await conn.certificate("H1")
        assert time.monotonic() - started < 5
        assert "ReadTimeout" in info.value.message
    finally:
        silent.close()


def test_flatten_keys_lists_of_named_values():
    doc = {"grade": "S355", "chemistry": {"Element": [{"symbol": "C", "percent": 0.2}, {"symbol": "Mn", "percent": 1.4}]},
           "tests": [{"a": 1}, {"a": 2}]}
    assert flatten(doc) == {"grade": "S355", "chemistry.C": 0.2, "chemistry.Mn": 1.4, "tests.0.a": 1, "tests.1.a": 2}
