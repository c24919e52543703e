"""Wire models of device data, certificates, ERP polling and MES events (workflow <-> activity).

A work order asks for device data only when its input names endpoints: a routing operation's
`process_data` (which endpoint and point, when, and the window per item and operation), and the
order's `material_specs` (which certificate service, and the limits a received material must meet).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$"


class Limit(_Model):
    """A window: a value outside [lower, upper] is a deviation."""

    name: str = Field(min_length=1, max_length=80,
                      description="what is limited: a certificate value (grade, chemistry.C, mechanical.yield_mpa)")
    lower: float | None = Field(default=None, description="inclusive")
    upper: float | None = Field(default=None, description="inclusive")
    unit: str = Field(default="", max_length=20)

    @model_validator(mode="after")
    def _limits(self) -> Limit:
        if self.lower is None and self.upper is None:
            raise ValueError(f"{self.name}: give a lower or an upper limit (or both)")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"{self.name}: lower limit {self.lower} is above upper limit {self.upper}")
        return self


class ProcessParameter(_Model):
    """A process value an operation records from its equipment."""

    name: str = Field(pattern=_NAME, description="e.g. furnace_temp")
    endpoint: str = Field(min_length=1, max_length=64, description="the endpoint to read it from")
    point: str = Field(min_length=1, max_length=80, description="the endpoint's point, e.g. oven_temp")
    when: Literal["start", "end", "during"] = Field(
        default="end", description="at the start, at the end, or sampled during the operation")
    every_s: float | None = Field(default=None, gt=0, le=3600, description="during: sample interval")
    for_s: float | None = Field(default=None, gt=0, le=7 * 86400,
                                description="during: how long (e.g. the soak); default: until the operation ends")
    lower: float | None = Field(default=None, description="window for this item and operation (inclusive)")
    upper: float | None = Field(default=None, description="window for this item and operation (inclusive)")
    unit: str | None = Field(default=None, max_length=20)

    @model_validator(mode="after")
    def _consistent(self) -> ProcessParameter:
        if self.when == "during" and self.every_s is None:
            raise ValueError(f"{self.name}: a parameter sampled during the operation needs every_s")
        if self.when != "during" and (self.every_s is not None or self.for_s is not None):
            raise ValueError(f"{self.name}: every_s and for_s are for parameters sampled during the operation")
        if self.lower is not None and self.upper is not None and self.lower > self.upper:
            raise ValueError(f"{self.name}: lower limit {self.lower} is above upper limit {self.upper}")
        return self

    def judge(self, value: Any) -> bool | None:
        """True inside the window, False outside, None when there is no window."""
        if self.lower is None and self.upper is None:
            return None
        if not isinstance(value, int | float) or isinstance(value, bool):
            return False
        return (self.lower is None or value >= self.lower) and (self.upper is None or value <= self.upper)


class MaterialSpec(_Model):
    """What a received material must be, checked on its supplier's certificate at intake."""

    item: str = Field(min_length=1, max_length=64, description="the material's item code, e.g. BAR-42CRMO4")
    certificate_endpoint: str = Field(min_length=1, max_length=64,
                                      description="the SOAP endpoint of the supplier's certificate service")
    grade: str | None = Field(default=None, max_length=40, description="the grade the certificate must state")
    limits: list[Limit] = Field(default_factory=list, description="e.g. chemistry.C 0.38..0.45")


# --- activity inputs and results ------------------------------------------------------------------------


class ReadProcessInput(_Model):
    work_order: str
    seq: int
    run: int
    phase: Literal["start", "end"]
    parameters: list[ProcessParameter]


class ProcessValue(_Model):
    parameter: str
    value: float | int | bool | str | None
    unit: str | None = None
    in_window: bool | None = None


class ReadProcessResult(_Model):
    values: list[ProcessValue] = Field(default_factory=list)
    deviations: list[str] = Field(default_factory=list)


class SampleProcessInput(_Model):
    work_order: str
    seq: int
    run: int
    parameter: ProcessParameter
    started_at: datetime = Field(description="sample i is due at started_at + i * every_s")


class SampleProcessResult(_Model):
    parameter: str
    samples: int
    minimum: float | None = None
    maximum: float | None = None
    deviation: str | None = None


class FetchCertificateInput(_Model):
    work_order: str
    lot: str
    supplier: str
    heat_number: str | None
    spec: MaterialSpec


class CertificateResult(_Model):
    lot: str
    verdict: Literal["passed", "failed"]
    certificate_no: str | None = None
    grade: str | None = None
    failures: list[str] = Field(default_factory=list)


class SkipInspectionInput(_Model):
    inspection: str
    reason: str


class PollErpInput(_Model):
    endpoint: str = Field(default="erp", description="the ERP endpoint to poll: erpnext, or rest with a poll config")
    task_queue: str | None = Field(default=None, description="where work orders run; default: the poller's")


class PollErpResult(_Model):
    started: list[str] = Field(default_factory=list)
    signalled: list[str] = Field(default_factory=list)
    seen: int = 0
    rejected: list[str] = Field(default_factory=list, description="documents recorded as rejected (DocType name)")


class EquipmentStateReport(_Model):
    """An equipment state from the MES, over HTTP or MQTT."""

    event_id: str = Field(min_length=1, max_length=128)
    equipment: str = Field(min_length=1, max_length=80)
    state: str = Field(min_length=1, max_length=32, description="running, idle, setup, down ...")
    reason: str | None = Field(default=None, max_length=200)
    work_order: str | None = Field(default=None, max_length=64)
    at: datetime | None = None
