"""ERPNext documents as the hub's inputs, for the ERP poll: a Work Order (operations child table, custom fields) with
its Purchase Receipts as the hub's work order input, and the ERPNext field a validation error points at. (Moved here
from activities/connectors.py so the connector can answer the poll's `PollableErp.hub_data` itself; the activity
module still exports these names.)"""

from __future__ import annotations

from typing import Any


def work_order_from_erpnext(doc: dict[str, Any], receipts: list[dict[str, Any]]) -> dict[str, Any]:
    """An ERPNext Work Order (operations child table, custom fields) and its Purchase Receipts as the
    hub's work order input (validated by WorkOrderInput, whose errors `erp_input` names by ERPNext field)."""
    ops = doc.get("operations") or []
    wo: dict[str, Any] = {
        "number": doc.get("name"), "item": doc.get("production_item"), "item_name": doc.get("item_name"),
        "gtin": doc.get("custom_gtin"), "quantity": doc.get("qty"), "uom": doc.get("stock_uom") or "EA",
        "line": doc.get("custom_line"),
        "routing": [{"seq": op.get("custom_seq") or (op.get("idx") or i + 1) * 10, "name": op.get("operation"),
                     "equipment": op.get("workstation")} if isinstance(op, dict) else op
                    for i, op in enumerate(ops if isinstance(ops, list) else [ops])],
        "receipts": [receipt_from_erpnext(r) for r in receipts],
    }
    if doc.get("sales_order") and doc.get("custom_customer") and doc.get("custom_delivery_note"):
        wo["shipment"] = {"shipment": doc["custom_delivery_note"], "sales_order": doc["sales_order"],
                          "customer": doc["custom_customer"], "carrier": doc.get("custom_carrier")}
    return {k: v for k, v in wo.items() if v is not None}


def receipt_from_erpnext(doc: dict[str, Any]) -> dict[str, Any]:
    items = doc.get("items") or []
    return {"receipt": doc.get("name"), "lots": [
        {"lot": it.get("batch_no"), "supplier": doc.get("supplier"), "item": it.get("item_code"),
         "supplier_lot": it.get("custom_supplier_lot") or it.get("batch_no"),
         "heat_number": it.get("custom_heat_number"), "quantity": it.get("qty"), "uom": it.get("stock_uom") or "EA",
         "certificate_ref": it.get("custom_certificate_ref"), "purchase_order": it.get("purchase_order")}
        if isinstance(it, dict) else it for it in (items if isinstance(items, list) else [items])]}


# the hub's input fields and the ERPNext fields they come from
_WO_FIELDS = {"number": "name", "item": "production_item", "item_name": "item_name", "gtin": "custom_gtin",
              "quantity": "qty", "uom": "stock_uom", "line": "custom_line", "routing": "operations",
              "receipts": "Purchase Receipt", "shipment": "custom_delivery_note"}
_OP_FIELDS = {"seq": "custom_seq", "name": "operation", "equipment": "workstation"}
_LOT_FIELDS = {"lot": "batch_no", "supplier": "supplier", "item": "item_code", "supplier_lot": "custom_supplier_lot",
               "heat_number": "custom_heat_number", "quantity": "qty", "uom": "stock_uom",
               "certificate_ref": "custom_certificate_ref", "purchase_order": "purchase_order"}
_SHIP_FIELDS = {"shipment": "custom_delivery_note", "sales_order": "sales_order", "customer": "custom_customer",
                "carrier": "custom_carrier"}


def erpnext_field(doctype: str, loc: tuple[Any, ...], receipts: list[dict[str, Any]]) -> str:
    """Where in the ERP a validation error's location is: the DocType, document and field to fix."""
    def receipt_field(r: dict[str, Any], rest: tuple[Any, ...]) -> str:
        where = f"Purchase Receipt {r.get('name')}"
        if rest[:1] == ("lots",) and len(rest) >= 3 and isinstance(rest[1], int):
            sub = rest[2]
            if sub == "supplier":
                return f"{where}: supplier"
            return f"{where}: items row {rest[1] + 1}: {_LOT_FIELDS.get(sub, sub)}"
        if rest[:1] == ("lots",):
            return f"{where}: items"
        return f"{where}: {'name' if rest[:1] == ('receipt',) else (rest[0] if rest else 'document')}"

    if doctype == "Purchase Receipt":
        return receipt_field(receipts[0] if receipts else {}, loc)
    head = loc[0] if loc else None
    if head == "routing" and len(loc) >= 3 and isinstance(loc[1], int):
        return f"Work Order: operations row {loc[1] + 1}: {_OP_FIELDS.get(loc[2], loc[2])}"
    if head == "receipts" and len(loc) >= 2 and isinstance(loc[1], int) and loc[1] < len(receipts):
        return receipt_field(receipts[loc[1]], loc[2:])
    if head == "shipment" and len(loc) >= 2:
        return f"Work Order: {_SHIP_FIELDS.get(loc[1], loc[1])}"
    return f"Work Order: {_WO_FIELDS.get(head, head) if head is not None else 'document'}"
