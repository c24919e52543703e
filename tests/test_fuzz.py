"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis).

Every operation gets generated requests, valid and invalid (schemathesis' positive and negative modes, its
boundary-value coverage phase and random fuzzing), sent in-process to the ASGI app with a token that holds
every role. Two properties must hold for every answer:
- no 5xx: whatever a client sends, the hub answers with its own verdict, never a crash;
- every 4xx JSON body has a `detail` that says what was wrong; a refusal of what was sent names the field.

The app runs in schemathesis' event-loop thread (its lifespan builds the engine there), so the workers
that answer the status queries and run the work orders it starts run in a thread of their own, on their own
task queue and on a database of their own: the fuzzer's users, endpoints and events do not leak into the
rest of the suite.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from api.main import create_app
from core.db import make_engine, make_sessionmaker, sync_url
from core.settings import DatabaseSettings, Settings
from core.temporal import connect
from domain.endpoints import ensure_endpoint
from migrations import upgrade
from tests.conftest import ErpSim
from tests.helpers import PASSWORD
from worker import build_worker

# about 80 operations: a few generated requests each, plus the coverage phase's boundary values, keep the
# whole test well under 90 s on two shared cores. HUB_FUZZ_EXAMPLES=50 fuzzes deeper (minutes).
MAX_EXAMPLES = int(os.environ.get("HUB_FUZZ_EXAMPLES", "6"))
REQUEST_TIMEOUT_S = 20  # a request that blocks this long (a query nobody answers) fails the test
# a signed decision needs a person's session token (an API token is refused before the workflow is asked)
SIGNED = {("POST", "/api/ncrs/{number}/decisions"), ("POST", "/api/recalls/{number}/decisions")}
LOGOUT = ("POST", "/api/auth/logout")  # revokes the token it is sent with: each call gets a fresh one

CONFIG = SchemathesisConfig.from_dict({
    "phases": {"stateful": {"enabled": False}},
    "generation": {"max-examples": MAX_EXAMPLES},
})


@pytest.fixture(scope="module")
def fuzz_db_url(db_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    u = make_url(db_url)
    if u.get_backend_name() == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
        return
    name = f"tracehub_fuzz_{uuid.uuid4().hex[:8]}"
    admin = create_engine(sync_url(u.set(database="postgres").render_as_string(hide_password=False)),
                          isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield u.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class FuzzHub:
    """The fuzzed hub's database seeded with credentials, and its worker, in a thread with its own loop."""

    def __init__(self, settings: Settings, erp_url: str) -> None:
        self.settings = settings
        self.erp_url = erp_url
        self.headers: dict[str, str] = {}
        self.person: dict[str, str] = {}  # a person's session, for signed decisions (filled on first use)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), name="fuzz-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60) or self._error:
            raise RuntimeError(f"the fuzz worker did not start: {self._error!r}")

    def stop(self) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _main(self) -> None:
        from domain.identity import PEOPLE_ROLES, ROLES, create_user, issue_token

        try:
            self.loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            self.engine = make_engine(self.settings.database.url)
            self.sessionmaker = make_sessionmaker(self.engine)
            async with self.sessionmaker() as s, s.begin():
                token, _ = await issue_token(s, kind="api", name="fuzz", roles=list(ROLES), ttl=timedelta(days=1),
                                             created_by="tests")
                self.headers["Authorization"] = f"Bearer {token}"
                await create_user(s, username="fuzz-person", password=PASSWORD, roles=list(PEOPLE_ROLES),
                                  full_name="Fuzz Person", actor="tests")
                await ensure_endpoint(s, name="erp", kind="erpnext", replace=True, config={
                    "base_url": self.erp_url, "api_key": "tracehub", "api_secret": "simulator-secret", "timeout_s": 5})
            client = await connect(self.settings.temporal)
            async with build_worker(client, self.settings, self.sessionmaker):
                self._ready.set()
                await self._stop.wait()
            await self.engine.dispose()
            await asyncio.sleep(0.2)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise

    def person_headers(self) -> dict[str, str]:
        """A fresh session token of a person holding every people role (a signed decision needs one)."""
        from domain.identity import login

        async def go() -> str:
            async with self.sessionmaker() as s, s.begin():
                token, _, _ = await login(s, "fuzz-person", PASSWORD)
            return token

        return {"Authorization": f"Bearer {self.run(go())}"}


@pytest.fixture(scope="module")
def fuzz_hub(fuzz_db_url: str, settings: Settings, erp_sim: ErpSim) -> Iterator[FuzzHub]:
    upgrade(fuzz_db_url)
    fuzz_settings = settings.model_copy(update={
        "database": DatabaseSettings(url=fuzz_db_url),
        "temporal": settings.temporal.model_copy(update={"task_queue": "tracehub-fuzz"}),
    })
    hub = FuzzHub(fuzz_settings, erp_sim.url)
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="module")
def fuzz_app(fuzz_hub: FuzzHub) -> Any:
    # no sessionmaker or Temporal client given: the lifespan builds them in the loop that serves the requests
    return create_app(fuzz_hub.settings)


# the operations are known at collection (one test per operation); the requests go to `fuzz_app`
schema = schemathesis.openapi.from_dict(create_app(Settings()).openapi(), config=CONFIG)


@schemathesis.check
def refusal_names_the_problem(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 4xx answer says what was wrong in `detail`. A refusal of what was sent (400, 404, 409, 413, 422) names
    the field, parameter or header it is about (`field`, or `errors[].field`), and a 422's detail names it too.
    (401 and 403 are about the caller, not a field.)"""
    if not 400 <= response.status_code < 500:
        return None
    if "json" not in (response.headers.get("content-type") or [""])[0]:
        return None  # the public scan page answers an unknown code with HTML
    body = response.json()
    detail = body.get("detail") if isinstance(body, dict) else None
    assert isinstance(detail, str) and detail.strip(), f"{response.status_code} without a `detail` string: {body}"
    if response.status_code in (400, 404, 409, 413, 422):
        fields = [e["field"] for e in body.get("errors") or [] if isinstance(e, dict) and e.get("field")] or \
            ([body["field"]] if body.get("field") else [])
        assert fields, f"{response.status_code} that names no field: {body}"
        if response.status_code == 422:  # the input refused: its detail says which field, to fix it
            for f in fields:
                assert f.split(".")[-1] in detail, f"422 whose detail does not name the field {f!r}: {body}"
    return True


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=timedelta(seconds=REQUEST_TIMEOUT_S),
          suppress_health_check=list(HealthCheck))
def test_no_operation_crashes_and_every_refusal_says_why(case: Any, fuzz_hub: FuzzHub, fuzz_app: Any) -> None:
    key = (case.operation.method.upper(), case.operation.path)
    if key == LOGOUT:
        headers = fuzz_hub.person_headers()
    elif key in SIGNED:
        fuzz_hub.person = fuzz_hub.person or fuzz_hub.person_headers()
        headers = fuzz_hub.person
    else:
        headers = fuzz_hub.headers
    for accept in ("application/json", "text/html") if "resolver" in (case.operation.tags or []) else ("*/*",):
        # the resolver answers a phone with HTML and a machine with JSON: both ways
        response = case.call(app=fuzz_app, headers={**headers, "Accept": accept}, timeout=REQUEST_TIMEOUT_S)
        case.validate_response(response, checks=[not_a_server_error, refusal_names_the_problem])

