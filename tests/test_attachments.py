"""Photos of visual characteristics: PNG/JPEG by their bytes, the size limit (413, also for a chunked upload),
sha256 and who, download, audit, and the verdict that needs the photo."""

from __future__ import annotations

import hashlib
import struct
import uuid
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from domain import inspection_triggers, production
from domain.models import AuditLog
from tests.helpers import role_headers

pytestmark = pytest.mark.asyncio


def _png() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00"))
            + chunk(b"IEND", b""))


PNG = _png()
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + b"\x00" * 64 + b"\xff\xd9"
GIF = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;"


@pytest.fixture
async def inspection(api: httpx.AsyncClient, sessionmaker, settings) -> str:
    """A pending outgoing inspection of a lot, opened from a plan with a visual and an attribute characteristic."""
    tag = uuid.uuid4().hex[:8].upper()
    item = f"PHOTO-{tag}"
    r = await api.post("/api/quality/plans", headers=role_headers("quality_manager"), json={
        "item": item, "operation": "outgoing", "sampling": {"minor": {"aql": 4.0}, "major": {"aql": 1.0}},
        "characteristics": [{"name": "surface finish", "kind": "visual", "severity": "minor"},
                            {"name": "label", "kind": "attribute", "severity": "major", "defect_codes": ["MISSING"]}]})
    assert r.status_code == 201, r.text
    number = f"OUT-PHOTO-{tag}"
    async with sessionmaker() as s, s.begin():
        await production.receive_lot(
            s, work_order=None, receipt=f"PR-{tag}", received_at=None, lot=f"LOT-{tag}", supplier="ACME",
            item=item, supplier_lot="S1", heat_number=None, quantity=20, uom="EA", certificate_ref=None,
            location=None, resolver=settings.resolver_base_url)
        ins = await inspection_triggers.open_planned_inspection(
            s, number=number, trigger="outgoing", work_order=None, lot=f"LOT-{tag}", item=item,
            operation="outgoing", lot_size=20)
        assert ins is not None
    return number


def url(number: str, characteristic: str = "surface finish") -> str:
    return f"/api/inspections/{number}/characteristics/{characteristic}/photos"


