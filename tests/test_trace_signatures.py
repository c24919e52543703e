"""Issue 6: the backward trace shows each NCR decision's electronic signatures, and a record changed after it
was signed shows its signature invalid there (the JSON route, trace.backward, and the PDF report)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import orjson
import pytest
import pytest_asyncio
from sqlalchemy import select, text

from api.main import create_app
from core.db import FastReader, engine_of
from core.settings import DatabaseSettings, Settings
from domain import trace
from domain.models import Lot, Ncr, NcrDecisionRecord
from domain.quality import decision_content
from domain.signatures import record_signature
from tests.helpers import SUPER_HEADERS
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture(scope="module")
async def hub(db_url: str, sessionmaker) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(database=DatabaseSettings(url=db_url), resolver_base_url=RESOLVER),
                     sessionmaker=sessionmaker)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub",
                                 headers=SUPER_HEADERS) as c:
        yield c


async def _signed_ncr(sessionmaker, lot_number: str, tag: str) -> list[str]:
    """An NCR on the lot with three decisions: two signed, one not. Returns the decision ids."""
    async with sessionmaker() as s, s.begin():
        lot_id = (await s.execute(select(Lot.id).where(Lot.number == lot_number))).scalar_one()
        ncr = Ncr(number=f"NCR-SIG-{tag}", workflow_id=f"ncr-sig-{tag}", lot_id=lot_id, state="mrb",
                  description="bore oversize", opened_at=datetime(2026, 11, 21, 12, tzinfo=UTC))
        s.add(ncr)
        await s.flush()
        ids = []
        for i, (action, role, meaning) in enumerate((("confirm", "qa_supervisor", "reviewed"),
                                                     ("use_as_is", "mrb_engineering", "approved"),
                                                     ("comment", "quality_engineer", None))):
            rec = NcrDecisionRecord(decision_id=f"D{i}-{tag}", ncr_id=ncr.id, action=action,
                                    reviewer=f"t-{role}", role=role, reason=f"reason {i}", rework_operation=None,
                                    decided_at=datetime(2026, 11, 21, 13, i, tzinfo=UTC))
            s.add(rec)
            await s.flush()
            ids.append(rec.decision_id)
            if meaning:
                await record_signature(s, signer=f"t-{role}", signer_name=f"Test {role}", role=role,
                                       meaning=meaning, entity="ncr_decision", key=rec.decision_id,
                                       content=decision_content(ncr.number, rec))
    return ids


def _pdf_text(pdf: bytes) -> str:
    import pypdfium2

    doc = pypdfium2.PdfDocument(pdf)
    return " ".join(" ".join(page.get_textpage().get_text_range().split()) for page in doc)


def _decisions(answer: dict, lot: str, ncr: str) -> list[dict]:
    node = next(n for n in answer["nodes"] if n["id"] == lot)
    return next(x for x in node["ncrs"] if x["number"] == ncr)["decisions"]


def _validity(decisions: list[dict]) -> list[list[tuple[str, str, bool]]]:
    return [[(s["signer"], s["meaning"], s["valid"]) for s in d["signatures"]] for d in decisions]


async def test_the_trace_shows_a_changed_record_s_signature_invalid(sessionmaker, hub: httpx.AsyncClient):
    plant = await build_plant(sessionmaker)
    lot, ncr = plant.lots["B1"], f"NCR-SIG-{plant.tag}"
    ids = await _signed_ncr(sessionmaker, lot, plant.tag)
    pg = engine_of(sessionmaker).dialect.name == "postgresql"
    reader = FastReader(engine_of(sessionmaker).url) if pg else None
    try:
        async def answers() -> list[dict]:
            r = await hub.get(f"/api/trace/backward/{plant.unit(3)}")
            assert r.status_code == 200, r.text
            async with sessionmaker() as s:
                return [r.json(), orjson.loads(await trace.backward_json(s, lot, resolver=RESOLVER, reader=reader)),
                        await trace.backward(s, plant.unit(3), resolver=RESOLVER)]

        for answer in await answers():
            decisions = _decisions(answer, lot, ncr)
            assert _validity(decisions) == [[("t-qa_supervisor", "reviewed", True)],
                                            [("t-mrb_engineering", "approved", True)], []]
            sig = decisions[0]["signatures"][0]
            assert sig["signer_name"] == "Test qa_supervisor" and sig["role"] == "qa_supervisor"
            assert datetime.fromisoformat(sig["signed_at"]).tzinfo is not None
        # someone changes the second decision in the database behind the hub's back
        async with sessionmaker() as s, s.begin():
            await s.execute(text("UPDATE ncr_decision SET reason = 'nothing to see' WHERE decision_id = :d"),
                            {"d": ids[1]})
        for answer in await answers():
            decisions = _decisions(answer, lot, ncr)
            assert _validity(decisions) == [[("t-qa_supervisor", "reviewed", True)],
                                            [("t-mrb_engineering", "approved", False)], []], decisions
        # a lot without NCRs in the same answer is untouched, and the JSON route still equals the assembled answer
        async with sessionmaker() as s:
            body = await trace.backward_json(s, plant.unit(3), resolver=RESOLVER, reader=reader)
            assembled = orjson.loads(orjson.dumps(await trace.backward(s, plant.unit(3), resolver=RESOLVER)))
            assert orjson.loads(body) == assembled
            assert next(n for n in assembled["nodes"] if n["id"] == plant.lots["M1"])["ncrs"] == []
            # the PDF report says which signature no longer holds
            report = _pdf_text(trace.to_pdf(await trace.backward(s, lot, resolver=RESOLVER)))
        assert "signed approved by t-mrb_engineering" in report and "signed reviewed by t-qa_supervisor" in report
        assert report.count("INVALID: the record changed after it was signed") == 1, report
        # the signed content itself changed (the stored copy): the signature is invalid as well
        async with sessionmaker() as s, s.begin():
            await s.execute(text("UPDATE e_signature SET content_hash = :h WHERE entity_key = :d"),
                            {"h": "0" * 64, "d": ids[0]})
        for answer in await answers():
            assert [d["signatures"][0]["valid"] for d in _decisions(answer, lot, ncr)[:2]] == [False, False]
    finally:
        if reader is not None:
            await reader.close()
