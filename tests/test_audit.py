"""The audit trail is append-only and hash-chained: tampering is refused, or found and named."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from core.db import make_engine, make_sessionmaker, sync_url
from domain.audit import audit, verify_chain
from migrations import upgrade

pytestmark = pytest.mark.asyncio


@pytest.fixture
def fresh_db(db_url: str, tmp_path) -> str:
    """A database of its own: these tests tamper with it."""
    u = make_url(db_url)
    if u.get_backend_name() == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    else:
        name = f"tracehub_audit_{uuid.uuid4().hex[:8]}"
        admin = create_engine(sync_url(u.set(database="postgres").render_as_string(hide_password=False)),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
        url = u.set(database=name).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    if u.get_backend_name() != "sqlite":
        admin = create_engine(sync_url(u.set(database="postgres").render_as_string(hide_password=False)),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


async def _write(url: str, n: int, writers: int = 4) -> None:
    engine = make_engine(url)
    sm = make_sessionmaker(engine)

    async def writer(w: int) -> None:
        for i in range(n // writers):
            async with sm() as s, s.begin():
                await audit(s, actor=f"user{w}", action="lot.status", entity="lot", key=f"L{w}-{i}",
                            changes={"status": ["quarantine", "released"], "qty": 1.5 * i, "why": "é ✓"})

    await asyncio.gather(*(writer(w) for w in range(writers)))
    await engine.dispose()


async def _verify(url: str):
    engine = make_engine(url)
    async with make_sessionmaker(engine)() as s:
        report = await verify_chain(s, batch=7)
    await engine.dispose()
    return report


def _tamper(url: str, *statements: str) -> None:
    """What someone with the database owner's rights could do behind the hub's back."""
    engine = create_engine(sync_url(url))
    with engine.begin() as c:
        pg = c.dialect.name == "postgresql"
        c.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER") if pg else text("DROP TRIGGER audit_log_no_update"))
        if not pg:
            c.execute(text("DROP TRIGGER audit_log_no_delete"))
        for st in statements:
            c.execute(text(st))
    engine.dispose()


async def test_concurrent_appends_form_one_unbroken_chain(fresh_db: str):
    await _write(fresh_db, 40)
    report = await _verify(fresh_db)
    assert report.entries == 40 and report.ok, report.problems


async def test_the_database_refuses_update_and_delete(fresh_db: str):
    await _write(fresh_db, 4, writers=1)
    engine = create_engine(sync_url(fresh_db))
    for st in ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2", "DELETE FROM audit_log WHERE seq = 3"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as c:
            c.execute(text(st))
    engine.dispose()
    assert (await _verify(fresh_db)).ok


async def test_verify_names_altered_removed_and_inserted_entries(fresh_db: str):
    await _write(fresh_db, 8, writers=1)
    _tamper(fresh_db,
            "UPDATE audit_log SET actor = 'mallory' WHERE seq = 2",
            "DELETE FROM audit_log WHERE seq = 5",
            "UPDATE audit_log SET seq = 100, prev_hash = 'x' WHERE seq = 8")
    problems = (await _verify(fresh_db)).problems
    assert any(p.startswith("entry 2 ") and "altered" in p for p in problems), problems
    assert any("entries 5 removed" in p for p in problems), problems
    assert any(p.startswith("entry 100 ") and "does not follow" in p for p in problems), problems
    assert not any(p.startswith("entry 4 ") for p in problems), problems


async def test_work_order_changes_are_audited_in_the_chain(api, sessionmaker, wo_number):
    from tests.helpers import IN_SPEC_IQC, fast_release, post_results, wait_status

    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await wait_status(api, wo_number, lambda s: s["expected_operation"] == 10, what="production")
    async with sessionmaker() as s:
        rows = (await s.execute(text(
            "SELECT action, changes FROM audit_log WHERE entity_key IN (:wo, :lot) ORDER BY seq"),
            {"wo": wo_number, "lot": f"{wo_number}-M1"})).all()
        # the order's move from material intake to production is an entry of its own
        assert [r.action for r in rows if r.action != "work_order.stage"] == [
            "work_order.released", "lot.received", "lot.status"]
        stages = [r.changes if isinstance(r.changes, dict) else json.loads(r.changes)  # SQLite: the JSON text
                  for r in rows if r.action == "work_order.stage"]
        assert stages == [{"before": {"stage": "material_intake", "status": "released"},
                           "after": {"stage": "production", "status": "in_progress"}}], stages
        report = await verify_chain(s)
    assert report.ok, report.problems



async def test_verify_names_an_entry_whose_changes_are_no_longer_json(fresh_db: str):
    if make_url(fresh_db).get_backend_name() != "sqlite":
        pytest.skip("PostgreSQL's json type refuses text that is not JSON: only SQLite can hold it")
    await _write(fresh_db, 4, writers=1)
    _tamper(fresh_db, "UPDATE audit_log SET changes = '{not json' WHERE seq = 3")
    problems = (await _verify(fresh_db)).problems
    assert len(problems) == 1 and problems[0].startswith("entry 3 ") and "altered" in problems[0], problems
