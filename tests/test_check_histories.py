"""`tracehub check-histories`: every hub workflow run's history replayed against this version's code, as a worker
rebuilding it would; a run that does not replay is named (the admin finishes or terminates it by hand)."""

from __future__ import annotations

import uuid

import httpx
import pytest
import typer
from temporalio import workflow
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from tests.conftest import NOT_A_HUB_RUN
from tests.helpers import fast_release, wait_status
from tracehub_cli import _check_histories
from worker import replay_runs

pytestmark = pytest.mark.asyncio


@workflow.defn(name="WorkOrderWorkflow", sandboxed=False)
class NotTheWorkOrderWorkflow:
    """A run under the work order's type whose history today's WorkOrderWorkflow cannot replay (as a run written by
    code that changed without a patch would be)."""

    @workflow.run
    async def run(self, number: str) -> str:
        await workflow.sleep(0.01)
        return number


async def test_running_work_orders_replay_and_a_run_that_does_not_is_named(api: httpx.AsyncClient, client, settings,
                                                                          wo_number, capsys):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await wait_status(api, wo_number, lambda s: bool(s["pending_inspections"]), what="IQC")
    await _check_histories(settings, closed=False, limit=0)  # every running run replays: no exit
    out = capsys.readouterr().out
    assert "running runs replayed, 0 do not replay" in out, out
    assert int(out.split(" running runs replayed")[0].split()[-1]) >= 1

    queue, wf_id = f"check-{uuid.uuid4().hex[:8]}", f"{NOT_A_HUB_RUN}{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[NotTheWorkOrderWorkflow],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        handle = await client.start_workflow(NotTheWorkOrderWorkflow.run, "WO-X", id=wf_id, task_queue=queue)
        await handle.result()
    try:
        n, failures = await replay_runs(client, [(wf_id, handle.result_run_id or "")])
        assert n == 1 and list(failures) == [f"{wf_id} (run {handle.result_run_id})"], failures
        with pytest.raises(typer.Exit) as exit_:  # the command names it and exits 1
            await _check_histories(settings, closed=True, limit=0)
        assert exit_.value.exit_code == 1
        out = capsys.readouterr().out
        assert f"does not replay: {wf_id} (run {handle.result_run_id})" in out and "1 do not replay" in out, out
    finally:  # the suite's end-of-session replay (tests/conftest.py) leaves runs with this id prefix out
        await client.get_workflow_handle(wf_id).fetch_history()  # still there, for the record
