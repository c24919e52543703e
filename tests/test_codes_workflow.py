"""A very large order's codes, issued by the IssueCodesWorkflow child on a real Temporal dev server."""

from __future__ import annotations

import itertools
import uuid

from sqlalchemy import select

from activities.codes_models import IssueCodeBlocksInput, IssueCodeBlocksResult
from domain import codes
from domain.models import Lot
from domain.models_codes import SerialBlock
from domain.production import upsert_item
from tests.helpers import new_gtin
from workflows.issue_codes import IssueCodesWorkflow


async def test_a_very_large_order_is_issued_block_by_block_by_the_child_workflow(client, worker, settings,
                                                                                 sessionmaker):
    item, lot_no = f"IT-{uuid.uuid4().hex[:8]}", f"L-{uuid.uuid4().hex[:6]}"
    gtin = new_gtin()  # a GTIN belongs to one item
    async with sessionmaker() as s, s.begin():
        it = await upsert_item(s, item, name="Bolt", gtin=gtin)
        s.add(Lot(number=lot_no, kind="output", item_id=it.id, quantity=0, quantity_remaining=0, status="released"))
    inp = IssueCodeBlocksInput(work_order=f"WO-{lot_no}", lot=lot_no, quantity=25_000_000, chunk_size=10_000_000)
    res = await client.execute_workflow(IssueCodesWorkflow.run, inp, id=f"issue-codes-{lot_no}",
                                        task_queue=settings.temporal.task_queue, result_type=IssueCodeBlocksResult)
    assert res.count == 25_000_000 and res.blocks == 3
    async with sessionmaker() as s:
        lot = (await s.execute(select(Lot).where(Lot.number == lot_no))).scalar_one()
        blocks = (await s.execute(select(SerialBlock).where(SerialBlock.lot_id == lot.id)
                                  .order_by(SerialBlock.first_seq))).scalars().all()
        assert [b.count for b in blocks] == [10_000_000, 10_000_000, 5_000_000]
        assert all(a.first_seq + a.count <= b.first_seq for a, b in itertools.pairwise(blocks))
        found, unit = await codes.resolve(s, f"https://id.tracehub.example/01/{gtin}/21/{res.last_serial}")
        assert found.number == lot_no and unit
    # history shows the activity heartbeating its progress
    hist = await client.get_workflow_handle(f"issue-codes-{lot_no}").fetch_history()
    sched = [e for e in hist.events if e.HasField("activity_task_scheduled_event_attributes")]
    assert sched[0].activity_task_scheduled_event_attributes.heartbeat_timeout.seconds == 30
    # issuing the same order again (a retried child) issues nothing new
    again = await client.execute_workflow(IssueCodesWorkflow.run, inp, id=f"issue-codes-{lot_no}-again",
                                          task_queue=settings.temporal.task_queue, result_type=IssueCodeBlocksResult)
    assert (again.first_serial, again.last_serial) == (res.first_serial, res.last_serial)
    async with sessionmaker() as s:
        n = len((await s.execute(select(SerialBlock).where(SerialBlock.lot_id == lot.id))).scalars().all())
    assert n == 3
