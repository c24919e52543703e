"""Real peers the connector tests start on loopback, beside erp_sim.plant's PLC, oven and SOAP service:
another ERP with a REST API that is not ERPNext's, and a Mosquitto broker of the test's own."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadedServer:
    """An ASGI app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server: uvicorn.Server | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> ThreadedServer:
        cfg = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(cfg)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server and self.thread:
            self.server.should_exit = True
            self.thread.join(10)
            self.server = None


def other_erp_app(token: str = "other-erp-token", orders: int = 23) -> FastAPI:
    """An ERP whose REST API is nothing like ERPNext's: bearer auth, page/per_page paging, the list under
    `results`, nested fields."""
    app = FastAPI(title="Other ERP")
    app.state.orders = [
        {"id": 5000 + i, "ref": f"MO-{i:04d}", "product": {"code": "SHAFT-25", "gtin": "09506000134352"},
         "planned": {"qty": 10 + i}, "state": "confirmed"}
        for i in range(1, orders + 1)
    ]
    app.state.receipts = []

    def auth(authorization: str | None) -> None:
        if authorization != f"Bearer {token}":
            raise HTTPException(401, "bad token")

    @app.get("/api/v2/ping")
    async def ping(authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        return {"pong": True}

    @app.get("/api/v2/manufacturing-orders")
    async def orders_list(page: int = 1, per_page: int = 10, authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        start = (page - 1) * per_page
        return {"results": app.state.orders[start:start + per_page], "count": len(app.state.orders)}

    @app.get("/api/v2/manufacturing-orders/{oid}")
    async def orders_get(oid: int, authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        for o in app.state.orders:
            if o["id"] == oid:
                return {"order": o}
        raise HTTPException(404, "no such order")

    @app.post("/api/v2/goods-receipts", status_code=201)
    async def receipts_create(request: Request, authorization: str | None = Header(default=None)) -> dict:
        auth(authorization)
        body = await request.json()
        if not isinstance(body.get("lines"), list) or not body["lines"]:
            raise HTTPException(400, "a goods receipt needs at least one line")
        if any(r["number"] == body.get("number") for r in app.state.receipts):
            raise HTTPException(409, "exists")
        app.state.receipts.append(body)
        return {"receipt": body}

    return app


class MosquittoBroker:
    """A Mosquitto broker of the test's own, on a free loopback port (the machine's broker is left alone)."""

    USERS: ClassVar[dict[str, str]] = {"hub": "hub-secret", "mes": "mes-secret"}
    # the hub may read and write the plant's topics; nobody may touch secret/
    ACL = "user hub\ntopic readwrite plant/#\nuser mes\ntopic readwrite plant/#\n"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mosquitto-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> MosquittoBroker:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        passwd = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        pw, acl, conf = self.dir / "passwords", self.dir / "acl", self.dir / "mosquitto.conf"
        pw.touch()
        for user, password in self.USERS.items():
            subprocess.run([passwd, "-b", str(pw), user, password], check=True, capture_output=True)
        acl.write_text(self.ACL)
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous false\npassword_file {pw}\n"
                        f"acl_file {acl}\npersistence false\n")
        # mosquitto started as root drops to its own user, which must be able to read these test files
        self.dir.chmod(0o755)
        for f in (pw, acl, conf):
            f.chmod(0o644)
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class SicsScaleSim:
    """A scale speaking MT-SICS level 0 over TCP (asyncio server, port 0): S, SI, I4."""

    def __init__(self, serial: str = "B123456789") -> None:
        self.serial = serial
        self.weight = 12.345
        self.stable = True
        self.overload = False
        self.port = 0
        self._server: Any = None
        self._conns: set[Any] = set()

    async def start(self) -> SicsScaleSim:
        import asyncio

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._conns.add(writer)
            try:
                while line := await reader.readline():
                    cmd = line.decode().strip()
                    if cmd in ("S", "SI"):
                        if self.overload:
                            answer = f"{cmd} +"
                        elif cmd == "S" and not self.stable:
                            answer = "S I"
                        else:
                            answer = f"{cmd} {'S' if self.stable else 'D'} {self.weight:10.3f} kg"
                    elif cmd == "I4":
                        answer = f'I4 A "{self.serial}"'
                    else:
                        answer = "ES"
                    writer.write(f"{answer}\r\n".encode())
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                self._conns.discard(writer)
                writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for w in list(self._conns):
                w.close()
            await self._server.wait_closed()
            self._server = None

    def endpoint_config(self, **extra: Any) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "timeout_s": 2, **extra}
