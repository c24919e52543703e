"""EPCIS master data: location hierarchies captured in document headers, and the WD_ (with descendants),
HASATTR_ and EQ_ATTR_ query parameters over them. Runs on the suite's database with the API in-process."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from tests.test_epcis import capture, document, events, hub  # noqa: F401 - the fixture

pytestmark = pytest.mark.asyncio
RP, BL = "urn:epcglobal:epcis:vtype:ReadPoint", "urn:epcglobal:epcis:vtype:BusinessLocation"


def sgln(tag: str, part: str) -> str:
    return f"urn:epc:id:sgln:4012345.00005.{tag}{part}"


def dl(tag: str, part: str) -> str:
    return f"https://id.gs1.org/414/4012345000054/254/{tag}{part}"


def hierarchy(tag: str, vtype: str, *, cycle: bool = False) -> dict[str, Any]:
    site, building, line = sgln(tag, "S"), sgln(tag, "B"), sgln(tag, "L")
    return {"type": vtype, "vocabularyElementList": [
        {"id": site, "attributes": [{"id": "cbvmda:sst", "attribute": "201"}, {"id": "cbvmda:name", "attribute":
                                                                                 f"Plant {tag}"}],
         "children": [dl(tag, "B")]},  # a child may be named as a Digital Link
        {"id": building, "attributes": [{"id": "urn:epcglobal:cbv:mda:sst", "attribute": "202"}],
         "children": [line]},
        {"id": line, "attributes": [{"id": "cbvmda:sst", "attribute": "203"}, {"id": "acme:floor", "attribute": 2}],
         "children": [site] if cycle else []},
    ]}


def at(tag: str, part: str, minute: int) -> dict[str, Any]:
    return {"type": "ObjectEvent", "action": "OBSERVE", "eventTime": f"2026-02-01T08:{minute:02d}:00.000Z",
            "eventTimeZoneOffset": "+00:00", "bizStep": "inspecting",
            "epcList": [f"urn:epc:id:sgtin:4012345.011111.{tag}{part}{minute}"],
            "readPoint": {"id": sgln(tag, part)}, "bizLocation": {"id": sgln(tag, part)}}


def with_master_data(tag: str, *evs: dict[str, Any], cycle: bool = False) -> dict[str, Any]:
    doc = document(*evs)
    doc["epcisHeader"] = {"epcisMasterData": {"vocabularyList": [hierarchy(tag, BL, cycle=cycle),
                                                                 hierarchy(tag, RP, cycle=cycle)]}}
    return doc


async def ids(hub: httpx.AsyncClient, **params: Any) -> set[str]:  # noqa: F811
    return {e["epcList"][0].rsplit("/", 1)[-1] for e in await events(hub, **params)}


async def test_wd_matches_a_location_and_everything_below_it(hub: httpx.AsyncClient):  # noqa: F811
    tag = uuid.uuid4().hex[:6]
    job = await capture(hub, with_master_data(tag, at(tag, "S", 1), at(tag, "B", 2), at(tag, "L", 3),
                                              at(tag, "X", 4), cycle=True))
    assert job["success"] is True, job["errors"]
    site, building, line, other = f"{tag}S1", f"{tag}B2", f"{tag}L3", f"{tag}X4"
    mine = {"MATCH_epc": "urn:epc:idpat:sgtin:4012345.011111.*", "GE_eventTime": "2026-02-01T00:00:00Z",
            "LT_eventTime": "2026-02-02T00:00:00Z"}
    for wd in ("WD_bizLocation", "WD_readPoint"):
        # the line's `children` points back at the site: the walk ends, the answer is the same
        assert await ids(hub, **mine, **{wd: sgln(tag, "S")}) >= {site, building, line}
        assert other not in await ids(hub, **mine, **{wd: sgln(tag, "S")})
        assert (await ids(hub, **mine, **{wd: dl(tag, "B")})) & {site, building, line, other} == \
            {building, line, site}  # the cycle makes the site a descendant of the line too
    # without the cycle (a later capture replaces the line's children) each level sees only what is below it
    tag2 = uuid.uuid4().hex[:6]
    assert (await capture(hub, with_master_data(tag2, at(tag2, "S", 1), at(tag2, "B", 2), at(tag2, "L", 3),
                                                at(tag2, "X", 4))))["success"]
    s2, b2, l2 = f"{tag2}S1", f"{tag2}B2", f"{tag2}L3"
    for wd in ("WD_bizLocation", "WD_readPoint"):
        assert await ids(hub, **mine, **{wd: sgln(tag2, "S")}) == {s2, b2, l2}
        assert await ids(hub, **mine, **{wd: dl(tag2, "B")}) == {b2, l2}
        assert await ids(hub, **mine, **{wd: sgln(tag2, "L")}) == {l2}
        assert await ids(hub, **mine, **{wd: f"{sgln(tag2, 'L')}|{sgln(tag2, 'X')}"}) == {l2, f"{tag2}X4"}
    assert await ids(hub, **mine, EQ_bizLocation=sgln(tag2, "S")) == {s2}  # EQ_ stays exact
    # the first document's cycle is replaced the same way
    await capture(hub, with_master_data(tag))
    assert await ids(hub, **mine, WD_bizLocation=sgln(tag, "L")) == {line}


async def test_master_data_attributes_and_rollback(hub: httpx.AsyncClient):  # noqa: F811
    tag = uuid.uuid4().hex[:6]
    assert (await capture(hub, with_master_data(tag, at(tag, "S", 1), at(tag, "B", 2), at(tag, "L", 3))))["success"]
    mine = {"MATCH_epc": "urn:epc:idpat:sgtin:4012345.011111.*", "WD_bizLocation": sgln(tag, "S")}
    assert await ids(hub, **mine, **{"EQ_ATTR_bizLocation_cbvmda:sst": "202|203"}) == {f"{tag}B2", f"{tag}L3"}
    assert await ids(hub, **mine, **{"EQ_ATTR_readPoint_urn:epcglobal:cbv:mda:sst": "201"}) == {f"{tag}S1"}
    assert await ids(hub, **mine, **{"EQ_ATTR_bizLocation_acme:floor": "2"}) == {f"{tag}L3"}
    assert await ids(hub, **mine, HASATTR_bizLocation="cbvmda:name") == {f"{tag}S1"}
    assert await ids(hub, **mine, HASATTR_readPoint="acme:floor|cbvmda:name") == {f"{tag}S1", f"{tag}L3"}
    r = await hub.get("/epcis/events", params={"HASATTR_epcClass": "cbvmda:sst"})
    assert r.status_code == 400 and "HASATTR_bizLocation" in r.json()["detail"]
    # a document refused as a whole (rollback) keeps none of its master data either
    tag3 = uuid.uuid4().hex[:6]
    bad = {**at(tag3, "B", 2), "action": "MOVE"}
    job = await capture(hub, with_master_data(tag3, at(tag3, "L", 3), bad))
    assert job["success"] is False and job["storedCount"] == 0
    await capture(hub, document(at(tag3, "L", 3)))
    assert await ids(hub, MATCH_epc="urn:epc:idpat:sgtin:4012345.011111.*", WD_bizLocation=sgln(tag3, "B")) == set()
