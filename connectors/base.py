"""The connector contract every integration implements."""

from __future__ import annotations

from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict


class ConnectorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckResult(BaseModel):
    ok: bool
    message: str


class Connector:
    """Base connector: use as `async with Kind(config) as c: await c.read(...)`."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[ConnectorConfig]] = ConnectorConfig

    def __init__(self, config: ConnectorConfig | dict[str, Any]) -> None:
        self.config = config if isinstance(config, self.Config) else self.Config.model_validate(config)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def check(self) -> CheckResult:
        raise NotImplementedError

    async def discover(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def read(self, resource: str, **params: Any) -> Any:
        raise NotImplementedError

    async def write(self, resource: str, data: Any) -> Any:
        raise NotImplementedError

    def _translate(self, exc: BaseException) -> Exception:
        raise NotImplementedError
