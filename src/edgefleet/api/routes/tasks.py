"""``/api/v1/deviceTasks``: ThingsPro's synchronous remote task (one request, one gateway).

The answer is the gateway's response message passed through (``code`` is the gateway's, the
HTTP status 200), with ``taskID`` beside ``task_id``. Unknown device 404, offline device 409,
no answer in time 504, all as ``{"message": …}``. ``?timeout=`` (1-120 s, default 30) is our
addition.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.api.deps import ContainerDep, FleetWriter, audit_target
from edgefleet.api.errors import CompatRoute
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


@router.post("/deviceTasks", name="deviceTasks.create")
async def create_device_task(
    request: Request,
    c: ContainerDep,
    _: FleetWriter,
    body: DeviceTaskCreate,
    wait: Annotated[float, Query(alias="timeout", ge=1, le=120)] = DEFAULT_WAIT,
) -> dict[str, Any]:
    audit_target(request, "device", body.deviceUUID)
    p = body.payload
    return await c.remote.request(body.deviceUUID, p.method, p.resource, p.data, wait=wait)
