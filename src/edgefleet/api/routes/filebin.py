"""Filebin: ThingsPro's file upload (``Sanji-IO/express-filebin``) and downloads.

``POST`` or ``PUT /filebin/upload`` (and under ``/api/v1``): multipart with any field names,
at most 5 files, each at most ``storage.max_file_bytes``. The answer is exactly
``{fieldname, physicalPath, url}`` for one file, a list of them for several; ``url``
downloads the file with no credential until it expires (a signed link to this server, or a
presigned S3 URL). ``GET /filebin/download/{key}`` serves a file to a valid link signature
or to any caller who may read the fleet. Errors are problem+json.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from edgefleet.api.bodylimit import streams_upload
from edgefleet.api.deps import ContainerDep, FleetWriter, audit_target, current_principal
from edgefleet.api.inputs import Int64
from edgefleet.api.multipart import receive_form
from edgefleet.api.responses import reply
from edgefleet.api.responses.service import BINARY, StoredFile
from edgefleet.domain.auth import Permission
from edgefleet.errors import PermissionDeniedError, ValidationError
from edgefleet.services.files import FileKind

MAX_FILES = 5
"""As the original's filebin."""

router = APIRouter(tags=["files"])

_UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "additionalProperties": {"type": "string", "format": "binary"},
                    "description": "1-5 files under any field names",
                }
            }
        },
    }
}


@streams_upload
async def upload(request: Request, c: ContainerDep, p: FleetWriter) -> Response:
    form = await receive_form(
        request, c.files, max_files=MAX_FILES, kind=FileKind.FILEBIN, created_by=p.email
    )
    if not form.files:
        raise ValidationError("no file in the upload")
    out = [
        {
            "fieldname": u.fieldname,
            "physicalPath": u.file.key,
            "url": await c.files.download_url(u.file.key),
        }
        for u in form.files
    ]
    audit_target(request, "file", form.files[0].file.key.split("/", 1)[0])
    return reply(out[0] if len(out) == 1 else out)


for _mount in ("/api/v1/filebin", "/filebin"):  # ours, and the original's FILEBIN_PATH
    for _method in ("POST", "PUT"):  # one route each: an OpenAPI operation has one method
        router.add_api_route(
            f"{_mount}/upload",
            upload,
            methods=[_method],
            name="filebin.upload",
            openapi_extra=_UPLOAD_DOC,
            response_model=StoredFile | list[StoredFile],
            response_description="one file: its reference; several: one each",
        )


@router.get(
    "/api/v1/filebin/download/{key:path}",
    name="filebin.download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": BINARY}}},
)
@router.get(
    "/filebin/download/{key:path}",
    name="filebin.download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": BINARY}}},
)
async def download(
    request: Request,
    c: ContainerDep,
    key: str,
    expires: Annotated[Int64 | None, Query()] = None,
    sig: Annotated[str | None, Query(max_length=128)] = None,
) -> StreamingResponse:
    """With ``expires`` and ``sig`` from an upload's ``url`` (wrong or expired: 403), or
    without them and with a reader's credentials."""
    if expires is not None or sig is not None:
        c.files.check_signature(key, expires or 0, sig or "")
    else:
        principal = await current_principal(request, c)
        if not principal.can(Permission.FLEET_READ):
            raise PermissionDeniedError("downloading files needs fleet:read")
    row = await c.files.get(key)
    chunks = await c.files.open(key)
    return StreamingResponse(
        chunks,
        media_type="application/octet-stream",
        headers={
            "Content-Length": str(row.size),
            "Content-Disposition": _disposition(row.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, no-store",
        },
    )


def _disposition(filename: str) -> str:
    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_").replace("?", "_")
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 else "_" for ch in ascii_name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
