"""Recorded histories replay against today's workflow code: a change to the command sequence that
is not behind workflow.patched() fails here. Re-record with RECORD_HISTORIES=1 only for new cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.worker import Replayer

from worker import WORKFLOWS

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.asyncio
@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_history_replays(path: Path):
    replayer = Replayer(workflows=WORKFLOWS, data_converter=pydantic_data_converter)
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    await replayer.replay_workflow(history)


def test_histories_are_recorded():
    assert len(HISTORIES) >= 3, "record them: RECORD_HISTORIES=1 pytest tests/test_lifecycle.py"
