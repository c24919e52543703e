"""The database schema and the event log: migrations match the models, events are EPCIS 2.0."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, select

from core.db import sync_url
from domain.events import epcis_document
from domain.models import Base, EpcisEvent, WorkOrder
from tests.helpers import IN_SPEC_FINAL, IN_SPEC_IQC, fast_release, post_results, run_production, wait_done

STANDARDS = Path(__file__).resolve().parents[2] / "shared" / "standards"


def test_migrations_match_the_models(db_url: str):
    engine = create_engine(sync_url(db_url))
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    # SQLite cannot tell timezone-aware columns apart; anything else is a missing migration
    diff = [d for d in diff if not (isinstance(d, list) and d and d[0][0] == "modify_type")]
    assert diff == [], f"models and migrations differ: write a migration for {diff}"


@pytest.mark.asyncio
async def test_event_log_is_valid_epcis(api: httpx.AsyncClient, sessionmaker, wo_number):
    schema_file = STANDARDS / "epcis-json-schema-2.0.1.json"
    if not schema_file.exists():
        pytest.skip(f"{schema_file} not found (shared/standards sits beside the project)")
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    await post_results(api, wo_number, "final", IN_SPEC_FINAL)
    await wait_done(api, wo_number)
    async with sessionmaker() as s:
        wo_id = (await s.execute(select(WorkOrder.id).where(WorkOrder.number == wo_number))).scalar_one()
        rows = (await s.execute(select(EpcisEvent).where(EpcisEvent.work_order_id == wo_id)
                                .order_by(EpcisEvent.id))).scalars().all()
    assert [(r.event_type, r.biz_step) for r in rows] == [
        ("ObjectEvent", "receiving"), ("ObjectEvent", "inspecting"), ("TransformationEvent", "commissioning"),
        ("TransformationEvent", "creating_class_instance"), ("ObjectEvent", "inspecting"),
        ("ObjectEvent", "commissioning"), ("ObjectEvent", "shipping"),
    ]
    doc = epcis_document([r.document for r in rows])
    schema = json.loads(schema_file.read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message[:200]}" for e in errors[:5]]


@pytest.mark.asyncio
async def test_a_new_supplier_and_item_brought_by_two_transactions_at_once_are_inserted_once(sessionmaker, db_url):
    """Two work orders' first receipts naming the same new supplier and material: the second transaction waits for
    the first's rows and takes them, instead of failing on the unique code (its activity then retried, the
    IntegrityError in the work order's history). PostgreSQL: the second insert waits for the first to commit.
    SQLite takes one writer at a time, so the race cannot happen there the same way."""
    import asyncio
    import uuid

    from domain.production import upsert_item, upsert_supplier

    if make_url_backend(db_url) != "postgresql":
        pytest.skip("SQLite: one writer at a time (the second transaction waits for the database lock instead)")
    code = f"RACE-{uuid.uuid4().hex[:8].upper()}"
    async with sessionmaker() as first, sessionmaker() as second:
        sup_a = await upsert_supplier(first, code)
        item_a = await upsert_item(first, code, name="bar stock", uom="KG")  # both inserted, not committed yet
        async def bring() -> tuple:
            return await upsert_supplier(second, code), await upsert_item(second, code, uom="KG")

        later = asyncio.ensure_future(bring())
        await asyncio.sleep(0.3)
        assert not later.done()  # waiting for the first transaction's rows
        await first.commit()
        sup_b, item_b = await asyncio.wait_for(later, 10)
        await second.commit()
    assert (sup_b.id, item_b.id) == (sup_a.id, item_a.id) and item_b.name == "bar stock"


def make_url_backend(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).get_backend_name()
