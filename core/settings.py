"""Settings for every TraceHub process. Only entry points build a Settings()."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

VAR_DIR = Path("var")


class DatabaseSettings(BaseModel):
    url: str = Field(
        default=f"sqlite+aiosqlite:///{VAR_DIR}/hub.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file or postgresql+psycopg://user:pw@host/db",
    )
    echo: bool = False
    app_role: str | None = Field(
        default=None,
        description="PostgreSQL: the login role the API and the worker connect as (HUB_DATABASE__APP_ROLE). "
                    "Migrations run as the database's owner role and grant this role the rows of every table "
                    "but only SELECT and INSERT on audit_log (migrations/app_role.py); None: no grants")


class TemporalSettings(BaseModel):
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "tracehub"


MiB = 1024 * 1024


class WorkerSettings(BaseModel):
    # Workflows kept in memory between tasks. An evicted workflow is replayed from its history when it
    # next has work (a few ms); a smaller cache trades that for memory with thousands of open work orders.
    max_cached_workflows: int = 200
    max_concurrent_activities: int = 50
    # the MES-over-MQTT bridge (activities/mes.py) subscribes under a fixed client id: with several worker
    # processes, run it in one of them (HUB_WORKER__MES_BRIDGE=false in the others)
    mes_bridge: bool = True


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # request bodies over these are refused with 413 before they are read (api/limits.py)
    max_body_bytes: int = Field(default=10 * MiB, ge=1, description="largest request body of any route")
    max_capture_body_bytes: int = Field(
        default=16 * MiB, ge=1,
        description="largest body of POST /epcis/capture: the GS1-EPCIS-Capture-File-Size-Limit it advertises "
                    "(domain/epcis_capture.py); keep the two equal")
    max_photo_bytes: int = Field(
        default=5 * MiB, ge=1, description="largest photo of a visual characteristic (PNG or JPEG); larger "
                                           "uploads get 413 after at most this much is read")
    resolver_fast_path: bool = Field(
        default=True, description="answer scans of cached unit codes with one plain statement, before FastAPI "
                                  "(api/routes/resolver.py ResolverFastPath); off: every scan takes the routes")


class ErpSettings(BaseModel):
    """The ERP endpoint seeded at set-up (the loopback simulator by default)."""

    url: str = "http://127.0.0.1:8100"
    api_key: str = "tracehub"
    api_secret: SecretStr = SecretStr("simulator-secret")
    # ERPNext signs webhooks with it; the seeded endpoint refuses events without a valid signature
    webhook_secret: SecretStr = SecretStr("simulator-webhook-secret")


class NcrSeverityTiming(BaseModel):
    """How long an NCR of one severity may wait before a reminder, an escalation to the quality manager,
    and when it is overdue (not closed)."""

    reminder_after: timedelta
    escalate_after: timedelta
    due_after: timedelta


class NcrSettings(BaseModel):
    """Per-severity NCR durations (HUB_NCR__CRITICAL__REMINDER_AFTER=PT30M ...); the ERP route copies them into
    each work order's input, so a running work order keeps the durations it started with."""

    critical: NcrSeverityTiming = NcrSeverityTiming(
        reminder_after=timedelta(hours=1), escalate_after=timedelta(hours=4), due_after=timedelta(days=1))
    major: NcrSeverityTiming = NcrSeverityTiming(
        reminder_after=timedelta(hours=8), escalate_after=timedelta(hours=24), due_after=timedelta(days=7))
    minor: NcrSeverityTiming = NcrSeverityTiming(
        reminder_after=timedelta(hours=24), escalate_after=timedelta(hours=72), due_after=timedelta(days=30))

    def table(self) -> dict[str, dict[str, timedelta]]:
        return {sev: getattr(self, sev).model_dump() for sev in ("critical", "major", "minor")}


class DevServerSettings(BaseModel):
    port: int = 7233
    ui_port: int = 8233
    db_filename: str = str(VAR_DIR / "temporal.db")


class EpcisSettings(BaseModel):
    """Delivery of EPCIS query subscriptions (domain/epcis_subscriptions.py)."""

    stream_every_seconds: float = Field(default=5.0, gt=0, description="how often a stream subscription is served")
    record_lag_seconds: float = Field(
        default=5.0, ge=0, description="events recorded this recently wait for the next run, so a capture still "
                                       "committing is never skipped")
    callback_batch: int = Field(default=500, ge=1, le=10_000, description="events per callback document")


class Gs1Settings(BaseModel):
    """The plant's GS1 identity."""

    company_prefixes: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="the plant's own GS1 company prefixes (6 to 12 digits each), e.g. "
                    "HUB_GS1__COMPANY_PREFIXES=4012345,0614141: with them the EPCIS interface can write the hub's "
                    "own GTINs, SSCCs and locations as EPC URNs (GS1-EPC-Format: Always_EPC_URN), which needs the "
                    "prefix's length. Code rules' company prefixes are known without this")

    @field_validator("company_prefixes", mode="before")
    @classmethod
    def _comma_separated(cls, v: object) -> object:
        # from the environment: comma-separated digits (not JSON: a prefix may start with 0), or a JSON list
        if isinstance(v, str):
            return json.loads(v) if v.lstrip().startswith("[") else [p.strip() for p in v.split(",") if p.strip()]
        return v

    @field_validator("company_prefixes")
    @classmethod
    def _digits(cls, v: list[str]) -> list[str]:
        bad = [p for p in v if not (p.isdigit() and 6 <= len(p) <= 12)]
        if bad:
            raise ValueError(f"{bad[0]!r} is not a GS1 company prefix: give 6 to 12 digits")
        return v


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", env_nested_delimiter="__", extra="ignore")

    database: DatabaseSettings = DatabaseSettings()
    temporal: TemporalSettings = TemporalSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    erp: ErpSettings = ErpSettings()
    dev_server: DevServerSettings = DevServerSettings()
    ncr: NcrSettings = NcrSettings()
    epcis: EpcisSettings = EpcisSettings()
    gs1: Gs1Settings = Gs1Settings()
    # GS1 identity of the plant: used for Digital Link URIs of lots and serials
    resolver_base_url: str = "https://id.tracehub.example"
    erp_sim_port: int = 8100
