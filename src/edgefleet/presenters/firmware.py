"""A firmware image of the catalogue."""

from __future__ import annotations

from typing import Any

from edgefleet.db.tables import Firmware
from edgefleet.presenters.times import iso_time


def firmware_public(f: Firmware) -> dict[str, Any]:
    return {
        "id": f.id,
        "uuid": f.uuid,
        "version": f.version,
        "models": f.models,
        "filename": f.filename,
        "size": f.size,
        "sha256": f.sha256,
        "notes": f.notes,
        "createdAt": iso_time(f.created_at),
        "createdBy": f.created_by,
    }
