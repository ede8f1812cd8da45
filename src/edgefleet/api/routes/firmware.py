"""``/api/v1/firmware``: the firmware catalogue (images a firmware task sends to gateways).

``POST`` is multipart: one file, ``version`` (required), ``models`` (comma-separated or
repeated; none means any model), ``notes``. Writes need fleet:write and are audited.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from edgefleet.api.bodylimit import streams_upload
from edgefleet.api.deps import ContainerDep, FleetReader, FleetWriter, audit_target
from edgefleet.api.inputs import Int32, Offset
from edgefleet.api.multipart import receive_form
from edgefleet.api.responses import reply
from edgefleet.api.responses.firmware import FirmwareList, FirmwarePublic
from edgefleet.errors import ValidationError
from edgefleet.presenters.firmware import firmware_public
from edgefleet.presenters.pages import page
from edgefleet.services.files import FileKind

router = APIRouter(prefix="/api/v1", tags=["firmware"])

_CREATE_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "version"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "version": {"type": "string", "maxLength": 64},
                        "models": {
                            "type": "string",
                            "description": "model names, comma-separated or repeated",
                        },
                        "notes": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post(
    "/firmware",
    name="firmware.create",
    response_model=FirmwarePublic,
    status_code=201,
    openapi_extra=_CREATE_DOC,
)
@streams_upload
async def create_firmware(request: Request, c: ContainerDep, p: FleetWriter) -> Response:
    form = await receive_form(
        request, c.files, max_files=1, kind=FileKind.FIRMWARE, created_by=p.email
    )
    if not form.files:
        raise ValidationError("no firmware file in the upload")
    row = await c.firmware.add_firmware(
        form.files[0].file,
        version=form.first("version"),
        models=form.fields.get("models", []),
        notes=form.first("notes"),
        created_by=p.email,
    )
    audit_target(request, "firmware", row.id)
    return reply(firmware_public(row), 201)


@router.get("/firmware", name="firmware.list", response_model=FirmwareList)
async def list_firmware(
    c: ContainerDep,
    _: FleetReader,
    offset: Offset = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
) -> Response:
    """Newest first."""
    total, rows = await c.firmware.list_firmware(offset=offset, limit=limit)
    return reply(page(total, offset, limit, [firmware_public(r) for r in rows]))


@router.get("/firmware/{firmware_id}", name="firmware.get", response_model=FirmwarePublic)
async def get_firmware(c: ContainerDep, _: FleetReader, firmware_id: Int32) -> Response:
    return reply(firmware_public(await c.firmware.get(firmware_id)))


@router.delete("/firmware/{firmware_id}", name="firmware.delete", status_code=204)
async def delete_firmware(
    request: Request, c: ContainerDep, _: FleetWriter, firmware_id: Int32
) -> None:
    """Removes the image from the catalogue and its file from the store."""
    audit_target(request, "firmware", firmware_id)
    await c.firmware.delete_firmware(firmware_id)
