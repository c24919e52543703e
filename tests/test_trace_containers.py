"""Trace through containers: backward from a case or pallet answers for everything inside it (with the container
tree), and forward from a lot lists the cases and pallets holding its units and where each is now."""

from __future__ import annotations

import uuid

import httpx
import pytest

from domain import gs1, shipping
from tests.test_codes import sscc_rule
from tests.test_epcis import hub  # noqa: F401 - the fixture
from tests.test_trace_plant import RESOLVER, build_plant

pytestmark = pytest.mark.asyncio


async def container_rules(client: httpx.AsyncClient, item: str) -> None:
    """SSCC code rules for `item`'s cases and pallets."""
    for level, ext in (("case", "5"), ("pallet", "6")):
        r = await client.post("/api/codes/rules", json={"item": item, "level": level,
                                                       "spec": sscc_rule("4012345", ext)})
        assert r.status_code == 201, r.text


async def issue_codes(client: httpx.AsyncClient, item: str, level: str, count: int,
                      lot: str | None = None) -> list[str]:
    """`count` new codes of `item` at `level` (unit, case, pallet; units of `lot`), as Digital Links."""
    body = {"key": f"{item}-{level}-{uuid.uuid4().hex[:4]}", "item": item, "count": count,
            **({"level": level} if level != "unit" else {}), **({"lot": lot} if lot else {})}
    b = await client.post("/api/codes/blocks", json=body)
    assert b.status_code in (200, 201), b.text
    return [(await client.get(f"/api/codes/blocks/{b.json()['id']}/codes/{i}")).json()["digital_link"]
            for i in range(count)]


def urn_of_sscc(code: str) -> str:
    s = gs1.parse_digital_link(code)["00"]
    return f"urn:epc:id:sscc:{s[1:8]}.{s[0]}{s[8:17]}"


async def test_backward_from_a_pallet_or_case_and_forward_to_containers(hub: httpx.AsyncClient,  # noqa: F811
                                                                         sessionmaker):
    plant = await build_plant(sessionmaker, ship=False)
    tag, lots = plant.tag, plant.lots
    item = f"ASSY-{tag}"
    await container_rules(hub, item)

    async def codes(level: str, count: int, lot: str | None = None) -> list[str]:
        return await issue_codes(hub, item, level, count, lot)

    units, cases, (pallet,) = await codes("unit", 4, lots["B1"]), await codes("case", 2), await codes("pallet", 1)
    for parent, children in ((cases[0], units[:2]), (cases[1], units[2:3]), (pallet, cases)):
        r = await hub.post("/api/codes/pack", json={"parent": parent, "children": children, "actor": "packer"})
        assert r.status_code == 200, r.text
    path = {c: f"/00/{gs1.parse_digital_link(c)['00']}" for c in [*cases, pallet]}

    # backward from the pallet: the tree down to units, and the genealogy of their lot down to the suppliers
    r = await hub.get(f"/api/trace/backward/{pallet}")
    assert r.status_code == 200, r.text
    back = r.json()
    box = back["container"]
    assert box["code"] == path[pallet] and box["level"] == "pallet" and box["unit_count"] == 3
    assert box["where"] == "in stock (open)" and box["shipment"] is None
    assert {c["code"] for c in box["tree"]["children"]} == {path[c] for c in cases}
    leaves = [u for c in box["tree"]["children"] for u in c["children"]]
    assert len(leaves) == 3 and {u["lot"] for u in leaves} == {lots["B1"]}
    assert back["lots"] == [{"lot": lots["B1"], "units": 3}] and back["lot"] == lots["B1"]
    assert {lots[k] for k in ("B1", "A1", "M1", "M2", "M3")} <= {n["id"] for n in back["nodes"]}
    assert {"from": lots["M1"], "to": lots["A1"], "via": "transformation"} in back["edges"]
    assert {s[0] for s in back["suppliers"]} == {"ACME-STEEL", "BOLT-CO"}
    assert f"CERT-{plant.heats['M1']}" in back["certificates"]
    assert len(back["flat"]) == len(back["nodes"]) and back["direction"] == "backward"
    # a case by its SSCC as an EPC URN: only what is in that case, and the pallet it sits on
    case = (await hub.get(f"/api/trace/backward/{urn_of_sscc(cases[1])}")).json()["container"]
    assert case["unit_count"] == 1 and case["parent"] == path[pallet] and case["where"] == f"in stock, in {path[pallet]}"
    # a unit is traced as before (no container fields)
    unit = (await hub.get(f"/api/trace/backward/{units[0]}")).json()
    assert unit["lot"] == lots["B1"] and "container" not in unit

    # forward from a raw lot: the lots, and the cases and pallets holding its units, open in stock
    fwd = (await hub.get(f"/api/trace/forward/{lots['M1']}")).json()
    assert lots["B1"] in {n["id"] for n in fwd["nodes"]}
    boxes = {b["code"]: b for b in fwd["containers"]}
    assert set(boxes) == {path[pallet], *(path[c] for c in cases)}
    assert boxes[path[pallet]]["units"] == 3 and boxes[path[cases[0]]]["units"] == 2
    assert boxes[path[cases[0]]]["parent"] == path[pallet] and boxes[path[pallet]]["parent"] is None
    assert all(b["status"] == "open" and b["lots"] == [lots["B1"]] for b in boxes.values())
    assert fwd["summary"]["containers"] == 3 and fwd["summary"]["containers_shipped"] == 0

    # the pallet ships: forward (here from the heat) says on which shipment, to which customer
    dn = f"DN-{tag}"
    async with sessionmaker() as s, s.begin():
        await shipping.ship_lot(s, work_order=f"WOB-{tag}", lot=lots["B1"], shipment=dn, sales_order=f"SO-{tag}",
                                customer=f"Customer Y {tag}", carrier="DHL", tracking_number="T-9", resolver=RESOLVER)
    r = await hub.post("/api/codes/containers/ship", params={"code": pallet}, json={"shipment": dn, "actor": "ship"})
    assert r.status_code == 200, r.text
    fwd = (await hub.get("/api/trace/forward", params={"kind": "heat", "value": plant.heats["M1"]})).json()
    boxes = {b["code"]: b for b in fwd["containers"]}
    assert boxes[path[pallet]]["where"] == f"shipped to Customer Y {tag} ({dn})"
    assert boxes[path[pallet]]["customer"] == f"Customer Y {tag}" and boxes[path[pallet]]["sales_order"] == f"SO-{tag}"
    assert all(b["status"] == "shipped" and b["shipment"] == dn for b in boxes.values())
    assert fwd["summary"]["containers_shipped"] == 3 and fwd["customers"] == [f"Customer Y {tag}"]
    back = (await hub.get(f"/api/trace/backward/{pallet}")).json()
    assert back["container"]["customer"] == f"Customer Y {tag}" and back["container"]["status"] == "shipped"
    # the CSV rendering still works for a container
    r = await hub.get(f"/api/trace/backward/{pallet}", params={"format": "csv"})
    assert r.status_code == 200 and lots["M1"] in r.text
