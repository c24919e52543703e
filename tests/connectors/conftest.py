"""Peers for the connector tests, each started once per session on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from erp_sim.plant import CertificateServiceSim, OvenSim, PlcSim, make_certificate
from tests.connectors.peers import MosquittoBroker, SicsScaleSim, ThreadedServer, other_erp_app


@pytest_asyncio.fixture(scope="session")
async def plc() -> AsyncIterator[PlcSim]:
    sim = await PlcSim().start()
    yield sim
    await sim.stop()


@pytest.fixture(scope="session")
def opcua_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("opcua-certs")


@pytest_asyncio.fixture(scope="session")
async def oven(opcua_certs: Path) -> AsyncIterator[OvenSim]:
    sim = await OvenSim(certificate_dir=opcua_certs).start()
    yield sim
    await sim.stop()


@pytest_asyncio.fixture(scope="session")
async def opcua_client_cert(opcua_certs: Path) -> tuple[str, str]:
    cert, key = await make_certificate(opcua_certs, "client", "urn:tracehub:client")
    return str(cert), str(key)


@pytest.fixture(scope="session")
def soap_peer() -> Iterator[CertificateServiceSim]:
    sim = CertificateServiceSim().start()
    yield sim
    sim.stop()


@pytest.fixture(scope="session")
def other_erp() -> Iterator[ThreadedServer]:
    server = ThreadedServer(other_erp_app()).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker() -> Iterator[MosquittoBroker]:
    b = MosquittoBroker().start()
    yield b
    b.stop()


@pytest_asyncio.fixture(scope="session")
async def scale() -> AsyncIterator[SicsScaleSim]:
    sim = await SicsScaleSim().start()
    yield sim
    await sim.stop()
