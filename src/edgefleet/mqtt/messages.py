"""Wire models of the ThingsPro remote-control protocol (Sanji "RESTful messages").

    request   server → gateway  {"method", "resource", "data"?, "task_id"}
    response  gateway → server  {"code", "method", "resource", "data", "id", "sign", "task_id"}
    event     gateway → server  {"method", "resource", "data", "code"?}   (no task_id)
    status    gateway → server  "1" (connected) | "0" (last will, retained)

Decoding never raises anything but ``MessageError``; unknown extra keys are kept, so a
response can be handed back to API callers as the gateway sent it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.errors import MessageError

MAX_MESSAGE_BYTES = 256 * 1024
"""Larger payloads are refused before parsing."""

Method = Literal["get", "post", "put", "delete"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    method: Method
    resource: str = Field(min_length=1, max_length=2048)

    @field_validator("method", mode="before")
    @classmethod
    def _lower(cls, v: Any) -> Any:
        return v.lower() if isinstance(v, str) else v

    @field_validator("resource")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("resource must start with '/'")
        return v


class RequestMessage(_Wire):
    """What the server asks a gateway to do: one REST call on the gateway's own API."""

    task_id: str = Field(min_length=1, max_length=128)
    data: Any = None


class ResponseMessage(_Wire):
    """The gateway's answer to a request; ``task_id`` echoes the request's."""

    task_id: str = Field(min_length=1, max_length=128)
    code: int
    data: Any = None
    id: int | None = None
    sign: list[str] = Field(default_factory=list)


class EventMessage(_Wire):
    """Something the gateway reports on its own (property change, firmware result, …)."""

    code: int | None = None
    data: Any = None
    event_id: str | None = Field(default=None, min_length=1, max_length=64)
    """edgefleet's extension: a gateway-made id (unique per gateway) by which the server
    stores a redelivered event once. ThingsPro gateways send none."""


ClientMessage = ResponseMessage | EventMessage


def new_event_id() -> str:
    """An ``event_id`` for a gateway's event."""
    return uuid.uuid4().hex


def encode(message: BaseModel) -> bytes:
    """Compact JSON; a request without data carries no ``data`` key, as the original sent it."""
    body = message.model_dump(mode="json")
    if isinstance(message, RequestMessage) and body.get("data") is None:
        body.pop("data", None)
    if isinstance(message, EventMessage) and body.get("event_id") is None:
        body.pop("event_id", None)
    return json.dumps(body, separators=(",", ":")).encode()


def _load(payload: bytes) -> dict[str, Any]:
    if len(payload) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"message is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MessageError(f"message must be a JSON object, not {type(doc).__name__}")
    return doc


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}" for e in exc.errors()
    )


def decode_request(payload: bytes) -> RequestMessage:
    try:
        return RequestMessage.model_validate(_load(payload))
    except ValidationError as exc:
        raise MessageError(f"bad request message: {_explain(exc)}") from exc


def decode_client(payload: bytes) -> ClientMessage:
    """A message from a gateway's ``client`` topic: a response if it has a ``task_id``."""
    doc = _load(payload)
    try:
        if "task_id" in doc:
            return ResponseMessage.model_validate(doc)
        return EventMessage.model_validate(doc)
    except ValidationError as exc:
        kind = "response" if "task_id" in doc else "event"
        raise MessageError(f"bad {kind} message: {_explain(exc)}") from exc


def decode_status(payload: bytes) -> bool:
    """``True`` for "1" (online), ``False`` for "0" (offline)."""
    text = payload.strip()
    if text == b"1":
        return True
    if text == b"0":
        return False
    raise MessageError(f"status payload must be '1' or '0', not {payload[:20]!r}")
