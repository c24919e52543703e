"""Settings for every TraceHub process. Only entry points build a Settings()."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

VAR_DIR = Path("var")


class DatabaseSettings(BaseModel):
    url: str = Field(
        default=f"sqlite+aiosqlite:///{VAR_DIR}/hub.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///file or postgresql+psycopg://user:pw@host/db",
    )
    echo: bool = False


class TemporalSettings(BaseModel):
    address: str = "127.0.0.1:7233"
    namespace: str = "default"
    task_queue: str = "tracehub"


MiB = 1024 * 1024


class WorkerSettings(BaseModel):
    # Workflows kept in memory between tasks. An evicted workflow is replayed from its history when it
    # next has work (a few ms); a smaller cache trades that for memory with thousands of open work orders.
    max_cached_workflows: int = 250
    max_concurrent_activities: int = 50


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8000
    # request bodies over these are refused with 413 before they are read (api/limits.py)
    max_body_bytes: int = Field(default=10 * MiB, ge=1, description="largest request body of any route")
    max_capture_body_bytes: int = Field(
        default=16 * MiB, ge=1,
        description="largest body of POST /epcis/capture: the GS1-EPCIS-Capture-File-Size-Limit it advertises "
                    "(domain/epcis_capture.py); keep the two equal")


class ErpSettings(BaseModel):
    """The ERP endpoint seeded at set-up (the loopback simulator by default)."""

    url: str = "http://127.0.0.1:8100"
    api_key: str = "tracehub"
    api_secret: SecretStr = SecretStr("simulator-secret")
    # ERPNext signs webhooks with it; the seeded endpoint refuses events without a valid signature
    webhook_secret: SecretStr = SecretStr("simulator-webhook-secret")


class DevServerSettings(BaseModel):
    port: int = 7233
    ui_port: int = 8233
    db_filename: str = str(VAR_DIR / "temporal.db")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HUB_", env_nested_delimiter="__", extra="ignore")

    database: DatabaseSettings = DatabaseSettings()
    temporal: TemporalSettings = TemporalSettings()
    api: ApiSettings = ApiSettings()
    worker: WorkerSettings = WorkerSettings()
    erp: ErpSettings = ErpSettings()
    dev_server: DevServerSettings = DevServerSettings()
    # GS1 identity of the plant: used for Digital Link URIs of lots and serials
    resolver_base_url: str = "https://id.tracehub.example"
    erp_sim_port: int = 8100
