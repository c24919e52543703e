"""IssueCodesWorkflow: a very large order's codes, issued as a child of the work order.

The activity issues block after block (each keyed, so nothing is issued twice) and heartbeats its
progress; the `progress` query and the pending activity's heartbeat details show how far it is.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.codes_models import IssueCodeBlocksInput, IssueCodeBlocksResult
    from workflows.policies import DB_RETRY

ISSUE_TIMEOUT = timedelta(hours=2)
ISSUE_HEARTBEAT = timedelta(seconds=30)


@workflow.defn
class IssueCodesWorkflow:
    def __init__(self) -> None:
        self.result: IssueCodeBlocksResult | None = None

    @workflow.run
    async def run(self, inp: IssueCodeBlocksInput) -> IssueCodeBlocksResult:
        self.result = await workflow.execute_activity(
            "issue_code_blocks", inp, start_to_close_timeout=ISSUE_TIMEOUT, heartbeat_timeout=ISSUE_HEARTBEAT,
            retry_policy=DB_RETRY, result_type=IssueCodeBlocksResult,
        )
        return self.result

    @workflow.query
    def done(self) -> IssueCodeBlocksResult | None:
        return self.result
