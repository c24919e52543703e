"""Tables of EPCIS master data (vocabulary elements, their attributes and `children` hierarchy) and of the
documents waiting for an asynchronous capture job."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from domain.models import Base, utcnow


class EpcisVocabularyElement(Base):
    """One master-data vocabulary element (e.g. a BusinessLocation SGLN), as last captured."""

    __tablename__ = "epcis_vocabulary_element"
    vtype: Mapped[str] = mapped_column(String(120), primary_key=True)  # urn:epcglobal:epcis:vtype:ReadPoint ...
    element_id: Mapped[str] = mapped_column(String(300), primary_key=True)  # canonical identifier
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EpcisVocabularyAttribute(Base):
    """An attribute of a vocabulary element (HASATTR_ / EQ_ATTR_ query parameters)."""

    __tablename__ = "epcis_vocabulary_attribute"
    __table_args__ = (Index("ix_epcis_vocabulary_attribute_attr", "vtype", "attr", "value"),)
    vtype: Mapped[str] = mapped_column(String(120), primary_key=True)
    element_id: Mapped[str] = mapped_column(String(300), primary_key=True)
    attr: Mapped[str] = mapped_column(String(300), primary_key=True)  # CURIE cbvmda: expanded
    value: Mapped[str | None] = mapped_column(String(500))  # a string, a number as text, an object as JSON


class EpcisVocabularyChild(Base):
    """`child` is directly below `parent` in a vocabulary's hierarchy (WD_readPoint / WD_bizLocation)."""

    __tablename__ = "epcis_vocabulary_child"
    vtype: Mapped[str] = mapped_column(String(120), primary_key=True)
    parent: Mapped[str] = mapped_column(String(300), primary_key=True)
    child: Mapped[str] = mapped_column(String(300), primary_key=True)


class EpcisCaptureDocument(Base):
    """The body of a capture job that runs asynchronously, kept until its job has finished (then deleted in
    the job's own transaction): the capture workflow reads it from here, not from Temporal's payloads."""

    __tablename__ = "epcis_capture_document"
    job_id: Mapped[str] = mapped_column(ForeignKey("epcis_capture_job.id"), primary_key=True)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    content_type: Mapped[str | None] = mapped_column(Text)
