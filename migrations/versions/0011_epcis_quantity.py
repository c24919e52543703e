"""epcis quantity index: quantityElement values for EQ/GT/GE/LT/LE_quantity, for events stored before it

Revision ID: 0011_epcis_qty
Revises: 0003_trace
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0011_epcis_qty"
down_revision = "0003_trace"
branch_labels = None
depends_on = None

QTY_LISTS = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")
BATCH = 5000


def upgrade() -> None:
    """New events get `qty:{uom}` rows in epcis_event_field when indexed (domain/epcis_index.py); this adds
    them for the events already stored, in batches."""
    conn = op.get_bind()
    event = sa.table("epcis_event", sa.column("id", sa.Integer), sa.column("document", sa.JSON))
    field = sa.table("epcis_event_field", sa.column("event_pk", sa.Integer), sa.column("name", sa.String),
                     sa.column("value", sa.String))
    last = 0
    while True:
        rows = conn.execute(sa.select(event.c.id, event.c.document).where(event.c.id > last)
                            .order_by(event.c.id).limit(BATCH)).all()
        if not rows:
            break
        out = []
        for pk, doc in rows:
            doc = json.loads(doc) if isinstance(doc, str) else doc or {}
            for key in QTY_LISTS:
                for q in doc.get(key) or []:
                    if isinstance(q, dict) and isinstance(q.get("quantity"), (int, float)):
                        out.append({"event_pk": pk, "name": f"qty:{q.get('uom') or ''}",
                                    "value": repr(float(q["quantity"]))})
        if out:
            conn.execute(sa.insert(field), out)
        last = rows[-1][0]


def downgrade() -> None:
    op.execute("DELETE FROM epcis_event_field WHERE name LIKE 'qty:%'")
