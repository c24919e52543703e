"""The history an admin reads shows what Temporal's event history cannot show yet: an activity retrying during an
outage (attempt, last error, next attempt), and how updates ended."""

from __future__ import annotations

import httpx

from tests.helpers import (
    IN_SPEC_FINAL,
    IN_SPEC_IQC,
    fast_release,
    post_results,
    run_production,
    wait_done,
    wait_status,
)


async def test_the_history_shows_a_retrying_activity_with_its_attempt_and_error(api: httpx.AsyncClient, erp_sim,
                                                                                wo_number):
    assert (await api.post("/api/erp/events", json=fast_release(wo_number))).status_code == 202
    await post_results(api, wo_number, "iqc", IN_SPEC_IQC)
    await run_production(api, wo_number)
    erp_sim.stop()
    try:
        await post_results(api, wo_number, "final", IN_SPEC_FINAL)
        await wait_status(api, wo_number, lambda s: any(w.startswith("retry: notify_erp attempt")
                                                        for w in s["waiting_for"]),
                          timeout=30, what="the ERP call to be retried")
        hist = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
        # the events alone say only that the activity was scheduled: its attempts are written when it ends
        last = [e for e in hist["events"] if e.get("activity") == "notify_erp"][-1]
        assert last["event"] == "activity scheduled"
        retrying = [p for p in hist["pending"] if p["activity"] == "notify_erp"]
        assert retrying and retrying[0]["attempt"] >= 2, hist["pending"]
        assert "unreachable" in retrying[0]["last_failure"], retrying[0]
        assert retrying[0]["next_attempt"] and retrying[0]["last_attempt_ended"]
    finally:
        erp_sim.start()
    await wait_done(api, wo_number, timeout=60)
    hist = (await api.get(f"/api/work-orders/{wo_number}/history")).json()
    assert hist["pending"] == []
    # the ended attempt is in the events now: the last attempt's number and the error before it
    started = [e for e in hist["events"] if e.get("activity") == "notify_erp" and e["event"] == "activity started"]
    assert any(e["attempt"] >= 2 and "unreachable" in e.get("last_failure", "") for e in started), started
