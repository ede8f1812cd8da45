"""The firmware catalogue."""

from __future__ import annotations

from edgefleet.api.responses import Answer, Page


class FirmwarePublic(Answer):
    id: int
    uuid: str
    version: str
    models: list[str]
    filename: str
    size: int
    sha256: str
    notes: str
    createdAt: str
    createdBy: str


class FirmwareList(Page[FirmwarePublic]):
    pass
