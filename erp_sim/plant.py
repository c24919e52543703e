"""Real peers on loopback for the demo plant and the tests: a PLC (pymodbus server), an oven (asyncua
server) and a supplier's material-certificate service (spyne SOAP). Each binds port 0 unless told
otherwise and says which port it got; `drift()` makes the values move like a running machine's."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import random
import threading
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from connectors.modbus import Register, decode, encode

# --- PLC over Modbus TCP -----------------------------------------------------------------------------

PLC_MAP: list[dict[str, Any]] = [
    {"name": "spindle_rpm", "address": 0, "data_type": "uint16", "unit": "rpm", "writable": True},
    {"name": "press_force", "address": 1, "data_type": "float32", "unit": "kN"},
    {"name": "part_count", "address": 3, "data_type": "uint32", "word_order": "little", "unit": "pcs"},
    {"name": "coolant_temp", "address": 5, "data_type": "int16", "scale": 0.1, "unit": "°C"},
    {"name": "axis_offset", "address": 6, "data_type": "int32", "scale": 0.001, "unit": "mm"},
    {"name": "status_word", "address": 8, "data_type": "uint16", "byte_order": "little"},
    {"name": "feed_rate", "address": 9, "data_type": "float32", "word_order": "little", "unit": "mm/min",
     "writable": True},
    {"name": "oil_pressure", "address": 100, "table": "input", "data_type": "uint16", "scale": 0.01,
     "unit": "bar"},
]
PLC_INITIAL = {"spindle_rpm": 1200, "press_force": 42.5, "part_count": 70000, "coolant_temp": 21.5,
               "axis_offset": -0.125, "status_word": 0x0102, "feed_rate": 350.0, "oil_pressure": 5.2}
PLC_REGISTERS = 120  # addresses 0..119 exist; anything beyond answers "illegal data address"
SPINDLE_MAX_RPM = 3000  # the PLC refuses a spindle setpoint above this with "illegal data value"


class PlcSim:
    """A pymodbus TCP server holding PLC_MAP's values (unit 1)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, unit_id: int = 1) -> None:
        self.host, self.requested_port, self.unit_id = host, port, unit_id
        self.port = 0
        self.map = {r["name"]: Register.model_validate(r) for r in PLC_MAP}
        self._server: Any = None
        self._drift: asyncio.Task[None] | None = None
        # a Modbus exception code every request is answered with (a busy PLC, an unreachable gateway target)
        self.answer_exception: int | None = None

    async def start(self) -> PlcSim:
        from pymodbus.constants import ExcCodes
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        spindle = self.map["spindle_rpm"].address

        async def range_check(function_code: int, start: int, address: int, count: int,
                              registers: list[int], values: Any) -> ExcCodes | None:
            if self.answer_exception is not None:
                return ExcCodes(self.answer_exception)
            # like a PLC's interlock: a write of an out-of-range setpoint is refused, not stored
            if (values and function_code in (6, 16) and address <= spindle < address + count
                    and values[spindle - address] > SPINDLE_MAX_RPM):
                return ExcCodes.ILLEGAL_VALUE
            return None

        logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
        device = SimDevice(id=self.unit_id, action=range_check,
                           simdata=[SimData(0, count=PLC_REGISTERS, values=0, datatype=DataType.REGISTERS)])
        self._server = ModbusTcpServer(device, address=(self.host, self.requested_port))
        await self._server.serve_forever(background=True)
        self.port = self._server.transport.sockets[0].getsockname()[1]
        for name, value in PLC_INITIAL.items():
            await self.set(name, value)
        return self

    async def stop(self) -> None:
        if self._drift:
            self._drift.cancel()
            self._drift = None
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def set(self, name: str, value: float) -> None:
        r = self.map[name]
        await self._server.async_setValues(self.unit_id, 16, r.address, encode(value, r))

    async def get(self, name: str) -> float | int:
        r = self.map[name]
        return decode(await self._server.async_getValues(self.unit_id, 3, r.address, r.width), r)

    def endpoint_config(self, **extra: Any) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "unit_id": self.unit_id, "timeout_s": 2, "registers": PLC_MAP,
                **extra}

    def drift(self, every_s: float = 1.0, seed: int | None = None) -> None:
        rng = random.Random(seed)

        async def run() -> None:
            while True:
                await asyncio.sleep(every_s)
                await self.set("spindle_rpm", 1200 + rng.randint(-15, 15))
                await self.set("press_force", round(42.5 + rng.uniform(-1.5, 1.5), 2))
                await self.set("part_count", int(await self.get("part_count")) + 1)
                await self.set("coolant_temp", round(21.5 + rng.uniform(-0.8, 0.8), 1))

        self._drift = asyncio.create_task(run())


# --- Oven over OPC UA ------------------------------------------------------------------------------

OVEN_NS = "urn:tracehub:demo:oven"


