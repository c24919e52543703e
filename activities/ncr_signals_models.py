"""Wire contract of the NCR follow-up signals between workflows and activities (pydantic, no domain imports)."""

from __future__ import annotations

from pydantic import BaseModel

# signal names the workflows define (workflows/nonconformance.py, workflows/work_order.py)
REINSPECTED_SIGNAL = "reinspected"
GATE_SIGNAL = "recheck_shipment_gate"


class ReleaseShipmentGatesInput(BaseModel):
    ncr: str
    lot: str
