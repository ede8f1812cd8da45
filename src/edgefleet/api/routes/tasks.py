"""``/api/v1/deviceTasks``: ThingsPro's synchronous remote task (one request, one gateway).

The answer is the gateway's response message passed through (``code`` is the gateway's, the
HTTP status 200), with ``taskID`` beside ``task_id``. Unknown device 404, offline device 409,
no answer in time 504, all as ``{"message": …}``. ``?timeout=`` (1-120 s, default 30) is our
addition.

The multipart variant (``POST``, or the spec's pseudo-method ``PUT``) carries file fields
and ``jsonData``, the JSON body as a string. The files are stored first; then the payload's
``data`` gets ``file: {url, physicalPath, headers}`` (one file) or ``files: {<field name>:
{…}}`` (several), each ``url`` downloadable without credentials for an hour, and the task is
relayed as the JSON one is. When nothing was sent to the gateway, the files are discarded.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.api.bodylimit import streams_upload
from edgefleet.api.deps import ContainerDep, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
from edgefleet.api.inputs import parse_json
from edgefleet.api.multipart import MultipartRoute, ReceivedForm, receive_form
from edgefleet.api.responses import reply
from edgefleet.api.responses.tasks import DeviceTaskResponse
from edgefleet.bootstrap import Container
from edgefleet.errors import EdgefleetError, GatewayTimeoutError, ValidationError
from edgefleet.services.files import FileKind
from edgefleet.services.remote import DEFAULT_WAIT

router = APIRouter(prefix="/api/v1", tags=["remote tasks"], route_class=CompatRoute)


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")

    method: Literal["get", "post", "put", "delete"]
    resource: str = Field(min_length=1, max_length=2048, pattern=r"^/")
    data: Any = None

    @field_validator("method", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v


class DeviceTaskCreate(BaseModel):
    model_config = ConfigDict(extra="ignore")

    deviceUUID: str = Field(min_length=1, max_length=64)
    payload: Payload


MAX_FILES = 5
"""As many as a filebin upload takes."""

_MULTIPART_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["jsonData"],
                    "properties": {
                        "jsonData": {
                            "type": "string",
                            "description": "the JSON body of POST /deviceTasks, as a string",
                        }
                    },
                    "additionalProperties": {"type": "string", "format": "binary"},
                }
            }
        },
    }
}


@streams_upload
async def create_device_task_with_files(
    request: Request,
    c: ContainerDep,
    p: FleetWriter,
    wait: Annotated[float, Query(alias="timeout", ge=1, le=120)] = DEFAULT_WAIT,
) -> Response:
    """The multipart ``deviceTasks``: files and ``jsonData`` (the JSON body as a string)."""
    form = await receive_form(
        request, c.files, max_files=MAX_FILES, kind=FileKind.ATTACHMENT, created_by=p.email
    )
    try:
        body = _json_data(form.first("jsonData"))
        audit_target(request, "device", body.deviceUUID)
        pl = body.payload
        data = await _with_files(c, pl.data, form)
        return reply(
            await c.remote.request(body.deviceUUID, pl.method, pl.resource, data, wait=wait)
        )
    except GatewayTimeoutError:
        raise  # the request went out: the gateway may still fetch the files
    except (EdgefleetError, RequestValidationError):  # nothing went out: keep nothing
        await c.files.discard([u.file.key for u in form.files])
        raise


def _json_data(raw: str | None) -> DeviceTaskCreate:
    if raw is None:
        raise ValidationError("jsonData (the task as a JSON string) is required")
    doc = parse_json(raw, ("body", "jsonData"))
    try:
        return DeviceTaskCreate.model_validate(doc)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            ".".join(["jsonData", *(str(x) for x in e["loc"])]) + f": {e['msg']}"
            for e in exc.errors()
        )
        raise ValidationError(problems) from None


async def _with_files(c: Container, data: Any, form: ReceivedForm) -> Any:
    """``data`` with ``file`` (one file) or ``files`` (several, by field name) merged in."""
    if not form.files:
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValidationError("payload.data must be an object when files are attached")
    refs = {u.fieldname: await c.files.reference(u.file.key) for u in form.files}
    if len(refs) < len(form.files):
        raise ValidationError("two files share a field name; give each its own")
    if len(form.files) == 1:
        return {**data, "file": next(iter(refs.values()))}
    return {**data, "files": refs}


# Declared before the JSON route of the same path and method: it matches only multipart.
router.add_api_route(
    "/deviceTasks",
    create_device_task_with_files,
    methods=["POST"],
    name="deviceTasks.create_with_files",
    route_class_override=MultipartRoute,
    include_in_schema=False,
    response_model=DeviceTaskResponse,
)
router.add_api_route(
    "/deviceTasks",
    create_device_task_with_files,
    methods=["PUT"],
    name="deviceTasks.create_with_files",
    openapi_extra=_MULTIPART_DOC,
    response_model=DeviceTaskResponse,
    description="The multipart deviceTasks (also accepted as POST): file fields and jsonData.",
)


@router.post("/deviceTasks", name="deviceTasks.create", response_model=DeviceTaskResponse)
async def create_device_task(
    request: Request,
    c: ContainerDep,
    _: FleetWriter,
    body: DeviceTaskCreate,
    wait: Annotated[float, Query(alias="timeout", ge=1, le=120)] = DEFAULT_WAIT,
) -> Response:
    audit_target(request, "device", body.deviceUUID)
    p = body.payload
    return reply(await c.remote.request(body.deviceUUID, p.method, p.resource, p.data, wait=wait))
