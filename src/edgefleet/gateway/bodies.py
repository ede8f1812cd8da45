"""Request bodies the gateway handlers share, and their 400 answers."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.gateway.routing import HandlerError

M = TypeVar("M", bound=BaseModel)


def explain(exc: ValidationError) -> str:
    """A pydantic error as one line."""
    parts = []
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        msg = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts).replace("\n", " ")


def parse(model: type[M], data: Any) -> M:
    """``data`` as ``model``, or a 400 answer naming what is wrong."""
    try:
        return model.model_validate({} if data is None else data)
    except ValidationError as exc:
        raise HandlerError(400, explain(exc)) from None


class TransferError(Exception):
    """A download (or upload, or simulated install) failed; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FileRef(BaseModel):
    """A file to fetch (``UrlInfo`` of the gateway API), with optional checks."""

    model_config = ConfigDict(extra="allow")

    url: str = Field(min_length=1, max_length=4096)
    headers: dict[str, str] = Field(default_factory=dict)
    size: int | None = Field(default=None, ge=0)
    sha256: str | None = None

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not re.match(r"(?i)https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL")
        return v

    @field_validator("sha256")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", v):
            raise ValueError("must be 64 hex digits")
        return v.lower() if v else v


class RebootBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    delay: float | None = Field(default=None, ge=0, le=3600)


class FirmwareBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    delay: float = Field(default=0, ge=0, le=86400)
    file: FileRef
    version: str | None = Field(default=None, max_length=200)
    """The version the image installs; reported in the success event."""


class ImportBody(BaseModel):
    model_config = ConfigDict(extra="allow")

    file: FileRef
    scopes: list[str] | None = Field(default=None)