class OvenSim:
    """An asyncua server with a furnace object: Temperature (drifts toward Setpoint), Setpoint (writable),
    DoorClosed, Program. With `certificate_dir`, it also offers Basic256Sha256 SignAndEncrypt."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, certificate_dir: Path | None = None) -> None:
        self.host, self.requested_port, self.certificate_dir = host, port, certificate_dir
        self.port = 0
        self.server: Any = None
        self.nodes: dict[str, Any] = {}
        self._held: dict[str, Any] = {}  # values of nodes set to a bad status (set_quality)
        self.ns = 0
        self._drift: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"opc.tcp://{self.host}:{self.port}/tracehub/oven"

    async def start(self) -> OvenSim:
        from asyncua import Server, ua

        for name in ("asyncua", "asyncua.server", "asyncua.common"):
            logging.getLogger(name).setLevel(logging.ERROR)
        server = Server()
        await server.init()
        server.set_endpoint(f"opc.tcp://{self.host}:{self.requested_port}/tracehub/oven")
        server.set_server_name("TraceHub demo oven")
        policies = [ua.SecurityPolicyType.NoSecurity]
        if self.certificate_dir is not None:
            cert, key = await make_certificate(self.certificate_dir, "server", "urn:tracehub:demo:oven-server")
            await server.load_certificate(str(cert))
            await server.load_private_key(str(key))
            policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
            policies.append(ua.SecurityPolicyType.Basic256Sha256_Sign)
        server.set_security_policy(policies)
        self.ns = await server.register_namespace(OVEN_NS)
        furnace = await server.nodes.objects.add_object(ua.NodeId("Furnace", self.ns), f"{self.ns}:Furnace")
        for name, value, writable in (("Temperature", 855.0, False), ("Setpoint", 860.0, True),
                                      ("DoorClosed", True, False), ("Program", "HARDEN-860", True)):
            node = await furnace.add_variable(ua.NodeId(f"Furnace.{name}", self.ns), f"{self.ns}:{name}", value)
            if writable:
                await node.set_writable()
            self.nodes[name] = node
        await server.start()
        self.server = server
        self.port = server.bserver.port
        return self

    async def stop(self) -> None:
        if self._drift:
            self._drift.cancel()
            self._drift = None
        if self.server is not None:
            await self.server.stop()
            self.server = None

    async def set(self, name: str, value: Any) -> None:
        await self.nodes[name].write_value(value)

    async def get(self, name: str) -> Any:
        return await self.nodes[name].read_value()

    async def set_quality(self, name: str, status: str = "Good") -> None:
        """Give a node's value an OPC UA status code, as a server does when it loses its device (for example
        BadNoCommunication or BadWaitingForInitialData); "Good" gives it its value back."""
        from asyncua import ua

        node = self.nodes[name]
        if status == "Good":
            held = self._held.pop(name, None)
            if held is not None:
                await self.server.write_attribute_value(node.nodeid, ua.DataValue(held))
            return
        if name not in self._held:  # a server hides the value while its status is bad: keep it to give back
            self._held[name] = (await node.read_data_value()).Value
        await self.server.write_attribute_value(
            node.nodeid, ua.DataValue(self._held[name], StatusCode=ua.StatusCode(getattr(ua.StatusCodes, status))))

    def endpoint_config(self, **extra: Any) -> dict[str, Any]:
        return {"url": self.url, "timeout_s": 3, "namespace_uri": OVEN_NS, "nodes": [
            {"name": "oven_temp", "node_id": f"ns={self.ns};s=Furnace.Temperature", "unit": "°C"},
            {"name": "oven_setpoint", "browse_path": "Furnace/Setpoint", "unit": "°C", "writable": True},
            {"name": "door_closed", "browse_path": f"{self.ns}:Furnace/{self.ns}:DoorClosed"},
            {"name": "program", "node_id": f"ns={self.ns};s=Furnace.Program", "writable": True},
        ], **extra}

    def drift(self, every_s: float = 0.5, seed: int | None = None) -> None:
        rng = random.Random(seed)

        async def run() -> None:
            while True:
                await asyncio.sleep(every_s)
                t, sp = await self.get("Temperature"), await self.get("Setpoint")
                await self.set("Temperature", round(t + (sp - t) * 0.2 + rng.uniform(-2.0, 2.0), 2))

        self._drift = asyncio.create_task(run())


async def make_certificate(directory: Path, name: str, app_uri: str) -> tuple[Path, Path]:
    """A self-signed application certificate (DER) and key (PEM) as OPC UA wants them (OPC 10000-6 6.2.2)."""
    import socket

    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}-cert.der", directory / f"{name}-key.pem"
    await setup_self_signed_certificate(
        key, cert, app_uri, socket.gethostname(),
        [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH], {"organizationName": "TraceHub demo"})
    return cert, key


# --- Supplier material-certificate service over SOAP ------------------------------------------------

CERT_NS = "urn:tracehub:demo:certificates"


def _spyne_app(certificates: dict[str, dict[str, Any]]) -> Any:
    from spyne import Application, Array, ComplexModel, Fault, Float, Unicode, rpc
    from spyne.protocol.soap import Soap11
    from spyne.service import ServiceBase

    class Element(ComplexModel):
        __namespace__ = CERT_NS
        symbol = Unicode
        percent = Float

    class Mechanical(ComplexModel):
        __namespace__ = CERT_NS
        tensile_mpa = Float
        yield_mpa = Float
        elongation_pct = Float
        hardness_hb = Float

    class Certificate(ComplexModel):
        __namespace__ = CERT_NS
        certificate_no = Unicode
        heat_number = Unicode
        supplier = Unicode
        grade = Unicode
        standard = Unicode
        issued = Unicode
        chemistry = Array(Element)
        mechanical = Mechanical

    class MaterialCertificateService(ServiceBase):
        @rpc(Unicode, _returns=Certificate)
        def GetCertificate(ctx, heat_number):
            cert = certificates.get(heat_number) or default_certificate(heat_number)
            if cert is None:
                raise Fault(faultcode="Client.UnknownHeat",
                            faultstring=f"no certificate on file for heat {heat_number}")
            return Certificate(
                certificate_no=cert["certificate_no"], heat_number=heat_number, supplier=cert["supplier"],
                grade=cert["grade"], standard=cert.get("standard", "EN 10083-3"), issued=cert["issued"],
                chemistry=[Element(symbol=s, percent=p) for s, p in cert["chemistry"].items()],
                mechanical=Mechanical(**cert["mechanical"]),
            )

    logging.getLogger("spyne").setLevel(logging.CRITICAL)
    return Application([MaterialCertificateService], tns=CERT_NS, name="MaterialCertificates",
                       in_protocol=Soap11(validator="lxml"), out_protocol=Soap11())


def default_certificate(heat_number: str) -> dict[str, Any] | None:
    """The demo supplier's certificate for a heat: 42CrMo4 in spec; heats starting 'HX' are out of spec,
    and heats starting 'HNONE' have no certificate (the service answers a SOAP Fault)."""
    if heat_number.upper().startswith("HNONE"):
        return None
    h = int(hashlib.sha256(heat_number.encode()).hexdigest()[:8], 16)
    bad = heat_number.upper().startswith("HX")
    return {
        "certificate_no": f"3.1-{h % 1000000:06d}", "supplier": "ACME-STEEL", "grade": "42CrMo4",
        "issued": dt.date(2026, 1, 1).isoformat(),
        "chemistry": {"C": 0.52 if bad else 0.38 + (h % 7) / 100, "Mn": 0.75, "Si": 0.25, "Cr": 1.05,
                      "Mo": 0.2, "P": 0.012, "S": 0.015},
        "mechanical": {"tensile_mpa": 1020.0, "yield_mpa": 820.0 if not bad else 640.0, "elongation_pct": 14.0,
                       "hardness_hb": 300.0},
    }


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class CertificateServiceSim:
    """The supplier's SOAP service, in a thread: GET /?wsdl, POST / for GetCertificate(heat_number)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host, self.requested_port = host, port
        self.certificates: dict[str, dict[str, Any]] = {}
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def wsdl_url(self) -> str:
        return f"http://{self.host}:{self.port}/?wsdl"

    def start(self) -> CertificateServiceSim:
        from spyne.server.wsgi import WsgiApplication

        self._server = make_server(self.host, self.requested_port, WsgiApplication(_spyne_app(self.certificates)),
                                   handler_class=_Quiet)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="soap-peer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def endpoint_config(self, **extra: Any) -> dict[str, Any]:
        return {"wsdl_url": self.wsdl_url, "timeout_s": 5, **extra}


