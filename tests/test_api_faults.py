"""The API's answers when the database refuses or is gone: a constraint that a race hits is a 409 saying to send
again, a database outage a 503 saying nothing changed; neither is a bare 500."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from api.main import create_app
from core.db import make_engine, make_sessionmaker
from core.settings import DatabaseSettings, Settings
from domain.models import Item
from tests.helpers import SUPER_HEADERS


async def test_a_database_outage_answers_503_saying_nothing_changed(db_url: str):
    # nothing listens on port 9 (discard): every connection attempt is refused, as when PostgreSQL is down
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:9/tracehub")
    app = create_app(Settings(database=DatabaseSettings(url=db_url)), sessionmaker=make_sessionmaker(engine))
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                     headers={"Authorization": "Bearer some-token"}) as c:
            r = await c.get("/api/work-orders")
    finally:
        await engine.dispose()
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "DatabaseUnavailable" and "nothing was changed" in r.json()["detail"]
    assert r.headers["retry-after"] == "5"


async def test_a_write_a_constraint_refuses_is_a_conflict_to_send_again(db_url: str, sessionmaker):
    app = create_app(Settings(database=DatabaseSettings(url=db_url)), sessionmaker=sessionmaker)

    async def race() -> dict:
        # what two requests writing the same record at once come to: the second insert hits the unique index
        async with sessionmaker() as s, s.begin():
            await s.execute(text("SELECT 1"))
            s.add_all([Item(code="RACE-ITEM-1", name="a", uom="EA"), Item(code="RACE-ITEM-1", name="b", uom="EA")])
            await s.flush()
        return {}

    app.add_api_route("/api/test-race", race, methods=["POST"])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        r = await c.post("/api/test-race")
    assert r.status_code == 409, r.text
    assert r.json()["error"] == "Conflict" and "send it again" in r.json()["detail"]
    async with sessionmaker() as s:  # and nothing of it was stored
        assert (await s.execute(text("SELECT count(*) FROM item WHERE code = 'RACE-ITEM-1'"))).scalar() == 0
