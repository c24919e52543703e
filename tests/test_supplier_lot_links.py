"""A supplier's captured lot joins our received lot only when it is that lot's material (issue 5: events captured
from outside join the genealogy). A supplier lot number is unique only with its trade item or its supplier: two
suppliers may both ship a lot "230415". The receipt links a captured class to the received lots with its lot number
whose item has the class's GTIN; else to those whose item has no GTIN if one supplier uses that number; else to
none (a trace must not show another supplier's lots). Both orders: captured first, then received, and the other way.
"""

from __future__ import annotations

import uuid

import httpx

from domain import gs1, production
from tests.test_epcis import capture, document
from tests.test_epcis_corrections import _trace_edges, api  # noqa: F401 (the api fixture)
from tests.test_trace_plant import RESOLVER


def _gtin() -> str:
    body = "0" + "79" + f"{uuid.uuid4().int % 10**10:010d}"
    return body + str(gs1.mod10(body))


async def _receive(sessionmaker, *, supplier: str, supplier_lot: str, gtin: str | None) -> str:
    item, lot = f"BAR-{uuid.uuid4().hex[:8]}", f"R-{uuid.uuid4().hex[:8].upper()}"
    async with sessionmaker() as s, s.begin():  # the receipt line names the supplier's GTIN of the item
        await production.receive_lot(s, work_order=None, receipt=f"PR-{lot}", received_at=None, lot=lot,
                                     supplier=supplier, item=item, supplier_lot=supplier_lot, heat_number=None,
                                     quantity=5, uom="KG", certificate_ref=None, location=None, resolver=RESOLVER,
                                     gtin=gtin)
    return lot


def _shipped(gtin: str, supplier_lot: str) -> dict:
    """The supplier's shipping event for its lot (what a supplier's EPCIS document says it sent)."""
    return {"type": "ObjectEvent", "eventTime": "2026-01-01T06:00:00Z", "eventTimeZoneOffset": "+00:00",
            "action": "OBSERVE", "bizStep": "shipping",
            "quantityList": [{"epcClass": f"https://id.gs1.org/01/{gtin}/10/{supplier_lot}", "quantity": 5,
                              "uom": "KGM"}]}


def _dl(gtin: str, supplier_lot: str) -> str:
    return f"https://id.gs1.org/01/{gtin}/10/{supplier_lot}"


async def _upstream(api: httpx.AsyncClient, lot: str) -> set[str]:  # noqa: F811
    return (await _trace_edges(api, lot))[0]


async def test_a_lot_number_two_suppliers_use_links_by_gtin_or_not_at_all(api: httpx.AsyncClient,  # noqa: F811
                                                                          sessionmaker):
    number = f"230415-{uuid.uuid4().hex[:6]}"
    g_acme, g_bolt = _gtin(), _gtin()
    # two suppliers shipped us a lot "number"; our items record the suppliers' GTINs
    acme = await _receive(sessionmaker, supplier="ACME-STEEL", supplier_lot=number, gtin=g_acme)
    bolt = await _receive(sessionmaker, supplier="BOLT-CO", supplier_lot=number, gtin=g_bolt)
    assert (await capture(api, document(_shipped(g_acme, number))))["success"]
    assert await _upstream(api, acme) == {_dl(g_acme, number)}
    assert await _upstream(api, bolt) == set()  # not BOLT-CO's material, though the number is the same

    # captured first, received after: the same rule when the lot arrives
    later, g_later = f"230416-{uuid.uuid4().hex[:6]}", _gtin()
    assert (await capture(api, document(_shipped(g_later, later))))["success"]
    acme2 = await _receive(sessionmaker, supplier="ACME-STEEL", supplier_lot=later, gtin=_gtin())
    bolt2 = await _receive(sessionmaker, supplier="BOLT-CO", supplier_lot=later, gtin=g_later)
    assert await _upstream(api, bolt2) == {_dl(g_later, later)}
    assert await _upstream(api, acme2) == set()


async def test_without_gtins_one_supplier_links_and_two_link_none(api: httpx.AsyncClient,  # noqa: F811
                                                                  sessionmaker):
    g = _gtin()
    # one supplier uses the number: its lot joins, as before (our item records no GTIN)
    alone = f"L-{uuid.uuid4().hex[:6]}"
    lot = await _receive(sessionmaker, supplier="ACME-STEEL", supplier_lot=alone, gtin=None)
    assert (await capture(api, document(_shipped(g, alone))))["success"]
    assert await _upstream(api, lot) == {_dl(g, alone)}

    # two suppliers use it and nothing says whose the captured lot is: neither joins
    shared = f"L-{uuid.uuid4().hex[:6]}"
    a = await _receive(sessionmaker, supplier="ACME-STEEL", supplier_lot=shared, gtin=None)
    b = await _receive(sessionmaker, supplier="BOLT-CO", supplier_lot=shared, gtin=None)
    assert (await capture(api, document(_shipped(g, shared))))["success"]
    assert await _upstream(api, a) == set() and await _upstream(api, b) == set()