async def test_upload_download_and_audit(api: httpx.AsyncClient, sessionmaker, inspection: str):
    insp = role_headers("inspector")
    r = await api.post(url(inspection), content=PNG, params={"filename": "scratch.png"},
                       headers={**insp, "content-type": "image/png"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["sha256"] == hashlib.sha256(PNG).hexdigest() and body["size"] == len(PNG)
    assert body["uploaded_by"] == "t-inspector" and body["content_type"] == "image/png"
    assert body["characteristic"] == "surface finish" and body["filename"] == "scratch.png"
    # the same bytes again: the first record, nothing doubled
    again = await api.post(url(inspection), content=PNG, headers={**insp, "content-type": "image/png"})
    assert again.status_code == 200 and again.json()["id"] == body["id"] and again.json()["duplicate"] is True

    # multipart/form-data, as a browser sends it
    files = {"photo": ("close-up.jpg", JPEG, "image/jpeg")}
    r = await api.post(url(inspection), files=files, headers=insp)
    assert r.status_code == 201, r.text
    assert r.json()["content_type"] == "image/jpeg" and r.json()["filename"] == "close-up.jpg"
    assert r.json()["sha256"] == hashlib.sha256(JPEG).hexdigest()

    listed = (await api.get(f"/api/inspections/{inspection}/photos", headers=role_headers("auditor"))).json()
    assert [p["content_type"] for p in listed] == ["image/png", "image/jpeg"]
    d = await api.get(body["url"], headers=role_headers("qa_supervisor"))
    assert d.status_code == 200 and d.content == PNG and d.headers["content-type"] == "image/png"
    assert d.headers["etag"] == f'"{body["sha256"]}"'
    assert (await api.get(f"/api/inspections/{inspection}/photos/999999")).status_code == 404
    detail = (await api.get(f"/api/inspections/{inspection}")).json()
    assert len(detail["photos"]) == 2 and detail["sampling"]["trigger"] == "outgoing"

    async with sessionmaker() as s:
        rows = (await s.execute(select(AuditLog).where(
            AuditLog.entity_key == inspection, AuditLog.action == "inspection.photo_attached"))).scalars().all()
    assert len(rows) == 2 and rows[0].actor == "t-inspector"


async def test_only_png_or_jpeg_by_their_bytes(api: httpx.AsyncClient, inspection: str):
    insp = role_headers("inspector")
    r = await api.post(url(inspection), content=GIF, headers={**insp, "content-type": "image/png"})
    assert r.status_code == 422 and "not a PNG or JPEG" in r.json()["detail"]
    r = await api.post(url(inspection), content=PNG, headers={**insp, "content-type": "image/jpeg"})
    assert r.status_code == 422 and "declared 'image/jpeg' but the bytes are image/png" in r.json()["detail"]
    r = await api.post(url(inspection), content=b"", headers={**insp, "content-type": "image/png"})
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    r = await api.post(url(inspection), files={"other": ("x.txt", b"hello", "text/plain")}, data={"a": "b"},
                       headers=insp)
    # a file part under another name is still the photo, judged by its bytes
    assert r.status_code == 422 and "not a PNG or JPEG" in r.json()["detail"]
    r = await api.post(url(inspection, "label"), content=PNG, headers={**insp, "content-type": "image/png"})
    assert r.status_code == 422 and "not a visual characteristic" in r.json()["detail"]
    r = await api.post(url(inspection, "nope"), content=PNG, headers={**insp, "content-type": "image/png"})
    assert r.status_code == 404
    r = await api.post(url("NO-SUCH-INSPECTION"), content=PNG, headers={**insp, "content-type": "image/png"})
    assert r.status_code == 404
    r = await api.post(url(inspection), content=PNG,
                       headers={**role_headers("operator"), "content-type": "image/png"})
    assert r.status_code == 403


async def test_size_limit_413_without_reading_the_rest(api: httpx.AsyncClient, settings, inspection: str):
    insp = {**role_headers("inspector"), "content-type": "image/png"}
    app = api._transport.app  # type: ignore[attr-defined]
    limit_before = app.state.settings.api.max_photo_bytes
    app.state.settings.api.max_photo_bytes = 4096
    try:
        big = PNG + b"\x00" * 5000
        r = await api.post(url(inspection), content=big, headers=insp)
        assert r.status_code == 413 and r.json()["limit"] == 4096

        sent = 0

        async def endless() -> AsyncIterator[bytes]:  # chunked: no Content-Length to refuse up front
            nonlocal sent
            yield PNG
            while sent < 10_000_000:
                sent += 1024
                yield b"\x00" * 1024

        r = await api.post(url(inspection), content=endless(), headers=insp)
        assert r.status_code == 413
        assert sent < 100_000  # stopped soon after the limit, not after the whole body
        r = await api.post(url(inspection), files={"photo": ("big.png", big, "image/png")},
                           headers=role_headers("inspector"))
        assert r.status_code == 413
        r = await api.post(url(inspection), content=PNG, headers=insp)
        assert r.status_code == 201  # under the limit
    finally:
        app.state.settings.api.max_photo_bytes = limit_before


async def test_the_verdict_needs_the_photo(api: httpx.AsyncClient, inspection: str):
    measurements = [{"characteristic": "surface finish", "values": [0]}, {"characteristic": "label", "values": [0]}]
    r = await api.post(f"/api/inspections/{inspection}/results",
                       json={"inspector": "i-1", "measurements": measurements})
    assert r.status_code == 422
    assert "'surface finish' needs a photo" in r.json()["detail"] and "/photos" in r.json()["detail"]
    r = await api.post(url(inspection), content=JPEG,
                       headers={**role_headers("inspector"), "content-type": "image/jpeg"})
    assert r.status_code == 201
    r = await api.post(f"/api/inspections/{inspection}/results",
                       json={"inspector": "i-1", "measurements": measurements})
    # the photo is there: the results pass every check; this inspection belongs to no work order
    assert r.status_code == 409 and "belongs to no work order" in r.json()["detail"]