# --- the demo plant's endpoints, as the hub knows them ------------------------------------------------

DEMO_ENDPOINTS = {"plc": "plc-line1", "oven": "oven-1", "certs": "supplier-certs", "mes": "mes-mqtt"}


def plant_data(routing: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Process data for the demo routing (turning on the PLC's lathe, hardening in the oven) and the
    material spec checked on the supplier's certificate: what a planner would configure per item."""
    per_op = {
        "Turning": [{"name": "spindle", "endpoint": DEMO_ENDPOINTS["plc"], "point": "spindle_rpm", "when": "end",
                     "lower": 1100, "upper": 1300, "unit": "rpm"},
                    {"name": "press_force", "endpoint": DEMO_ENDPOINTS["plc"], "point": "press_force",
                     "when": "end", "lower": 38, "upper": 47, "unit": "kN"}],
        "Heat treatment": [
            {"name": "furnace_temp", "endpoint": DEMO_ENDPOINTS["oven"], "point": "oven_temp", "when": "start"},
            {"name": "furnace_temp", "endpoint": DEMO_ENDPOINTS["oven"], "point": "oven_temp", "when": "during",
             "every_s": 2, "for_s": 30, "lower": 830, "upper": 890, "unit": "°C"},
            {"name": "furnace_temp", "endpoint": DEMO_ENDPOINTS["oven"], "point": "oven_temp", "when": "end"}],
    }
    routing = [{**op, "process_data": per_op.get(op["name"], [])} for op in routing]
    specs = [{"item": "BAR-42CRMO4", "certificate_endpoint": DEMO_ENDPOINTS["certs"], "grade": "42CrMo4",
              "limits": [{"name": "chemistry.C", "lower": 0.38, "upper": 0.45, "unit": "%"},
                         {"name": "mechanical.yield_mpa", "lower": 700, "unit": "MPa"}]}]
    return routing, specs
