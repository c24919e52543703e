"""Photos of visual characteristics, attached to an inspection.

Stored in the database (table `inspection_attachment`, the bytes in a column) rather than as files: a photo
is evidence of a verdict, so it is written in the same transaction as its audit entry and is backed up,
restored and replicated with the inspection it belongs to; several API processes need no shared directory;
and the size limit (settings `api.max_photo_bytes`, a few MiB) keeps rows small. The sha256 is stored with it,
so a copy handed out later can be checked against the record.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.errors import Conflict, InvalidInput, NotFound
from domain.audit import audit, diff
from domain.models import Inspection
from domain.models_inspection import InspectionAttachment, InspectionSampling

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TYPES = {"image/png": PNG_MAGIC, "image/jpeg": JPEG_MAGIC}


def sniff(data: bytes) -> str | None:
    """The image type the bytes are, by their magic number (not by what the client says)."""
    for ctype, magic in TYPES.items():
        if data.startswith(magic):
            return ctype
    return None


def check_image(data: bytes, declared: str | None) -> str:
    """The content type of a PNG or JPEG photo; anything else is refused naming what was sent."""
    if not data:
        raise InvalidInput("photo: the upload is empty; send the PNG or JPEG file", field="photo")
    actual = sniff(data)
    if actual is None:
        raise InvalidInput(f"photo: the bytes are not a PNG or JPEG image (declared {declared or 'nothing'}, "
                           f"starts with {data[:8].hex()}); send a PNG or JPEG photo", field="photo")
    if declared and declared.split(";")[0].strip().lower() not in (actual, "application/octet-stream"):
        raise InvalidInput(f"photo: declared {declared!r} but the bytes are {actual}; send the right "
                           "Content-Type or none", field="photo")
    return actual


async def _visual(session: AsyncSession, ins: Inspection, characteristic: str) -> None:
    row = (await session.execute(
        select(InspectionSampling).where(InspectionSampling.inspection_id == ins.id))).scalar()
    kinds = row.characteristics if row else {}
    names = [c.name for c in ins.characteristics]
    if characteristic not in names:
        raise NotFound(f"characteristic {characteristic!r} is not in inspection {ins.number} (it has "
                       f"{sorted(names)})", field="characteristic")
    if kinds.get(characteristic, {}).get("kind") != "visual":
        raise InvalidInput(f"characteristic: {characteristic!r} of inspection {ins.number} is not a visual "
                           "characteristic of its plan: photos are attached to visual characteristics",
                           field="characteristic")


async def add_photo(session: AsyncSession, *, inspection: str, characteristic: str, data: bytes,
                    content_type: str | None, filename: str | None, actor: str) -> tuple[InspectionAttachment, bool]:
    """Attach a photo to a visual characteristic of a pending inspection. Idempotent on its content: the same
    bytes sent again return the first record (second value False)."""
    from domain.quality import get_inspection

    ins = await get_inspection(session, inspection)
    await _visual(session, ins, characteristic)
    ctype = check_image(data, content_type)
    digest = hashlib.sha256(data).hexdigest()
    existing = (await session.execute(select(InspectionAttachment).where(
        InspectionAttachment.inspection_id == ins.id, InspectionAttachment.characteristic == characteristic,
        InspectionAttachment.sha256 == digest))).scalar()
    if existing is not None:
        return existing, False
    if ins.status != "pending":
        raise Conflict(f"inspection {inspection} already has its verdict ({ins.status}): its evidence is not "
                       "changed after the fact", field="photo")
    att = InspectionAttachment(inspection_id=ins.id, characteristic=characteristic,
                               filename=(filename or "")[:200] or None, content_type=ctype, size=len(data),
                               sha256=digest, data=data, uploaded_by=actor)
    session.add(att)
    await session.flush()
    await audit(session, actor=actor, action="inspection.photo_attached", entity="inspection", key=inspection,
                changes={"characteristic": characteristic, "attachment": att.id, "sha256": digest,
                         "size": len(data), "content_type": ctype, "filename": att.filename,
                         **diff(None, {"characteristic": characteristic, "attachment": att.id, "sha256": digest,
                                       "size": len(data), "content_type": ctype, "filename": att.filename})})
    return att, True


async def list_photos(session: AsyncSession, inspection: str) -> list[InspectionAttachment]:
    from domain.quality import get_inspection

    ins = await get_inspection(session, inspection)
    return list((await session.execute(select(InspectionAttachment).where(
        InspectionAttachment.inspection_id == ins.id).order_by(InspectionAttachment.id))).scalars())


async def get_photo(session: AsyncSession, inspection: str, attachment_id: int) -> InspectionAttachment:
    from domain.quality import get_inspection

    ins = await get_inspection(session, inspection)
    att = await session.get(InspectionAttachment, attachment_id)
    if att is None or att.inspection_id != ins.id:
        raise NotFound(f"inspection {inspection} has no attachment {attachment_id}: list them at "
                       f"GET /api/inspections/{inspection}/photos", field="attachment_id")
    return att


def photo_view(att: InspectionAttachment, inspection: str) -> dict[str, object]:
    return {"id": att.id, "characteristic": att.characteristic, "filename": att.filename,
            "content_type": att.content_type, "size": att.size, "sha256": att.sha256,
            "uploaded_by": att.uploaded_by, "uploaded_at": att.uploaded_at.isoformat(),
            "url": f"/api/inspections/{inspection}/photos/{att.id}"}
