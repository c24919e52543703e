"""Telling waiting workflows at once (their polls remain the fallback; domain/ncr_followups.py finds them).

- `release_shipment_gates`: an NCR stopped holding its lot: the work orders whose shipment it may hold check
  their gate now.
- `signal_shipment_gates`: a recall's hold on a lot ended (activities/recall.py): the work orders shipping it check
  their gate now.
- `signal_reinspected`: called by the activity that records an inspection's verdict, after its commit: the
  NCRs of that lot waiting for a re-inspection look now.

A signal that cannot be delivered (the workflow finished meanwhile, Temporal briefly away) is logged and
dropped: the waiting workflow's own poll still finds the change, so nothing is retried here.
"""

from __future__ import annotations

import logging
from typing import Any

from temporalio import activity
from temporalio.client import Client

from activities.base import TransactionalActivities
from activities.errors import translated
from activities.ncr_signals_models import GATE_SIGNAL, REINSPECTED_SIGNAL, ReleaseShipmentGatesInput
from domain import ncr_followups

log = logging.getLogger("tracehub.ncr_signals")


async def _signal_all(client: Client, workflow_ids: list[str], signal: str, *args: Any) -> list[str]:
    delivered = []
    for wf_id in workflow_ids:
        try:
            await client.get_workflow_handle(wf_id).signal(signal, *args)
            delivered.append(wf_id)
        except Exception as exc:  # noqa: BLE001 - finished meanwhile, or an outage: the poll is the fallback
            log.info("signal %s to %s not delivered (%s: %s); its poll will find the change", signal, wf_id,
                     type(exc).__name__, exc)
    return delivered


async def signal_shipment_gates(workflow_ids: list[str], why: str) -> list[str]:
    """Tell these work orders to check their shipment gate now (`why`: what stopped holding, `recall RC-1`). Only
    from inside an activity (it uses the worker's client); a signal not delivered is logged and dropped."""
    return await _signal_all(activity.client(), workflow_ids, GATE_SIGNAL, why) if workflow_ids else []


async def signal_reinspected(sessionmaker: Any, *, lot_id: int, inspection: str) -> list[str]:
    """After an inspection of the lot got its verdict (committed): signal the NCRs verifying a rework on it.
    Only from inside an activity (it uses the worker's client); never raises."""
    try:
        async with sessionmaker() as s:
            ids = await ncr_followups.ncrs_verifying(s, lot_id=lot_id)
        return await _signal_all(activity.client(), ids, REINSPECTED_SIGNAL, inspection) if ids else []
    except Exception as exc:  # noqa: BLE001 - the verdict is recorded; the NCR's poll finds it
        log.warning("re-inspection %s: NCRs not signalled (%s: %s)", inspection, type(exc).__name__, exc)
        return []


class NcrSignalActivities(TransactionalActivities):
    """Signals to workflows waiting on an NCR's lot."""

    @activity.defn
    @translated
    async def release_shipment_gates(self, inp: ReleaseShipmentGatesInput) -> list[str]:
        """The NCR no longer holds its lot: the work orders at their shipment gate whose lot is this lot or was
        made from it check their gate now. Returns the work-order workflow ids signalled."""
        async with self.sm() as s:
            ids = await ncr_followups.work_orders_at_gate(s, lot=inp.lot)
        return await _signal_all(activity.client(), ids, GATE_SIGNAL, inp.ncr) if ids else []

    def all(self) -> list[Any]:
        return [self.release_shipment_gates]
